//! Nothing lost, nothing twice through the InfluxDB v2 write API: the storage service with its
//! write-ahead buffer writes to VictoriaMetrics (a private instance of this test), which goes
//! down and comes back while batches keep arriving; storage is itself killed (-9) in the middle
//! of replaying.
//!
//! VictoriaMetrics is stopped with SIGTERM here, not killed: it acknowledges a write before the
//! samples reach its disk (a kill -9 loses about the last second it acknowledged), so only a
//! clean stop keeps the promise storage relies on, that what a backend acknowledged is kept.

use std::time::Duration;

const MS: i64 = 1_000_000;

mod common;

use common::{metrics, send};
use fieldline_testkit::{self as kit, PrivateServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_arrives_exactly_once_through_the_v2_api_despite_outages() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut vm = PrivateServer::victoria_metrics(dir.path()).await?;
    let vm_url = format!("http://127.0.0.1:{}", vm.port);

    let line = kit::unique("v2-outage");
    let (grpc, http) = (kit::free_addr()?, kit::free_addr()?);
    std::fs::write(dir.path().join("token"), "t0ken\n")?;
    let config = dir.path().join("line.yaml");
    std::fs::write(
        &config,
        format!(
            "line: {line}\nstorage:\n  grpc_listen: \"{grpc}\"\n  http_listen: \"{http}\"\n  influx: {{ url: \"{vm_url}\", org: fieldline, bucket: samples, token: {{ file: \"{token}\" }}, timeout: 2s }}\n  buffer: {{ dir: \"{buf}\", max_size: 256MiB }}\n  batch: {{ max_points: 5 }}\ndevices:\n  - {{ name: press, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: count, address: \"holding:0\", type: i64 }} ] }}\n",
            token = dir.path().join("token").display(),
            buf = dir.path().join("buffer").display()
        ),
    )?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_fieldline-storage"));
    let args = ["--config", &config.display().to_string()].map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let url = format!("http://{grpc}");
    let storage = kit::ServiceProcess::start(binary, &args, http).await?;

    // Millisecond timestamps (VictoriaMetrics keeps milliseconds), a few minutes old.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let base_ns = (i64::try_from(now)? - 10 * 60 * 1000) * MS;

    // Small write groups make the replay long enough to be interrupted.
    // 1. VictoriaMetrics up: written directly.
    send(&url, &line, base_ns, 0..300).await?;
    // 2. VictoriaMetrics down: storage keeps accepting, into its buffer.
    vm.stop().await?;
    send(&url, &line, base_ns, 300..1800).await?;
    let page = metrics(http).await;
    assert!(
        kit::metric_value(&page, "fieldline_storage_buffer_pending_batches ")
            .is_some_and(|n| n >= 1000.0),
        "{page}"
    );
    // 3. VictoriaMetrics back: replay starts; kill -9 the storage service in the middle of it.
    vm.start().await?;
    let under_way = kit::wait_for(Duration::from_secs(60), "a replay under way", || async {
        let page = metrics(http).await;
        let replayed =
            kit::metric_value(&page, "fieldline_storage_buffer_replayed_batches_total ")?;
        let pending = kit::metric_value(&page, "fieldline_storage_buffer_pending_batches ")?;
        (replayed > 0.0 && pending > 100.0).then_some(())
    })
    .await;
    if let Err(e) = under_way {
        anyhow::bail!("{e}; metrics:\n{}", metrics(http).await);
    }
    let pid = storage
        .pid()
        .ok_or_else(|| anyhow::anyhow!("storage exited"))?;
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    drop(storage);
    // 4. Restarted, it replays the rest from its checkpoint, and takes new batches.
    let mut storage = kit::ServiceProcess::start(binary, &args, http).await?;
    send(&url, &line, base_ns, 1800..2000).await?;
    kit::wait_for(
        Duration::from_secs(120),
        "the buffer to drain after the restart",
        || async {
            let page = metrics(http).await;
            (kit::metric_value(&page, "fieldline_storage_buffer_pending_batches ")? == 0.0)
                .then_some(())
        },
    )
    .await?;

    // Every sample exactly once, unchanged: one series, 2000 distinct timestamps, each with
    // the value sent at it (an extra, missing or altered sample would show).
    let selector = format!("{{__name__=\"press_count\",line=\"{line}\"}}");
    let series = kit::wait_for(
        Duration::from_secs(20),
        "2000 samples in VictoriaMetrics",
        || async {
            let series = kit::vm_export(&vm_url, &selector).await.ok()?;
            let got: usize = series.iter().map(|s| s.values.len()).sum();
            (got >= 2000).then_some(series)
        },
    )
    .await?;
    assert_eq!(series.len(), 1, "{series:?}");
    let s = &series[0];
    assert_eq!(
        (s.labels.get("device"), s.labels.get("line")),
        (Some(&"press".to_string()), Some(&line))
    );
    let mut samples: Vec<(i64, f64)> = s
        .timestamps
        .iter()
        .copied()
        .zip(s.values.iter().copied())
        .collect();
    samples.sort_by_key(|(t, _)| *t);
    let expected: Vec<(i64, f64)> = (0..2000i64).map(|i| (base_ns / MS + i, i as f64)).collect();
    assert_eq!(samples.len(), expected.len());
    assert_eq!(samples, expected);
    assert_eq!(
        samples.iter().map(|(_, v)| v).sum::<f64>(),
        (1999 * 2000 / 2) as f64
    );
    assert_eq!(storage.terminate().await?, Some(0));
    Ok(())
}
