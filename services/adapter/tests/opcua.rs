//! The OPC UA driver against real servers we did not write (asyncua, and node-opcua for a
//! second implementation): subscribed values of several types with their source timestamps,
//! status codes as qualities, polling, secure endpoints with a trust list, user identities, a
//! server restart while subscribed, and writes.

use std::time::Duration;

use fieldline_core::Value;
use fieldline_proto::v1;
use fieldline_testkit::{
    self as kit,
    opcua::{OpcuaOptions, OpcuaPeer, OpcuaServer},
    serde_json::json,
};

mod common;

fn spec() -> kit::serde_json::Value {
    json!({
        "folder": "Line",
        "variables": [
            {"name": "Temperature", "type": "Double", "value": 21.5,
             "source_timestamp": "2024-05-01T12:00:00.123456Z"},
            {"name": "Count", "type": "UInt32", "value": 7,
             "source_timestamp": "2024-05-01T12:00:01Z"},
            {"name": "Label", "type": "String", "value": "batch-1",
             "source_timestamp": "2024-05-01T12:00:02Z"},
            {"name": "Running", "type": "Boolean", "value": true,
             "source_timestamp": "2024-05-01T12:00:03Z"},
            {"name": "Level", "type": "Int16", "value": -5, "writable": true,
             "source_timestamp": "2024-05-01T12:00:04Z"},
            {"name": "Locked", "type": "Int32", "value": 1}
        ]
    })
}

const TAGS: &str = "    tags:
      - { name: temperature, address: \"ns=2;s=Temperature\", type: f64 }
      - { name: count, address: \"ns=2;s=Count\", type: u32 }
      - { name: label, address: \"ns=2;s=Label\", type: string }
      - { name: running, address: \"ns=2;s=Running\", type: bool }
      - { name: level, address: \"ns=2;s=Level\", type: i16, writable: true, min: -100, max: 100 }
      - { name: locked, address: \"ns=2;s=Locked\", type: i32, writable: true }
";

fn device(name: &str, endpoint: &str, opcua: &str, tags: &str) -> String {
    format!(
        "  - name: {name}\n    type: t\n    protocol: opcua\n    endpoint: \"{endpoint}\"\n    poll_interval: 100ms\n    timeout: 5s\n    max_backoff: 1s\n{opcua}{tags}"
    )
}

/// Nanoseconds since the Unix epoch of an RFC 3339 time in UTC with up to 7 fraction digits,
/// computed here independently of the driver.
fn ns(date: (i64, i64, i64), hms: (i64, i64, i64), frac_ns: i64) -> i64 {
    let (y, m, d) = date;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hms.0) * 60 + hms.1) * 60 * 1_000_000_000 + hms.2 * 1_000_000_000 + frac_ns
}

fn quality(s: &v1::Sample) -> (i32, i32, String) {
    s.quality.as_ref().map_or((0, 0, String::new()), |q| {
        (q.status, q.reason, q.detail.clone())
    })
}

fn comm_failure(s: &v1::Sample) -> bool {
    quality(s).1 == v1::QualityReason::CommFailure as i32
}

fn is_good(s: &v1::Sample) -> bool {
    quality(s).0 == v1::QualityStatus::Good as i32
}

fn is_bad(s: &v1::Sample) -> bool {
    quality(s).0 == v1::QualityStatus::Bad as i32
}

/// Every sample the adapter published so far (from its start, through the broker), in order,
/// with its device.
struct Samples {
    stream: tokio::sync::mpsc::UnboundedReceiver<v1::SampleBatch>,
    seen: Vec<(String, v1::Sample)>,
}

impl Samples {
    async fn new(run: &mut common::TestAdapter) -> anyhow::Result<Self> {
        Ok(Self {
            stream: run.take_bus()?,
            seen: Vec::new(),
        })
    }

    /// Where the samples received from now on start.
    fn mark(&self) -> usize {
        self.seen.len()
    }

    /// The first sample of `device`/`tag` at or after `from` that satisfies `pred`, waiting
    /// up to `within` for it.
    async fn wait(
        &mut self,
        from: usize,
        device: &str,
        tag: &str,
        within: Duration,
        pred: impl Fn(&v1::Sample) -> bool,
    ) -> anyhow::Result<v1::Sample> {
        let deadline = tokio::time::Instant::now() + within;
        let mut checked = from;
        loop {
            let hit = self.seen[checked.min(self.seen.len())..]
                .iter()
                .find(|(d, s)| {
                    d == device && (s.tag == tag || s.tag.ends_with(&format!("/{tag}"))) && pred(s)
                });
            if let Some((_, s)) = hit {
                return Ok(s.clone());
            }
            checked = self.seen.len().max(from);
            let batch = tokio::time::timeout_at(deadline, self.stream.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no matching sample of {device}/{tag} in {within:?}; seen: {:?}",
                        self.seen
                            .iter()
                            .filter(|(d, _)| d == device)
                            .map(|(_, s)| s)
                            .collect::<Vec<_>>()
                    )
                })?
                .ok_or_else(|| anyhow::anyhow!("the sample stream ended"))?;
            for s in batch.samples {
                self.seen.push((batch.device.clone(), s));
            }
        }
    }
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

fn pki(peer: &OpcuaPeer, name: &str) -> String {
    peer.dir().join(format!("pki-{name}")).display().to_string()
}

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn subscribed_and_polled_values_statuses_and_writes() -> anyhow::Result<()> {
    let mut peer = OpcuaPeer::start(&spec(), OpcuaOptions::default()).await?;
    let endpoint = peer.endpoint();
    let sub = device(
        "sub",
        &endpoint,
        // Seven monitored items in subscriptions of at most two. The three devices share a
        // PKI folder (and so one client certificate).
        &format!(
            "    opcua: {{ pki_dir: \"{}\", max_items_per_subscription: 2 }}\n",
            pki(&peer, "shared")
        ),
        &format!("{TAGS}      - {{ name: missing, address: \"ns=2;s=Nope\", type: f64 }}\n"),
    );
    let poll = device(
        "poll",
        &endpoint,
        &format!(
            "    opcua: {{ mode: poll, pki_dir: \"{}\" }}\n",
            pki(&peer, "shared")
        ),
        "    tags:\n      - { name: temperature, address: \"ns=2;s=Temperature\", type: f64, scale: 2 }\n",
    );
    let banded = device(
        "banded",
        &endpoint,
        &format!("    opcua: {{ pki_dir: \"{}\" }}\n", pki(&peer, "shared")),
        "    tags:\n      - { name: temperature, address: \"ns=2;s=Temperature\", type: f64, deadband: 1.0 }\n",
    );
    let mut run = common::start("opcua", &format!("{sub}{poll}{banded}")).await?;
    let mut stream = Samples::new(&mut run).await?;

    // Every type, with the server's source timestamp exactly (Python keeps microseconds).
    let expected = [
        (
            "temperature",
            Value::F64(21.5),
            ns((2024, 5, 1), (12, 0, 0), 123_456_000),
        ),
        ("count", Value::U64(7), ns((2024, 5, 1), (12, 0, 1), 0)),
        (
            "label",
            Value::String("batch-1".into()),
            ns((2024, 5, 1), (12, 0, 2), 0),
        ),
        (
            "running",
            Value::Bool(true),
            ns((2024, 5, 1), (12, 0, 3), 0),
        ),
        ("level", Value::I64(-5), ns((2024, 5, 1), (12, 0, 4), 0)),
    ];
    let test_started_ns = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos(),
    )? - 600 * 1_000_000_000;
    for (tag, value, ts) in expected {
        let s = stream.wait(0, "sub", tag, WAIT, is_good).await?;
        assert_eq!(s.value, Some(value.into()), "{tag}");
        assert_eq!(s.timestamp_ns, ts, "{tag} keeps the source timestamp");
        // The server stamps the value when it takes it (at its start, long after 2024): kept
        // beside the source timestamp.
        assert!(
            s.server_timestamp_ns.is_some_and(|t| t > test_started_ns),
            "{tag}: server timestamp {:?}",
            s.server_timestamp_ns
        );
    }
    // A node the server does not have: Bad, with the server's reason.
    let s = stream.wait(0, "sub", "missing", WAIT, is_bad).await?;
    assert!(
        quality(&s).2.contains("BadNodeIdUnknown"),
        "{:?}",
        s.quality
    );
    assert_eq!(
        run.metric("fieldline_adapter_errors_total{device=\"sub\",kind=\"monitored_item\"} "),
        Some(1.0)
    );

    // Polled and scaled.
    let s = stream.wait(0, "poll", "temperature", WAIT, is_good).await?;
    assert_eq!(s.value, Some(Value::F64(43.0).into()));
    assert_eq!(s.timestamp_ns, ns((2024, 5, 1), (12, 0, 0), 123_456_000));

    // The deadband is a filter on the server: a move of 0.1 is not reported to the banded
    // item (it is to the others), the next move of 1.4 is.
    let s = stream
        .wait(0, "banded", "temperature", WAIT, is_good)
        .await?;
    assert_eq!(s.value, Some(Value::F64(21.5).into()));
    let mark = stream.mark();
    assert_eq!(peer.command("set Temperature 21.6").await?, "OK");
    assert_eq!(peer.command("set Temperature 23.0").await?, "OK");
    stream
        .wait(mark, "sub", "temperature", WAIT, |s| {
            s.value == Some(Value::F64(21.6).into())
        })
        .await?;
    let s = stream
        .wait(mark, "banded", "temperature", WAIT, is_good)
        .await?;
    assert_eq!(s.value, Some(Value::F64(23.0).into()));

    // A change arrives with its own source timestamp.
    assert_eq!(
        peer.command("set Count 12 2024-06-01T00:00:00.5Z").await?,
        "OK"
    );
    let s = stream
        .wait(0, "sub", "count", WAIT, |s| {
            s.value == Some(Value::U64(12).into())
        })
        .await?;
    assert_eq!(s.timestamp_ns, ns((2024, 6, 1), (0, 0, 0), 500_000_000));

    // A Bad status code is a Bad sample without a value, its name in the detail.
    assert_eq!(peer.command("status Count BadSensorFailure").await?, "OK");
    let s = stream.wait(0, "sub", "count", WAIT, is_bad).await?;
    assert_eq!(s.value, None);
    assert!(
        quality(&s).2.contains("BadSensorFailure"),
        "{:?}",
        s.quality
    );

    // A write reaches the server, is read back and answered Written.
    let line = run.line.clone();
    let result = run
        .client
        .write(command(&line, "sub", "w1", "level", Value::I64(42)))
        .await?
        .into_inner();
    assert_eq!(
        result.status,
        v1::CommandStatus::Written as i32,
        "{result:?}"
    );
    assert_eq!(result.read_back, Some(Value::I64(42).into()));
    assert_eq!(
        peer.written(Duration::from_secs(10)).await,
        vec!["Level 42"]
    );
    assert_eq!(peer.command("get Level").await?, "VALUE 42");

    // Rejected by the adapter (above max): nothing reaches the server.
    let result = run
        .client
        .write(command(&line, "sub", "w2", "level", Value::I64(1000)))
        .await?
        .into_inner();
    assert_eq!(
        result.status,
        v1::CommandStatus::Rejected as i32,
        "{result:?}"
    );
    assert_eq!(result.rejected_by, "max");
    // Refused by the server (the variable is read-only there): Failed, value unchanged.
    let result = run
        .client
        .write(command(&line, "sub", "w3", "locked", Value::I64(9)))
        .await?
        .into_inner();
    assert_eq!(
        result.status,
        v1::CommandStatus::Failed as i32,
        "{result:?}"
    );
    assert!(result.detail.contains("Bad"), "{result:?}");
    assert_eq!(peer.command("get Locked").await?, "VALUE 1");
    assert_eq!(peer.command("get Level").await?, "VALUE 42");
    assert_eq!(peer.written(Duration::ZERO).await, vec!["Level 42"]);
    assert_eq!(
        run.metric("fieldline_adapter_writes_total{device=\"sub\",outcome=\"written\"} "),
        Some(1.0)
    );

    run.stop().await;
    peer.stop().await;
    Ok(())
}

#[tokio::test]
async fn secure_endpoints_need_a_trusted_server_certificate() -> anyhow::Result<()> {
    let peer = OpcuaPeer::start(
        &spec(),
        OpcuaOptions {
            secure: true,
            ..Default::default()
        },
    )
    .await?;
    let endpoint = peer.endpoint();
    let cert = peer.server_certificate().display().to_string();
    let tags =
        "    tags:\n      - { name: temperature, address: \"ns=2;s=Temperature\", type: f64 }\n";
    let basic = device(
        "basic",
        &endpoint,
        &format!(
            "    opcua: {{ security_policy: basic256sha256, security_mode: sign-and-encrypt, pki_dir: \"{}\", trusted_server_certificates: [\"{cert}\"] }}\n",
            pki(&peer, "basic")
        ),
        tags,
    );
    let aes = device(
        "aes",
        &endpoint,
        &format!(
            "    opcua: {{ security_policy: aes128-sha256-rsaoaep, security_mode: sign-and-encrypt, pki_dir: \"{}\", trusted_server_certificates: [\"{cert}\"] }}\n",
            pki(&peer, "aes")
        ),
        tags,
    );
    let untrusted = device(
        "untrusted",
        &endpoint,
        &format!(
            "    opcua: {{ security_policy: basic256sha256, security_mode: sign-and-encrypt, pki_dir: \"{}\" }}\n",
            pki(&peer, "untrusted")
        ),
        tags,
    );
    let mut run = common::start("opcua-sec", &format!("{basic}{aes}{untrusted}")).await?;
    let mut stream = Samples::new(&mut run).await?;
    for name in ["basic", "aes"] {
        let s = stream.wait(0, name, "temperature", WAIT, is_good).await?;
        assert_eq!(s.value, Some(Value::F64(21.5).into()), "{name}");
    }
    // The untrusted server is refused: counted, reported Bad with the reason, never a value.
    kit::wait_for(WAIT, "the untrusted server to be counted", || async {
        run.metric(
            "fieldline_adapter_errors_total{device=\"untrusted\",kind=\"untrusted_server\"} ",
        )
        .filter(|n| *n >= 1.0)
    })
    .await?;
    let batches = run.batches(Duration::from_secs(2)).await?;
    assert!(
        batches
            .iter()
            .filter(|b| b.device == "untrusted")
            .flat_map(|b| &b.samples)
            .all(|s| s.value.is_none()),
        "no value from an untrusted server"
    );
    // The refused certificate was put aside for an administrator to review.
    let rejected = std::fs::read_dir(peer.dir().join("pki-untrusted/rejected"))?.count();
    assert!(rejected >= 1, "the server certificate lands in rejected/");
    run.stop().await;
    peer.stop().await;
    Ok(())
}

#[tokio::test]
async fn user_names_are_checked_by_the_server() -> anyhow::Result<()> {
    let peer = OpcuaPeer::start(
        &spec(),
        OpcuaOptions {
            users: vec![("operator".into(), "s3cret".into())],
            ..Default::default()
        },
    )
    .await?;
    let endpoint = peer.endpoint();
    let right = peer.dir().join("right-password");
    let wrong = peer.dir().join("wrong-password");
    std::fs::write(&right, "s3cret\n")?;
    std::fs::write(&wrong, "guess\n")?;
    let tags = "    tags:\n      - { name: count, address: \"ns=2;s=Count\", type: u32 }\n";
    let user = |name: &str, password: &std::path::Path| {
        device(
            name,
            &endpoint,
            &format!(
                "    opcua: {{ pki_dir: \"{}\", identity: {{ kind: username, username: operator, password: {{ file: \"{}\" }} }} }}\n",
                pki(&peer, name),
                password.display()
            ),
            tags,
        )
    };
    let mut run = common::start(
        "opcua-user",
        &format!("{}{}", user("accepted", &right), user("refused", &wrong)),
    )
    .await?;
    let mut stream = Samples::new(&mut run).await?;
    let s = stream.wait(0, "accepted", "count", WAIT, is_good).await?;
    assert_eq!(s.value, Some(Value::U64(7).into()));
    let s = stream.wait(0, "refused", "count", WAIT, is_bad).await?;
    assert!(comm_failure(&s), "{:?}", s.quality);
    assert!(
        quality(&s).2.contains("BadUserAccessDenied"),
        "{:?}",
        s.quality
    );
    kit::wait_for(WAIT, "the refused identity to be counted", || async {
        run.metric("fieldline_adapter_errors_total{device=\"refused\",kind=\"identity\"} ")
            .filter(|n| *n >= 1.0)
    })
    .await?;
    run.stop().await;
    peer.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_server_gets_its_subscriptions_back() -> anyhow::Result<()> {
    let mut peer = OpcuaPeer::start(&spec(), OpcuaOptions::default()).await?;
    let endpoint = peer.endpoint();
    let dev = device(
        "plc",
        &endpoint,
        &format!("    opcua: {{ pki_dir: \"{}\" }}\n", pki(&peer, "plc")),
        "    tags:\n      - { name: count, address: \"ns=2;s=Count\", type: u32 }\n",
    );
    let mut run = common::start("opcua-restart", &dev).await?;
    let mut stream = Samples::new(&mut run).await?;
    stream.wait(0, "plc", "count", WAIT, is_good).await?;

    let before_kill = stream.mark();
    peer.kill().await;
    let s = stream
        .wait(before_kill, "plc", "count", WAIT, is_bad)
        .await?;
    assert!(comm_failure(&s), "{:?}", s.quality);
    assert_eq!(s.value, None);

    // A fresh server process: no session or subscription of the old one survives.
    let before_restart = stream.mark();
    peer.restart().await?;
    let s = stream
        .wait(
            before_restart,
            "plc",
            "count",
            Duration::from_secs(120),
            is_good,
        )
        .await?;
    assert_eq!(s.value, Some(Value::U64(7).into()));
    // The monitored item is live on the new server, not just read once.
    assert_eq!(peer.command("set Count 99").await?, "OK");
    stream
        .wait(0, "plc", "count", WAIT, |s| {
            s.value == Some(Value::U64(99).into())
        })
        .await?;
    assert!(
        run.metric("fieldline_adapter_errors_total{device=\"plc\",kind=\"connection_lost\"} ")
            .is_some_and(|n| n >= 1.0)
    );
    run.stop().await;
    peer.stop().await;
    Ok(())
}

/// The same driver against node-opcua: values of several types, encrypted sessions with both
/// policies when the server certificate is trusted and none when it is not, a Bad status, a
/// write read back from the server, and a killed and restarted server while subscribed
/// (encrypted sessions included).
#[tokio::test]
async fn node_opcua_values_encryption_writes_and_a_restart() -> anyhow::Result<()> {
    let spec = json!({
        "variables": [
            {"name": "temperature", "type": "Double", "value": 21.5, "writable": true},
            {"name": "count", "type": "Int64", "value": 7},
            {"name": "running", "type": "Boolean", "value": true},
            {"name": "label", "type": "String", "value": "batch-1"}
        ]
    });
    let mut peer = OpcuaPeer::start(
        &spec,
        OpcuaOptions {
            server: OpcuaServer::NodeOpcua,
            ..Default::default()
        },
    )
    .await?;
    let endpoint = peer.endpoint();
    let cert = peer.server_certificate().display().to_string();
    let plain = device(
        "plain",
        &endpoint,
        &format!("    opcua: {{ pki_dir: \"{}\" }}\n", pki(&peer, "plain")),
        "    tags:
      - { name: temperature, address: \"ns=1;s=temperature\", type: f64, writable: true, min: 0, max: 100 }
      - { name: count, address: \"ns=1;s=count\", type: i64 }
      - { name: running, address: \"ns=1;s=running\", type: bool }
      - { name: label, address: \"ns=1;s=label\", type: string }
",
    );
    let temperature =
        "    tags:\n      - { name: temperature, address: \"ns=1;s=temperature\", type: f64 }\n";
    let secure = |name: &str, policy: &str, trusted: bool| {
        let trust = if trusted {
            format!(", trusted_server_certificates: [\"{cert}\"]")
        } else {
            String::new()
        };
        device(
            name,
            &endpoint,
            &format!(
                "    opcua: {{ security_policy: {policy}, security_mode: sign-and-encrypt, pki_dir: \"{}\"{trust} }}\n",
                pki(&peer, name)
            ),
            temperature,
        )
    };
    let devices = format!(
        "{plain}{}{}{}",
        secure("basic", "basic256sha256", true),
        secure("aes", "aes128-sha256-rsaoaep", true),
        secure("untrusted", "basic256sha256", false)
    );
    let mut run = common::start("opcua-node", &devices).await?;
    let mut stream = Samples::new(&mut run).await?;
    for (tag, value) in [
        ("temperature", Value::F64(21.5)),
        ("count", Value::I64(7)),
        ("running", Value::Bool(true)),
        ("label", Value::String("batch-1".into())),
    ] {
        let s = stream.wait(0, "plain", tag, WAIT, is_good).await?;
        assert_eq!(s.value, Some(value.into()), "{tag}");
    }
    for name in ["basic", "aes"] {
        let s = stream.wait(0, name, "temperature", WAIT, is_good).await?;
        assert_eq!(s.value, Some(Value::F64(21.5).into()), "{name}");
    }
    kit::wait_for(WAIT, "the untrusted server to be counted", || async {
        run.metric(
            "fieldline_adapter_errors_total{device=\"untrusted\",kind=\"untrusted_server\"} ",
        )
        .filter(|n| *n >= 1.0)
    })
    .await?;

    // A change on the server reaches every session, encrypted or not.
    let mark = stream.mark();
    assert_eq!(peer.command("set temperature 22.25").await?, "ok");
    for name in ["plain", "basic", "aes"] {
        stream
            .wait(mark, name, "temperature", WAIT, |s| {
                s.value == Some(Value::F64(22.25).into())
            })
            .await?;
    }
    // A Bad status code: Bad, no value, its name in the detail.
    let mark = stream.mark();
    assert_eq!(peer.command("bad count").await?, "ok");
    let s = stream.wait(mark, "plain", "count", WAIT, is_bad).await?;
    assert_eq!(s.value, None);
    assert!(
        quality(&s).2.contains("BadSensorFailure"),
        "{:?}",
        s.quality
    );

    // A write reaches the server and is read back.
    let line = run.line.clone();
    let result = run
        .client
        .write(command(
            &line,
            "plain",
            "n1",
            "temperature",
            Value::F64(30.5),
        ))
        .await?
        .into_inner();
    assert_eq!(
        result.status,
        v1::CommandStatus::Written as i32,
        "{result:?}"
    );
    assert_eq!(result.read_back, Some(Value::F64(30.5).into()));
    assert_eq!(peer.command("get temperature").await?, "30.5");

    // Killed and restarted on the same port with the same certificate: Bad while it is gone,
    // then every session (the encrypted ones too) subscribes again and sees new changes.
    let mark = stream.mark();
    peer.kill().await;
    for name in ["plain", "basic", "aes"] {
        let s = stream.wait(mark, name, "temperature", WAIT, is_bad).await?;
        assert!(comm_failure(&s), "{name}: {:?}", s.quality);
    }
    let mark = stream.mark();
    peer.restart().await?;
    for name in ["plain", "basic", "aes"] {
        stream
            .wait(mark, name, "temperature", Duration::from_secs(120), is_good)
            .await?;
    }
    let mark = stream.mark();
    assert_eq!(peer.command("set temperature 23.75").await?, "ok");
    for name in ["plain", "basic", "aes"] {
        stream
            .wait(mark, name, "temperature", WAIT, |s| {
                s.value == Some(Value::F64(23.75).into())
            })
            .await?;
    }
    assert!(
        batches_without_values(&mut run, "untrusted").await?,
        "no value from an untrusted server"
    );
    run.stop().await;
    peer.stop().await;
    Ok(())
}

/// Whether every batch of `device` in the next two seconds is without values.
async fn batches_without_values(
    run: &mut common::TestAdapter,
    device: &str,
) -> anyhow::Result<bool> {
    let batches = run.batches(Duration::from_secs(2)).await?;
    Ok(batches
        .iter()
        .filter(|b| b.device == device)
        .flat_map(|b| &b.samples)
        .all(|s| s.value.is_none()))
}

/// A user certificate and its key made with openssl in `dir`, as `(cert.pem, key.pem)`.
fn user_certificate(dir: &std::path::Path, name: &str) -> anyhow::Result<(String, String)> {
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"])
        .args(["-days", "30", "-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(
        status.success(),
        "openssl could not make a certificate for {name}"
    );
    Ok((cert.display().to_string(), key.display().to_string()))
}

/// X509 user identities against node-opcua, which trusts one user certificate and takes no
/// anonymous clients: the session of the trusted user gets values, the other is refused.
#[tokio::test]
async fn a_certificate_identity_is_accepted_only_when_the_server_trusts_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (operator_cert, operator_key) = user_certificate(dir.path(), "operator")?;
    let (intruder_cert, intruder_key) = user_certificate(dir.path(), "intruder")?;
    let spec = json!({"variables": [{"name": "count", "type": "Int32", "value": 42}]});
    let peer = OpcuaPeer::start(
        &spec,
        OpcuaOptions {
            server: OpcuaServer::NodeOpcua,
            user_certificates: vec![operator_cert.clone().into()],
            ..Default::default()
        },
    )
    .await?;
    let endpoint = peer.endpoint();
    let server_cert = peer.server_certificate().display().to_string();
    let user = |name: &str, cert: &str, key: &str| {
        device(
            name,
            &endpoint,
            &format!(
                "    opcua: {{ security_policy: basic256sha256, security_mode: sign-and-encrypt, pki_dir: \"{}\", trusted_server_certificates: [\"{server_cert}\"], identity: {{ kind: certificate, cert: \"{cert}\", key: \"{key}\" }} }}\n",
                pki(&peer, name)
            ),
            "    tags:\n      - { name: count, address: \"ns=1;s=count\", type: i32 }\n",
        )
    };
    let devices = format!(
        "{}{}",
        user("operator", &operator_cert, &operator_key),
        user("intruder", &intruder_cert, &intruder_key)
    );
    let mut run = common::start("opcua-x509", &devices).await?;
    let mut stream = Samples::new(&mut run).await?;
    let s = stream.wait(0, "operator", "count", WAIT, is_good).await?;
    assert_eq!(s.value, Some(Value::I64(42).into()));
    let s = stream.wait(0, "intruder", "count", WAIT, is_bad).await?;
    assert!(comm_failure(&s), "{:?}", s.quality);
    assert_eq!(s.value, None);
    kit::wait_for(WAIT, "the refused identity to be counted", || async {
        run.metric("fieldline_adapter_errors_total{device=\"intruder\",kind=\"identity\"} ")
            .filter(|n| *n >= 1.0)
    })
    .await?;
    assert!(
        batches_without_values(&mut run, "intruder").await?,
        "no value for a refused identity"
    );
    run.stop().await;
    peer.stop().await;
    Ok(())
}

/// A percent deadband on a variable without an engineering range: node-opcua refuses the
/// filter, so the adapter monitors the tag without it and applies the deadband itself. A
/// change within the band is not reported, one beyond it is.
#[tokio::test]
async fn a_refused_percent_deadband_is_applied_by_the_adapter() -> anyhow::Result<()> {
    let spec = json!({
        "variables": [
            {"name": "temperature", "type": "Double", "value": 20.0},
            {"name": "marker", "type": "Int32", "value": 0}
        ]
    });
    let mut peer = OpcuaPeer::start(
        &spec,
        OpcuaOptions {
            server: OpcuaServer::NodeOpcua,
            ..Default::default()
        },
    )
    .await?;
    let endpoint = peer.endpoint();
    let dev = device(
        "band",
        &endpoint,
        &format!("    opcua: {{ pki_dir: \"{}\" }}\n", pki(&peer, "band")),
        "    tags:
      - { name: temperature, address: \"ns=1;s=temperature\", type: f64, deadband_percent: 10 }
      - { name: marker, address: \"ns=1;s=marker\", type: i32 }
",
    );
    let mut run = common::start("opcua-band", &dev).await?;
    let mut stream = Samples::new(&mut run).await?;
    let s = stream.wait(0, "band", "temperature", WAIT, is_good).await?;
    assert_eq!(s.value, Some(Value::F64(20.0).into()));
    stream.wait(0, "band", "marker", WAIT, is_good).await?;

    // 5 % from the last reported value: inside the band. The marker changes after it, so by
    // the time the marker's sample is here the temperature's would have been too.
    let mark = stream.mark();
    assert_eq!(peer.command("set temperature 21.0").await?, "ok");
    assert_eq!(peer.command("set marker 1").await?, "ok");
    stream
        .wait(mark, "band", "marker", WAIT, |s| {
            s.value == Some(Value::I64(1).into())
        })
        .await?;
    assert!(
        !stream.seen[mark..]
            .iter()
            .any(|(d, s)| d == "band" && s.tag == "temperature"),
        "a change within the band was reported: {:?}",
        &stream.seen[mark..]
    );
    // 25 % from 20: beyond the band, reported.
    assert_eq!(peer.command("set temperature 25.0").await?, "ok");
    stream
        .wait(mark, "band", "temperature", WAIT, |s| {
            s.value == Some(Value::F64(25.0).into())
        })
        .await?;
    run.stop().await;
    peer.stop().await;
    Ok(())
}
