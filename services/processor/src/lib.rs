//! The processor: the middle stage of the pipeline. It subscribes to the sample batches of its
//! line on the telemetry bus, drops redeliveries by sequence number, evaluates alarms and
//! control rules on each new batch, forwards it to storage and acknowledges it to the broker
//! only once storage has it, and serves PlantService (the MES API).
//!
//! The control logic itself (the alarm machines and the line's alarm set, the rule
//! evaluator, the built-in plugins) is pure and lives in `fieldline-core` beside its
//! configuration; the processor feeds it batches and the time, hosts the Rhai plugin scripts
//! ([`plugin_host`]), and carries out what it decides: publishing, persisting, writing.

pub mod commands;
pub mod engine;
pub mod error;
pub mod forwarder;
pub mod intake;
pub mod latest;
pub mod line;
pub mod metrics;
pub mod plant;
pub mod plugin_host;
pub mod progress;
pub mod records;
pub mod writes;

pub use error::{Error, Result};

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldline_core::config::LineConfig;
use fieldline_proto::v1::{
    adapter_service_client::AdapterServiceClient, plant_service_server::PlantServiceServer,
};
use fieldline_runtime::{CancellationToken, Health};
use prometheus_client::registry::Registry;
use rumqttc::AsyncClient;
use tokio::{
    sync::{broadcast, mpsc},
    task::JoinSet,
};

use crate::{forwarder::Forwarder, latest::Latest, metrics::ProcessorMetrics};

/// A started processor.
pub struct RunningProcessor {
    pub grpc_addr: SocketAddr,
    pub latest: Latest,
    tasks: JoinSet<()>,
}

impl RunningProcessor {
    /// Waits until the processor has drained and stopped.
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts consuming the line's telemetry and serving PlantService, until `stop`.
/// The largest MQTT message the processor reads off the bus; anything above its batch limit
/// is refused after reading, so keep the broker's `message_size_limit` at or below this.
pub const MQTT_INCOMING_LIMIT: usize = fieldline_proto::MAX_MESSAGE_BYTES;

pub async fn start(
    config: &LineConfig,
    health: &Health,
    registry: &mut Registry,
    stop: CancellationToken,
) -> Result<RunningProcessor> {
    Processor::new(config, health, registry).start(stop).await
}

/// A processor that has registered its metrics and readiness but not yet loaded its state,
/// so the operations endpoint can answer (alive, not ready) while storage is still away.
pub struct Processor {
    config: LineConfig,
    health: Health,
    metrics: ProcessorMetrics,
    state_ready: fieldline_runtime::health::Readiness,
}

impl Processor {
    pub fn new(config: &LineConfig, health: &Health, registry: &mut Registry) -> Self {
        Self {
            config: config.clone(),
            health: health.clone(),
            metrics: ProcessorMetrics::register(registry),
            state_ready: health.component("plant_state"),
        }
    }

    /// Loads the alarm state and progress from storage (waiting for it), then consumes the
    /// line's telemetry and serves PlantService until `stop`.
    pub async fn start(self, stop: CancellationToken) -> Result<RunningProcessor> {
        let Processor {
            config,
            health,
            metrics,
            state_ready,
        } = self;
        run(&config, &health, metrics, state_ready, stop).await
    }
}

async fn run(
    config: &LineConfig,
    health: &Health,
    metrics: ProcessorMetrics,
    state_ready: fieldline_runtime::health::Readiness,
    stop: CancellationToken,
) -> Result<RunningProcessor> {
    let settings = &config.processor;
    let limits = intake::Limits {
        max_bytes: usize::try_from(settings.max_batch_bytes.0).unwrap_or(usize::MAX),
        max_samples: settings.max_batch_samples,
    };
    let client_id = settings
        .client_id
        .clone()
        .unwrap_or_else(|| format!("fieldline-processor-{}", config.line));
    let mut options = fieldline_runtime::mqtt::options(&config.mqtt, &client_id)?;
    options.set_manual_acks(true);
    // A message the client cannot read would end the connection and come back on the next
    // one, again and again: read anything up to MQTT_INCOMING_LIMIT, refuse what is over
    // the batch limit, and let the broker's own message size limit bound the rest.
    options.set_max_packet_size(MQTT_INCOMING_LIMIT.max(2 * limits.max_bytes), 1 << 20);
    let (client, eventloop) = AsyncClient::new(options, 1024);
    let latest = Latest::default();
    let mut tasks = JoinSet::new();

    // Alarms and rules, resumed from the state storage keeps.
    let mut engine = engine::Engine::new(config)?;
    let storage = endpoint("storage_url", &settings.storage_url)?;
    let mut progress = progress::Progress::default();
    let recorder = match &config.storage.sql {
        Some(_) => {
            let state = load_plant_state(&config.line, storage.clone(), &stop).await?;
            tracing::info!(devices = state.progress.len(), "progress loaded");
            let mut resumed = 0;
            for p in state.progress.iter().filter(|p| !p.plugin_state.is_empty()) {
                resumed += 1;
                for problem in engine.restore_plugins(&p.device, &p.plugin_state) {
                    tracing::warn!(%problem, "plugin state");
                }
            }
            tracing::info!(devices = resumed, "plugin state loaded");
            progress =
                progress::Progress::restore(state.progress.into_iter().map(|p| progress::Mark {
                    device: p.device,
                    sequence: p.stored_seq,
                    plugin_state: (!p.plugin_state.is_empty()).then_some(p.plugin_state),
                }));
            let mut saved = Vec::with_capacity(state.alarm_states.len());
            for s in state.alarm_states {
                match fieldline_proto::alarm_status(&config.line, s) {
                    Ok(status) => saved.push(status),
                    Err(error) => {
                        tracing::warn!(%error, "an alarm state storage holds cannot be read; it starts fresh")
                    }
                }
            }
            for problem in engine.restore(&saved) {
                tracing::warn!(%problem, "alarm state");
            }
            tracing::info!(alarms = saved.len(), "alarm state loaded");
            let (recorder, task) = records::Recorder::start(
                &config.line,
                storage.clone(),
                metrics.clone(),
                stop.clone(),
            );
            tasks.spawn(task);
            Some(recorder)
        }
        None => {
            tracing::warn!(
                "no storage.sql: alarm state, the write audit and progress are not persisted"
            );
            None
        }
    };
    state_ready.set(true);
    let (effects_tx, effects_rx) = mpsc::unbounded_channel();
    let handle = line::LineHandle {
        line: config.line.clone(),
        engine: Arc::new(Mutex::new(engine)),
        latest: latest.clone(),
        effects: effects_tx.clone(),
        alarm_feed: broadcast::channel(4096).0,
        recorder: recorder.clone(),
    };
    let adapter = endpoint("adapter_url", &settings.adapter_url)?;
    let writes = Arc::new(writes::WritePath::new(
        config,
        AdapterServiceClient::new(adapter),
        write_token(config)?,
        handle.engine.clone(),
        latest.clone(),
        recorder.clone(),
        effects_tx,
        metrics.clone(),
    ));
    tasks.spawn(line::run_effects(
        handle.clone(),
        effects_rx,
        client.clone(),
        writes.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    tasks.spawn(line::run_ticks(handle.clone(), stop.clone()));
    if settings.mqtt_commands {
        let options =
            fieldline_runtime::mqtt::options(&config.mqtt, &format!("{client_id}-commands"))?;
        tasks.spawn(commands::run(
            options,
            config.line.clone(),
            writes.clone(),
            stop.clone(),
        ));
    }

    let forwarder = Forwarder {
        line: config.line.clone(),
        client,
        metrics,
        latest: latest.clone(),
        engine: Some(handle.clone()),
        storage_url: settings.storage_url.clone(),
        mqtt_ready: health.component("mqtt"),
        storage_ready: health.component("storage"),
        limits,
        progress,
        progress_store: recorder.is_some().then(|| storage.clone()),
        bus_watchdog: health.watchdog("bus", settings.stall_after),
        storage_watchdog: health.watchdog("storage", settings.stall_after),
    };
    tasks.spawn(forwarder.run(eventloop, stop.clone(), Duration::from_secs(10)));
    let plant = PlantServiceServer::new(plant::PlantApi {
        config: Arc::new(config.clone()),
        line: handle,
        writes,
        latest: latest.clone(),
        storage: fieldline_proto::v1::storage_service_client::StorageServiceClient::new(storage),
        stop: stop.clone(),
    });
    let router = tonic::transport::Server::builder().add_service(plant);
    let (grpc_addr, server) =
        fieldline_runtime::grpc::serve(settings.grpc_listen, router, "PlantService", stop.clone())
            .await?;
    tasks.spawn(async move {
        let _ = server.await;
    });
    tracing::info!(line = %config.line, grpc = %grpc_addr, storage = %settings.storage_url, "processor started");
    Ok(RunningProcessor {
        grpc_addr,
        latest,
        tasks,
    })
}

/// The header value that shows the adapter a write comes from this processor, when the line
/// has `adapter.write_token`.
fn write_token(
    config: &LineConfig,
) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> {
    let Some(secret) = &config.adapter.write_token else {
        return Ok(None);
    };
    let token = fieldline_runtime::secret::resolve(secret).map_err(|e| Error::Secret {
        detail: format!("adapter.write_token: {e}"),
    })?;
    if token.is_empty() {
        return Err(Error::Secret {
            detail: "adapter.write_token is empty".into(),
        });
    }
    format!("Bearer {token}")
        .parse()
        .map(Some)
        .map_err(|_| Error::Secret {
            detail: "adapter.write_token holds characters an HTTP header cannot carry".into(),
        })
}

/// A lazily connected gRPC channel to a configured URL.
fn endpoint(setting: &'static str, url: &str) -> Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|source| Error::Url {
            setting,
            url: url.to_string(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// The alarm states and stored marks storage keeps for `line`, retried while storage (or
/// its database) is unreachable: the processor cannot evaluate alarms without their state.
async fn load_plant_state(
    line: &str,
    storage: tonic::transport::Channel,
    stop: &CancellationToken,
) -> Result<fieldline_proto::v1::PlantState> {
    let mut client =
        fieldline_proto::v1::storage_service_client::StorageServiceClient::new(storage)
            .max_decoding_message_size(fieldline_proto::MAX_MESSAGE_BYTES);
    let mut backoff = fieldline_runtime::backoff::Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(10),
    );
    loop {
        let request = fieldline_proto::v1::PlantStateRequest {
            line: line.to_string(),
        };
        match client.load_plant_state(request).await {
            Ok(state) => return Ok(state.into_inner()),
            Err(status) => {
                let delay = backoff.next_delay();
                tracing::warn!(%status, retry_in = ?delay, "cannot load the alarm state and progress from storage yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Err(Error::Stopped),
                }
            }
        }
    }
}
