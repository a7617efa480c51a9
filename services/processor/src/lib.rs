//! The processor: the middle stage of the pipeline. It subscribes to the sample batches of its
//! line on the telemetry bus, drops redeliveries by sequence number, forwards each batch to
//! storage and acknowledges it to the broker only once storage has it, and serves
//! PlantService (the MES API) from the latest values it has seen.

pub mod forwarder;
pub mod latest;
pub mod metrics;
pub mod plant;

use std::{net::SocketAddr, time::Duration};

use fieldline_core::config::LineConfig;
use fieldline_proto::v1::plant_service_server::PlantServiceServer;
use fieldline_runtime::{CancellationToken, Health};
use prometheus_client::registry::Registry;
use rumqttc::AsyncClient;
use tokio::task::JoinSet;

use crate::{forwarder::Forwarder, latest::Latest, metrics::ProcessorMetrics};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] fieldline_runtime::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Runtime(e) => e.metric_label(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
pub async fn start(
    config: &LineConfig,
    health: &Health,
    registry: &mut Registry,
    stop: CancellationToken,
) -> Result<RunningProcessor> {
    let metrics = ProcessorMetrics::register(registry);
    let settings = &config.processor;
    let client_id = settings
        .client_id
        .clone()
        .unwrap_or_else(|| format!("fieldline-processor-{}", config.line));
    let mut options = fieldline_runtime::mqtt::options(&config.mqtt, &client_id)?;
    options.set_manual_acks(true);
    let (client, eventloop) = AsyncClient::new(options, 1024);
    let latest = Latest::default();
    let forwarder = Forwarder {
        line: config.line.clone(),
        client,
        metrics,
        latest: latest.clone(),
        storage_url: settings.storage_url.clone(),
        mqtt_ready: health.component("mqtt"),
        storage_ready: health.component("storage"),
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(forwarder.run(eventloop, stop.clone(), Duration::from_secs(10)));
    let plant = PlantServiceServer::new(plant::PlantApi {
        latest: latest.clone(),
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
