//! Settings of a device whose values arrive on MQTT topics published by someone else
//! (`protocol: mqtt`): a collector publishing JSON, or a Sparkplug B edge node. The device's
//! `endpoint` is the broker (`host:port`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DeviceConfig;

/// Which topics to subscribe to and how to read their payloads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttIngestSettings {}

/// Checks what only an MQTT-ingest device needs.
pub(super) fn validate(d: &DeviceConfig, at: &str, err: &mut impl FnMut(String, String)) {
    if !d
        .endpoint
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    {
        err(
            format!("{at}.endpoint"),
            format!("{:?} is not the broker's host:port", d.endpoint),
        );
    }
}
