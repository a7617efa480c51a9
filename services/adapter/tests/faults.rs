//! Transport faults against the adapter, observed through AdapterService.StreamSamples: an
//! unreachable device, a device that accepts but never answers, and a device that goes away
//! and comes back. Every failed read is a Bad sample with a reason, never a value, and the
//! adapter reconnects by itself.

use std::{net::SocketAddr, time::Duration};

use fieldline_core::config::LineConfig;
use fieldline_proto::v1::{self, adapter_service_client::AdapterServiceClient};
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use prometheus_client::registry::Registry;
use tonic::Streaming;

fn config(endpoint: SocketAddr, state: &std::path::Path) -> anyhow::Result<LineConfig> {
    let yaml = format!(
        "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nadapter:\n  grpc_listen: 127.0.0.1:0\n  http_listen: 127.0.0.1:0\n  state_dir: {state}\ndevices:\n  - name: tank\n    type: t\n    protocol: modbus-tcp\n    endpoint: \"{endpoint}\"\n    poll_interval: 100ms\n    timeout: 300ms\n    max_backoff: 500ms\n    tags:\n      - {{ name: temperature, address: \"holding:0\", type: f32 }}\n      - {{ name: pump_run, address: \"coil:0\", type: bool }}\n",
        line = kit::unique("faults"),
        mqtt = kit::MQTT,
        state = state.display(),
    );
    LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn stream(adapter: SocketAddr) -> anyhow::Result<Streaming<v1::SampleBatch>> {
    let mut client = AdapterServiceClient::connect(format!("http://{adapter}")).await?;
    Ok(client
        .stream_samples(v1::StreamSamplesRequest { devices: vec![] })
        .await?
        .into_inner())
}

/// The next batch whose samples all satisfy `check`, within `timeout`.
async fn next_batch(
    s: &mut Streaming<v1::SampleBatch>,
    timeout: Duration,
    what: &str,
    check: impl Fn(&v1::Sample) -> bool,
) -> anyhow::Result<v1::SampleBatch> {
    tokio::time::timeout(timeout, async {
        while let Some(batch) = s.message().await? {
            if !batch.samples.is_empty() && batch.samples.iter().all(&check) {
                return Ok(batch);
            }
        }
        anyhow::bail!("stream ended")
    })
    .await
    .map_err(|_| anyhow::anyhow!("no batch where {what} within {timeout:?}"))?
}

fn bad_comm(s: &v1::Sample) -> bool {
    let q = s.quality.clone().unwrap_or_default();
    s.value.is_none()
        && q.status == v1::QualityStatus::Bad as i32
        && q.reason == v1::QualityReason::CommFailure as i32
}

fn good(s: &v1::Sample) -> bool {
    s.value.is_some()
        && s.quality
            .as_ref()
            .is_some_and(|q| q.status == v1::QualityStatus::Good as i32)
}

#[tokio::test]
async fn unreachable_and_silent_devices_give_bad_samples_not_values() -> anyhow::Result<()> {
    kit::require_backends()?;
    let state = tempfile::tempdir()?;
    // A port nobody listens on.
    let closed = kit::free_addr()?;
    // A server that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            sockets.push(s);
        }
    });
    for (endpoint, expect) in [
        (closed, "cannot connect"),
        (silent_addr, "no response within 300ms"),
    ] {
        let stop = CancellationToken::new();
        let adapter = fieldline_adapter::start(
            &config(endpoint, state.path())?,
            &Health::default(),
            &mut Registry::default(),
            stop.clone(),
        )
        .await?;
        let mut s = stream(adapter.grpc_addr).await?;
        let batch = next_batch(
            &mut s,
            Duration::from_secs(10),
            "every sample is Bad comm_failure",
            bad_comm,
        )
        .await?;
        let detail = &batch.samples[0]
            .quality
            .as_ref()
            .map(|q| q.detail.clone())
            .unwrap_or_default();
        assert!(
            detail.contains(expect),
            "{endpoint}: detail {detail:?} should say {expect:?}"
        );
        stop.cancel();
        adapter.wait().await;
    }
    held.abort();
    Ok(())
}

#[tokio::test]
async fn a_device_that_goes_away_and_comes_back_is_reconnected() -> anyhow::Result<()> {
    kit::require_backends()?;
    let state_dir = tempfile::tempdir()?;
    let sim_state = fieldline_sim::SimState::new();
    fieldline_sim::tank::init(&sim_state);
    let device_stop = CancellationToken::new();
    let (addr, server) = fieldline_sim::serve_modbus_tcp(
        "127.0.0.1:0".parse()?,
        sim_state.clone(),
        device_stop.clone(),
    )
    .await?;

    let stop = CancellationToken::new();
    let adapter = fieldline_adapter::start(
        &config(addr, state_dir.path())?,
        &Health::default(),
        &mut Registry::default(),
        stop.clone(),
    )
    .await?;
    let mut s = stream(adapter.grpc_addr).await?;
    let first = next_batch(
        &mut s,
        Duration::from_secs(10),
        "every sample is Good",
        good,
    )
    .await?;
    let temperature = first
        .samples
        .iter()
        .find(|x| x.tag == "temperature")
        .and_then(|x| x.value.clone());
    assert_eq!(
        temperature,
        Some(fieldline_core::Value::F64(20.0).into()),
        "the simulator starts at 20.0 degC"
    );

    // The device goes away: its tags turn Bad, carrying no value.
    device_stop.cancel();
    let _ = server.await;
    next_batch(
        &mut s,
        Duration::from_secs(10),
        "every sample is Bad comm_failure",
        bad_comm,
    )
    .await?;

    // It comes back on the same address: the adapter reconnects and values are Good again.
    let (again, _server) =
        fieldline_sim::serve_modbus_tcp(addr, sim_state, CancellationToken::new()).await?;
    assert_eq!(again, addr);
    let back = next_batch(
        &mut s,
        Duration::from_secs(10),
        "every sample is Good again",
        good,
    )
    .await?;
    assert!(
        back.sequence > first.sequence,
        "sequence numbers keep growing"
    );
    stop.cancel();
    adapter.wait().await;
    Ok(())
}
