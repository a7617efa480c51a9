//! The adapter: the first stage of the pipeline. It polls the devices of one production line
//! through protocol drivers, turns what they say into typed, timestamped, quality-flagged
//! samples, publishes them as numbered batches to `fieldline/v1/{line}/{device}/samples`
//! (QoS 1) and serves AdapterService (live samples and writes) over gRPC.

pub mod drivers;
pub mod error;
pub mod metrics;
pub mod outbox;
pub mod publisher;
pub mod sequence;
pub mod serial;
pub mod service;

pub use error::{Error, Result};

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldline_core::config::{DeviceConfig, FsyncPolicy, LineConfig, OutboxWhenFull};
use fieldline_proto::v1::adapter_service_server::AdapterServiceServer;
use fieldline_runtime::{CancellationToken, Health};
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;

use crate::{
    drivers::{
        DeviceContext, DeviceHandle,
        modbus::{ModbusBus, ModbusDevice},
    },
    metrics::AdapterMetrics,
    publisher::Publisher,
    sequence::Sequence,
};

/// A started adapter; [`RunningAdapter::wait`] returns once it has stopped and flushed.
pub struct RunningAdapter {
    pub grpc_addr: SocketAddr,
    tasks: JoinSet<()>,
    publisher: Publisher,
}

impl RunningAdapter {
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.publisher.join().await;
    }
}

/// Starts polling every device of `config` and serving AdapterService, until `stop`.
pub async fn start(
    config: &LineConfig,
    health: &Health,
    registry: &mut Registry,
    stop: CancellationToken,
) -> Result<RunningAdapter> {
    let metrics = AdapterMetrics::register(registry);
    let settings = &config.adapter;
    // Who may write is settled before anything runs: a token that cannot be read stops the
    // start, rather than leaving writes open or refused without a word.
    let token = match &settings.write_token {
        Some(secret) => match fieldline_runtime::secret::resolve(secret) {
            Ok(token) if !token.is_empty() => Some(token),
            Ok(_) => {
                return Err(Error::Secret {
                    detail: "adapter.write_token is empty".into(),
                });
            }
            Err(e) => {
                return Err(Error::Secret {
                    detail: format!("adapter.write_token: {e}"),
                });
            }
        },
        None => None,
    };
    let writers = service::Writers::new(token, settings.grpc_listen);
    let client_id = format!("fieldline-adapter-{}-{}", config.line, settings.id);
    let options = fieldline_runtime::mqtt::options(&config.mqtt, &client_id)?;
    // Modbus devices that share an endpoint share one link (a gateway's TCP connection, an
    // RTU bus) and one driver task; every other device has its own. Each task's write queue
    // exists before anything runs, so writes from gRPC can be routed from the first moment.
    let mut links: Vec<(String, Vec<&DeviceConfig>)> = Vec::new();
    for device in &config.devices {
        let shared = device.modbus().and_then(|_| {
            links.iter_mut().find(|(endpoint, members)| {
                endpoint == device.endpoint() && members[0].modbus().is_some()
            })
        });
        match shared {
            Some((_, members)) => members.push(device),
            None => links.push((device.endpoint().to_string(), vec![device])),
        }
    }
    let mut handles = HashMap::new();
    let mut write_queues = Vec::new();
    for (_, members) in &links {
        let (writes, queue) = tokio::sync::mpsc::channel(64);
        for device in members {
            handles.insert(
                device.name().to_string(),
                DeviceHandle {
                    name: device.name().to_string(),
                    writes: writes.clone(),
                },
            );
        }
        write_queues.push(queue);
    }
    // Pollers stop first; the publisher then flushes what they queued.
    let pollers_stop = stop.child_token();
    let publisher_stop = CancellationToken::new();
    let outbox = &settings.outbox;
    let publisher = Publisher::start(
        options,
        publisher::PublisherSettings {
            line: config.line.clone(),
            outbox_dir: outbox
                .dir
                .clone()
                .unwrap_or_else(|| settings.state_dir.join("outbox")),
            outbox: outbox::OutboxSettings {
                max_bytes: outbox.max_size.0,
                fsync: match outbox.fsync {
                    FsyncPolicy::Always => fieldline_wal::Fsync::Always,
                    FsyncPolicy::Os => fieldline_wal::Fsync::Os,
                },
                when_full: match outbox.when_full {
                    OutboxWhenFull::DropOldest => fieldline_wal::WhenFull::DropOldest,
                    OutboxWhenFull::PausePolling => fieldline_wal::WhenFull::Backpressure,
                },
                memory_bytes: (outbox.memory.0 / 2) as usize,
            },
            pause_when_full: outbox.when_full == OutboxWhenFull::PausePolling,
            queue_bytes: (outbox.memory.0 / 2) as usize,
            resend_after: outbox.resend_after,
            flush_timeout: Duration::from_secs(5),
        },
        metrics.clone(),
        health.component("mqtt"),
        health.watchdog("publisher", settings.stall_after),
        publisher_stop.clone(),
    )?;
    let mut tasks = JoinSet::new();
    let mut drivers = JoinSet::new();
    let now_us = u64::try_from(fieldline_runtime::now_ns() / 1000).unwrap_or(0);
    for ((_, members), writes) in links.into_iter().zip(write_queues) {
        let mut devices = Vec::with_capacity(members.len());
        for device in members {
            let sequence =
                Sequence::open(&settings.state_dir, &config.line, device.name(), now_us)?;
            let cx = DeviceContext {
                line: config.line.clone(),
                adapter_id: settings.id.clone(),
                sink: publisher.sink.clone(),
                metrics: metrics.clone(),
                sequence: Arc::new(Mutex::new(sequence)),
                commands_dir: settings.state_dir.join("commands"),
            };
            // Fail at start-up, not in the supervisor, when a device cannot be driven.
            check(device).map_err(|source| Error::Device {
                device: device.name().to_string(),
                source: Box::new(source),
            })?;
            devices.push((device.clone(), cx));
        }
        drivers.spawn(supervise(devices, writes, pollers_stop.clone()));
    }
    match &writers {
        service::Writers::Token(_) => {}
        service::Writers::Loopback => tracing::info!(
            grpc = %settings.grpc_listen,
            "AdapterService.Write takes writes from this machine only (no adapter.write_token)"
        ),
        service::Writers::Nobody { listen } => tracing::warn!(
            grpc = %listen,
            "AdapterService.Write refuses every write: the adapter listens beyond this machine without adapter.write_token"
        ),
    }
    let api = service::AdapterApi {
        line: config.line.clone(),
        devices: handles,
        sink: publisher.sink.clone(),
        stop: stop.clone(),
        writers,
    };
    let router = tonic::transport::Server::builder().add_service(AdapterServiceServer::new(api));
    let (grpc_addr, server) = fieldline_runtime::grpc::serve(
        settings.grpc_listen,
        router,
        "AdapterService",
        stop.clone(),
    )
    .await?;
    tasks.spawn(async move {
        let _ = server.await;
    });
    tracing::info!(line = %config.line, devices = config.devices.len(), grpc = %grpc_addr, "adapter started");
    // On `stop` every driver finishes what it is doing (a poll in flight completes and hands
    // over its batch); once all have returned, the publisher flushes and disconnects.
    let flush = publisher_stop.clone();
    tasks.spawn(async move {
        pollers_stop.cancelled().await;
        join_drivers(drivers, DRIVERS_STOP_LIMIT).await;
        flush.cancel();
    });
    Ok(RunningAdapter {
        grpc_addr,
        tasks,
        publisher,
    })
}

/// How long the drivers may take to finish a poll in flight at shutdown: room for a poll to
/// wait out its device timeout, short enough for a pod's termination grace period.
pub const DRIVERS_STOP_LIMIT: Duration = Duration::from_secs(10);

/// Waits until every driver task has returned, or `limit` has passed (logged: the batches of
/// drivers still running then are lost).
async fn join_drivers(mut drivers: JoinSet<()>, limit: Duration) {
    let all = tokio::time::timeout(limit, async {
        while drivers.join_next().await.is_some() {}
    })
    .await;
    if all.is_err() {
        tracing::warn!(
            running = drivers.len(),
            ?limit,
            "drivers did not stop in time; stopping without their last batches"
        );
        drivers.abort_all();
    }
}

/// Whether the driver of `device`'s protocol can drive it; the reason when not.
fn check(device: &DeviceConfig) -> Result<()> {
    match device {
        DeviceConfig::ModbusTcp(_) | DeviceConfig::ModbusRtu(_) => {
            ModbusDevice::new(device).map(drop)
        }
        DeviceConfig::SerialLine(d) => drivers::serial_line::check(d),
        DeviceConfig::Opcua(d) => drivers::opcua::check(d),
        DeviceConfig::Mqtt(d) => drivers::mqtt::check(d),
    }
}

/// Runs the driver of `devices` (a Modbus bus, or one device of another protocol) until
/// `stop`.
async fn run_driver(
    devices: &[(DeviceConfig, DeviceContext)],
    writes: &mut tokio::sync::mpsc::Receiver<drivers::WriteRequest>,
    stop: CancellationToken,
) {
    let Some((first, cx)) = devices.first() else {
        return;
    };
    match first {
        DeviceConfig::ModbusTcp(_) | DeviceConfig::ModbusRtu(_) => {
            let mut built = Vec::with_capacity(devices.len());
            for (config, cx) in devices {
                match ModbusDevice::new(config) {
                    Ok(device) => built.push((device, cx.clone())),
                    Err(error) => {
                        tracing::error!(device = %config.name(), %error, "device cannot be driven");
                        return;
                    }
                }
            }
            let Some(kind) = built.first().map(|(d, _)| d.link_kind()) else {
                return;
            };
            ModbusBus::new(kind, built).run(writes, stop).await;
        }
        DeviceConfig::SerialLine(d) => {
            drivers::serial_line::run(d.clone(), cx.clone(), writes, stop).await;
        }
        DeviceConfig::Opcua(d) => drivers::opcua::run(d.clone(), cx.clone(), writes, stop).await,
        DeviceConfig::Mqtt(d) => drivers::mqtt::run(d.clone(), cx.clone(), writes, stop).await,
    }
}

/// Runs the driver of `devices` until `stop`. A panic in a driver (a bug, or one in a
/// protocol library) must not silently end polling: it is logged and counted, and the driver
/// is rebuilt from its configuration and resumes after a pause. Sequence numbers continue.
async fn supervise(
    devices: Vec<(DeviceConfig, DeviceContext)>,
    mut writes: tokio::sync::mpsc::Receiver<drivers::WriteRequest>,
    stop: CancellationToken,
) {
    use futures::FutureExt;
    loop {
        let run = std::panic::AssertUnwindSafe(run_driver(&devices, &mut writes, stop.clone()));
        match run.catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown");
                for (config, cx) in &devices {
                    cx.metrics
                        .errors
                        .get_or_create(&vec![
                            ("device", config.name().to_string()),
                            ("kind", "panic".to_string()),
                        ])
                        .inc();
                }
                tracing::error!(
                    panic = what,
                    devices = devices.len(),
                    "a driver panicked; restarting its link in 1s"
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}
