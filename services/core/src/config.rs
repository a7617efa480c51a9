//! The line configuration document (one YAML document per production line).
//!
//! The same schema is read from a file, a ConfigMap or the `ProductionLine` resource. Parsing
//! is strict (unknown fields are errors) and [`LineConfig::validate`] reports every semantic
//! problem at once, each with its path, so an engineer fixes a file in one pass.

use std::{
    collections::BTreeMap,
    collections::HashSet,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    codec::{Address, ByteOrder, DataType, TagCodec, WordOrder},
    deadband::DeadbandRule,
    names::name_problem,
    value_type::ValueType,
};

pub mod mqtt_ingest;
pub mod opcua;
pub mod serial_line;

pub use mqtt_ingest::MqttIngestSettings;
pub use opcua::OpcuaSettings;
pub use serial_line::SerialLineSettings;

/// One problem in a configuration document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where, e.g. `devices[0].tags[2].address`; empty for the document as a whole.
    pub path: String,
    pub message: String,
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

/// How to reach the MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `host:port` of the broker.
    #[serde(default = "default_mqtt_address")]
    pub address: String,
    /// User name, when the broker requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// The password comes from a secret, never from this document.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Keep-alive interval, e.g. `30s`.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keep_alive: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            address: default_mqtt_address(),
            username: None,
            password: None,
            keep_alive: default_keep_alive(),
        }
    }
}

fn default_mqtt_address() -> String {
    "127.0.0.1:1883".into()
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// Where a secret comes from: `{ env: VAR }` or `{ file: /path }` (e.g. a mounted Secret).
/// Exactly one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of an environment variable that holds the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Path of a file whose contents (trailing newline removed) are the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl SecretRef {
    pub fn env(var: impl Into<String>) -> Self {
        Self {
            env: Some(var.into()),
            file: None,
        }
    }

    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            env: None,
            file: Some(path.into()),
        }
    }

    /// Why the reference is unusable, if it is.
    pub fn problem(&self) -> Option<&'static str> {
        match (&self.env, &self.file) {
            (Some(_), Some(_)) => Some("set either env or file, not both"),
            (None, None) => Some("set env (a variable name) or file (a path)"),
            _ => None,
        }
    }

    /// Reads the secret. The error names where it looked, never the secret.
    pub fn resolve(&self) -> Result<String, String> {
        if let Some(problem) = self.problem() {
            return Err(problem.into());
        }
        if let Some(var) = &self.env {
            return std::env::var(var)
                .map_err(|_| format!("environment variable {var} is not set or not UTF-8"));
        }
        let path = self.file.as_deref().unwrap_or(Path::new(""));
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))
    }
}

/// Adapter service settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterSettings {
    /// Identifies this adapter instance in every batch it publishes.
    #[serde(default = "default_adapter_id")]
    pub id: String,
    /// Address of the gRPC AdapterService.
    #[serde(default = "default_adapter_grpc")]
    pub grpc_listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[serde(default = "default_adapter_http")]
    pub http_listen: SocketAddr,
    /// Folder for state that must survive restarts (sequence numbers).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for AdapterSettings {
    fn default() -> Self {
        Self {
            id: default_adapter_id(),
            grpc_listen: default_adapter_grpc(),
            http_listen: default_adapter_http(),
            state_dir: default_state_dir(),
        }
    }
}

fn default_adapter_id() -> String {
    "adapter-0".into()
}
fn default_adapter_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_adapter_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9181))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("fieldline-state")
}

/// Processor service settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSettings {
    /// Address of the gRPC PlantService (the MES API).
    #[serde(default = "default_processor_grpc")]
    pub grpc_listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[serde(default = "default_processor_http")]
    pub http_listen: SocketAddr,
    /// URL of the storage service's gRPC endpoint.
    #[serde(default = "default_storage_url")]
    pub storage_url: String,
    /// URL of the adapter's gRPC endpoint, where control writes go.
    #[serde(default = "default_adapter_url")]
    pub adapter_url: String,
    /// MQTT client id; a fixed id keeps the broker session (and unacked messages) across
    /// restarts. Defaults to `fieldline-processor-{line}`.
    #[serde(default)]
    pub client_id: Option<String>,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            grpc_listen: default_processor_grpc(),
            http_listen: default_processor_http(),
            storage_url: default_storage_url(),
            adapter_url: default_adapter_url(),
            client_id: None,
        }
    }
}

fn default_processor_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50053))
}
fn default_processor_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9183))
}
fn default_adapter_url() -> String {
    "http://127.0.0.1:50051".into()
}
fn default_storage_url() -> String {
    "http://127.0.0.1:50052".into()
}

/// Storage service settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Address of the gRPC StorageService.
    #[serde(default = "default_storage_grpc")]
    pub grpc_listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[serde(default = "default_storage_http")]
    pub http_listen: SocketAddr,
    /// InfluxDB for sample history.
    #[serde(default)]
    pub influx: Option<InfluxConfig>,
    /// MySQL/MariaDB or SQLite for devices, tags, latest values and events.
    #[serde(default)]
    pub sql: Option<SqlConfig>,
    /// A write-ahead buffer on disk that takes batches while a backend is down. Without one,
    /// storage holds each batch (unacknowledged) until the backends take it.
    #[serde(default)]
    pub buffer: Option<BufferConfig>,
    /// How incoming batches are grouped into backend writes.
    #[serde(default)]
    pub batch: BatchConfig,
}

/// The on-disk write-ahead buffer of the storage service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Folder of the buffer's files; keep it on persistent storage.
    pub dir: PathBuf,
    /// Most bytes the buffer may hold, e.g. `1GiB`, `512MiB`, or a number of bytes.
    #[serde(default = "default_buffer_size")]
    pub max_size: ByteSize,
    /// `always`: fsync before acknowledging (survives power loss); `os`: leave flushing to the
    /// operating system (survives a crash of the service, not of the machine).
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// `backpressure`: stop acknowledging until there is room (nothing is lost);
    /// `drop_oldest`: make room by dropping the oldest batches, counted in metrics.
    #[serde(default)]
    pub when_full: WhenFull,
}

fn default_buffer_size() -> ByteSize {
    ByteSize(1 << 30)
}

/// When buffered batches reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    #[default]
    Always,
    Os,
}

/// What a full buffer does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    #[default]
    Backpressure,
    DropOldest,
}

/// A size in bytes, written as a number or with a unit: `64KiB`, `512MiB`, `1GiB`, `100MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(with = "String")]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{s:?} is not a size such as 512MiB"))?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit {other:?}; use KiB, MiB, GiB, KB, MB or GB"
                ));
            }
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            grpc_listen: default_storage_grpc(),
            http_listen: default_storage_http(),
            influx: None,
            sql: None,
            buffer: None,
            batch: BatchConfig::default(),
        }
    }
}

fn default_storage_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50052))
}
fn default_storage_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9182))
}

/// An InfluxDB server: InfluxDB 1.x through the v1 API (`database`, optional
/// `retention_policy`, `username`/`password`), or InfluxDB 2.x and compatible servers through
/// the v2 API (`org`, `bucket`, `token`). Give `database` or `bucket`, not both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// v1: the database to write to.
    #[serde(default)]
    pub database: Option<String>,
    /// v1: the retention policy; the database's default when absent.
    #[serde(default)]
    pub retention_policy: Option<String>,
    /// v1: user name, when authentication is on.
    #[serde(default)]
    pub username: Option<String>,
    /// v1: password, from a secret.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// v2: the organization that owns the bucket.
    #[serde(default)]
    pub org: Option<String>,
    /// v2: the bucket to write to.
    #[serde(default)]
    pub bucket: Option<String>,
    /// v2: an API token with write access to the bucket, from a secret.
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// v1: create the database at startup when it does not exist.
    #[serde(default = "default_true")]
    pub create_database: bool,
    /// Time limit of one write request.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

/// Which InfluxDB write API a sink speaks, and where it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfluxTarget<'a> {
    V1 {
        database: &'a str,
        retention_policy: Option<&'a str>,
    },
    V2 {
        org: &'a str,
        bucket: &'a str,
    },
}

impl InfluxConfig {
    /// The API and destination, or why the settings name neither or both.
    pub fn target(&self) -> Result<InfluxTarget<'_>, String> {
        match (&self.database, &self.bucket) {
            (Some(database), None) => Ok(InfluxTarget::V1 {
                database,
                retention_policy: self.retention_policy.as_deref(),
            }),
            (None, Some(bucket)) => match &self.org {
                Some(org) => Ok(InfluxTarget::V2 { org, bucket }),
                None => Err("bucket (v2 API) needs org as well".into()),
            },
            (Some(_), Some(_)) => Err("give database (v1 API) or bucket (v2 API), not both".into()),
            (None, None) => Err("give database (v1 API) or org and bucket (v2 API)".into()),
        }
    }
}

/// How storage groups incoming batches into backend writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most samples in one backend write.
    #[serde(default = "default_batch_points")]
    pub max_points: usize,
    /// Longest a received batch waits for others to share its write.
    #[serde(default = "default_batch_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_points: default_batch_points(),
            max_delay: default_batch_delay(),
        }
    }
}

fn default_batch_points() -> usize {
    20_000
}
fn default_batch_delay() -> Duration {
    Duration::from_millis(200)
}

/// A SQL database reached through sqlx: `mysql://user@host:3306/db` or `sqlite://path.db`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Connection URL without the password.
    pub url: String,
    /// Password, from a secret (MySQL only).
    #[serde(default)]
    pub password: Option<SecretRef>,
}

fn default_true() -> bool {
    true
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
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

/// A device of the line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device name, `[a-z0-9_-]`, unique within the line.
    pub name: String,
    /// Device type; selects plugins, alarms and control rules.
    #[serde(rename = "type")]
    pub device_type: String,
    /// The protocol the device speaks.
    pub protocol: Protocol,
    /// Where the device is: `host:port` for modbus-tcp, a serial port such as `/dev/ttyUSB0`
    /// for modbus-rtu and serial-line, an `opc.tcp://` URL for opcua, the broker's
    /// `host:port` for mqtt. Modbus devices with the same endpoint share one connection or
    /// bus.
    pub endpoint: String,
    /// Serial line settings (modbus-rtu, serial-line); 9600 8N1 when absent. Every device on
    /// a port must use the same settings.
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    /// Serial-line protocol: request, parser and write templates.
    #[serde(default)]
    pub serial_line: Option<SerialLineSettings>,
    /// OPC UA: security, identity, subscriptions.
    #[serde(default)]
    pub opcua: Option<OpcuaSettings>,
    /// MQTT ingest: topics and payload format.
    #[serde(default)]
    pub mqtt: Option<MqttIngestSettings>,
    /// Modbus unit identifier (slave id); gateways route by it.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// How often to poll, e.g. `500ms`.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Time limit for connecting and for each request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Longest pause between reconnect attempts (the backoff doubles up to this).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
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
    #[serde(default = "default_stale_after")]
    pub stale_after: u32,
    /// The tags to read.
    pub tags: Vec<TagConfig>,
}

fn default_max_registers() -> u16 {
    125
}
fn default_max_bits() -> u16 {
    2000
}
fn default_stale_after() -> u32 {
    3
}

impl DeviceConfig {
    /// Name, type and unit of every tag, for metadata tables and the MES.
    pub fn tag_metadata(&self) -> Vec<TagMetadata> {
        self.tags
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

fn default_unit_id() -> u8 {
    1
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

/// A tag: where it lives on the device, its type and how to scale it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// Tag name, `[a-z0-9_-]`, unique within the device.
    pub name: String,
    /// Where the value lives. Modbus: `coil`, `discrete`, `input` or `holding`, then the
    /// 0-based offset; a bit of a register as `holding:5.3`.
    pub address: String,
    /// bool, u16, i16, u32, i32, u64, i64, f32, f64 or string(N registers).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Register order of 32/64-bit values.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Byte order inside each register.
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// value = raw * scale + offset.
    #[serde(default)]
    pub scale: Option<f64>,
    /// value = raw * scale + offset.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Engineering unit, e.g. `degC`.
    #[serde(default)]
    pub unit: Option<String>,
    /// Publish only when the value moved by more than this (report by exception).
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Publish only when the value moved by more than this percentage of the last published
    /// value.
    #[serde(default)]
    pub deadband_percent: Option<f64>,
    /// With a deadband, publish an unchanged value at least this often, e.g. `60s`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub heartbeat: Option<Duration>,
    /// Poll this tag at its own interval instead of the device's; tags sharing an interval
    /// form a poll group.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub poll_interval: Option<Duration>,
    /// Whether commands may write this tag.
    #[serde(default)]
    pub writable: bool,
    /// Lowest value a command may write.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value a command may write.
    #[serde(default)]
    pub max: Option<f64>,
    /// Largest change from the current value one command may make (a rate-of-change
    /// limit together with `min_write_interval`).
    #[serde(default)]
    pub max_step: Option<f64>,
    /// Least time between two writes of this tag, e.g. `2s`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub min_write_interval: Option<Duration>,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
}

/// A Modbus tag after validation: parsed address and codec.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModbusTag {
    pub name: String,
    pub address: Address,
    pub codec: TagCodec,
    pub deadband: DeadbandRule,
    /// The tag's own poll interval, when it has one.
    pub poll_interval: Option<Duration>,
    pub writable: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl TagConfig {
    /// Checks the options every protocol shares: scale and offset (numbers only, finite,
    /// scale not 0), deadbands, heartbeat, and min not above max.
    fn check_value_options(
        &self,
        numeric: bool,
        type_name: &dyn fmt::Display,
        problems: &mut Vec<(&'static str, String)>,
    ) {
        for (field, v) in [("scale", self.scale), ("offset", self.offset)] {
            if let Some(v) = v {
                if !numeric {
                    problems.push((field, format!("applies to numbers, not to {type_name}")));
                } else if !v.is_finite() || (field == "scale" && v == 0.0) {
                    problems.push((field, format!("{v} is not a usable {field}")));
                }
            }
        }
        for (field, band) in [
            ("deadband", self.deadband),
            ("deadband_percent", self.deadband_percent),
        ] {
            if let Some(d) = band
                && !(d.is_finite() && d >= 0.0)
            {
                problems.push((field, format!("{d} must be a number of at least 0")));
            }
        }
        if self.heartbeat.is_some_and(|h| h.is_zero()) {
            problems.push(("heartbeat", "must be more than 0".into()));
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            problems.push(("min", format!("min {min} is above max {max}")));
        }
    }

    /// The tag's report-by-exception settings.
    fn deadband_rule(&self) -> DeadbandRule {
        DeadbandRule {
            absolute: self.deadband,
            percent: self.deadband_percent,
            heartbeat_ns: self
                .heartbeat
                .map(|h| i64::try_from(h.as_nanos()).unwrap_or(i64::MAX)),
        }
    }

    /// Parses the tag as a Modbus tag, checking that address, type and options fit together.
    pub fn resolve(&self) -> Result<ResolvedModbusTag, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let address = self
            .address
            .parse::<Address>()
            .map_err(|e| problems.push(("address", e)));
        let data_type = self
            .data_type
            .parse::<DataType>()
            .map_err(|e| problems.push(("type", e)));
        let (Ok(address), Ok(data_type)) = (address, data_type) else {
            return Err(problems);
        };
        if (address.table.is_bits() || address.bit.is_some()) && data_type != DataType::Bool {
            problems.push((
                "type",
                format!(
                    "a {} holds one bit, so its type must be bool",
                    describe(&address)
                ),
            ));
        }
        if address.bit.is_none()
            && !address.table.is_bits()
            && u32::from(address.offset) + u32::from(data_type.registers()) > 65536
        {
            problems.push((
                "address",
                format!("{data_type} at {address} runs past register 65535"),
            ));
        }
        self.check_value_options(data_type.is_numeric(), &data_type, &mut problems);
        if self
            .poll_interval
            .is_some_and(|p| p < Duration::from_millis(10))
        {
            problems.push(("poll_interval", "must be at least 10ms".into()));
        }
        if self.writable && !address.table.is_writable() {
            problems.push((
                "writable",
                format!("{}s are read-only in Modbus", address.table),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ResolvedModbusTag {
            name: self.name.clone(),
            address,
            codec: TagCodec {
                data_type,
                word_order: self.word_order,
                byte_order: self.byte_order,
                bit: address.bit,
                scale: self.scale,
                offset: self.offset,
            },
            deadband: self.deadband_rule(),
            poll_interval: self.poll_interval,
            writable: self.writable,
            min: self.min,
            max: self.max,
        })
    }
}

/// A tag of a device that sends values (serial-line, opcua, mqtt) after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedValueTag {
    pub name: String,
    /// Protocol-specific: a key, JSON pointer, regex group, NodeId or metric name.
    pub address: String,
    pub value_type: ValueType,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub deadband: DeadbandRule,
    pub writable: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl ResolvedValueTag {
    /// Converts what the device sent to the tag's type, then applies scale and offset.
    pub fn convert(&self, value: crate::sample::Value) -> Result<crate::sample::Value, String> {
        let value = self.value_type.convert(value)?;
        if self.scale.is_none() && self.offset.is_none() {
            return Ok(value);
        }
        let raw = value
            .as_f64()
            .ok_or_else(|| format!("{} cannot be scaled", value.type_name()))?;
        let scaled = raw * self.scale.unwrap_or(1.0) + self.offset.unwrap_or(0.0);
        self.value_type
            .convert(crate::sample::Value::F64(scaled))
            .or_else(|_| {
                // A scaled integer is usually no longer whole: it becomes a float.
                ValueType::Float(64).convert(crate::sample::Value::F64(scaled))
            })
    }

    /// The device's raw value for an engineering value a command asks for (scale and offset
    /// undone), in the tag's type.
    pub fn unconvert(&self, value: crate::sample::Value) -> Result<crate::sample::Value, String> {
        if self.scale.is_none() && self.offset.is_none() {
            return self.value_type.convert(value);
        }
        let x = value
            .as_f64()
            .ok_or_else(|| format!("{} cannot be scaled", value.type_name()))?;
        let raw = (x - self.offset.unwrap_or(0.0)) / self.scale.unwrap_or(1.0);
        let raw = if matches!(self.value_type, ValueType::Float(_)) {
            raw
        } else {
            raw.round()
        };
        self.value_type.convert(crate::sample::Value::F64(raw))
    }
}

impl TagConfig {
    /// Parses the tag as a value tag (serial-line, opcua, mqtt): a non-empty address, a
    /// value type, and options that fit it.
    pub fn resolve_value(&self) -> Result<ResolvedValueTag, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if self.address.trim().is_empty() {
            problems.push(("address", "must not be empty".to_string()));
        }
        let value_type = match self.data_type.parse::<ValueType>() {
            Ok(t) => t,
            Err(e) => {
                problems.push(("type", e));
                return Err(problems);
            }
        };
        self.check_value_options(value_type.is_numeric(), &value_type, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ResolvedValueTag {
            name: self.name.clone(),
            address: self.address.clone(),
            value_type,
            scale: self.scale,
            offset: self.offset,
            deadband: self.deadband_rule(),
            writable: self.writable,
            min: self.min,
            max: self.max,
        })
    }
}

fn describe(address: &Address) -> String {
    match address.bit {
        Some(_) => "bit of a register".into(),
        None => format!("{}", address.table),
    }
}

impl LineConfig {
    /// Parses and validates a YAML document, returning every problem found.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let config: LineConfig = serde_yaml::from_str(text).map_err(|e| {
            let message = e.to_string();
            // serde_yaml prefixes the path ("devices[0].tags[1]: unknown field ...").
            let (path, message) = match message.split_once(": ") {
                Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
                _ => (String::new(), message),
            };
            ConfigErrors(vec![ConfigError { path, message }])
        })?;
        config.validate().map_err(ConfigErrors)?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        let mut config = Self::from_yaml(&text)?;
        config.base_dir = path.parent().map(Path::to_path_buf);
        Ok(config)
    }

    /// Checks everything parsing cannot: names, addresses, types, ranges, uniqueness.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
        if let Some(p) = name_problem(&self.line) {
            err("line".into(), format!("name {p}"));
        }
        if self.mqtt.address.parse::<SocketAddr>().is_err() && !self.mqtt.address.contains(':') {
            err(
                "mqtt.address".into(),
                format!("{:?} is not host:port", self.mqtt.address),
            );
        }
        if let Some(influx) = &self.storage.influx {
            if !(influx.url.starts_with("http://") || influx.url.starts_with("https://")) {
                err(
                    "storage.influx.url".into(),
                    format!("{:?} must start with http:// or https://", influx.url),
                );
            }
            if let Err(problem) = influx.target() {
                err("storage.influx".into(), problem);
            }
        }
        if self.storage.batch.max_points == 0 {
            err(
                "storage.batch.max_points".into(),
                "must be at least 1".into(),
            );
        }
        if let Some(sql) = &self.storage.sql
            && !(sql.url.starts_with("mysql://")
                || sql.url.starts_with("mariadb://")
                || sql.url.starts_with("sqlite:"))
        {
            err(
                "storage.sql.url".into(),
                format!(
                    "{:?} must start with mysql://, mariadb:// or sqlite:",
                    sql.url
                ),
            );
        }
        if let Some(buffer) = &self.storage.buffer
            && buffer.max_size.0 < 1 << 20
        {
            err(
                "storage.buffer.max_size".into(),
                format!(
                    "{} bytes is too small; give it at least 1MiB",
                    buffer.max_size.0
                ),
            );
        }
        let secrets = [
            ("mqtt.password", self.mqtt.password.as_ref()),
            (
                "storage.influx.password",
                self.storage
                    .influx
                    .as_ref()
                    .and_then(|i| i.password.as_ref()),
            ),
            (
                "storage.influx.token",
                self.storage.influx.as_ref().and_then(|i| i.token.as_ref()),
            ),
            (
                "storage.sql.password",
                self.storage.sql.as_ref().and_then(|s| s.password.as_ref()),
            ),
        ];
        for (path, secret) in secrets {
            if let Some(problem) = secret.and_then(SecretRef::problem) {
                err(path.into(), problem.into());
            }
        }
        if self.devices.is_empty() {
            err("devices".into(), "a line needs at least one device".into());
        }
        let mut device_names = HashSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            let at = format!("devices[{i}]");
            if let Some(p) = name_problem(&device.name) {
                err(format!("{at}.name"), format!("name {p}"));
            } else if !device_names.insert(device.name.as_str()) {
                err(
                    format!("{at}.name"),
                    format!("device {:?} is defined twice", device.name),
                );
            }
            if device.device_type.is_empty() {
                err(format!("{at}.type"), "must not be empty".into());
            }
            validate_protocol_sections(device, &at, &mut err);
            if device.protocol.is_modbus() {
                validate_modbus(device, &at, &mut err);
            } else {
                validate_value_device(device, &at, &mut err);
            }
        }
        serial_line::validate_ports(&self.devices, &mut err);
        // Devices on one endpoint share a link: one protocol, one serial setting, distinct
        // unit ids.
        for (i, d) in self.devices.iter().enumerate() {
            if !d.protocol.is_modbus() {
                continue;
            }
            if let Some((j, first)) = self
                .devices
                .iter()
                .enumerate()
                .take(i)
                .find(|(_, o)| o.endpoint == d.endpoint && o.protocol.is_modbus())
            {
                let at = format!("devices[{i}]");
                if first.protocol != d.protocol {
                    err(
                        format!("{at}.protocol"),
                        format!(
                            "{} shares endpoint {:?} with devices[{j}], which is {}",
                            d.protocol.as_str(),
                            d.endpoint,
                            first.protocol.as_str()
                        ),
                    );
                } else if first.serial.unwrap_or_default() != d.serial.unwrap_or_default() {
                    err(
                        format!("{at}.serial"),
                        format!(
                            "differs from devices[{j}] on the same port {:?}",
                            d.endpoint
                        ),
                    );
                }
                if let Some((k, _)) = self
                    .devices
                    .iter()
                    .enumerate()
                    .take(i)
                    .find(|(_, o)| o.endpoint == d.endpoint && o.unit_id == d.unit_id)
                {
                    err(
                        format!("{at}.unit_id"),
                        format!(
                            "unit {} on {:?} is already devices[{k}]",
                            d.unit_id, d.endpoint
                        ),
                    );
                }
            }
        }
        for (type_name, processing) in &self.device_types {
            let at = format!("device_types.{type_name}");
            let devices: Vec<&DeviceConfig> = self
                .devices
                .iter()
                .filter(|d| &d.device_type == type_name)
                .collect();
            if devices.is_empty() {
                err(at.clone(), format!("no device has type {type_name:?}"));
                continue;
            }
            // Tags every device of the type has, and whether each is writable everywhere.
            let tags: Vec<(&str, bool)> = devices[0]
                .tags
                .iter()
                .filter(|t| {
                    devices
                        .iter()
                        .all(|d| d.tags.iter().any(|o| o.name == t.name))
                })
                .map(|t| {
                    let writable = devices
                        .iter()
                        .all(|d| d.tags.iter().any(|o| o.name == t.name && o.writable));
                    (t.name.as_str(), writable)
                })
                .collect();
            for (path, message) in
                crate::plugin::validate_plugins(&processing.plugins, &format!("{at}.plugins"))
            {
                err(path, message);
            }
            let mut tags = tags;
            for (i, plugin) in processing.plugins.iter().enumerate() {
                for input in plugin.inputs() {
                    if !tags.iter().any(|(n, _)| *n == input) {
                        err(
                            format!("{at}.plugins[{i}]"),
                            format!(
                                "input {input:?} is not a tag of the devices of this type (or an earlier plugin's output)"
                            ),
                        );
                    }
                }
                for output in plugin.outputs() {
                    if tags.iter().any(|(n, _)| *n == output) {
                        err(
                            format!("{at}.plugins[{i}]"),
                            format!(
                                "output {output:?} is already a tag of the devices of this type"
                            ),
                        );
                    } else {
                        tags.push((output, false));
                    }
                }
            }
            let tag_names: Vec<&str> = tags.iter().map(|(n, _)| *n).collect();
            for (path, message) in crate::alarm::validate_alarms(
                &processing.alarms,
                &format!("{at}.alarms"),
                &tag_names,
            ) {
                err(path, message);
            }
            for (i, rule) in processing.rules.iter().enumerate() {
                for (path, message) in rule.validate(&format!("{at}.rules[{i}]"), &tags) {
                    err(path, message);
                }
                if let Some((j, _)) = processing
                    .rules
                    .iter()
                    .enumerate()
                    .take(i)
                    .find(|(_, o)| o.name() == rule.name())
                {
                    err(
                        format!("{at}.rules[{i}].name"),
                        format!("{:?} is already rules[{j}]", rule.name()),
                    );
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// Each protocol's own settings section belongs to that protocol only.
fn validate_protocol_sections(d: &DeviceConfig, at: &str, err: &mut impl FnMut(String, String)) {
    let sections = [
        (
            "serial",
            d.serial.is_some(),
            [Protocol::ModbusRtu, Protocol::SerialLine].as_slice(),
        ),
        (
            "serial_line",
            d.serial_line.is_some(),
            [Protocol::SerialLine].as_slice(),
        ),
        ("opcua", d.opcua.is_some(), [Protocol::Opcua].as_slice()),
        ("mqtt", d.mqtt.is_some(), [Protocol::Mqtt].as_slice()),
    ];
    for (field, present, protocols) in sections {
        if present && !protocols.contains(&d.protocol) {
            let names: Vec<&str> = protocols.iter().map(|p| p.as_str()).collect();
            err(
                format!("{at}.{field}"),
                format!("applies to {} only", names.join(" and ")),
            );
        }
    }
}

/// A device that sends values (serial-line, opcua, mqtt): common checks of its tags, then
/// its protocol's own.
fn validate_value_device(d: &DeviceConfig, at: &str, err: &mut impl FnMut(String, String)) {
    match d.protocol {
        Protocol::SerialLine => serial_line::validate(d, at, err),
        Protocol::Opcua => opcua::validate(d, at, err),
        Protocol::Mqtt => mqtt_ingest::validate(d, at, err),
        Protocol::ModbusTcp | Protocol::ModbusRtu => {}
    }
    if d.poll_interval < Duration::from_millis(10) {
        err(
            format!("{at}.poll_interval"),
            "must be at least 10ms".into(),
        );
    }
    if d.timeout.is_zero() {
        err(format!("{at}.timeout"), "must be more than 0".into());
    }
    if d.tags.is_empty() {
        err(
            format!("{at}.tags"),
            "a device needs at least one tag".into(),
        );
    }
    let mut tag_names = HashSet::new();
    for (j, tag) in d.tags.iter().enumerate() {
        let tat = format!("{at}.tags[{j}]");
        if let Some(p) = name_problem(&tag.name) {
            err(format!("{tat}.name"), format!("name {p}"));
        } else if !tag_names.insert(tag.name.as_str()) {
            err(
                format!("{tat}.name"),
                format!("tag {:?} is defined twice", tag.name),
            );
        }
        if let Err(problems) = tag.resolve_value() {
            for (field, message) in problems {
                err(format!("{tat}.{field}"), message);
            }
        }
    }
}

fn validate_modbus(d: &DeviceConfig, at: &str, err: &mut impl FnMut(String, String)) {
    match d.protocol {
        Protocol::ModbusTcp => {
            if !d
                .endpoint
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            {
                err(
                    format!("{at}.endpoint"),
                    format!("{:?} is not host:port", d.endpoint),
                );
            }
        }
        Protocol::ModbusRtu => {
            if d.endpoint.is_empty() || d.endpoint.contains(char::is_whitespace) {
                err(
                    format!("{at}.endpoint"),
                    format!("{:?} is not a serial port path", d.endpoint),
                );
            }
            if !(1..=247).contains(&d.unit_id) {
                err(
                    format!("{at}.unit_id"),
                    format!("{} is not an RTU slave address (1 to 247)", d.unit_id),
                );
            }
            let serial = d.serial.unwrap_or_default();
            if !(300..=4_000_000).contains(&serial.baud_rate) {
                err(
                    format!("{at}.serial.baud_rate"),
                    format!("{} is not a usable baud rate", serial.baud_rate),
                );
            }
            if !matches!(serial.data_bits, 7 | 8) {
                err(format!("{at}.serial.data_bits"), "must be 7 or 8".into());
            }
            if !matches!(serial.stop_bits, 1 | 2) {
                err(format!("{at}.serial.stop_bits"), "must be 1 or 2".into());
            }
        }
        Protocol::SerialLine | Protocol::Opcua | Protocol::Mqtt => {}
    }
    if d.poll_interval < Duration::from_millis(10) {
        err(
            format!("{at}.poll_interval"),
            "must be at least 10ms".into(),
        );
    }
    if d.timeout.is_zero() {
        err(format!("{at}.timeout"), "must be more than 0".into());
    }
    if d.tags.is_empty() {
        err(
            format!("{at}.tags"),
            "a device needs at least one tag".into(),
        );
    }
    if !(1..=125).contains(&d.max_registers) {
        err(
            format!("{at}.max_registers"),
            format!("{} is outside 1..=125", d.max_registers),
        );
    }
    if !(1..=2000).contains(&d.max_bits) {
        err(
            format!("{at}.max_bits"),
            format!("{} is outside 1..=2000", d.max_bits),
        );
    }
    let mut tag_names = HashSet::new();
    for (j, tag) in d.tags.iter().enumerate() {
        let tat = format!("{at}.tags[{j}]");
        if let Some(p) = name_problem(&tag.name) {
            err(format!("{tat}.name"), format!("name {p}"));
        } else if !tag_names.insert(tag.name.as_str()) {
            err(
                format!("{tat}.name"),
                format!("tag {:?} is defined twice", tag.name),
            );
        }
        if let Err(problems) = tag.resolve() {
            for (field, message) in problems {
                err(format!("{tat}.{field}"), message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
line: packaging-1
devices:
  - name: filler
    type: filler-v2
    protocol: modbus-tcp
    endpoint: 127.0.0.1:5020
    unit_id: 1
    poll_interval: 500ms
    tags:
      - name: temperature
        address: holding:0
        type: f32
        word_order: big
        byte_order: big
        scale: 0.01
        unit: degC
        deadband: 0.05
      - name: pump_run
        address: coil:0
        type: bool
        writable: true
"#;

    #[test]
    fn the_design_example_is_valid() {
        let c = LineConfig::from_yaml(GOOD).unwrap();
        assert_eq!(c.line, "packaging-1");
        let d = &c.devices[0];
        assert_eq!(d.poll_interval, Duration::from_millis(500));
        assert_eq!(d.tags.len(), 2);
        assert_eq!(c.mqtt.address, "127.0.0.1:1883");
    }

    fn errors_of(yaml: &str) -> Vec<String> {
        match LineConfig::from_yaml(yaml) {
            Ok(_) => panic!("expected errors"),
            Err(ConfigErrors(errors)) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_path_at_once() {
        let yaml = GOOD
            .replace("address: holding:0", "address: holdng:0")
            .replace("name: pump_run", "name: Pump Run")
            .replace("type: bool", "type: f32")
            .replace("127.0.0.1:5020", "127.0.0.1");
        let errors = errors_of(&yaml);
        let expected = [
            "devices[0].endpoint: \"127.0.0.1\" is not host:port",
            "devices[0].tags[0].address: unknown table \"holdng\"; use coil, discrete, input or holding",
            "devices[0].tags[1].name: name \"Pump Run\" contains 'P'",
            "devices[0].tags[1].type: a coil holds one bit, so its type must be bool",
        ];
        for e in expected {
            assert!(
                errors.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn unknown_fields_are_errors_with_a_path() {
        let errors = errors_of(&GOOD.replace("unit: degC", "unti: degC"));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("unknown field `unti`"), "{errors:?}");
        assert!(errors[0].starts_with("devices[0].tags[0]"), "{errors:?}");
    }

    #[test]
    fn unknown_protocol_is_an_error() {
        let errors = errors_of(&GOOD.replace("modbus-tcp", "modbus-udp"));
        assert!(errors[0].contains("modbus-udp"), "{errors:?}");
    }

    #[test]
    fn duplicates_ranges_and_writability_are_checked() {
        let yaml = GOOD
            .replace("name: pump_run", "name: temperature")
            .replace("scale: 0.01", "scale: 0")
            .replace("deadband: 0.05", "deadband: -1")
            .replace("poll_interval: 500ms", "poll_interval: 1ms");
        let errors = errors_of(&yaml);
        for e in [
            "devices[0].tags[1].name: tag \"temperature\" is defined twice",
            "devices[0].tags[0].scale: 0 is not a usable scale",
            "devices[0].tags[0].deadband: -1 must be a number of at least 0",
            "devices[0].poll_interval: must be at least 10ms",
        ] {
            assert!(
                errors.iter().any(|got| got == e),
                "missing {e:?} in {errors:#?}"
            );
        }
        let ro = GOOD.replace("address: coil:0", "address: discrete:0");
        assert!(
            errors_of(&ro)
                .iter()
                .any(|e| e == "devices[0].tags[1].writable: discretes are read-only in Modbus")
        );
    }

    #[test]
    fn rtu_devices_share_a_port_with_one_setting_and_distinct_units() {
        let rtu = |name: &str, unit: u8, baud: u32| {
            format!(
                "  - {{ name: {name}, type: t, protocol: modbus-rtu, endpoint: /dev/ttyUSB0, unit_id: {unit}, serial: {{ baud_rate: {baud}, parity: even }}, tags: [ {{ name: a, address: \"holding:0\", type: u16 }} ] }}\n"
            )
        };
        let ok = format!(
            "line: l\ndevices:\n{}{}",
            rtu("a", 1, 19200),
            rtu("b", 2, 19200)
        );
        let c = LineConfig::from_yaml(&ok).unwrap();
        assert_eq!(c.devices[1].serial.unwrap().parity, Parity::Even);
        let clash = format!(
            "line: l\ndevices:\n{}{}{}",
            rtu("a", 1, 19200),
            rtu("b", 1, 9600),
            rtu("c", 0, 19200)
        );
        let errors = errors_of(&clash);
        for e in [
            "devices[1].serial: differs from devices[0] on the same port \"/dev/ttyUSB0\"",
            "devices[1].unit_id: unit 1 on \"/dev/ttyUSB0\" is already devices[0]",
            "devices[2].unit_id: 0 is not an RTU slave address (1 to 247)",
        ] {
            assert!(
                errors.iter().any(|got| got == e),
                "missing {e:?} in {errors:#?}"
            );
        }
    }

    #[test]
    fn buffer_sizes_take_units() {
        assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert_eq!("1GiB".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("100MB".parse::<ByteSize>(), Ok(ByteSize(100_000_000)));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        let yaml = format!(
            "{GOOD}storage:\n  buffer:\n    dir: /var/lib/fieldline/buffer\n    max_size: 2GiB\n    when_full: drop_oldest\n"
        );
        let buffer = LineConfig::from_yaml(&yaml)
            .unwrap()
            .storage
            .buffer
            .unwrap();
        assert_eq!(
            (buffer.max_size, buffer.fsync, buffer.when_full),
            (ByteSize(2 << 30), FsyncPolicy::Always, WhenFull::DropOldest)
        );
        let tiny = yaml.replace("2GiB", "1000");
        assert!(
            errors_of(&tiny)
                .iter()
                .any(|e| e.starts_with("storage.buffer.max_size"))
        );
    }

    #[test]
    fn malformed_yaml_is_an_error_not_a_panic() {
        for bad in [
            "",
            "line: [",
            "line: a\ndevices: 3",
            "\u{feff}line: x\ndevices: []",
        ] {
            assert!(LineConfig::from_yaml(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_resolve_from_env_and_file() {
        let dir = std::env::temp_dir().join(format!("fieldline-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(SecretRef::file(file).resolve().unwrap(), "s3cret");
        let missing = SecretRef::env("FIELDLINE_TEST_SURELY_UNSET")
            .resolve()
            .unwrap_err();
        assert!(missing.contains("FIELDLINE_TEST_SURELY_UNSET"));
    }

    #[test]
    fn secrets_are_written_as_env_or_file_maps() {
        let yaml = format!(
            "{GOOD}mqtt:\n  username: plant\n  password: {{ env: MQTT_PASSWORD }}\nstorage:\n  sql:\n    url: mysql://fieldline@db:3306/fieldline\n    password:\n      file: /run/secrets/sql\n"
        );
        let c = LineConfig::from_yaml(&yaml).unwrap();
        assert_eq!(c.mqtt.password, Some(SecretRef::env("MQTT_PASSWORD")));
        assert_eq!(
            c.storage.sql.unwrap().password,
            Some(SecretRef::file("/run/secrets/sql"))
        );
        let both = yaml.replace("{ env: MQTT_PASSWORD }", "{ env: A, file: /b }");
        assert!(
            errors_of(&both)
                .iter()
                .any(|e| e == "mqtt.password: set either env or file, not both")
        );
        let neither = yaml.replace("{ env: MQTT_PASSWORD }", "{}");
        assert!(
            errors_of(&neither)
                .iter()
                .any(|e| e.starts_with("mqtt.password: set env"))
        );
    }
}
