//! A line's samples topic receiving what no adapter sends (a 17 MiB blob, a 5 MiB batch, a
//! batch of a million empty samples, ten thousand random payloads, a batch with a bad sample),
//! through real Mosquitto into the processor binary: each is refused (or loses its bad sample
//! only), counted by kind and copied to the dead-letter topic; the good batches before and
//! after are stored, and the processor stays small.

use std::{collections::BTreeMap, time::Duration};

mod common;

use fieldline_proto::{dead_letter_topic, samples_topic, v1};
use fieldline_testkit as kit;
use prost::Message;
use rumqttc::{AsyncClient, MqttOptions, QoS};

fn batch(line: &str, sequence: u64, samples: Vec<v1::Sample>) -> v1::SampleBatch {
    v1::SampleBatch {
        line: line.into(),
        device: "d1".into(),
        adapter_id: "poison-test".into(),
        sequence,
        samples,
        previous_sequence: 0,
    }
}

fn sample(tag: &str, value: fieldline_core::Value) -> v1::Sample {
    v1::Sample::from(fieldline_core::Sample::good(
        tag,
        value,
        fieldline_runtime::now_ns(),
    ))
}

/// The value of the metric line that starts with `name` (labels included), or 0.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_on_the_samples_topic_is_dead_lettered_and_good_data_keeps_flowing()
-> anyhow::Result<()> {
    kit::require_mqtt()?;
    let dir = tempfile::tempdir()?;
    let mut processor = common::start("poison", dir.path()).await?;
    let (line, http, db) = (processor.line.clone(), processor.http, processor.db.clone());
    let mut letters = kit::subscribe(&dead_letter_topic(&line)).await?;

    // A publisher that may send what the processor's own client would not.
    let (host, port) = kit::MQTT.rsplit_once(':').unwrap_or(("127.0.0.1", "1883"));
    let mut options = MqttOptions::new(kit::unique("poisoner"), host, port.parse()?);
    options.set_max_packet_size(32 << 20, 32 << 20);
    let (publisher, mut eventloop) = AsyncClient::new(options, 2048);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let topic = samples_topic(&line, "d1");
    let publish = |payload: Vec<u8>| publisher.publish(&topic, QoS::AtLeastOnce, false, payload);
    let stored = || async {
        let (_, metrics) = kit::http_get(&format!("http://{http}/metrics"))
            .await
            .ok()?;
        Some(metric(&metrics, "fieldline_processor_batches_stored_total"))
    };

    let temp = |v: u64| sample("temp", fieldline_core::Value::U64(v));
    publish(batch(&line, 1, vec![temp(1)]).encode_to_vec()).await?;
    kit::wait_for(
        Duration::from_secs(20),
        "the first good batch stored",
        || async { stored().await.filter(|n| *n >= 1.0) },
    )
    .await?;

    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    publish(vec![0xa5; 17 << 20]).await?;
    let huge = fieldline_core::Value::String("x".repeat(5 << 20));
    publish(batch(&line, 2, vec![sample("temp", huge)]).encode_to_vec()).await?;
    *expected.entry("too_large").or_default() += 2;
    let empty_samples: Vec<u8> = std::iter::repeat_n([0x2a, 0x00], 1_000_000)
        .flatten()
        .collect();
    publish(empty_samples).await?;
    *expected.entry("too_many_samples").or_default() += 1;
    let received = || async {
        let (_, metrics) = kit::http_get(&format!("http://{http}/metrics"))
            .await
            .ok()?;
        Some(metric(
            &metrics,
            "fieldline_processor_batches_received_total",
        ))
    };
    // Random bytes behind a byte no protobuf field starts with. Sent in rounds the processor
    // takes before the next, since a broker drops what exceeds its queue for a slow client
    // (Mosquitto's default is 1,000 messages).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let before = received().await.unwrap_or(0.0);
    for n in 0..10_000 {
        if n > 0 && n % 500 == 0 {
            kit::wait_for(
                Duration::from_secs(30),
                "the processor to take a round of junk",
                || async { received().await.filter(|r| *r >= before + n as f64) },
            )
            .await?;
        }
        let mut junk = vec![0xff];
        let len = 1 + (seed % 64) as usize;
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(seed as u8);
        }
        publish(junk).await?;
    }
    *expected.entry("undecodable").or_default() += 10_000;
    let mut with_bad_sample = batch(&line, 3, vec![temp(3)]);
    with_bad_sample
        .samples
        .push(sample("Not A Tag", fieldline_core::Value::U64(0)));
    publish(with_bad_sample.encode_to_vec()).await?;
    *expected.entry("invalid_sample").or_default() += 1;
    publish(batch(&line, 4, vec![temp(4)]).encode_to_vec()).await?;

    // Every refusal arrives as one dead letter, with its kind.
    let total: usize = expected.values().sum();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while kinds.values().sum::<usize>() < total {
        let Ok(received) = tokio::time::timeout_at(deadline, letters.recv()).await else {
            let (_, metrics) = kit::http_get(&format!("http://{http}/metrics")).await?;
            let counts: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("fieldline_processor_"))
                .collect();
            anyhow::bail!(
                "dead letters so far: {kinds:?}, expected {expected:?}; the processor counted:\n{}",
                counts.join("\n")
            );
        };
        let (_, payload) =
            received.ok_or_else(|| anyhow::anyhow!("the dead-letter subscription ended"))?;
        let letter = v1::DeadLetter::decode(payload.as_slice())?;
        assert_eq!(letter.topic, topic);
        assert!(letter.payload.len() <= 64 << 10, "{}", letter.payload.len());
        assert_eq!(letter.truncated, letter.payload_bytes > 64 << 10);
        *kinds.entry(letter.kind).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = expected
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(kinds, expected);

    // The good batches after the poison are stored too, the bad sample's batch without it.
    kit::wait_for(
        Duration::from_secs(30),
        "all good batches stored",
        || async { stored().await.filter(|n| *n >= 3.0) },
    )
    .await?;
    let (_, metrics) = kit::http_get(&format!("http://{http}/metrics")).await?;
    for (kind, n) in &kinds {
        let name = format!("fieldline_processor_dead_letters_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&metrics, &name), *n as f64, "{name} in\n{metrics}");
    }
    assert_eq!(
        metric(&metrics, "fieldline_processor_samples_dropped_total"),
        1.0
    );
    let url = format!("sqlite://{}?mode=ro", db.display());
    let latest = kit::wait_for(Duration::from_secs(10), "the last temperature", || async {
        let pool = sqlx::SqlitePool::connect(&url).await.ok()?;
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT value_text FROM latest_values WHERE device = 'd1' AND tag = 'temp'",
        )
        .fetch_optional(&pool)
        .await
        .ok()?;
        pool.close().await;
        row.filter(|(v,)| v == "4")
    })
    .await?;
    assert_eq!(latest.0, "4");

    // Peak memory of the processor through all of it.
    let pid = processor
        .process
        .pid()
        .ok_or_else(|| anyhow::anyhow!("processor gone"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))?;
    assert!(peak_kib < 256 * 1024, "processor peak RSS {peak_kib} KiB");

    assert_eq!(processor.process.terminate().await?, Some(0));
    processor.stop_storage().await;
    Ok(())
}
