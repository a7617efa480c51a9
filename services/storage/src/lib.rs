//! Storage: the last stage of the pipeline. It takes sample batches from processors over
//! StorageService.Ingest and acknowledges each one only once every configured backend has
//! it: InfluxDB for sample history, MySQL/MariaDB (or SQLite in the embedded mode) for devices,
//! tags and the latest value of each tag.

pub mod buffer;
pub mod metrics;
pub mod service;
pub mod sinks;
pub mod wal;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use fieldline_core::config::LineConfig;
use fieldline_proto::v1::storage_service_server::StorageServiceServer;
use fieldline_runtime::{CancellationToken, Health, backoff::Backoff, health::Readiness};
use prometheus_client::registry::Registry;

use crate::{
    buffer::Buffer,
    metrics::StorageMetrics,
    sinks::{Sink, SinkError, influx::InfluxSink, sql::SqlSink},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage needs at least one backend: set storage.influx and/or storage.sql")]
    NoSinks,
    #[error("{0}")]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Runtime(#[from] fieldline_runtime::Error),
    #[error(transparent)]
    Buffer(#[from] wal::WalError),
    #[error("stopped before the backends were reachable")]
    Stopped,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoSinks => "config",
            Error::Sink(e) => e.metric_label(),
            Error::Runtime(e) => e.metric_label(),
            Error::Buffer(_) => "buffer",
            Error::Stopped => "stopped",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A started storage service.
pub struct RunningStorage {
    pub grpc_addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    sinks: Arc<Vec<Sink>>,
}

impl RunningStorage {
    /// Waits for the server to stop, then closes the database pools.
    pub async fn wait(self) {
        let _ = self.server.await;
        for sink in self.sinks.iter() {
            if let Sink::Sql(s) = sink {
                s.close().await;
            }
        }
    }
}

/// A storage service that has registered its metrics and readiness but not yet connected,
/// so the operations endpoint can answer (not ready) while the databases are still down.
pub struct Storage {
    config: LineConfig,
    metrics: StorageMetrics,
    ready: Readiness,
}

impl Storage {
    pub fn new(config: &LineConfig, health: &Health, registry: &mut Registry) -> Result<Self> {
        if config.storage.influx.is_none() && config.storage.sql.is_none() {
            return Err(Error::NoSinks);
        }
        Ok(Self {
            config: config.clone(),
            metrics: StorageMetrics::register(registry),
            ready: health.component("backends"),
        })
    }

    /// Connects the configured backends (retrying while they are unreachable) and serves
    /// StorageService until `stop`.
    pub async fn start(self, stop: CancellationToken) -> Result<RunningStorage> {
        let Storage {
            config,
            metrics,
            ready,
        } = self;
        let settings = &config.storage;
        let mut sinks = Vec::new();
        if let Some(influx) = &settings.influx {
            let sink = InfluxSink::new(influx)?;
            retry_until_ready("influxdb", &stop, || sink.prepare()).await?;
            sinks.push(Sink::Influx(sink));
        }
        if let Some(sql) = &settings.sql {
            let sink = retry_until_ready("sql", &stop, || SqlSink::connect(sql)).await?;
            retry_until_ready("sql", &stop, || {
                sink.register_line(&config.line, &config.devices)
            })
            .await?;
            sinks.push(Sink::Sql(sink));
        }
        ready.set(true);
        // Every sink's series exist from the start, so dashboards show zeros, not gaps.
        for sink in &sinks {
            let labels = vec![("sink", sink.name().to_string())];
            drop(metrics.samples_written.get_or_create(&labels));
            drop(metrics.samples_rejected.get_or_create(&labels));
            drop(metrics.retries.get_or_create(&labels));
        }
        serve(settings, sinks, metrics, stop).await
    }
}

/// Connects the configured backends and serves StorageService until `stop`.
pub async fn start(
    config: &LineConfig,
    health: &Health,
    registry: &mut Registry,
    stop: CancellationToken,
) -> Result<RunningStorage> {
    Storage::new(config, health, registry)?.start(stop).await
}

async fn serve(
    settings: &fieldline_core::config::StorageSettings,
    sinks: Vec<Sink>,
    metrics: StorageMetrics,
    stop: CancellationToken,
) -> Result<RunningStorage> {
    let sinks = Arc::new(sinks);
    let buffer = match &settings.buffer {
        Some(config) => {
            let buffer = Arc::new(Buffer::open(config, metrics.clone())?);
            tokio::spawn(buffer.clone().replay(sinks.clone(), stop.clone()));
            Some(buffer)
        }
        None => None,
    };
    let api = service::StorageApi {
        sinks: sinks.clone(),
        metrics,
        stop: stop.clone(),
        buffer,
    };
    let router = tonic::transport::Server::builder().add_service(StorageServiceServer::new(api));
    let (grpc_addr, server) =
        fieldline_runtime::grpc::serve(settings.grpc_listen, router, "StorageService", stop)
            .await?;
    let names: Vec<&str> = sinks.iter().map(Sink::name).collect();
    tracing::info!(grpc = %grpc_addr, sinks = ?names, "storage started");
    Ok(RunningStorage {
        grpc_addr,
        server,
        sinks,
    })
}

async fn retry_until_ready<T, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(SinkError::Config(e)) => return Err(Error::Sink(SinkError::Config(e))),
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(backend = what, %error, retry_in = ?delay, "backend not ready");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Err(Error::Stopped),
                }
            }
        }
    }
}
