//! The errors of the processor library. Each has a short [`Error::kind`], the `kind` label of
//! `errors_total`, and keeps what caused it as its source.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Service plumbing: MQTT options, the gRPC listener.
    #[error(transparent)]
    Runtime(#[from] fieldline_runtime::Error),
    /// A configured service URL that is not one.
    #[error("processor.{setting} {url:?}: {source}")]
    Url {
        setting: &'static str,
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The line's alarms: an id defined twice, an unknown alarm, a refused operator action,
    /// a persisted state that cannot be resumed.
    #[error(transparent)]
    Core(#[from] fieldline_core::Error),
    /// An alarm the processor derives for a device (from an interlock, or the read-back alarm
    /// of a writable tag) that does not resolve.
    #[error("device type {device_type:?}: {message}")]
    AlarmDefinition {
        device_type: String,
        message: String,
    },
    /// The plugin entries of a device type do not validate.
    #[error("plugins of device type {device_type}: {problems}")]
    PluginConfig {
        device_type: String,
        problems: String,
    },
    #[error("plugin script {path}: {source}")]
    ScriptRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin script {path} does not compile: {source}")]
    ScriptCompile {
        path: PathBuf,
        #[source]
        source: rhai::ParseError,
    },
    #[error("stopped before the alarm state could be loaded")]
    Stopped,
    /// A secret (the adapter's write token) that could not be read or used.
    #[error("secret: {detail}")]
    Secret { detail: String },
}

impl Error {
    /// The `kind` label of this error in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Runtime(e) => e.kind(),
            Error::Core(e) => e.kind(),
            Error::Url { .. }
            | Error::AlarmDefinition { .. }
            | Error::PluginConfig { .. }
            | Error::Secret { .. } => "config",
            Error::ScriptRead { .. } => "plugin_script_read",
            Error::ScriptCompile { .. } => "plugin_script_compile",
            Error::Stopped => "stopped",
        }
    }
}
