//! The storage service's backends: InfluxDB for sample history, SQL for devices, events and
//! latest values, the write-ahead buffer that rides out outages, and write batching.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ConfigErrors, SecretRef};

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
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| crate::Error::Parse(format!("{s:?} is not a size such as 512MiB")))?;
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
                return Err(crate::Error::Parse(format!(
                    "unknown size unit {other:?}; use KiB, MiB, GiB, KB, MB or GB"
                )));
            }
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| crate::Error::Parse(format!("{s:?} is too large")))
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
    pub fn target(&self) -> crate::Result<InfluxTarget<'_>> {
        let problem = |message: &str| Err(ConfigErrors::one("storage.influx", message).into());
        match (&self.database, &self.bucket) {
            (Some(database), None) => Ok(InfluxTarget::V1 {
                database,
                retention_policy: self.retention_policy.as_deref(),
            }),
            (None, Some(bucket)) => match &self.org {
                Some(org) => Ok(InfluxTarget::V2 { org, bucket }),
                None => problem("bucket (v2 API) needs org as well"),
            },
            (Some(_), Some(_)) => problem("give database (v1 API) or bucket (v2 API), not both"),
            (None, None) => problem("give database (v1 API) or org and bucket (v2 API)"),
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
