//! The line document as a whole, and parsing it from YAML.

use std::{collections::BTreeMap, path::PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    AdapterSettings, ConfigError, ConfigErrors, DeviceConfig, MqttConfig, ProcessorSettings,
    StorageSettings,
};

/// A production line: its devices and tags, and how its services reach the bus and databases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    /// Line name, `[a-z0-9_-]`; the first part of every tag path and MQTT topic.
    pub line: String,
    /// The MQTT broker that carries telemetry between adapter and processor.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Settings of the adapter service that polls this line's devices.
    #[serde(default)]
    pub adapter: AdapterSettings,
    /// Settings of the processor service that consumes this line's samples.
    #[serde(default)]
    pub processor: ProcessorSettings,
    /// Settings of the storage service and its databases.
    #[serde(default)]
    pub storage: StorageSettings,
    /// The devices of the line.
    pub devices: Vec<DeviceConfig>,
    /// What the processor does for each device type: control rules (and, per type, derived
    /// values and alarms). Keyed by the devices' `type`.
    #[serde(default)]
    pub device_types: BTreeMap<String, DeviceTypeConfig>,
    /// The folder of the file the document was read from; relative paths in it (plugin
    /// scripts) start there. Not part of the document.
    #[serde(skip)]
    #[schemars(skip)]
    pub base_dir: Option<PathBuf>,
}

/// Processing of the devices of one type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceTypeConfig {
    /// Values derived from each batch: Rhai scripts and built-ins (counter, runtime, OEE).
    /// Their outputs are tags of the device like the ones it reads.
    #[serde(default)]
    pub plugins: Vec<crate::plugin::PluginConfig>,
    /// ISA-18.2 alarms on the tags of every device of this type.
    #[serde(default)]
    pub alarms: Vec<crate::alarm::AlarmConfig>,
    /// Control rules: hysteresis and interlocks.
    #[serde(default)]
    pub rules: Vec<crate::rules::RuleConfig>,
}

impl LineConfig {
    /// Parses and validates a YAML document, returning every problem found.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let config: LineConfig =
            serde_yaml::from_str(text).map_err(|e| ConfigErrors(parse_problems(text, &e)))?;
        config.validate().map_err(ConfigErrors)?;
        Ok(config)
    }

    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name() == name)
    }
}

/// Where a document that does not parse goes wrong. A device is read whole before its
/// `protocol` picks its type, so serde_yaml's own path stops at `devices`; each device is
/// then read again on its own to find the field at fault.
fn parse_problems(text: &str, error: &serde_yaml::Error) -> Vec<ConfigError> {
    let devices = serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|doc| doc.get("devices").and_then(|d| d.as_sequence()).cloned())
        .unwrap_or_default();
    let problems: Vec<ConfigError> = devices
        .into_iter()
        .enumerate()
        .filter_map(|(i, device)| {
            let (path, message) = DeviceConfig::parse_problem(device)?;
            Some(ConfigError {
                path: format!("devices[{i}]{path}"),
                message,
            })
        })
        .collect();
    if !problems.is_empty() {
        return problems;
    }
    let message = error.to_string();
    // serde_yaml prefixes the path ("storage.batch: unknown field ...").
    let (path, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
        _ => (String::new(), message),
    };
    vec![ConfigError { path, message }]
}
