//! The line document as a whole, and parsing it from YAML.

use std::{collections::BTreeMap, path::PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    AdapterSettings, ConfigErrors, DeviceConfig, MqttConfig, ProcessorSettings, StorageSettings,
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
    /// Parses and validates a YAML document, returning every problem found: fields that do
    /// not parse and checks that fail, each with its path and line.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        super::diagnose::read(text).map_err(ConfigErrors)
    }

    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name() == name)
    }
}
