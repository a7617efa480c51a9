//! Plumbing every Fieldline service shares, so the adapter, processor and storage binaries
//! stay thin: loading the line document and its secrets, tracing, the `/healthz`, `/readyz` and `/metrics`
//! endpoint, graceful shutdown on SIGTERM and Ctrl-C, MQTT client options and backoff.

pub mod backoff;
pub mod config;
pub mod grpc;
pub mod health;
pub mod http;
pub mod mqtt;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use health::Health;
pub use tokio_util::sync::CancellationToken;

/// Errors of service plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration:\n{0}")]
    Config(#[from] fieldline_core::config::ConfigErrors),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("secret: {0}")]
    Secret(#[from] secret::SecretError),
    #[error("MQTT address {0:?} is not host:port")]
    MqttAddress(String),
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl Error {
    /// Short kind for the `errors_total{kind}` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Bind { .. } => "bind",
            Error::Secret(_) => "secret",
            Error::MqttAddress(_) => "config",
            Error::Reflection(_) => "reflection",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
