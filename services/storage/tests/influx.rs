//! The InfluxDB sink against real servers: InfluxDB 1.6 through the v1 API and
//! VictoriaMetrics through the v2 API. Points a server refuses are found and reported one by
//! one while the rest is written; names and values with every character line protocol treats
//! specially come back exactly as they were written.

use std::{collections::BTreeMap, time::Duration};

use fieldline_core::{
    Quality, QualityReason, Sample, SampleBatch, Value,
    config::{InfluxConfig, SecretRef},
};
use fieldline_storage::sinks::{Disposition, WriteReport, influx::InfluxSink};
use fieldline_testkit::{self as kit, PrivateServer, serde_json};

fn v1_config(url: &str, database: &str) -> InfluxConfig {
    InfluxConfig {
        url: url.into(),
        database: Some(database.into()),
        retention_policy: None,
        username: None,
        password: None,
        org: None,
        bucket: None,
        token: None,
        create_database: true,
        timeout: Duration::from_secs(10),
    }
}

fn v2_config(url: &str, token: Option<SecretRef>) -> InfluxConfig {
    InfluxConfig {
        url: url.into(),
        database: None,
        retention_policy: None,
        username: None,
        password: None,
        org: Some("fieldline".into()),
        bucket: Some("test".into()),
        token,
        create_database: true,
        timeout: Duration::from_secs(10),
    }
}

fn batch(line: &str, device: &str, sequence: u64, samples: Vec<Sample>) -> SampleBatch {
    SampleBatch {
        line: line.into(),
        device: device.into(),
        adapter_id: "test".into(),
        sequence,
        samples,
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

const MS: i64 = 1_000_000;
const HOUR: i64 = 3_600_000_000_000;

/// Runs an InfluxQL statement that returns no rows and fails on an error.
async fn influx_exec(url: &str, db: &str, q: &str) -> anyhow::Result<()> {
    let answer = kit::influx_query_at(url, db, q).await?;
    anyhow::ensure!(
        answer["results"][0]["error"].is_null() && answer["error"].is_null(),
        "{q}: {answer}"
    );
    Ok(())
}

/// Every stored value as (measurement, device tag, line tag, field, time ns) → JSON value.
async fn influx_points(
    url: &str,
    db: &str,
) -> anyhow::Result<BTreeMap<(String, String, String, String, i64), serde_json::Value>> {
    let answer = kit::influx_query_ns(url, db, "SELECT * FROM /.*/ GROUP BY *").await?;
    anyhow::ensure!(answer["results"][0]["error"].is_null(), "{answer}");
    let mut points = BTreeMap::new();
    for series in answer["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = series["name"].as_str().unwrap_or_default().to_string();
        let tag = |k: &str| series["tags"][k].as_str().unwrap_or_default().to_string();
        let columns: Vec<&str> = series["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap_or_default())
            .collect();
        for row in series["values"].as_array().into_iter().flatten() {
            let time = row[0].as_i64().unwrap_or_default();
            for (i, column) in columns.iter().enumerate().skip(1) {
                if !row[i].is_null() {
                    points.insert(
                        (
                            name.clone(),
                            tag("device"),
                            tag("line"),
                            column.to_string(),
                            time,
                        ),
                        row[i].clone(),
                    );
                }
            }
        }
    }
    Ok(points)
}

fn json(value: &Value) -> serde_json::Value {
    match value {
        Value::Bool(b) => serde_json::Value::from(*b),
        Value::I64(i) => serde_json::Value::from(*i),
        Value::U64(u) => serde_json::Value::from(*u),
        Value::F64(f) => serde_json::Value::from(*f),
        Value::String(s) => serde_json::Value::from(s.as_str()),
    }
}

#[tokio::test]
async fn refused_points_are_found_one_by_one_and_the_rest_is_written() -> anyhow::Result<()> {
    kit::require_influxdb()?;
    let url = kit::INFLUX_URL;
    let db = kit::unique("refusals");
    // A database whose default retention policy keeps one hour.
    influx_exec(
        url,
        &db,
        &format!("CREATE DATABASE \"{db}\" WITH DURATION 1h REPLICATION 1 NAME \"hour\""),
    )
    .await?;
    let sink = InfluxSink::new(&v1_config(url, &db))?;
    sink.prepare().await?;

    // All points in one shard (the current hour): field types are checked per shard.
    let now = now_ns();
    let base = now - now % HOUR;
    let line = "refusals";
    // `speed` exists as a float.
    let first = sink
        .write(&[batch(
            line,
            "press",
            1,
            vec![Sample::good("speed", Value::F64(0.5), base)],
        )])
        .await?;
    assert_eq!(first, WriteReport::default());

    // Six batches of eight points of three samples each; three points are bad:
    // batch 2, point 5 writes `speed` as an integer (type conflict);
    // batch 4, point 1 is three years old (beyond the one-hour retention policy);
    // batch 5, point 6 has a timestamp InfluxDB cannot parse (out of its range).
    // Batch 1 also has a sample of a tag named `time`, which InfluxDB would drop silently.
    let old = base - 3 * 365 * 24 * HOUR;
    let mut batches = Vec::new();
    let mut expected = BTreeMap::new();
    expected.insert(
        (
            "press".to_string(),
            "press".to_string(),
            line.to_string(),
            "speed".to_string(),
            base,
        ),
        json(&Value::F64(0.5)),
    );
    for b in 0..6i64 {
        let mut samples = Vec::new();
        for p in 0..8i64 {
            let n = b * 8 + p;
            let ts = match (b, p) {
                (4, 1) => old,
                (5, 6) => i64::MAX,
                _ => base + (n + 1) * MS,
            };
            let speed = if (b, p) == (2, 5) {
                Value::I64(7)
            } else {
                Value::F64(n as f64 + 0.25)
            };
            let point = [
                ("speed", speed),
                ("count", Value::I64(n * 10)),
                ("run", Value::Bool(n % 2 == 0)),
            ];
            let bad = matches!((b, p), (2, 5) | (4, 1) | (5, 6));
            for (tag, value) in point {
                if !bad {
                    expected.insert(
                        (
                            "press".to_string(),
                            "press".to_string(),
                            line.to_string(),
                            tag.to_string(),
                            ts,
                        ),
                        json(&value),
                    );
                }
                samples.push(Sample::good(tag, value, ts));
            }
            if (b, p) == (1, 0) {
                samples.push(Sample::good("time", Value::I64(1), ts));
            }
        }
        batches.push(batch(line, "press", 10 + b as u64, samples));
    }

    let report = sink.write(&batches).await?;
    let summary: Vec<(usize, usize)> = report
        .rejected
        .iter()
        .map(|r| (r.batch, r.samples))
        .collect();
    assert_eq!(summary, [(1, 1), (2, 3), (4, 3), (5, 3)], "{report:#?}");
    let reason = |i: usize| report.rejected[i + 1].reason.as_str();
    assert!(
        report.rejected[0]
            .reason
            .contains("tag name \"time\" is time"),
        "{}",
        report.rejected[0].reason
    );
    assert!(
        reason(0).contains(
            "field type conflict: input field \"speed\" on measurement \"press\" is type integer, already exists as type float"
        ),
        "{}",
        reason(0)
    );
    assert!(
        reason(0).contains(&format!("time {} ns", base + 22 * MS)),
        "{}",
        reason(0)
    );
    assert!(
        reason(1).contains("points beyond retention policy"),
        "{}",
        reason(1)
    );
    assert!(
        reason(1).contains(&format!("time {old} ns")),
        "{}",
        reason(1)
    );
    assert!(
        reason(2).contains("unable to parse") && reason(2).contains("time outside range"),
        "{}",
        reason(2)
    );
    assert!(
        reason(2).contains(&format!("time {} ns", i64::MAX)),
        "{}",
        reason(2)
    );

    // Every good sample is stored exactly as sent, and nothing else.
    assert_eq!(influx_points(url, &db).await?, expected);
    // Writing the same batches again is idempotent and refuses the same points.
    let again = sink.write(&batches).await?;
    assert_eq!(
        again
            .rejected
            .iter()
            .map(|r| (r.batch, r.samples))
            .collect::<Vec<_>>(),
        summary
    );
    assert_eq!(influx_points(url, &db).await?, expected);
    influx_exec(url, &db, &format!("DROP DATABASE \"{db}\"")).await?;
    Ok(())
}

#[tokio::test]
async fn a_database_dropped_while_running_is_a_transient_error_and_made_again() -> anyhow::Result<()>
{
    kit::require_influxdb()?;
    let url = kit::INFLUX_URL;
    let db = kit::unique("dropped");
    let sink = InfluxSink::new(&v1_config(url, &db))?;
    sink.prepare().await?;
    influx_exec(url, &db, &format!("DROP DATABASE \"{db}\"")).await?;
    let ts = now_ns();
    let b = [batch(
        "l",
        "d",
        1,
        vec![Sample::good("x", Value::I64(1), ts)],
    )];
    match sink.write(&b).await {
        Err(error) if error.disposition() == Disposition::Transient => {
            let message = error.to_string();
            assert!(message.contains("database not found"), "{message}")
        }
        other => panic!("expected a transient error, got {other:?}"),
    }
    // The sink made the database again; the retry goes through.
    assert_eq!(sink.write(&b).await?, WriteReport::default());
    let points = influx_points(url, &db).await?;
    assert_eq!(
        points.get(&(
            "d".to_string(),
            "d".to_string(),
            "l".to_string(),
            "x".to_string(),
            ts
        )),
        Some(&serde_json::Value::from(1))
    );
    influx_exec(url, &db, &format!("DROP DATABASE \"{db}\"")).await?;
    Ok(())
}

#[tokio::test]
async fn a_write_too_large_for_the_server_is_sent_in_parts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Refuses requests over 4 KiB (counted compressed) with HTTP 413.
    let influx = PrivateServer::influxdb_with(dir.path(), &["max-body-size = 4096"]).await?;
    let url = format!("http://127.0.0.1:{}", influx.port);
    let sink = InfluxSink::new(&v1_config(&url, "big"))?;
    kit::wait_for(Duration::from_secs(30), "the private InfluxDB", || async {
        sink.prepare().await.ok()
    })
    .await?;
    let base = now_ns();
    // Values that do not compress well, so 2000 points make far more than 4 KiB.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut expected = BTreeMap::new();
    let mut batches = Vec::new();
    for b in 0..20i64 {
        let mut samples = Vec::new();
        for p in 0..100i64 {
            let ts = base + (b * 100 + p) * MS;
            let v = Value::I64((next() >> 1) as i64);
            expected.insert(
                (
                    "d".to_string(),
                    "d".to_string(),
                    "l".to_string(),
                    "x".to_string(),
                    ts,
                ),
                json(&v),
            );
            samples.push(Sample::good("x", v, ts));
        }
        batches.push(batch("l", "d", b as u64, samples));
    }
    // One point alone is larger than the server takes.
    let huge: String = (0..6000)
        .map(|_| char::from(b'!' + (next() % 90) as u8))
        .collect();
    batches.push(batch(
        "l",
        "d",
        99,
        vec![Sample::good("note", Value::String(huge), base - MS)],
    ));
    let report = sink.write(&batches).await?;
    assert_eq!(report.rejected.len(), 1, "{report:#?}");
    assert_eq!(
        (report.rejected[0].batch, report.rejected[0].samples),
        (20, 1)
    );
    assert!(
        report.rejected[0].reason.contains("HTTP 413"),
        "{}",
        report.rejected[0].reason
    );
    assert_eq!(influx_points(&url, "big").await?, expected);
    Ok(())
}

/// Write requests an InfluxDB 1.x has served, from its `/debug/vars`.
async fn write_requests(url: &str) -> anyhow::Result<i64> {
    let (_, text) = kit::http_get(&format!("{url}/debug/vars")).await?;
    let vars: serde_json::Value = serde_json::from_str(&text)?;
    vars.as_object()
        .into_iter()
        .flatten()
        .find(|(k, _)| k.starts_with("httpd"))
        .and_then(|(_, v)| v["values"]["writeReq"].as_i64())
        .ok_or_else(|| anyhow::anyhow!("no httpd writeReq in {url}/debug/vars"))
}

#[tokio::test]
async fn a_server_refusing_everything_costs_at_most_one_extra_request_per_point()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let influx = PrivateServer::influxdb(dir.path()).await?;
    let url = format!("http://127.0.0.1:{}", influx.port);
    kit::wait_for(Duration::from_secs(30), "the private InfluxDB", || async {
        influx_exec(
            &url,
            "short",
            "CREATE DATABASE short WITH DURATION 1h REPLICATION 1 NAME hour",
        )
        .await
        .ok()
    })
    .await?;
    let sink = InfluxSink::new(&v1_config(&url, "short"))?;
    sink.prepare().await?;
    // 64 points of two samples in four batches, all years beyond the retention policy.
    let old = now_ns() - 3 * 365 * 24 * HOUR;
    let batches: Vec<SampleBatch> = (0..4i64)
        .map(|b| {
            let samples = (0..16i64)
                .flat_map(|p| {
                    let ts = old + (b * 16 + p) * MS;
                    [
                        Sample::good("a", Value::I64(p), ts),
                        Sample::good("b", Value::F64(0.5), ts),
                    ]
                })
                .collect();
            batch("l", "d", b as u64, samples)
        })
        .collect();
    let before = write_requests(&url).await?;
    let report = sink.write(&batches).await?;
    let requests = write_requests(&url).await? - before;
    assert!(
        (1..=65).contains(&requests),
        "{requests} requests for 64 points"
    );
    // Every sample is reported, in its own batch, with the server's reason; the bound on
    // requests leaves some refused points in groups.
    for b in 0..4 {
        assert_eq!(report.rejected_in(b), 32, "{report:#?}");
    }
    assert_eq!(report.rejected_samples(), 128);
    assert!(
        report
            .rejected
            .iter()
            .all(|r| r.reason.contains("points beyond retention policy")),
        "{report:#?}"
    );
    assert!(
        report
            .rejected
            .iter()
            .any(|r| r.reason.contains("not isolated further")),
        "{report:#?}"
    );
    Ok(())
}

/// Device names, line names and tag names with the characters line protocol escapes, quotes,
/// backslashes (not before a special character or at the end: those have no spelling that
/// InfluxDB and VictoriaMetrics read alike) and non-ASCII letters.
const DEVICES: [&str; 6] = [
    "Prüfstand ü 温度",
    "a,b=c d",
    "say \"hi\"",
    "C:\\temp\\x",
    " lead and trail ",
    "tab\there",
];
const TAGS: [&str; 7] = [
    "te mp",
    "a,b",
    "x=y",
    "\"q\"",
    "ü 温度",
    "back\\slash",
    "check_✓",
];

/// Names that cannot be written, each with a word of the reason given.
fn refused_batches(line: &str, ts: i64) -> Vec<(SampleBatch, &'static str)> {
    let one = |device: &str, tag: &str| {
        batch(
            line,
            device,
            99,
            vec![
                Sample::good(tag, Value::I64(1), ts),
                Sample::good("ok", Value::I64(2), ts),
            ],
        )
    };
    vec![
        (one("ends\\", "ok2"), "ends with a backslash"),
        (one("#comment", "ok2"), "comment"),
        (one("", "ok2"), "is empty"),
        (one("a\\,b", "ok2"), "backslash before"),
        (one("two\nlines", "ok2"), "line break"),
    ]
}

#[tokio::test]
async fn names_and_values_round_trip_through_influxdb_1() -> anyhow::Result<()> {
    kit::require_influxdb()?;
    let url = kit::INFLUX_URL;
    let db = kit::unique("escaping");
    let sink = InfluxSink::new(&v1_config(url, &db))?;
    sink.prepare().await?;
    let line = format!("Linie 3,\"Süd\"=ü\\x {}", kit::unique("l"));
    let base = now_ns();
    // One type per field key: a query over several measurements merges a field's values,
    // and InfluxDB turns a field that is an integer in one and a float in another into floats.
    let value = |tag: usize, device: usize| {
        let d = device as i64;
        match tag {
            0 => Value::F64(12.5 + d as f64),
            1 => Value::F64(-0.001 * (d + 1) as f64),
            2 => Value::F64(123456.789 / (d + 1) as f64),
            3 => Value::I64(i64::MIN + d),
            4 => Value::U64((i64::MAX - d) as u64),
            5 => Value::Bool(d % 2 == 0),
            _ => Value::I64(d * 1000 - 5),
        }
    };
    let strings = [
        "he said \"hi\", a=b c\\d",
        "ends with \\",
        "\\",
        "\\\"",
        "two\nlines",
        "crlf\r\nend",
        "",
        "Prüfstand ü 温度",
        "tab\tx",
    ];
    let mut batches = Vec::new();
    let mut expected = BTreeMap::new();
    for (d, device) in DEVICES.iter().enumerate() {
        let ts = base + d as i64 * MS;
        let mut samples = Vec::new();
        for (t, tag) in TAGS.iter().enumerate() {
            let value = value(t, d);
            expected.insert(
                (
                    device.to_string(),
                    device.to_string(),
                    line.clone(),
                    tag.to_string(),
                    ts,
                ),
                json(&value),
            );
            samples.push(Sample::good(*tag, value, ts));
        }
        for (s, text) in strings.iter().enumerate() {
            let tag = format!("text {s}");
            let value = Value::String(text.to_string());
            expected.insert(
                (
                    device.to_string(),
                    device.to_string(),
                    line.clone(),
                    tag.clone(),
                    ts,
                ),
                json(&value),
            );
            samples.push(Sample::good(tag, value, ts));
        }
        samples.push(Sample::bad(
            "lost",
            Quality::bad(QualityReason::CommFailure, "timeout"),
            ts,
        ));
        expected.insert(
            (
                device.to_string(),
                device.to_string(),
                line.clone(),
                "lost_quality".to_string(),
                ts,
            ),
            serde_json::Value::from("bad:comm_failure"),
        );
        batches.push(batch(&line, device, d as u64, samples));
    }
    let refused = refused_batches(&line, base);
    batches.extend(refused.iter().map(|(b, _)| b.clone()));

    let report = sink.write(&batches).await?;
    assert_eq!(report.rejected.len(), refused.len(), "{report:#?}");
    for (i, (r, (_, why))) in report.rejected.iter().zip(&refused).enumerate() {
        assert_eq!(r.batch, DEVICES.len() + i, "{r:?}");
        assert_eq!(r.samples, 2, "{r:?}");
        assert!(r.reason.contains(why), "{why}: {}", r.reason);
    }

    // The names, as InfluxDB lists them.
    let listed = |answer: serde_json::Value, column: usize| -> Vec<String> {
        let mut names: Vec<String> = answer["results"][0]["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
            .map(|row| row[column].as_str().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let mut devices: Vec<String> = DEVICES.iter().map(|d| d.to_string()).collect();
    devices.sort();
    assert_eq!(
        listed(
            kit::influx_query_at(url, &db, "SHOW MEASUREMENTS").await?,
            0
        ),
        devices
    );
    assert_eq!(
        listed(
            kit::influx_query_at(url, &db, "SHOW TAG VALUES WITH KEY = \"device\"").await?,
            1
        ),
        devices
    );
    assert_eq!(
        listed(
            kit::influx_query_at(url, &db, "SHOW TAG VALUES WITH KEY = \"line\"").await?,
            1
        ),
        std::slice::from_ref(&line)
    );
    let mut fields: Vec<String> = TAGS.iter().map(|t| t.to_string()).collect();
    fields.extend((0..strings.len()).map(|s| format!("text {s}")));
    fields.push("lost_quality".into());
    fields.sort();
    assert_eq!(
        listed(kit::influx_query_at(url, &db, "SHOW FIELD KEYS").await?, 0),
        fields
    );
    // Every value, exactly, and nothing else.
    assert_eq!(influx_points(url, &db).await?, expected);
    influx_exec(url, &db, &format!("DROP DATABASE \"{db}\"")).await?;
    Ok(())
}

/// `s` as a PromQL string literal.
fn promql_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// VictoriaMetrics names a series `<measurement>_<field>`, keeps the tags as labels and stores
/// numbers (booleans as 1 and 0) with millisecond timestamps. It keeps no strings (string
/// fields become 0), so only numbers and booleans are written here.
#[tokio::test]
async fn names_and_values_round_trip_through_victoria_metrics_v2() -> anyhow::Result<()> {
    kit::require_victoria_metrics()?;
    let url = kit::VM_URL;
    let dir = tempfile::tempdir()?;
    // VictoriaMetrics ignores the token; the sink sends it as InfluxDB 2.x expects.
    let token = dir.path().join("token");
    std::fs::write(&token, "secret-token\n")?;
    let sink = InfluxSink::new(&v2_config(url, Some(SecretRef::file(&token))))?;
    sink.prepare().await?;
    let line = format!("Linie 3,\"Süd\"=ü\\x {}", kit::unique("l"));
    let now = now_ns();
    let base = now - now % MS - 60_000 * MS;
    let values = [
        (Value::F64(12.5), 12.5),
        (Value::F64(-0.001), -0.001),
        (Value::F64(123456.789), 123456.789),
        (Value::I64(4_000_000_000), 4e9),
        (Value::I64(-1234), -1234.0),
        (Value::U64(1 << 53), 9_007_199_254_740_992.0),
        (Value::Bool(true), 1.0),
        (Value::Bool(false), 0.0),
    ];
    let mut batches = Vec::new();
    let mut expected = BTreeMap::new();
    for (d, device) in DEVICES.iter().enumerate() {
        let mut samples = Vec::new();
        for (t, tag) in TAGS.iter().enumerate() {
            // Two points per series, a millisecond apart.
            for k in 0..2 {
                let ts = base + (d * 10 + k) as i64 * MS;
                let (value, number) = values[(d + t + k) % values.len()].clone();
                samples.push(Sample::good(*tag, value, ts));
                let labels = BTreeMap::from([
                    ("__name__".to_string(), format!("{device}_{tag}")),
                    ("device".to_string(), device.to_string()),
                    ("line".to_string(), line.clone()),
                ]);
                expected
                    .entry(labels)
                    .or_insert_with(Vec::new)
                    .push((ts / MS, number));
            }
        }
        batches.push(batch(&line, device, d as u64, samples));
    }
    let refused = refused_batches(&line, base);
    batches.extend(refused.iter().map(|(b, _)| b.clone()));

    let report = sink.write(&batches).await?;
    assert_eq!(report.rejected.len(), refused.len(), "{report:#?}");
    for (i, (r, (_, why))) in report.rejected.iter().zip(&refused).enumerate() {
        assert_eq!((r.batch, r.samples), (DEVICES.len() + i, 2), "{r:?}");
        assert!(r.reason.contains(why), "{why}: {}", r.reason);
    }

    let selector = format!("{{line={}}}", promql_string(&line));
    let want: usize = expected.values().map(Vec::len).sum();
    // VictoriaMetrics takes up to a second to make new samples searchable.
    let exported = kit::wait_for(
        Duration::from_secs(20),
        "the samples in VictoriaMetrics",
        || {
            let selector = selector.clone();
            async move {
                let series = kit::vm_export(url, &selector).await.ok()?;
                let got: usize = series.iter().map(|s| s.values.len()).sum();
                (got >= want).then_some(series)
            }
        },
    )
    .await?;
    let got: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = exported
        .into_iter()
        .map(|s| {
            let mut samples: Vec<(i64, f64)> = s.timestamps.into_iter().zip(s.values).collect();
            samples.sort_by_key(|(t, _)| *t);
            (s.labels, samples)
        })
        .collect();
    assert_eq!(got, expected);
    Ok(())
}

#[tokio::test]
async fn a_refused_token_is_a_configuration_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = PrivateServer::victoria_metrics_with(
        dir.path(),
        &["-httpAuth.username=fieldline", "-httpAuth.password=right"],
    )
    .await?;
    std::fs::write(dir.path().join("token"), "wrong")?;
    let sink = InfluxSink::new(&v2_config(
        &format!("http://127.0.0.1:{}", vm.port),
        Some(SecretRef::file(dir.path().join("token"))),
    ))?;
    let b = [batch(
        "l",
        "d",
        1,
        vec![Sample::good("x", Value::I64(1), now_ns())],
    )];
    match sink.write(&b).await {
        Err(error) if error.disposition() == Disposition::Config => {
            let message = error.to_string();
            assert!(message.contains("HTTP 401"), "{message}");
            assert!(message.contains("storage.influx.token"), "{message}");
            assert!(!message.contains("wrong"), "the token leaked: {message}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    Ok(())
}

/// InfluxDB 1.x with authentication on: the sink creates the database and writes as the
/// configured user, with the password from a secret file; a wrong password is a
/// configuration error that does not show the password.
#[tokio::test]
async fn v1_writes_as_the_configured_user_and_a_wrong_password_is_a_configuration_error()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let influx = PrivateServer::influxdb_with(dir.path(), &["auth-enabled = true"]).await?;
    let url = format!("http://127.0.0.1:{}", influx.port);
    // With no user yet, InfluxDB lets the first admin be created without credentials.
    influx_exec(
        &url,
        "",
        "CREATE USER admin WITH PASSWORD 's3cret' WITH ALL PRIVILEGES",
    )
    .await?;
    std::fs::write(dir.path().join("password"), "s3cret\n")?;
    let mut config = v1_config(&url, "plant");
    config.username = Some("admin".into());
    config.password = Some(SecretRef::file(dir.path().join("password")));
    let sink = InfluxSink::new(&config)?;
    sink.prepare().await?;
    let ts = now_ns();
    sink.write(&[batch(
        "l",
        "press",
        1,
        vec![Sample::good("count", Value::I64(42), ts)],
    )])
    .await?;
    let answer: serde_json::Value = serde_json::from_str(
        &reqwest::Client::new()
            .post(format!("{url}/query"))
            .basic_auth("admin", Some("s3cret"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("db=plant&q=SELECT%20%22count%22%20FROM%20%22press%22")
            .send()
            .await?
            .text()
            .await?,
    )?;
    assert_eq!(
        answer["results"][0]["series"][0]["values"][0][1],
        serde_json::json!(42),
        "{answer}"
    );

    std::fs::write(dir.path().join("password"), "wrong-one\n")?;
    let sink = InfluxSink::new(&config)?;
    let b = [batch(
        "l",
        "press",
        2,
        vec![Sample::good("count", Value::I64(43), ts + MS)],
    )];
    match sink.write(&b).await {
        Err(error) if error.disposition() == Disposition::Config => {
            let message = error.to_string();
            assert!(message.contains("HTTP 401"), "{message}");
            assert!(
                !message.contains("wrong-one"),
                "the password leaked: {message}"
            );
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    Ok(())
}
