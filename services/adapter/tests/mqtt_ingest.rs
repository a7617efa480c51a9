//! MQTT ingest against the real Mosquitto: JSON messages from a third-party publisher
//! (paho-mqtt, `tests/peers/mqtt_publisher.py`) and a Sparkplug B edge node. Samples are
//! observed through the adapter's StreamSamples, error counts through its metrics.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, bail};
use fieldline_core::sample::{Quality, QualityReason, Sample, SampleBatch, Value};
use fieldline_proto::{
    sparkplug::{Payload, payload::Metric, payload::metric},
    v1,
};
use fieldline_runtime::now_ns;
use fieldline_testkit as kit;
use prost::Message;
use rumqttc::{AsyncClient, QoS};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::mpsc,
};

mod common;

/// The paho-mqtt publisher peer.
struct PahoPublisher {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl PahoPublisher {
    async fn start() -> anyhow::Result<Self> {
        let script = kit::repo_root().join("tests/peers/mqtt_publisher.py");
        let (_, port) = kit::MQTT.rsplit_once(':').context("broker address")?;
        let mut child = Command::new(kit::python()?)
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", port])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let stdin = child.stdin.take().context("publisher stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("publisher stdout")?).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
            .await
            .context("the paho publisher did not start within 20s")??;
        if ready.as_deref() != Some("READY") {
            bail!("the paho publisher said {ready:?} instead of READY");
        }
        Ok(Self {
            _child: child,
            stdin,
            stdout,
        })
    }

    /// Publishes `payload` on `topic` (QoS 1) and waits for the broker's acknowledgement.
    async fn publish(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        let line = kit::serde_json::json!({ "topic": topic, "hex": hex }).to_string() + "\n";
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line())
            .await
            .context("the paho publisher did not answer within 20s")??;
        if answer.as_deref() != Some("PUBLISHED") {
            bail!("publishing on {topic}: the paho publisher said {answer:?}");
        }
        Ok(())
    }
}

/// The next samples from `stream` (in order) other than those of `skip`, until `n` arrived.
async fn next_samples(
    stream: &mut tonic::Streaming<v1::SampleBatch>,
    n: usize,
    skip: &str,
) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while out.len() < n {
            let batch = stream.message().await?.context("the sample stream ended")?;
            let batch = SampleBatch::try_from(batch)?;
            out.extend(batch.samples.into_iter().filter(|s| s.tag != skip));
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("only {} of {n} samples arrived: {out:?}", out.len()))??;
    Ok(out)
}

fn good(tag: &str, value: Value, timestamp_ns: i64) -> Sample {
    Sample::good(tag, value, timestamp_ns)
}

fn reason(s: &Sample) -> Option<QualityReason> {
    match &s.quality {
        Quality::Bad { reason, .. } => Some(*reason),
        _ => None,
    }
}

const MS: i64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_topics_map_pointers_and_survive_broken_messages() -> anyhow::Result<()> {
    let p = kit::unique("cnc");
    let device = format!(
        "  - name: cnc\n    type: cnc\n    protocol: mqtt\n    endpoint: \"{mqtt}\"\n    mqtt: {{ format: json, topics: [\"{p}/+/status\"], timestamp: /ts }}\n    tags:\n      - {{ name: speed, address: /spindle/speed, type: f64 }}\n      - {{ name: count, address: /count, type: u16 }}\n      - {{ name: mode, address: \"{p}/1/status#/mode\", type: string }}\n      - {{ name: warm, address: /warm, type: bool }}\n",
        mqtt = kit::MQTT
    );
    let mut run = common::start("mqtt-json", &device).await?;
    let mut stream = run.stream().await?;
    let mut peer = PahoPublisher::start().await?;
    let status = |n: u32| format!("{p}/{n}/status");

    // The driver subscribes on its own connection: publish until it is listening.
    let mut listening = false;
    for _ in 0..50 {
        peer.publish(&status(0), br#"{"ts": 1, "warm": true}"#)
            .await?;
        if let Ok(Ok(Some(batch))) =
            tokio::time::timeout(Duration::from_millis(300), stream.message()).await
            && batch.samples.iter().any(|s| s.tag == "warm")
        {
            listening = true;
            break;
        }
    }
    assert!(listening, "the ingest driver never received a message");

    peer.publish(
        &status(1),
        br#"{"ts": 1714564800250, "spindle": {"speed": 1200.5, "load": 3}, "count": 7, "mode": "AUTO"}"#,
    )
    .await?;
    peer.publish(&status(1), b"{\"count\": ").await?;
    peer.publish(&status(1), b"{\"mode\": \"\xff\xfe\"}")
        .await?;
    let big = format!("{{\"count\": 1, \"pad\": \"{}\"}}", "x".repeat(300 * 1024));
    peer.publish(&status(1), big.as_bytes()).await?;
    peer.publish(
        &status(1),
        br#"{"ts": 1714564801000, "spindle": {"speed": "NaN"}, "count": 70000}"#,
    )
    .await?;
    let before = now_ns();
    peer.publish(&status(2), br#"{"count": 9, "mode": "MDI"}"#)
        .await?;
    peer.publish(&status(1), br#"{"ts": "1714564802000", "count": 8}"#)
        .await?;

    let samples = next_samples(&mut stream, 7, "warm").await?;
    let after = now_ns();
    let t1 = 1_714_564_800_250 * MS;
    assert_eq!(samples[0], good("speed", Value::F64(1200.5), t1));
    assert_eq!(samples[1], good("count", Value::U64(7), t1));
    assert_eq!(samples[2], good("mode", Value::String("AUTO".into()), t1));
    // "NaN" for a float and 70000 for a u16 are Bad, never a value.
    let t2 = 1_714_564_801_000 * MS;
    assert_eq!(
        (
            samples[3].tag.as_str(),
            reason(&samples[3]),
            samples[3].value.clone()
        ),
        ("speed", Some(QualityReason::DecodeError), None)
    );
    assert_eq!(
        (
            samples[4].tag.as_str(),
            reason(&samples[4]),
            samples[4].value.clone()
        ),
        ("count", Some(QualityReason::OutOfRange), None)
    );
    assert_eq!((samples[3].timestamp_ns, samples[4].timestamp_ns), (t2, t2));
    // Without a timestamp the arrival time is used; `mode` reads only topic 1.
    assert_eq!(samples[5].tag, "count");
    assert_eq!(samples[5].value, Some(Value::U64(9)));
    assert!(
        (before..=after).contains(&samples[5].timestamp_ns),
        "arrival time {} outside [{before}, {after}]",
        samples[5].timestamp_ns
    );
    assert_eq!(
        samples[6],
        good("count", Value::U64(8), 1_714_564_802_000 * MS)
    );

    for (kind, expected) in [
        ("payload_json", 1.0),
        ("payload_utf8", 1.0),
        ("payload_too_large", 1.0),
        ("timestamp", 1.0),
    ] {
        let prefix = format!("fieldline_adapter_errors_total{{device=\"cnc\",kind=\"{kind}\"}} ");
        assert_eq!(run.metric(&prefix), Some(expected), "{prefix}");
    }
    run.stop().await;
    Ok(())
}

// The edge node is played by the test: payloads are built with the generated Sparkplug types
// and published with rumqttc, since no independent Sparkplug node is available here.
struct EdgeNode {
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    group: String,
}

impl EdgeNode {
    async fn start(group: &str) -> anyhow::Result<Self> {
        let (client, commands) =
            kit::subscribe_many(&["NCMD", "DCMD"].map(|kind| format!("spBv1.0/{group}/{kind}/#")))
                .await?;
        Ok(Self {
            client,
            commands,
            group: group.to_string(),
        })
    }

    async fn send(&self, kind: &str, device: Option<&str>, payload: Payload) -> anyhow::Result<()> {
        let topic = match device {
            Some(d) => format!("spBv1.0/{}/{kind}/edge1/{d}", self.group),
            None => format!("spBv1.0/{}/{kind}/edge1", self.group),
        };
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.encode_to_vec())
            .await?;
        Ok(())
    }

    /// The next command the node receives, if one comes within `window`.
    async fn command(&mut self, window: Duration) -> Option<(String, Payload)> {
        let (topic, bytes) = tokio::time::timeout(window, self.commands.recv())
            .await
            .ok()??;
        Some((topic, Payload::decode(bytes.as_slice()).ok()?))
    }
}

fn metric(name: Option<&str>, alias: u64, datatype: u32, value: metric::Value) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: Some(datatype),
        value: Some(value),
        ..Default::default()
    }
}

fn payload(seq: Option<u64>, timestamp_ms: u64, metrics: Vec<Metric>) -> Payload {
    Payload {
        timestamp: Some(timestamp_ms),
        seq,
        metrics,
        ..Default::default()
    }
}

fn bd_seq(v: u64) -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        datatype: Some(4),
        value: Some(metric::Value::LongValue(v)),
        ..Default::default()
    }
}

/// DBIRTH metrics of press1: Press/Force (Double, alias 1), Count (UInt32, alias 2), Temp
/// (Int16, alias 3).
fn press_birth(force: f64, count: u32) -> Vec<Metric> {
    use metric::Value as V;
    vec![
        metric(Some("Press/Force"), 1, 10, V::DoubleValue(force)),
        metric(Some("Count"), 2, 7, V::IntValue(count)),
        // -5 as Int16 travels as two's complement in the uint32 field.
        metric(Some("Temp"), 3, 2, V::IntValue(u32::from((-5i16) as u16))),
    ]
}

fn assert_rebirth(command: Option<(String, Payload)>, group: &str) {
    let (topic, payload) = command.expect("a rebirth request");
    assert_eq!(topic, format!("spBv1.0/{group}/NCMD/edge1"));
    assert_eq!(payload.metrics.len(), 1);
    let m = &payload.metrics[0];
    assert_eq!(m.name.as_deref(), Some("Node Control/Rebirth"));
    assert_eq!(m.datatype, Some(11));
    assert_eq!(m.value, Some(metric::Value::BooleanValue(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_births_aliases_gaps_and_deaths() -> anyhow::Result<()> {
    use metric::Value as V;
    let group = kit::unique("plant");
    let device = format!(
        "  - name: press\n    type: press\n    protocol: mqtt\n    endpoint: \"{mqtt}\"\n    mqtt: {{ format: sparkplug-b, group_id: \"{group}\", edge_node_id: edge1, device_id: press1 }}\n    tags:\n      - {{ name: force, address: Press/Force, type: f64, writable: true, min: 0, max: 100 }}\n      - {{ name: count, address: Count, type: u32 }}\n      - {{ name: temp, address: Temp, type: i16 }}\n",
        mqtt = kit::MQTT
    );
    // The node listens for commands before the adapter starts, so it sees the first request.
    let mut node = EdgeNode::start(&group).await?;
    let mut run = common::start("mqtt-spb", &device).await?;
    let mut stream = run.stream().await?;

    // The adapter asks for a rebirth once subscribed, and again while data comes without a
    // birth; data is sent until a request arrives (the node may have subscribed too late to
    // see the first).
    let mut first = None;
    for _ in 0..50 {
        node.send("NDATA", None, payload(Some(9), 1, vec![]))
            .await?;
        first = node.command(Duration::from_millis(300)).await;
        if first.is_some() {
            break;
        }
    }
    assert_rebirth(first, &group);

    // Birth certificates bind names to aliases; DDATA then carries aliases only.
    node.send("NBIRTH", None, payload(Some(0), 1_000, vec![bd_seq(1)]))
        .await?;
    node.send(
        "DBIRTH",
        Some("press1"),
        payload(Some(1), 2_000, press_birth(10.5, 3)),
    )
    .await?;
    let mut data = payload(
        Some(2),
        3_000,
        vec![
            metric(None, 2, 7, V::IntValue(4)),
            metric(None, 1, 10, V::DoubleValue(11.25)),
        ],
    );
    data.metrics[0].datatype = None;
    data.metrics[1].timestamp = Some(3_500);
    node.send("DDATA", Some("press1"), data).await?;
    let samples = next_samples(&mut stream, 5, "").await?;
    assert_eq!(
        samples,
        vec![
            good("force", Value::F64(10.5), 2_000 * MS),
            good("count", Value::U64(3), 2_000 * MS),
            good("temp", Value::I64(-5), 2_000 * MS),
            good("count", Value::U64(4), 3_000 * MS),
            good("force", Value::F64(11.25), 3_500 * MS),
        ]
    );

    // Writes go to the device as DCMD, typed by the birth; the usual checks come first.
    let write = |id: &str, tag: &str, value: Value| v1::Command {
        ttl_ns: 0,
        id: id.into(),
        tag: format!("{}/press/{tag}", run.line),
        value: Some(value.into()),
        deadline_ns: 0,
        requested_by: "test".into(),
        reason: "test".into(),
    };
    let (c1, c2, c3) = (
        write("w1", "force", Value::F64(12.5)),
        write("w2", "force", Value::F64(250.0)),
        write("w3", "count", Value::U64(1)),
    );
    let result = run.client.write(c1).await?.into_inner();
    assert_eq!(
        result.status,
        v1::CommandStatus::Written as i32,
        "{result:?}"
    );
    let (topic, cmd) = node
        .command(Duration::from_secs(10))
        .await
        .context("no DCMD arrived")?;
    assert_eq!(topic, format!("spBv1.0/{group}/DCMD/edge1/press1"));
    assert_eq!(cmd.metrics.len(), 1);
    assert_eq!(cmd.metrics[0].name.as_deref(), Some("Press/Force"));
    assert_eq!(cmd.metrics[0].datatype, Some(10));
    assert_eq!(cmd.metrics[0].value, Some(V::DoubleValue(12.5)));
    let result = run.client.write(c2).await?.into_inner();
    assert_eq!(
        (result.status, result.rejected_by.as_str()),
        (v1::CommandStatus::Rejected as i32, "max")
    );
    let result = run.client.write(c3).await?.into_inner();
    assert_eq!(
        (result.status, result.rejected_by.as_str()),
        (v1::CommandStatus::Rejected as i32, "not_writable")
    );

    // A sequence gap: one rebirth request, and data is ignored until the new birth.
    let gap = |seq, force| {
        payload(
            Some(seq),
            4_000,
            vec![metric(None, 1, 10, V::DoubleValue(force))],
        )
    };
    node.send("DDATA", Some("press1"), gap(7, 666.0)).await?;
    assert_rebirth(node.command(Duration::from_secs(10)).await, &group);
    node.send("DDATA", Some("press1"), gap(8, 667.0)).await?;
    node.send("NBIRTH", None, payload(Some(0), 5_000, vec![bd_seq(2)]))
        .await?;
    node.send(
        "DBIRTH",
        Some("press1"),
        payload(Some(1), 6_000, press_birth(20.0, 5)),
    )
    .await?;
    node.send("DDATA", Some("press1"), gap(2, 21.0)).await?;
    // An NDEATH of the earlier session (bdSeq 1) is stale and changes nothing.
    node.send("NDEATH", None, payload(None, 7_000, vec![bd_seq(1)]))
        .await?;
    node.send("DDEATH", Some("press1"), payload(Some(3), 8_000, vec![]))
        .await?;
    let samples = next_samples(&mut stream, 7, "").await?;
    assert_eq!(
        samples[..4],
        [
            good("force", Value::F64(20.0), 6_000 * MS),
            good("count", Value::U64(5), 6_000 * MS),
            good("temp", Value::I64(-5), 6_000 * MS),
            good("force", Value::F64(21.0), 4_000 * MS),
        ]
    );
    for (s, tag) in samples[4..].iter().zip(["force", "count", "temp"]) {
        assert_eq!(s.tag, tag);
        assert_eq!(s.value, None);
        assert_eq!(reason(s), Some(QualityReason::CommFailure), "{s:?}");
    }
    assert!(
        node.command(Duration::from_millis(300)).await.is_none(),
        "no further rebirth request"
    );
    for (kind, expected) in [("sequence_gap", 1.0), ("stale_death", 1.0)] {
        let prefix = format!("fieldline_adapter_errors_total{{device=\"press\",kind=\"{kind}\"}} ");
        assert_eq!(run.metric(&prefix), Some(expected), "{prefix}");
    }
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_makes_every_tag_bad() -> anyhow::Result<()> {
    // A port nothing listens on: the device's broker is down.
    let addr = kit::free_addr()?;
    let device = format!(
        "  - name: cnc\n    type: cnc\n    protocol: mqtt\n    endpoint: \"{addr}\"\n    max_backoff: 200ms\n    mqtt: {{ format: json, topics: [\"cnc/+/status\"] }}\n    tags:\n      - {{ name: speed, address: /spindle/speed, type: f64 }}\n      - {{ name: count, address: /count, type: u16 }}\n"
    );
    let mut run = common::start("mqtt-down", &device).await?;
    let mut stream = run.stream().await?;
    let samples = next_samples(&mut stream, 2, "").await?;
    for (s, tag) in samples.iter().zip(["speed", "count"]) {
        assert_eq!(s.tag, tag);
        assert_eq!(s.value, None);
        assert_eq!(reason(s), Some(QualityReason::CommFailure), "{s:?}");
    }
    let failures = run
        .metric("fieldline_adapter_errors_total{device=\"cnc\",kind=\"connection\"} ")
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "connection failures counted: {failures}");
    run.stop().await;
    Ok(())
}

fn command(line: &str, device: &str, id: &str, tag: &str, value: Value) -> v1::Command {
    v1::Command {
        ttl_ns: 0,
        id: id.into(),
        tag: format!("{line}/{device}/{tag}"),
        value: Some(value.into()),
        deadline_ns: 0,
        requested_by: "test".into(),
        reason: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_writes_publish_their_template_once_per_command() -> anyhow::Result<()> {
    let p = kit::unique("cnc");
    let device = format!(
        "  - name: cnc\n    type: cnc\n    protocol: mqtt\n    endpoint: \"{mqtt}\"\n    mqtt:\n      format: json\n      topics: [\"{p}/+/status\"]\n      writes:\n        - {{ tag: setpoint, topic: \"{p}/1/cmd\", template: '{{\"spindle\": {{\"setpoint\": {{value}}}}, \"id\": {{command_id}}}}' }}\n    tags:\n      - {{ name: setpoint, address: /spindle/setpoint, type: f64, writable: true, min: 0, max: 5000 }}\n      - {{ name: speed, address: /spindle/speed, type: f64 }}\n",
        mqtt = kit::MQTT
    );
    let (_listener, mut messages) = kit::subscribe_many(&[format!("{p}/1/cmd")]).await?;
    let mut run = common::start("mqtt-json-write", &device).await?;
    let line = run.line.clone();
    let result = run
        .client
        .write(command(&line, "cnc", "j1", "setpoint", Value::F64(1500.5)))
        .await?
        .into_inner();
    assert_eq!(
        result.status,
        v1::CommandStatus::Written as i32,
        "{result:?}"
    );
    let (topic, message) = tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .context("no write message arrived")?
        .context("listener stopped")?;
    assert_eq!(topic, format!("{p}/1/cmd"));
    assert_eq!(
        String::from_utf8(message)?,
        r#"{"spindle": {"setpoint": 1500.5}, "id": "j1"}"#
    );
    // The same command again is answered from memory and not sent twice.
    let again = run
        .client
        .write(command(&line, "cnc", "j1", "setpoint", Value::F64(1500.5)))
        .await?
        .into_inner();
    assert_eq!(again.status, v1::CommandStatus::Written as i32);
    for (id, tag, value, rejected_by) in [
        ("j2", "setpoint", Value::F64(9000.0), "max"),
        ("j3", "speed", Value::F64(1.0), "not_writable"),
    ] {
        let result = run
            .client
            .write(command(&line, "cnc", id, tag, value))
            .await?
            .into_inner();
        assert_eq!(
            (result.status, result.rejected_by.as_str()),
            (v1::CommandStatus::Rejected as i32, rejected_by)
        );
    }
    let result = run
        .client
        .write(command(&line, "cnc", "j4", "setpoint", Value::F64(0.0)))
        .await?
        .into_inner();
    assert_eq!(
        result.status,
        v1::CommandStatus::Written as i32,
        "{result:?}"
    );
    let (_, message) = tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .context("no second write message arrived")?
        .context("listener stopped")?;
    // The next message is j4's: j1 was not repeated and the rejected ones sent nothing.
    assert_eq!(
        String::from_utf8(message)?,
        r#"{"spindle": {"setpoint": 0.0}, "id": "j4"}"#
    );
    run.stop().await;
    Ok(())
}
