//! Serial port settings, shared by Modbus RTU and serial-line devices.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// Settings of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Bits per second, e.g. 9600, 19200, 115200.
    #[serde(default = "default_baud_rate")]
    pub baud_rate: u32,
    /// none, even or odd.
    #[serde(default)]
    pub parity: Parity,
    /// 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
}

impl Default for SerialConfig {
    fn default() -> Self {
        Self {
            baud_rate: default_baud_rate(),
            parity: Parity::None,
            data_bits: default_data_bits(),
            stop_bits: default_stop_bits(),
        }
    }
}

fn default_baud_rate() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

impl SerialConfig {
    /// Checks the settings of the port of the device at `at`.
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if !(300..=4_000_000).contains(&self.baud_rate) {
            problems.push(
                format!("{at}.serial.baud_rate"),
                format!("{} is not a usable baud rate", self.baud_rate),
            );
        }
        if !matches!(self.data_bits, 7 | 8) {
            problems.push(format!("{at}.serial.data_bits"), "must be 7 or 8");
        }
        if !matches!(self.stop_bits, 1 | 2) {
            problems.push(format!("{at}.serial.stop_bits"), "must be 1 or 2");
        }
    }
}

/// Checks that `endpoint` names a serial port.
pub(super) fn validate_port_path(endpoint: &str, at: &str, problems: &mut Problems) {
    if endpoint.is_empty() || endpoint.contains(char::is_whitespace) {
        problems.push(
            format!("{at}.endpoint"),
            format!("{endpoint:?} is not a serial port path"),
        );
    }
}
