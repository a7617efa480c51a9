//! Starting an adapter for a test: a line document around the given devices, the real MQTT
//! broker, a gRPC client, and the metrics it exports.

use std::time::Duration;

use fieldline_core::config::LineConfig;
use fieldline_proto::v1::{self, adapter_service_client::AdapterServiceClient};
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::mpsc;

pub struct TestAdapter {
    pub adapter: fieldline_adapter::RunningAdapter,
    /// Every batch the adapter published to the broker, from before its first one (see
    /// [`TestAdapter::take_bus`]).
    bus: Option<mpsc::UnboundedReceiver<v1::SampleBatch>>,
    pub registry: Registry,
    pub stop: CancellationToken,
    pub client: AdapterServiceClient<tonic::transport::Channel>,
    /// The unique line name the adapter runs under (tag paths start with it).
    #[allow(dead_code)]
    pub line: String,
    _state: Option<tempfile::TempDir>,
}

/// Starts an adapter for `devices` (the YAML list items, indented two spaces) and waits until
/// it is ready (connected to the broker and subscribed to commands).
pub async fn start(prefix: &str, devices: &str) -> anyhow::Result<TestAdapter> {
    let state = tempfile::tempdir()?;
    let mut adapter = start_at(&kit::unique(prefix), devices, state.path()).await?;
    adapter._state = Some(state);
    Ok(adapter)
}

/// [`start`] for line `line`, keeping its state in `state` (which outlives the adapter, for
/// a restart on the same folder).
pub async fn start_at(
    line: &str,
    devices: &str,
    state: &std::path::Path,
) -> anyhow::Result<TestAdapter> {
    kit::require_mqtt()?;
    let line = line.to_string();
    let yaml = format!(
        "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nadapter: {{ grpc_listen: \"127.0.0.1:0\", state_dir: \"{dir}\" }}\ndevices:\n{devices}",
        mqtt = kit::MQTT,
        dir = state.display()
    );
    let config = LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Subscribed before the adapter starts, so that nothing it publishes is missed (a value
    // that never changes is published once).
    let bus = tap(&line).await?;
    let stop = CancellationToken::new();
    let mut registry = Registry::default();
    let health = Health::default();
    let adapter = fieldline_adapter::start(&config, &health, &mut registry, stop.clone()).await?;
    kit::wait_for(
        Duration::from_secs(10),
        "the adapter to be ready",
        || async { health.report().0.then_some(()) },
    )
    .await?;
    let client = AdapterServiceClient::connect(format!("http://{}", adapter.grpc_addr)).await?;
    Ok(TestAdapter {
        adapter,
        bus: Some(bus),
        registry,
        stop,
        client,
        line,
        _state: None,
    })
}

impl TestAdapter {
    /// The value of the first metric line starting with `prefix` (name and labels).
    #[allow(dead_code)]
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).and_then(|v| v.trim().parse().ok()))
    }

    /// Every batch the adapter has published to the broker since it started, in order (QoS 1:
    /// a batch may come twice). Can be taken once.
    #[allow(dead_code)]
    pub fn take_bus(&mut self) -> anyhow::Result<mpsc::UnboundedReceiver<v1::SampleBatch>> {
        self.bus
            .take()
            .ok_or_else(|| anyhow::anyhow!("the bus was taken already"))
    }

    /// Live batches of every device (from the moment of the call).
    #[allow(dead_code)]
    pub async fn stream(&mut self) -> anyhow::Result<tonic::Streaming<v1::SampleBatch>> {
        Ok(self
            .client
            .stream_samples(v1::StreamSamplesRequest::default())
            .await?
            .into_inner())
    }

    /// The batches that arrive within `window`.
    #[allow(dead_code)]
    pub async fn batches(&mut self, window: Duration) -> anyhow::Result<Vec<v1::SampleBatch>> {
        let mut stream = self.stream().await?;
        Ok(collect(&mut stream, window).await)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.adapter.wait().await;
    }
}

/// The batches `stream` delivers within `window`.
#[allow(dead_code)]
pub async fn collect(
    stream: &mut tonic::Streaming<v1::SampleBatch>,
    window: Duration,
) -> Vec<v1::SampleBatch> {
    let deadline = tokio::time::Instant::now() + window;
    let mut out = Vec::new();
    while let Ok(Ok(Some(b))) = tokio::time::timeout_at(deadline, stream.message()).await {
        out.push(b);
    }
    out
}

/// A client of the test's own subscribed to the line's sample topics, with the batches it
/// receives, decoded.
pub async fn tap(line: &str) -> anyhow::Result<mpsc::UnboundedReceiver<v1::SampleBatch>> {
    let mut messages = kit::subscribe(&format!("fieldline/v1/{line}/+/samples")).await?;
    let (tx, batches) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((_, payload)) = messages.recv().await {
            let Ok(batch) = v1::SampleBatch::decode(payload.as_slice()) else {
                continue;
            };
            if tx.send(batch).is_err() {
                return;
            }
        }
    });
    Ok(batches)
}

/// Reads `stream` until `done` finds what it waits for in the batches seen so far; fails
/// after `timeout`, naming `what` and showing what was seen. Returns what `done` found and
/// every batch seen.
#[allow(dead_code)]
pub async fn until<T>(
    stream: &mut tonic::Streaming<v1::SampleBatch>,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[v1::SampleBatch]) -> Option<T>,
) -> anyhow::Result<(T, Vec<v1::SampleBatch>)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        if let Some(found) = done(&seen) {
            return Ok((found, seen));
        }
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(batch))) => seen.push(batch),
            Ok(Ok(None)) => {
                anyhow::bail!("the stream ended while waiting for {what}; seen: {seen:?}")
            }
            Ok(Err(status)) => {
                anyhow::bail!("the stream failed while waiting for {what}: {status}")
            }
            Err(_) => {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; seen: {seen:?}")
            }
        }
    }
}
