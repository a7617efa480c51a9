//! How the line's services listen and reach each other and the MQTT broker.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretRef;

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
    /// Folder for state that must survive restarts (sequence numbers, the outbox).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where batches wait until storage has them.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `/healthz` fails (and Kubernetes restarts the pod) when publishing has had batches
    /// waiting this long without progress, e.g. `2m`.
    #[serde(default = "default_stall_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stall_after: Duration,
    /// The secret the processor presents on AdapterService.Write (as a bearer token); the
    /// adapter refuses a write without it. Without one, the adapter takes writes only while
    /// `grpc_listen` is a loopback address (one machine, as `fieldline up`), and refuses every
    /// write otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_token: Option<super::SecretRef>,
}

fn default_stall_after() -> Duration {
    Duration::from_secs(120)
}

/// The adapter's outbox: every batch is kept on disk until the processor reports it stored,
/// and sent again after a reconnect, a gap or a timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Folder of the outbox files; `{state_dir}/outbox` when unset. Keep it on persistent
    /// storage (a volume that survives the pod).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Most bytes the outbox may hold, e.g. `1GiB`.
    #[serde(default = "default_outbox_size")]
    pub max_size: super::ByteSize,
    /// `always`: fsync before a batch is published (survives power loss); `os`: leave
    /// flushing to the operating system (survives a crash of the adapter, not of the machine).
    #[serde(default)]
    pub fsync: super::FsyncPolicy,
    /// `drop_oldest`: make room by dropping the oldest batches, counted in metrics (a device
    /// is never made to wait); `pause_polling`: stop polling until there is room.
    #[serde(default)]
    pub when_full: OutboxWhenFull,
    /// After this long without progress, send the oldest batch of each device that storage
    /// has not acknowledged again (a probe for a batch lost with nothing after it), e.g.
    /// `30s`; doubled on each try up to five minutes.
    #[serde(default = "default_resend_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub resend_after: Duration,
    /// Most bytes of batches held in memory: those waiting to enter the outbox, and the
    /// outbox's copies kept for sending (beyond, they are read back from disk).
    #[serde(default = "default_outbox_memory")]
    pub memory: super::ByteSize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_size: default_outbox_size(),
            fsync: super::FsyncPolicy::default(),
            when_full: OutboxWhenFull::default(),
            resend_after: default_resend_after(),
            memory: default_outbox_memory(),
        }
    }
}

/// What a full outbox does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutboxWhenFull {
    #[default]
    DropOldest,
    PausePolling,
}

fn default_outbox_size() -> super::ByteSize {
    super::ByteSize(1 << 30)
}
fn default_outbox_memory() -> super::ByteSize {
    super::ByteSize(64 << 20)
}
fn default_resend_after() -> Duration {
    Duration::from_secs(30)
}

impl Default for AdapterSettings {
    fn default() -> Self {
        Self {
            id: default_adapter_id(),
            grpc_listen: default_adapter_grpc(),
            http_listen: default_adapter_http(),
            state_dir: default_state_dir(),
            outbox: OutboxConfig::default(),
            stall_after: default_stall_after(),
            write_token: None,
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
    /// Largest sample batch taken from the bus, e.g. `4MiB`; a larger message is refused
    /// before it is decoded, acknowledged and copied to the line's dead-letter topic.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: super::ByteSize,
    /// Most samples one batch may carry; counted before the batch is decoded.
    #[serde(default = "default_max_batch_samples")]
    pub max_batch_samples: usize,
    /// `/healthz` fails (and Kubernetes restarts the pod) when messages from the bus or
    /// batches for storage have waited this long without progress, e.g. `2m`.
    #[serde(default = "default_stall_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stall_after: Duration,
    /// Take protobuf `Command`s published on `fieldline/v1/{line}/{device}/cmd` (answered on
    /// `…/cmd/result`), through the same safe write path as every other write. Off by
    /// default: MQTT does not say who published, so turn it on only where the broker lets
    /// only authorized clients publish there.
    #[serde(default)]
    pub mqtt_commands: bool,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            grpc_listen: default_processor_grpc(),
            http_listen: default_processor_http(),
            storage_url: default_storage_url(),
            adapter_url: default_adapter_url(),
            client_id: None,
            max_batch_bytes: default_max_batch_bytes(),
            max_batch_samples: default_max_batch_samples(),
            stall_after: default_stall_after(),
            mqtt_commands: false,
        }
    }
}

fn default_max_batch_bytes() -> super::ByteSize {
    super::ByteSize(4 << 20)
}
fn default_max_batch_samples() -> usize {
    100_000
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
