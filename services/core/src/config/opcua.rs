//! Settings of an OPC UA server (`protocol: opcua`). A tag's `address` is a NodeId such as
//! `ns=2;s=Line1.Temperature`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DeviceConfig;

/// How to connect to an OPC UA server and what to ask of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcuaSettings {}

/// Checks what only an OPC UA device needs.
pub(super) fn validate(d: &DeviceConfig, at: &str, err: &mut impl FnMut(String, String)) {
    if !d.endpoint.starts_with("opc.tcp://") {
        err(
            format!("{at}.endpoint"),
            format!("{:?} is not an opc.tcp:// endpoint URL", d.endpoint),
        );
    }
}
