//! Storage: the last stage of the pipeline. It takes sample batches from processors over
//! StorageService.Ingest and acknowledges each one only once every configured backend has
//! it: InfluxDB for sample history, MySQL/MariaDB (or SQLite in the embedded mode) for devices,
//! tags and the latest value of each tag.

pub mod buffer;
mod error;
pub mod events;
pub mod history;
pub mod metrics;
pub mod service;
pub mod sinks;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use fieldline_core::config::LineConfig;
use fieldline_proto::v1::storage_service_server::StorageServiceServer;
use fieldline_runtime::{CancellationToken, Health, backoff::Backoff, health::Readiness};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use crate::{
    buffer::Buffer,
    metrics::StorageMetrics,
    sinks::{Disposition, Sink, SinkError, influx::InfluxSink, sql::SqlSink},
};

pub use error::{Error, Result};

/// A started storage service.
pub struct RunningStorage {
    pub grpc_addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    backends: Backends,
}

impl RunningStorage {
    /// Waits for the server to stop, then closes the database pools.
    pub async fn wait(self) {
        let _ = self.server.await;
        for sink in self.backends.get().unwrap_or_default() {
            if let Sink::Sql(s) = sink {
                s.close().await;
            }
        }
    }
}

/// The connected backends; empty until they are. With a write-ahead buffer, storage serves
/// before its backends are reachable and buffers meanwhile.
#[derive(Clone, Default)]
pub struct Backends {
    sinks: Arc<OnceLock<Vec<Sink>>>,
    connected: Arc<Notify>,
}

impl Backends {
    pub fn get(&self) -> Option<&[Sink]> {
        self.sinks.get().map(Vec::as_slice)
    }

    /// Waits until the backends are connected; `None` when stopped first.
    pub async fn wait(&self, stop: &CancellationToken) -> Option<&[Sink]> {
        loop {
            let connected = self.connected.notified();
            if let Some(sinks) = self.get() {
                return Some(sinks);
            }
            tokio::select! {
                _ = connected => {}
                _ = stop.cancelled() => return None,
            }
        }
    }

    /// The plant-records tables, once the SQL backend is connected.
    pub fn events(&self) -> Option<events::EventStore> {
        self.get()?.iter().find_map(|sink| match sink {
            Sink::Sql(sql) => Some(events::EventStore::new(sql)),
            Sink::Influx(_) => None,
        })
    }

    fn set(&self, sinks: Vec<Sink>) {
        let _ = self.sinks.set(sinks);
        self.connected.notify_waiters();
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

    /// Serves StorageService until `stop`. Without a write-ahead buffer it first connects
    /// the configured backends (retrying while they are unreachable); with one it serves at
    /// once, buffering until they are connected.
    pub async fn start(self, stop: CancellationToken) -> Result<RunningStorage> {
        let Storage {
            config,
            metrics,
            ready,
        } = self;
        let config = Arc::new(config);
        let settings = &config.storage;
        // Settings that can never work (secrets, URLs) fail here, not in the background.
        let influx = match &settings.influx {
            Some(influx) => Some(InfluxSink::new(influx)?),
            None => None,
        };
        let backends = Backends::default();
        if settings.buffer.is_some() {
            let backends = backends.clone();
            let config = config.clone();
            let stop = stop.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                match connect(&config, influx, &metrics, &stop).await {
                    Ok(sinks) => {
                        tracing::info!("backends connected");
                        backends.set(sinks);
                    }
                    Err(error) => {
                        if !stop.is_cancelled() {
                            tracing::error!(%error, "cannot use the backends; batches stay in the write-ahead buffer");
                        }
                    }
                }
            });
            // Accepting into the buffer is being ready.
            ready.set(true);
        } else {
            backends.set(connect(&config, influx, &metrics, &stop).await?);
            ready.set(true);
        }
        serve(settings, backends, metrics, stop).await
    }
}

/// Connects every configured backend, retrying while they are unreachable.
async fn connect(
    config: &LineConfig,
    influx: Option<InfluxSink>,
    metrics: &StorageMetrics,
    stop: &CancellationToken,
) -> Result<Vec<Sink>> {
    let mut sinks = Vec::new();
    if let Some(sink) = influx {
        retry_until_ready("influxdb", metrics, stop, || sink.prepare()).await?;
        sinks.push(Sink::Influx(Box::new(sink)));
    }
    if let Some(sql) = &config.storage.sql {
        let sink =
            retry_until_ready(sql_name(sql), metrics, stop, || SqlSink::connect(sql)).await?;
        retry_until_ready(sql_name(sql), metrics, stop, || {
            sink.register_line(&config.line, &config.devices)
        })
        .await?;
        sinks.push(Sink::Sql(sink));
    }
    // Every sink's series exist from the start, so dashboards show zeros, not gaps.
    for sink in &sinks {
        let labels = vec![("sink", sink.name().to_string())];
        drop(metrics.samples_written.get_or_create(&labels));
        drop(metrics.samples_rejected.get_or_create(&labels));
        drop(metrics.retries.get_or_create(&labels));
    }
    Ok(sinks)
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
    backends: Backends,
    metrics: StorageMetrics,
    stop: CancellationToken,
) -> Result<RunningStorage> {
    let buffer = match &settings.buffer {
        Some(config) => {
            let buffer = Arc::new(Buffer::open(config, &settings.batch, metrics.clone())?);
            tokio::spawn(buffer.clone().replay(backends.clone(), stop.clone()));
            Some(buffer)
        }
        None => None,
    };
    let history = history_source(settings, &backends).map(Arc::new);
    let api = service::StorageApi {
        backends: backends.clone(),
        metrics,
        stop: stop.clone(),
        buffer,
        batching: settings.batch,
        history,
        sql: settings.sql.is_some(),
    };
    let router = tonic::transport::Server::builder().add_service(
        StorageServiceServer::new(api)
            .max_decoding_message_size(fieldline_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(fieldline_proto::MAX_MESSAGE_BYTES),
    );
    let (grpc_addr, server) =
        fieldline_runtime::grpc::serve(settings.grpc_listen, router, "StorageService", stop)
            .await?;
    let names: Vec<&str> = backends
        .get()
        .unwrap_or_default()
        .iter()
        .map(Sink::name)
        .collect();
    tracing::info!(grpc = %grpc_addr, sinks = ?names, buffer = settings.buffer.is_some(), "storage started");
    Ok(RunningStorage {
        grpc_addr,
        server,
        backends,
    })
}

/// InfluxDB answers history when configured; otherwise the SQLite sample table does.
fn history_source(
    settings: &fieldline_core::config::StorageSettings,
    backends: &Backends,
) -> Option<history::HistorySource> {
    if let Some(influx) = &settings.influx {
        return match history::InfluxHistory::new(influx) {
            Ok(h) => Some(history::HistorySource::Influx(h)),
            Err(error) => {
                tracing::error!(%error, "history queries are off");
                None
            }
        };
    }
    let sql = settings.sql.as_ref()?;
    sql.url
        .starts_with("sqlite:")
        .then(|| history::HistorySource::Sqlite(backends.clone()))
}

/// The sink name a SQL URL will have, for metrics and logs before it is connected.
fn sql_name(config: &fieldline_core::config::SqlConfig) -> &'static str {
    if config.url.trim().starts_with("sqlite:") {
        "sqlite"
    } else {
        "mysql"
    }
}

/// Retries `attempt` until it works; a configuration error ends it at once. Every failure
/// counts in `errors_total{sink = what, kind}`.
async fn retry_until_ready<T, F, Fut>(
    what: &'static str,
    metrics: &StorageMetrics,
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
            Err(error) => {
                metrics.error(what, error.kind());
                if error.disposition() == Disposition::Config {
                    return Err(Error::Sink(error));
                }
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
