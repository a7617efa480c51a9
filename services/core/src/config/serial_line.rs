//! Settings of a serial-line device (`protocol: serial-line`): an Arduino-style device that
//! speaks lines of text on a serial port. A tag's `address` names the field of a parsed line
//! (a key, a JSON pointer or a regex group).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DeviceConfig;

/// How to talk to a serial-line device and how to read its lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialLineSettings {}

/// Checks what only a serial-line device needs.
pub(super) fn validate(d: &DeviceConfig, at: &str, err: &mut impl FnMut(String, String)) {
    if d.endpoint.is_empty() || d.endpoint.contains(char::is_whitespace) {
        err(
            format!("{at}.endpoint"),
            format!("{:?} is not a serial port path", d.endpoint),
        );
    }
}
