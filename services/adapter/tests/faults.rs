//! Transport faults against the adapter, observed through AdapterService.StreamSamples: an
//! unreachable device, a device that accepts but never answers, and a device that goes away
//! and comes back. Every failed read is a Bad sample with a reason, never a value, and the
//! adapter reconnects by itself.

use std::{net::SocketAddr, time::Duration};

use fieldline_proto::v1;
use fieldline_runtime::CancellationToken;
use fieldline_testkit as kit;
use tonic::Streaming;

mod common;

/// An adapter polling one tank at `endpoint`, with a live stream of its batches.
async fn start(
    endpoint: SocketAddr,
) -> anyhow::Result<(common::TestAdapter, Streaming<v1::SampleBatch>)> {
    let device = format!(
        "  - name: tank\n    type: t\n    protocol: modbus-tcp\n    endpoint: \"{endpoint}\"\n    poll_interval: 100ms\n    timeout: 300ms\n    max_backoff: 500ms\n    tags:\n      - {{ name: temperature, address: \"holding:0\", type: f32 }}\n      - {{ name: pump_run, address: \"coil:0\", type: bool }}\n"
    );
    let mut run = common::start("faults", &device).await?;
    let stream = run.stream().await?;
    Ok((run, stream))
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
        let (run, mut s) = start(endpoint).await?;
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
        run.stop().await;
    }
    held.abort();
    Ok(())
}

#[tokio::test]
async fn a_device_that_goes_away_and_comes_back_is_reconnected() -> anyhow::Result<()> {
    let sim_state = fieldline_sim::SimState::new();
    fieldline_sim::tank::init(&sim_state);
    let device_stop = CancellationToken::new();
    let (addr, server) = fieldline_sim::serve_modbus_tcp(
        "127.0.0.1:0".parse()?,
        sim_state.clone(),
        device_stop.clone(),
    )
    .await?;

    let (run, mut s) = start(addr).await?;
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
    run.stop().await;
    Ok(())
}
