//! The devices of a line: one closed type per protocol, selected by the document's
//! `protocol` field, each holding only the settings its driver uses and checking them
//! itself. A setting of another protocol is an error that says whose it is.

use std::{collections::HashSet, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Problems, TagConfig,
    diagnose::{ReadProblem, Repair, Segment},
};
use crate::names::name_problem;

pub mod modbus;
pub mod mqtt;
pub mod opcua;
pub mod serial;
pub mod serial_line;

pub use modbus::ModbusDeviceConfig;
pub use mqtt::MqttDeviceConfig;
pub use opcua::OpcuaDeviceConfig;
pub use serial::SerialConfig;
pub use serial_line::SerialLineDeviceConfig;

/// A device of the line. `protocol` selects the kind: `modbus-tcp`, `modbus-rtu`,
/// `serial-line`, `opcua` or `mqtt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "protocol", rename_all = "kebab-case")]
pub enum DeviceConfig {
    /// A Modbus TCP server (a PLC, or a gateway in front of RTU slaves).
    ModbusTcp(ModbusDeviceConfig),
    /// A Modbus RTU slave on a serial line; devices on the same port share the bus.
    ModbusRtu(ModbusDeviceConfig),
    /// A device that speaks lines of text on a serial port (Arduino-style).
    SerialLine(SerialLineDeviceConfig),
    /// An OPC UA server.
    Opcua(OpcuaDeviceConfig),
    /// Values published to MQTT topics by someone else (a collector, a Sparkplug B node).
    Mqtt(MqttDeviceConfig),
}

/// The same expression for whichever kind of device `$device` is.
macro_rules! each_kind {
    ($device:expr, $d:ident => $e:expr) => {
        match $device {
            DeviceConfig::ModbusTcp($d) | DeviceConfig::ModbusRtu($d) => $e,
            DeviceConfig::SerialLine($d) => $e,
            DeviceConfig::Opcua($d) => $e,
            DeviceConfig::Mqtt($d) => $e,
        }
    };
}

impl DeviceConfig {
    pub fn name(&self) -> &str {
        each_kind!(self, d => &d.name)
    }

    /// The device type; selects plugins, alarms and control rules.
    pub fn device_type(&self) -> &str {
        each_kind!(self, d => &d.device_type)
    }

    pub fn endpoint(&self) -> &str {
        each_kind!(self, d => &d.endpoint)
    }

    pub fn tags(&self) -> &[TagConfig] {
        each_kind!(self, d => &d.tags)
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            DeviceConfig::ModbusTcp(_) => Protocol::ModbusTcp,
            DeviceConfig::ModbusRtu(_) => Protocol::ModbusRtu,
            DeviceConfig::SerialLine(_) => Protocol::SerialLine,
            DeviceConfig::Opcua(_) => Protocol::Opcua,
            DeviceConfig::Mqtt(_) => Protocol::Mqtt,
        }
    }

    /// The Modbus settings of a Modbus TCP or RTU device.
    pub fn modbus(&self) -> Option<&ModbusDeviceConfig> {
        match self {
            DeviceConfig::ModbusTcp(d) | DeviceConfig::ModbusRtu(d) => Some(d),
            _ => None,
        }
    }

    /// The serial port settings of a device on a serial port (9600 8N1 unless set).
    pub fn serial(&self) -> Option<SerialConfig> {
        match self {
            DeviceConfig::ModbusRtu(d) => Some(d.serial.unwrap_or_default()),
            DeviceConfig::SerialLine(d) => Some(d.serial.unwrap_or_default()),
            _ => None,
        }
    }

    /// Name, type and unit of every tag, for metadata tables and the MES.
    pub fn tag_metadata(&self) -> Vec<TagMetadata> {
        self.tags()
            .iter()
            .map(|t| TagMetadata {
                name: t.name.clone(),
                data_type: t.data_type.clone(),
                address: t.address.clone(),
                unit: t.unit.clone(),
                writable: t.writable,
                description: t.description.clone(),
            })
            .collect()
    }

    /// Checks everything about the device but its name, which the line checks against the
    /// other devices' names.
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.device_type().is_empty() {
            problems.push(format!("{at}.type"), "must not be empty");
        }
        match self {
            DeviceConfig::ModbusTcp(d) => d.validate(Protocol::ModbusTcp, at, problems),
            DeviceConfig::ModbusRtu(d) => d.validate(Protocol::ModbusRtu, at, problems),
            DeviceConfig::SerialLine(d) => d.validate(at, problems),
            DeviceConfig::Opcua(d) => d.validate(at, problems),
            DeviceConfig::Mqtt(d) => d.validate(at, problems),
        }
    }

    /// For a device document that does not parse: where inside it (`tags[2].scale`) and
    /// what is wrong there. `None` when the fault is in `protocol` itself, which serde
    /// already reports with its path.
    pub(crate) fn parse_problem(mut device: serde_yaml::Value) -> Option<ReadProblem> {
        let map = device.as_mapping_mut()?;
        let protocol: Protocol = serde_yaml::from_value(map.remove("protocol")?).ok()?;
        for (section, owners) in SECTIONS {
            if map.contains_key(section) && !owners.contains(&protocol) {
                return Some(ReadProblem {
                    path: vec![Segment::Key(section.into())],
                    message: section_owners(owners),
                    repair: Repair::RemoveField,
                });
            }
        }
        if protocol == Protocol::Mqtt && !map.contains_key("mqtt") {
            return Some(ReadProblem {
                path: vec![Segment::Key("mqtt".into())],
                message: "an mqtt device needs an mqtt section with at least its `format`".into(),
                repair: Repair::SetAside,
            });
        }
        match protocol {
            Protocol::ModbusTcp | Protocol::ModbusRtu => {
                ReadProblem::first::<ModbusDeviceConfig>(device)
            }
            Protocol::SerialLine => ReadProblem::first::<SerialLineDeviceConfig>(device),
            Protocol::Opcua => ReadProblem::first::<OpcuaDeviceConfig>(device),
            Protocol::Mqtt => ReadProblem::first::<MqttDeviceConfig>(device),
        }
    }
}

/// The sections that belong to some protocols only, with those protocols.
const SECTIONS: [(&str, &[Protocol]); 4] = [
    ("serial", &[Protocol::ModbusRtu, Protocol::SerialLine]),
    ("serial_line", &[Protocol::SerialLine]),
    ("opcua", &[Protocol::Opcua]),
    ("mqtt", &[Protocol::Mqtt]),
];

fn section_owners(owners: &[Protocol]) -> String {
    let names: Vec<&str> = owners.iter().map(|p| p.as_str()).collect();
    format!("applies to {} only", names.join(" and "))
}

/// The protocol a device speaks; selects the adapter's driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// A Modbus TCP server (a PLC, or a gateway in front of RTU slaves).
    ModbusTcp,
    /// A Modbus RTU slave on a serial line; devices on the same port share the bus.
    ModbusRtu,
    /// A device that speaks lines of text on a serial port (Arduino-style).
    SerialLine,
    /// An OPC UA server.
    Opcua,
    /// Values published to MQTT topics by someone else (a collector, a Sparkplug B node).
    Mqtt,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::ModbusTcp => "modbus-tcp",
            Protocol::ModbusRtu => "modbus-rtu",
            Protocol::SerialLine => "serial-line",
            Protocol::Opcua => "opcua",
            Protocol::Mqtt => "mqtt",
        }
    }

    /// Whether tags are Modbus registers and bits (typed by register layout) rather than
    /// values the device sends typed or as text.
    pub fn is_modbus(self) -> bool {
        matches!(self, Protocol::ModbusTcp | Protocol::ModbusRtu)
    }
}

/// What the rest of the pipeline knows of a tag, whatever its protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct TagMetadata {
    pub name: String,
    pub data_type: String,
    pub address: String,
    pub unit: Option<String>,
    pub writable: bool,
    pub description: Option<String>,
}

/// Checks a device's poll interval and request time limit.
fn validate_timing(poll_interval: Duration, timeout: Duration, at: &str, problems: &mut Problems) {
    if poll_interval < Duration::from_millis(10) {
        problems.push(format!("{at}.poll_interval"), "must be at least 10ms");
    }
    if timeout.is_zero() {
        problems.push(format!("{at}.timeout"), "must be more than 0");
    }
}

/// Checks that a device has tags with distinct valid names, and resolves each for its
/// protocol, reporting what does not fit.
fn validate_tags<T>(
    tags: &[TagConfig],
    at: &str,
    problems: &mut Problems,
    resolve: impl Fn(&TagConfig) -> Result<T, Vec<(&'static str, String)>>,
) {
    if tags.is_empty() {
        problems.push(format!("{at}.tags"), "a device needs at least one tag");
    }
    let mut names = HashSet::new();
    for (j, tag) in tags.iter().enumerate() {
        let tat = format!("{at}.tags[{j}]");
        if let Some(p) = name_problem(&tag.name) {
            problems.push(format!("{tat}.name"), format!("name {p}"));
        } else if !names.insert(tag.name.as_str()) {
            problems.push(
                format!("{tat}.name"),
                format!("tag {:?} is defined twice", tag.name),
            );
        }
        if let Err(found) = resolve(tag) {
            for (field, message) in found {
                problems.push(format!("{tat}.{field}"), message);
            }
        }
    }
}

pub(super) fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_stale_after() -> u32 {
    3
}
