//! Modbus RTU over a serial line (a socat pty pair standing in for the cable): a pymodbus RTU
//! slave read correctly, a dead slave on the same bus that does not stall the live one, CRC
//! errors and stray bytes that resync without reopening the port, and a port that vanishes
//! and comes back.

use std::{io::Read, io::Write, time::Duration};

use fieldline_proto::v1;
use fieldline_testkit as kit;
use serde_json::json;

mod common;

/// An adapter for `devices` with a live stream of their batches.
struct Running {
    inner: common::TestAdapter,
    stream: tonic::Streaming<v1::SampleBatch>,
}

async fn start(devices: &str) -> anyhow::Result<Running> {
    let mut inner = common::start("rtu", devices).await?;
    let stream = inner.stream().await?;
    Ok(Running { inner, stream })
}

impl Running {
    /// Reads the stream until `done` finds what it waits for in the batches seen (see
    /// [`common::until`]).
    async fn until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl FnMut(&[v1::SampleBatch]) -> Option<T>,
    ) -> anyhow::Result<(T, Vec<v1::SampleBatch>)> {
        common::until(&mut self.stream, timeout, what, done).await
    }

    fn metric(&self, prefix: &str) -> Option<f64> {
        self.inner.metric(prefix)
    }

    async fn stop(self) {
        self.inner.stop().await;
    }
}

fn is(s: &v1::Sample, status: v1::QualityStatus) -> bool {
    s.quality
        .as_ref()
        .is_some_and(|q| q.status == status as i32)
}

fn rtu_device(name: &str, port: &std::path::Path, unit: u8, extra: &str) -> String {
    format!(
        "  - {{ name: {name}, type: t, protocol: modbus-rtu, endpoint: \"{}\", unit_id: {unit}, serial: {{ baud_rate: 19200 }}, poll_interval: 50ms, timeout: 300ms, max_backoff: 5s{extra}, tags: [ {{ name: temp, address: \"holding:0\", type: f32 }}, {{ name: count, address: \"holding:2\", type: i16 }}, {{ name: run, address: \"coil:0\", type: bool }} ] }}\n",
        port.display()
    )
}

#[tokio::test]
async fn a_dead_slave_does_not_stall_the_live_one_on_the_same_bus() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pty = kit::PtyPair::new(dir.path()).await?;
    let spec = json!({"holding": [{"address": 0, "type": "float32", "value": 21.5}, {"address": 2, "type": "int16", "value": -7}], "coils": [{"address": 0, "value": true}]});
    let peer = kit::ModbusPeer::start_rtu(&spec, &pty.b, 1, 19200).await?;
    let devices = format!(
        "{}{}",
        rtu_device("live", &pty.a, 1, ""),
        rtu_device("dead", &pty.a, 2, "")
    );
    let mut run = start(&devices).await?;
    let good_cycles = |batches: &[v1::SampleBatch]| {
        batches
            .iter()
            .filter(|b| b.device == "live")
            .flat_map(|b| &b.samples)
            .filter(|s| is(s, v1::QualityStatus::Good))
            .count()
            / 3
    };
    let (good, batches) = run
        .until(
            Duration::from_secs(30),
            "20 good cycles of the live slave",
            |seen| {
                let dead_seen = seen.iter().any(|b| b.device == "dead");
                Some(good_cycles(seen)).filter(|good| *good >= 20 && dead_seen)
            },
        )
        .await?;
    let live: Vec<&v1::Sample> = batches
        .iter()
        .filter(|b| b.device == "live")
        .flat_map(|b| &b.samples)
        .collect();
    // A bus that waited 300 ms for the dead slave in every cycle would have asked it once
    // per live cycle; backed off, it is asked far more rarely, whatever the machine's speed.
    let asked_dead = run
        .metric("fieldline_adapter_errors_total{device=\"dead\",kind=\"transport\"} ")
        .unwrap_or(0.0);
    assert!(
        asked_dead >= 1.0 && asked_dead * 4.0 <= good as f64,
        "the live slave keeps its rate while its neighbour is dead: {good} good cycles, {asked_dead} attempts at the dead slave"
    );
    let temp = live
        .iter()
        .find(|s| s.tag == "temp" && is(s, v1::QualityStatus::Good))
        .and_then(|s| s.value.clone());
    assert_eq!(temp, Some(fieldline_core::Value::F64(21.5).into()));
    let count = live
        .iter()
        .find(|s| s.tag == "count")
        .and_then(|s| s.value.clone());
    assert_eq!(count, Some(fieldline_core::Value::I64(-7).into()));
    let dead: Vec<&v1::Sample> = batches
        .iter()
        .filter(|b| b.device == "dead")
        .flat_map(|b| &b.samples)
        .collect();
    assert!(
        !dead.is_empty()
            && dead
                .iter()
                .all(|s| s.value.is_none() && is(s, v1::QualityStatus::Bad)),
        "the dead slave is Bad, never a value"
    );
    assert_eq!(
        run.metric("fieldline_adapter_errors_total{device=\"live\",kind=\"connect\"} "),
        None,
        "the port was never reopened"
    );
    run.stop().await;
    peer.stop().await;
    Ok(())
}

/// A hand-written RTU slave on the far end of the pty that answers reads of one holding
/// register with 7, but garbles the first replies as scripted.
fn noisy_slave(
    port: std::path::PathBuf,
    garble: fn(u64, Vec<u8>) -> Vec<u8>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&port)
        else {
            return;
        };
        let mut n = 0u64;
        let mut request = [0u8; 8];
        while file.read_exact(&mut request).is_ok() {
            let mut frame = vec![request[0], request[1], 2, 0, 7];
            let crc = kit::modbus_crc(&frame);
            frame.extend_from_slice(&crc.to_le_bytes());
            if file.write_all(&garble(n, frame)).is_err() {
                return;
            }
            n += 1;
        }
    })
}

#[tokio::test]
async fn crc_errors_and_stray_bytes_resync_without_reopening_the_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pty = kit::PtyPair::new(dir.path()).await?;
    let _slave = noisy_slave(pty.b.clone(), |n, mut frame| match n {
        0 => {
            let last = frame.len() - 1;
            frame[last] ^= 0xFF; // bad CRC
            frame
        }
        1 => [vec![0x00, 0xFF, 0x13], frame].concat(), // stray bytes, then a valid reply
        _ => frame,
    });
    let device = format!(
        "  - {{ name: noisy, type: t, protocol: modbus-rtu, endpoint: \"{}\", unit_id: 5, serial: {{ baud_rate: 19200 }}, poll_interval: 50ms, timeout: 200ms, max_backoff: 1s, tags: [ {{ name: a, address: \"holding:0\", type: u16 }} ] }}\n",
        pty.a.display()
    );
    let mut run = start(&device).await?;
    let seven = Some(fieldline_core::Value::U64(7).into());
    let ((), batches) = run
        .until(
            Duration::from_secs(30),
            "a Bad sample, then 7 again",
            |seen| {
                let samples: Vec<&v1::Sample> = seen.iter().flat_map(|b| &b.samples).collect();
                let bad = samples.iter().position(|s| is(s, v1::QualityStatus::Bad))?;
                (samples.len() > bad + 1 && samples.last().is_some_and(|s| s.value == seven))
                    .then_some(())
            },
        )
        .await?;
    let samples: Vec<&v1::Sample> = batches.iter().flat_map(|b| &b.samples).collect();
    assert!(
        samples.iter().any(|s| is(s, v1::QualityStatus::Bad)),
        "the garbled reply is reported Bad"
    );
    let last = samples
        .last()
        .ok_or_else(|| anyhow::anyhow!("no samples"))?;
    assert_eq!(
        last.value,
        Some(fieldline_core::Value::U64(7).into()),
        "then it reads 7 again"
    );
    assert_eq!(
        run.metric("fieldline_adapter_errors_total{device=\"noisy\",kind=\"connect\"} "),
        None,
        "without reopening the port"
    );
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_vanished_port_is_reopened_when_it_comes_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut pty = kit::PtyPair::new(dir.path()).await?;
    let spec = json!({"holding": [{"address": 0, "type": "float32", "value": 3.5}]});
    let peer = kit::ModbusPeer::start_rtu(&spec, &pty.b, 1, 19200).await?;
    let mut run = start(&rtu_device("plc", &pty.a, 1, ", stale_after: 0")).await?;
    let samples = |seen: &[v1::SampleBatch]| -> Vec<v1::Sample> {
        seen.iter().flat_map(|b| b.samples.clone()).collect()
    };
    run.until(
        Duration::from_secs(30),
        "reads before the port vanishes",
        |seen| {
            samples(seen)
                .iter()
                .any(|s| is(s, v1::QualityStatus::Good))
                .then_some(())
        },
    )
    .await?;
    peer.stop().await;
    pty.unplug().await;
    run.until(
        Duration::from_secs(30),
        "Bad while the port is gone",
        |seen| {
            samples(seen)
                .iter()
                .any(|s| is(s, v1::QualityStatus::Bad) && s.value.is_none())
                .then_some(())
        },
    )
    .await?;
    pty.restart().await?;
    let peer = kit::ModbusPeer::start_rtu(&spec, &pty.b, 1, 19200).await?;
    // The port is reopened with backoff: wait (up to 30 s) for a Good reading of the value.
    let (good, seen) = run
        .until(
            Duration::from_secs(30),
            "a Good reading once the port is back",
            |seen| {
                samples(seen)
                    .into_iter()
                    .find(|s| s.tag == "temp" && is(s, v1::QualityStatus::Good))
            },
        )
        .await?;
    assert_eq!(
        good.value,
        Some(fieldline_core::Value::F64(3.5).into()),
        "reads again once the port is back; seen: {seen:?}"
    );
    run.stop().await;
    peer.stop().await;
    Ok(())
}
