//! A storage service with a write-ahead buffer starts and takes batches while its database is
//! still down (a plant powering up in the wrong order), and delivers them once it is up.

use std::time::Duration;

mod common;

use fieldline_testkit::{self as kit, PrivateServer};

const BASE_NS: i64 = 1_700_000_000_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_buffer_storage_accepts_before_its_database_is_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut influx = PrivateServer::influxdb(dir.path()).await?;
    influx.kill().await;

    let line = kit::unique("startup");
    let (grpc, http) = (kit::free_addr()?, kit::free_addr()?);
    let config = dir.path().join("line.yaml");
    std::fs::write(
        &config,
        format!(
            "line: {line}\nstorage:\n  grpc_listen: \"{grpc}\"\n  http_listen: \"{http}\"\n  influx: {{ url: \"http://127.0.0.1:{ip}\", database: fl, timeout: 2s }}\n  buffer: {{ dir: \"{buf}\", max_size: 16MiB }}\ndevices:\n  - {{ name: press, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: count, address: \"holding:0\", type: i64 }} ] }}\n",
            ip = influx.port,
            buf = dir.path().join("buffer").display()
        ),
    )?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_fieldline-storage"));
    let args = ["--config", &config.display().to_string()].map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut storage = kit::ServiceProcess::start(binary, &args, http).await?;

    // InfluxDB is down, yet every batch is acknowledged: durable in the buffer.
    let acks = common::send(&format!("http://{grpc}"), &line, BASE_NS, 0..200).await?;
    for ack in &acks {
        assert_eq!(ack.detail, "buffered", "InfluxDB is down: {ack:?}");
    }
    // The 200 batches arrived together, so they were grouped into a few writes.
    let page = common::metrics(http).await;
    let groups = kit::metric_value(&page, "fieldline_storage_write_group_samples_count ");
    let grouped = kit::metric_value(&page, "fieldline_storage_write_group_samples_sum ");
    assert_eq!(grouped, Some(200.0), "{page}");
    assert!(groups.is_some_and(|g| (1.0..=20.0).contains(&g)), "{page}");

    // InfluxDB comes up: the buffer drains into it, every sample exactly once.
    influx.start().await?;
    let influx_url = format!("http://127.0.0.1:{}", influx.port);
    let row = kit::wait_for(Duration::from_secs(60), "the buffered samples in InfluxDB", || async {
        let answer = kit::influx_query_at(
            &influx_url,
            "fl",
            &format!("SELECT COUNT(\"count\"), SUM(\"count\") FROM \"press\" WHERE \"line\" = '{line}'"),
        )
        .await
        .ok()?;
        let row = answer["results"][0]["series"][0]["values"][0].clone();
        (row[1].as_i64() == Some(200)).then_some(row)
    })
    .await?;
    assert_eq!(
        row[2].as_i64(),
        Some(199 * 200 / 2),
        "values unchanged: {row}"
    );
    assert_eq!(storage.terminate().await?, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_group_closes_at_max_points() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let line = kit::unique("groups");
    let (grpc, http) = (kit::free_addr()?, kit::free_addr()?);
    let config = dir.path().join("line.yaml");
    std::fs::write(
        &config,
        format!(
            "line: {line}\nstorage:\n  grpc_listen: \"{grpc}\"\n  http_listen: \"{http}\"\n  sql: {{ url: \"sqlite://{db}\" }}\n  batch: {{ max_points: 10, max_delay: 1s }}\ndevices:\n  - {{ name: press, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: count, address: \"holding:0\", type: i64 }} ] }}\n",
            db = dir.path().join("plant.db").display()
        ),
    )?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_fieldline-storage"));
    let args = ["--config", &config.display().to_string()].map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut storage = kit::ServiceProcess::start(binary, &args, http).await?;
    common::send(&format!("http://{grpc}"), &line, BASE_NS, 0..100).await?;
    // 100 one-sample batches in groups of at most 10 samples: at least 10 writes, none larger.
    let page = common::metrics(http).await;
    let groups = kit::metric_value(&page, "fieldline_storage_write_group_samples_count ");
    let at_most_ten = kit::metric_value(
        &page,
        "fieldline_storage_write_group_samples_bucket{le=\"10.0\"} ",
    );
    assert_eq!(
        kit::metric_value(&page, "fieldline_storage_write_group_samples_sum "),
        Some(100.0),
        "{page}"
    );
    assert!(groups.is_some_and(|g| g >= 10.0), "{page}");
    assert_eq!(at_most_ten, groups, "{page}");
    assert_eq!(storage.terminate().await?, Some(0));
    Ok(())
}
