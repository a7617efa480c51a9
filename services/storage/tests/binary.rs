//! The `fieldline-storage` binary: health, readiness and metrics endpoints, and a clean exit
//! on SIGTERM (embedded SQLite backend, so no server is needed).

use fieldline_testkit as kit;

#[tokio::test]
async fn serves_health_and_metrics_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let http = kit::free_addr()?;
    let grpc = kit::free_addr()?;
    let config = dir.path().join("line.yaml");
    std::fs::write(
        &config,
        format!(
            "line: l1\nstorage:\n  grpc_listen: {grpc}\n  http_listen: {http}\n  sql:\n    url: sqlite://{}\ndevices:\n  - {{ name: d1, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: a, address: \"holding:0\", type: u16 }} ] }}\n",
            dir.path().join("s.db").display()
        ),
    )?;
    let mut storage = kit::ServiceProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_fieldline-storage")),
        &["--config", &config.display().to_string()],
        http,
    )
    .await?;
    assert_eq!(
        kit::http_get(&format!("http://{http}/healthz")).await?.0,
        200
    );
    let (status, metrics) = kit::http_get(&format!("http://{http}/metrics")).await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("fieldline_storage_samples_written_total{sink=\"sqlite\"} 0"),
        "{metrics}"
    );
    assert_eq!(storage.terminate().await?, Some(0));
    let log = storage.stdout().await;
    assert!(log.contains("storage started"), "{log}");
    assert!(kit::warnings_and_errors(&log).is_empty(), "{log}");
    Ok(())
}

#[tokio::test]
async fn refuses_to_start_without_a_backend() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("line.yaml");
    std::fs::write(
        &config,
        "line: l1\ndevices:\n  - { name: d1, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ { name: a, address: \"holding:0\", type: u16 } ] }\n",
    )?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldline-storage"))
        .args(["--config"])
        .arg(&config)
        .output()?;
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage needs at least one backend"));
    Ok(())
}
