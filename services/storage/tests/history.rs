//! QueryHistory against the real backends: the same samples are stored through Ingest into
//! InfluxDB 1.x and into the SQLite sample table of the embedded mode, and both answer raw and
//! windowed queries with the values the test computes itself from what it sent.

use std::time::Duration;

use fieldline_core::{
    Quality, QualityReason, Sample, SampleBatch, Value,
    config::{InfluxConfig, LineConfig, SqlConfig},
};
use fieldline_proto::v1::{self, storage_service_client::StorageServiceClient};
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use tokio_stream::wrappers::ReceiverStream;

const BASE_NS: i64 = 1_700_000_000_000_000_000;
const SECOND: i64 = 1_000_000_000;
const WINDOW: i64 = 10 * SECOND;

/// One sample per second for 60 s: temperature (float, Bad every 7th second), count (int),
/// running (bool) and state (string).
fn batches(line: &str) -> Vec<SampleBatch> {
    (0..60i64)
        .map(|i| {
            let ts = BASE_NS + i * SECOND;
            let temperature = if i % 7 == 3 {
                Sample::bad(
                    "temperature",
                    Quality::bad(QualityReason::CommFailure, "timeout"),
                    ts,
                )
            } else {
                Sample::good("temperature", Value::F64(20.0 + (i as f64) * 0.25), ts)
            };
            SampleBatch {
                line: line.into(),
                device: "oven-1".into(),
                adapter_id: "test".into(),
                sequence: u64::try_from(i + 1).unwrap_or(0),
                samples: vec![
                    temperature,
                    Sample::good("count", Value::I64(1000 - i * i), ts),
                    Sample::good("running", Value::Bool(i % 2 == 0), ts),
                    Sample::good("state", Value::String(format!("step \"{i}\"")), ts),
                ],
            }
        })
        .collect()
}

fn good_values(all: &[SampleBatch], tag: &str) -> Vec<(i64, Value)> {
    all.iter()
        .flat_map(|b| b.samples.iter())
        .filter(|s| s.tag == tag)
        .filter_map(|s| s.value.clone().map(|v| (s.timestamp_ns, v)))
        .collect()
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

async fn start(config: LineConfig) -> anyhow::Result<(String, CancellationToken)> {
    let stop = CancellationToken::new();
    let health = Health::default();
    let mut registry = prometheus_client::registry::Registry::default();
    let running = fieldline_storage::start(&config, &health, &mut registry, stop.clone()).await?;
    let url = format!("http://{}", running.grpc_addr);
    tokio::spawn(running.wait());
    Ok((url, stop))
}

async fn ingest(url: &str, all: &[SampleBatch]) -> anyhow::Result<()> {
    let mut client = StorageServiceClient::connect(url.to_string()).await?;
    let requests: Vec<v1::IngestRequest> = all
        .iter()
        .enumerate()
        .map(|(i, b)| v1::IngestRequest {
            request_id: i as u64,
            batch: Some(b.clone().into()),
            records: None,
        })
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    for r in requests {
        tx.send(r).await?;
    }
    drop(tx);
    let mut acks = client.ingest(ReceiverStream::new(rx)).await?.into_inner();
    for _ in all {
        let ack = tokio::time::timeout(Duration::from_secs(30), acks.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("ack stream ended early"))?;
        anyhow::ensure!(ack.stored && ack.rejected_samples == 0, "{ack:?}");
    }
    Ok(())
}

async fn query(
    url: &str,
    line: &str,
    tag: &str,
    aggregate: v1::Aggregate,
    limit: u32,
) -> Result<v1::HistoryResponse, tonic::Status> {
    let mut client = StorageServiceClient::connect(url.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .query_history(v1::HistoryRequest {
            line: line.into(),
            device: "oven-1".into(),
            tag: tag.into(),
            start_ns: BASE_NS,
            end_ns: BASE_NS + 60 * SECOND,
            aggregate: aggregate as i32,
            window_ns: if aggregate == v1::Aggregate::Unspecified {
                0
            } else {
                WINDOW
            },
            limit,
        })
        .await
        .map(tonic::Response::into_inner)
}

fn values(r: &v1::HistoryResponse) -> Vec<(i64, Option<Value>)> {
    r.points
        .iter()
        .map(|p| {
            (
                p.timestamp_ns,
                p.value.clone().and_then(|v| Value::try_from(v).ok()),
            )
        })
        .collect()
}

/// Every check, against whichever backend `url` stores into.
async fn answers_match_what_was_stored(url: &str, line: &str) -> anyhow::Result<()> {
    let all = batches(line);
    ingest(url, &all).await?;

    // Raw: every sample, Bad ones with their quality and no value, in time order.
    let raw = query(url, line, "temperature", v1::Aggregate::Unspecified, 0).await?;
    assert_eq!(raw.points.len(), 60, "one point per second");
    assert!(!raw.truncated);
    for (i, p) in raw.points.iter().enumerate() {
        let i = i as i64;
        assert_eq!(p.timestamp_ns, BASE_NS + i * SECOND);
        let quality = Quality::try_from(p.quality.clone().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if i % 7 == 3 {
            assert!(p.value.is_none(), "a Bad sample has no value: {p:?}");
            assert_eq!(quality.code(), "bad:comm_failure");
        } else {
            assert_eq!(
                p.value.clone().map(Value::try_from).transpose()?,
                Some(Value::F64(20.0 + (i as f64) * 0.25))
            );
            assert!(quality.is_good(), "{quality}");
        }
    }
    // Types survive: integers, booleans and strings come back as they went in.
    for tag in ["count", "running", "state"] {
        let raw = query(url, line, tag, v1::Aggregate::Unspecified, 0).await?;
        let expected: Vec<(i64, Option<Value>)> = good_values(&all, tag)
            .into_iter()
            .map(|(t, v)| (t, Some(v)))
            .collect();
        assert_eq!(values(&raw), expected, "raw {tag}");
    }
    // A limit keeps the oldest points and says there were more.
    let limited = query(url, line, "count", v1::Aggregate::Unspecified, 5).await?;
    assert_eq!(limited.points.len(), 5);
    assert!(limited.truncated);
    assert_eq!(limited.points[0].timestamp_ns, BASE_NS);

    // Windows of 10 s, computed here from the samples sent.
    let windows = |tag: &str| {
        let mut w: Vec<(i64, Vec<Value>)> = Vec::new();
        for (ts, v) in good_values(&all, tag) {
            let start = ts - ts.rem_euclid(WINDOW);
            match w.last_mut() {
                Some((s, vs)) if *s == start => vs.push(v),
                _ => w.push((start, vec![v])),
            }
        }
        w
    };
    let mean = query(url, line, "temperature", v1::Aggregate::Mean, 0).await?;
    let expected: Vec<(i64, f64)> = windows("temperature")
        .into_iter()
        .map(|(s, vs)| (s, vs.iter().map(f64_of).sum::<f64>() / vs.len() as f64))
        .collect();
    let got = values(&mean);
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for ((gt, gv), (et, ev)) in got.iter().zip(&expected) {
        assert_eq!(gt, et);
        let gv = gv.as_ref().map(f64_of).unwrap_or(f64::NAN);
        assert!((gv - ev).abs() < 1e-9, "mean at {gt}: {gv} vs {ev}");
    }
    for (aggregate, pick) in [
        (v1::Aggregate::Min, 0usize),
        (v1::Aggregate::Max, 1),
        (v1::Aggregate::Last, 2),
    ] {
        // Integers keep their type through min, max and last.
        let got = values(&query(url, line, "count", aggregate, 0).await?);
        let expected: Vec<(i64, Option<Value>)> = windows("count")
            .into_iter()
            .map(|(s, vs)| {
                let mut ints = vs.iter().filter_map(|v| match v {
                    Value::I64(i) => Some(*i),
                    _ => None,
                });
                let v = match pick {
                    0 => ints.min(),
                    1 => ints.max(),
                    _ => ints.next_back(),
                };
                (s, v.map(Value::I64))
            })
            .collect();
        assert_eq!(got, expected, "{aggregate:?} of count");
    }
    let last_state = values(&query(url, line, "state", v1::Aggregate::Last, 0).await?);
    assert_eq!(
        last_state.last().cloned(),
        Some((
            BASE_NS + 50 * SECOND,
            Some(Value::String("step \"59\"".into()))
        ))
    );

    // Mean of a text tag is refused, clearly.
    let refused = query(url, line, "state", v1::Aggregate::Mean, 0)
        .await
        .expect_err("mean of a string tag");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    // A tag nobody wrote has no history.
    let none = query(url, line, "nothing", v1::Aggregate::Unspecified, 0).await?;
    assert!(none.points.is_empty());
    Ok(())
}

fn config(line: &str) -> anyhow::Result<LineConfig> {
    let mut config = LineConfig::from_yaml(&format!(
        // The service picks its own gRPC port (no race with other tests for a free one).
        "line: {line}\nstorage:\n  grpc_listen: \"127.0.0.1:0\"\n  batch: {{ max_points: 100, max_delay: 10ms }}\ndevices:\n  - {{ name: oven, type: oven, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: count, address: \"holding:0\", type: i64 }} ] }}\n",
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.storage.influx = None;
    Ok(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_answers_raw_and_windowed_history() -> anyhow::Result<()> {
    kit::require_influxdb()?;
    let line = kit::unique("history");
    let database = line.replace('-', "_");
    let mut config = config(&line)?;
    config.storage.influx = Some(InfluxConfig {
        url: kit::INFLUX_URL.into(),
        database: Some(database.clone()),
        retention_policy: None,
        username: None,
        password: None,
        org: None,
        bucket: None,
        token: None,
        create_database: true,
        timeout: Duration::from_secs(5),
    });
    let (url, stop) = start(config).await?;
    let result = answers_match_what_was_stored(&url, &line).await;
    stop.cancel();
    let _ = kit::influx_query(&database, &format!("DROP DATABASE \"{database}\"")).await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_answers_raw_and_windowed_history() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let line = kit::unique("history");
    let mut config = config(&line)?;
    config.storage.sql = Some(SqlConfig {
        url: format!("sqlite://{}", dir.path().join("plant.db").display()),
        password: None,
    });
    let (url, stop) = start(config).await?;
    let result = answers_match_what_was_stored(&url, &line).await;
    stop.cancel();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_history_backend_queries_are_refused_clearly() -> anyhow::Result<()> {
    kit::require_mysql()?;
    let line = kit::unique("history");
    let mut config = config(&line)?;
    config.storage.sql = Some(SqlConfig {
        url: kit::MYSQL_URL.into(),
        password: None,
    });
    let (url, stop) = start(config).await?;
    let refused = query(&url, &line, "count", v1::Aggregate::Unspecified, 0)
        .await
        .expect_err("MySQL keeps latest values only");
    stop.cancel();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    Ok(())
}
