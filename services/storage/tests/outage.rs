//! Nothing lost, nothing twice: the storage service with its write-ahead buffer, fed like a
//! processor feeds it, while its databases go down and come back and while it is itself
//! killed (-9) in the middle of replaying. InfluxDB and MariaDB are private instances of this
//! test, so killing them disturbs no other test.

use std::time::Duration;

mod common;

use common::{metrics, send};
use fieldline_testkit::{self as kit, PrivateServer};

const BASE_NS: i64 = 1_700_000_000_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_arrives_exactly_once_through_outages_and_a_kill_during_replay()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut influx = PrivateServer::influxdb(dir.path()).await?;
    let mut maria = PrivateServer::mariadb(dir.path()).await?;
    let pool =
        sqlx::MySqlPool::connect(&format!("mysql://root@127.0.0.1:{}/mysql", maria.port)).await?;
    sqlx::query("CREATE DATABASE IF NOT EXISTS test")
        .execute(&pool)
        .await?;
    pool.close().await;

    let line = kit::unique("outage");
    let (grpc, http) = (kit::free_addr()?, kit::free_addr()?);
    // Small write groups (batch.max_points) make the replay long enough to be interrupted.
    let config = dir.path().join("line.yaml");
    std::fs::write(
        &config,
        format!(
            "line: {line}\nstorage:\n  grpc_listen: \"{grpc}\"\n  http_listen: \"{http}\"\n  influx: {{ url: \"http://127.0.0.1:{ip}\", database: fl, timeout: 2s }}\n  sql: {{ url: \"mysql://root@127.0.0.1:{mp}/test\" }}\n  buffer: {{ dir: \"{buf}\", max_size: 256MiB }}\n  batch: {{ max_points: 5 }}\ndevices:\n  - {{ name: press, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: count, address: \"holding:0\", type: i64 }} ] }}\n",
            ip = influx.port,
            mp = maria.port,
            buf = dir.path().join("buffer").display()
        ),
    )?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_fieldline-storage"));
    let args = ["--config", &config.display().to_string()].map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let url = format!("http://{grpc}");
    let storage = kit::ServiceProcess::start(binary, &args, http).await?;

    // 1. Both databases up: written directly.
    send(&url, &line, BASE_NS, 0..300).await?;
    // 2. InfluxDB down: storage keeps accepting, into its buffer.
    influx.kill().await;
    send(&url, &line, BASE_NS, 300..1800).await?;
    let page = metrics(http).await;
    assert!(
        kit::metric_value(&page, "fieldline_storage_buffer_pending_batches ")
            .is_some_and(|n| n >= 1000.0),
        "{page}"
    );
    // The failed direct write counts by sink and kind.
    assert!(
        kit::metric_value(
            &page,
            "fieldline_storage_errors_total{sink=\"influxdb\",kind=\"unreachable\"} "
        )
        .is_some_and(|n| n >= 1.0),
        "{page}"
    );
    // 3. InfluxDB back: replay starts; kill -9 the storage service in the middle of it.
    influx.start().await?;
    kit::wait_for(Duration::from_secs(60), "a replay under way", || async {
        let page = metrics(http).await;
        let replayed =
            kit::metric_value(&page, "fieldline_storage_buffer_replayed_batches_total ")?;
        let pending = kit::metric_value(&page, "fieldline_storage_buffer_pending_batches ")?;
        (replayed > 0.0 && pending > 100.0).then_some(())
    })
    .await?;
    let pid = storage
        .pid()
        .ok_or_else(|| anyhow::anyhow!("storage exited"))?;
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    drop(storage);
    // 4. Restarted, it replays the rest from its checkpoint.
    let mut storage = kit::ServiceProcess::start(binary, &args, http).await?;
    let drained = || async {
        let page = metrics(http).await;
        (kit::metric_value(&page, "fieldline_storage_buffer_pending_batches ")? == 0.0)
            .then_some(())
    };
    kit::wait_for(
        Duration::from_secs(120),
        "the buffer to drain after the restart",
        drained,
    )
    .await?;
    // 5. MariaDB down: buffered again, replayed when it is back.
    maria.kill().await;
    send(&url, &line, BASE_NS, 1800..2000).await?;
    maria.start().await?;
    kit::wait_for(
        Duration::from_secs(120),
        "the buffer to drain after MariaDB's outage",
        drained,
    )
    .await?;

    // Every sample exactly once, unchanged: 2000 distinct timestamps, and the values sum to
    // 0 + 1 + ... + 1999 (an extra or altered point would change the count or the sum).
    let influx_url = format!("http://127.0.0.1:{}", influx.port);
    let answer = kit::influx_query_at(
        &influx_url,
        "fl",
        &format!(
            "SELECT COUNT(\"count\"), SUM(\"count\") FROM \"press\" WHERE \"line\" = '{line}'"
        ),
    )
    .await?;
    let row = &answer["results"][0]["series"][0]["values"][0];
    assert_eq!(
        (row[1].as_i64(), row[2].as_i64()),
        (Some(2000), Some(1999 * 2000 / 2)),
        "{answer}"
    );
    let pool =
        sqlx::MySqlPool::connect(&format!("mysql://root@127.0.0.1:{}/test", maria.port)).await?;
    let (value, ts): (String, i64) = sqlx::query_as(
        "SELECT value_text, source_ns FROM latest_values WHERE line = ? AND tag = 'count'",
    )
    .bind(&line)
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        (value.as_str(), ts),
        ("1999", BASE_NS + 1999 * 1_000_000),
        "MariaDB holds the newest value"
    );
    assert_eq!(storage.terminate().await?, Some(0));
    Ok(())
}
