//! Modbus devices: a TCP server (`modbus-tcp`) or an RTU slave on a serial line
//! (`modbus-rtu`). Both have the same settings but for the transport.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Protocol, SerialConfig, serial::validate_port_path, validate_tags, validate_timing};
use crate::config::{Problems, TagConfig};

/// A Modbus device; `protocol` says whether it is reached over TCP or over a serial line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusDeviceConfig {
    /// Device name, `[a-z0-9_-]`, unique within the line.
    pub name: String,
    /// Device type; selects plugins, alarms and control rules.
    #[serde(rename = "type")]
    pub device_type: String,
    /// `host:port` of the server (modbus-tcp), or the serial port, such as `/dev/ttyUSB0`
    /// (modbus-rtu). Devices with the same endpoint share one connection or bus.
    pub endpoint: String,
    /// Serial line settings (modbus-rtu only); 9600 8N1 when absent. Every device on a port
    /// must use the same settings.
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    /// Modbus unit identifier (slave id); gateways route by it.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// How often to poll, e.g. `500ms`.
    #[serde(default = "super::default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Time limit for connecting and for each request.
    #[serde(default = "super::default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Longest pause between reconnect attempts (the backoff doubles up to this).
    #[serde(default = "super::default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Unused registers (or bits) one read may span to join two tags: fewer round trips, but
    /// some devices refuse reads of unmapped addresses. 0 joins only adjacent tags.
    #[serde(default)]
    pub request_gap: u16,
    /// Most registers one read may ask for (the protocol allows 125; some devices less).
    #[serde(default = "default_max_registers")]
    pub max_registers: u16,
    /// Most coils or discrete inputs one read may ask for (the protocol allows 2000).
    #[serde(default = "default_max_bits")]
    pub max_bits: u16,
    /// Write with "multiple" functions only (15 for coils, 16 for registers), for devices that
    /// do not implement functions 5 and 6.
    #[serde(default)]
    pub write_multiple: bool,
    /// Poll intervals without a fresh reading after which a tag is reported Bad (stale);
    /// 0 never reports staleness.
    #[serde(default = "super::default_stale_after")]
    pub stale_after: u32,
    /// The tags to read.
    pub tags: Vec<TagConfig>,
}

fn default_unit_id() -> u8 {
    1
}
fn default_max_registers() -> u16 {
    125
}
fn default_max_bits() -> u16 {
    2000
}

impl ModbusDeviceConfig {
    /// Checks the device as a `transport` (modbus-tcp or modbus-rtu) device.
    pub fn validate(&self, transport: Protocol, at: &str, problems: &mut Problems) {
        match transport {
            Protocol::ModbusRtu => {
                validate_port_path(&self.endpoint, at, problems);
                if !(1..=247).contains(&self.unit_id) {
                    problems.push(
                        format!("{at}.unit_id"),
                        format!("{} is not an RTU slave address (1 to 247)", self.unit_id),
                    );
                }
                self.serial.unwrap_or_default().validate(at, problems);
            }
            _ => {
                if !is_host_port(&self.endpoint) {
                    problems.push(
                        format!("{at}.endpoint"),
                        format!("{:?} is not host:port", self.endpoint),
                    );
                }
                if self.serial.is_some() {
                    problems.push(
                        format!("{at}.serial"),
                        "applies to modbus-rtu and serial-line only",
                    );
                }
            }
        }
        validate_timing(self.poll_interval, self.timeout, at, problems);
        if !(1..=125).contains(&self.max_registers) {
            problems.push(
                format!("{at}.max_registers"),
                format!("{} is outside 1..=125", self.max_registers),
            );
        }
        if !(1..=2000).contains(&self.max_bits) {
            problems.push(
                format!("{at}.max_bits"),
                format!("{} is outside 1..=2000", self.max_bits),
            );
        }
        validate_tags(&self.tags, at, problems, TagConfig::resolve);
    }
}

/// Whether `endpoint` is `host:port` with a host and a port number.
pub(super) fn is_host_port(endpoint: &str) -> bool {
    endpoint
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}
