//! The line configuration document (one YAML document per production line).
//!
//! The same schema is read from a file, a ConfigMap or the `ProductionLine` resource. Parsing
//! is strict (unknown fields are errors) and [`LineConfig::validate`] reports every semantic
//! problem at once, each with its path, so an engineer fixes a file in one pass.
//!
//! Where each part lives:
//! - [`line`]: the document itself ([`LineConfig`]), the processing per device type, parsing;
//! - [`services`]: how the adapter, processor and storage listen and reach the broker;
//! - [`storage`]: InfluxDB, SQL, the write-ahead buffer and write batching;
//! - [`secret`]: references to passwords and tokens kept outside the document;
//! - [`device`]: one closed type per protocol, each with its own checks;
//! - [`tag`]: a tag's address, type, scaling and limits, resolved for its protocol;
//! - [`validate`]: the checks that span devices (shared links and ports, device types);
//! - `diagnose`: reading a document with many problems, so all of them are reported at once.
//!
//! Core does no I/O: reading a document from a file and resolving secrets happen in
//! `fieldline-runtime`.

use std::fmt;

pub mod device;
mod diagnose;
pub mod line;
pub mod schema;
pub mod secret;
pub mod services;
pub mod storage;
pub mod tag;
pub mod validate;

pub use device::{
    DeviceConfig, ModbusDeviceConfig, MqttDeviceConfig, OpcuaDeviceConfig, Protocol,
    SerialLineDeviceConfig, TagMetadata, mqtt, opcua,
    serial::{Parity, SerialConfig},
    serial_line,
};
pub use line::{DeviceTypeConfig, LineConfig};
pub use mqtt::MqttIngestSettings;
pub use opcua::OpcuaSettings;
pub use secret::SecretRef;
pub use serial_line::SerialLineSettings;
pub use services::{AdapterSettings, MqttConfig, OutboxConfig, OutboxWhenFull, ProcessorSettings};
pub use storage::{
    BatchConfig, BufferConfig, ByteSize, FsyncPolicy, InfluxConfig, InfluxTarget, SqlConfig,
    StorageSettings, WhenFull,
};
pub use tag::{ResolvedModbusTag, ResolvedValueTag, TagConfig};

/// One problem in a configuration document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where, e.g. `devices[0].tags[2].address`; empty for the document as a whole.
    pub path: String,
    pub message: String,
    /// The line of the document it is on (1-based), when the document was read from text.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All the problems found in one document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A document with one problem.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            path: path.into(),
            message: message.into(),
            line: None,
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects the problems of a document as the checks find them, each with its path.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
            line: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was found.
    pub fn into_result(self) -> Result<(), Vec<ConfigError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

#[cfg(test)]
mod tests;
