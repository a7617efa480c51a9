//! The adapter's outbox against the real broker: batches stay on disk until a stored watermark
//! covers them, are sent again after a restart, and a full outbox set to pause polling stops
//! polling (dropping nothing) until storage catches up. No processor runs: the test publishes
//! the watermarks a processor would.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use fieldline_core::config::LineConfig;
use fieldline_proto::{stored_topic, v1};
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit::{self as kit, Answer};
use prometheus_client::registry::Registry;
use prost::Message;
use rumqttc::{AsyncClient, MqttOptions, QoS};

/// A device whose 60 holding registers all read the number of reads served so far: every
/// poll is a new batch.
async fn counting_device() -> anyhow::Result<std::net::SocketAddr> {
    let served = Arc::new(AtomicU64::new(0));
    kit::faulty_modbus(move |_, request| {
        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
        let value = u16::try_from(n % 60_000).unwrap_or(0);
        Answer::Bytes(kit::modbus_reply(
            request,
            &kit::registers_pdu(request, value),
        ))
    })
    .await
}

struct Adapter {
    running: fieldline_adapter::RunningAdapter,
    registry: Registry,
    stop: CancellationToken,
}

impl Adapter {
    async fn start(config: &LineConfig) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let mut registry = Registry::default();
        let running =
            fieldline_adapter::start(config, &Health::default(), &mut registry, stop.clone())
                .await?;
        Ok(Self {
            running,
            registry,
            stop,
        })
    }

    fn metric(&self, prefix: &str) -> f64 {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        kit::metric_value(&text, prefix).unwrap_or(0.0)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.running.wait().await;
    }
}

fn config(
    line: &str,
    state: &std::path::Path,
    device: std::net::SocketAddr,
    outbox: &str,
) -> anyhow::Result<LineConfig> {
    let tags: Vec<String> = (0..60)
        .map(|r| format!("{{ name: r{r}, address: \"holding:{r}\", type: u16 }}"))
        .collect();
    let yaml = format!(
        "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nadapter: {{ grpc_listen: \"127.0.0.1:0\", state_dir: \"{state}\", outbox: {outbox} }}\ndevices:\n  - {{ name: d, type: t, protocol: modbus-tcp, endpoint: \"{device}\", poll_interval: 20ms, tags: [ {} ] }}\n",
        tags.join(", "),
        mqtt = kit::MQTT,
        state = state.display(),
    );
    LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Publishes the watermark a processor would: every batch of `device` up to `sequence` is
/// stored. Retained, as the processor's; `clear` removes it afterwards.
async fn announce(line: &str, device: &str, sequence: u64) -> anyhow::Result<()> {
    let (host, port) = kit::MQTT.rsplit_once(':').unwrap_or(("127.0.0.1", "1883"));
    let (client, mut eventloop) = AsyncClient::new(
        MqttOptions::new(kit::unique("mark"), host, port.parse()?),
        16,
    );
    let mark = v1::StoredUpTo {
        line: line.into(),
        device: device.into(),
        sequence,
        gap: false,
        published_ns: 0,
    };
    let payload = if sequence == 0 {
        Vec::new()
    } else {
        mark.encode_to_vec()
    };
    client
        .publish(stored_topic(line, device), QoS::AtLeastOnce, true, payload)
        .await?;
    client.disconnect().await?;
    while eventloop.poll().await.is_ok() {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stay_until_stored_and_go_again_after_a_restart() -> anyhow::Result<()> {
    kit::require_mqtt()?;
    let state = tempfile::tempdir()?;
    let line = kit::unique("outbox");
    let device = counting_device().await?;
    let config = config(&line, state.path(), device, "{ fsync: os }")?;
    let mut bus = kit::subscribe(&format!("fieldline/v1/{line}/+/samples")).await?;

    let adapter = Adapter::start(&config).await?;
    let mut first = Vec::new();
    while first.len() < 20 {
        let (_, payload) = tokio::time::timeout(Duration::from_secs(10), bus.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))?;
        first.push(v1::SampleBatch::decode(payload.as_slice())?.sequence);
    }
    adapter.stop().await;
    let held = {
        // Nothing acknowledged them: all of them are held.
        let adapter = Adapter::start(&config).await?;
        kit::wait_for(Duration::from_secs(10), "the outbox reported", || async {
            let n = adapter.metric("fieldline_adapter_outbox_batches ");
            (n >= first.len() as f64).then_some(n)
        })
        .await?;
        adapter
    };
    // After the restart the held batches are published again, oldest first.
    let mut again = Vec::new();
    kit::wait_for(Duration::from_secs(10), "the held batches again", || {
        while let Ok((_, payload)) = bus.try_recv() {
            if let Ok(b) = v1::SampleBatch::decode(payload.as_slice()) {
                again.push(b.sequence);
            }
        }
        let seen = first.iter().all(|s| again.contains(s));
        async move { seen.then_some(()) }
    })
    .await?;

    // A watermark over everything so far releases it all.
    let newest = again.iter().copied().max().unwrap_or(0);
    announce(&line, "d", newest).await?;
    kit::wait_for(Duration::from_secs(10), "the outbox released", || async {
        let n = held.metric("fieldline_adapter_outbox_batches ");
        // Batches polled after the watermark may still be held.
        (n < first.len() as f64).then_some(())
    })
    .await?;
    held.stop().await;
    announce(&line, "d", 0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_that_pauses_polling_drops_nothing_and_resumes() -> anyhow::Result<()> {
    kit::require_mqtt()?;
    let state = tempfile::tempdir()?;
    let line = kit::unique("outbox-full");
    let device = counting_device().await?;
    let config = config(
        &line,
        state.path(),
        device,
        "{ max_size: 512KiB, when_full: pause_polling, fsync: os }",
    )?;
    let adapter = Adapter::start(&config).await?;
    let polls = "fieldline_adapter_polls_total{device=\"d\"} ";
    // About 350 batches fill 512 KiB: polling stops there.
    let paused_at = kit::wait_for(Duration::from_secs(40), "polling to pause", || async {
        let before = adapter.metric(polls);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = adapter.metric(polls);
        (after > 0.0 && after == before).then_some(after)
    })
    .await?;
    assert_eq!(
        adapter.metric("fieldline_adapter_outbox_dropped_total "),
        0.0
    );
    assert_eq!(
        adapter.metric("fieldline_adapter_batches_dropped_total "),
        0.0
    );
    assert!(adapter.metric("fieldline_adapter_outbox_bytes ") <= 512.0 * 1024.0);

    // Storage catches up: polling resumes.
    announce(&line, "d", u64::MAX >> 1).await?;
    kit::wait_for(Duration::from_secs(20), "polling to resume", || async {
        (adapter.metric(polls) > paused_at + 10.0).then_some(())
    })
    .await?;
    assert_eq!(
        adapter.metric("fieldline_adapter_outbox_dropped_total "),
        0.0
    );
    adapter.stop().await;
    announce(&line, "d", 0).await?;
    Ok(())
}
