//! The `fieldline-adapter` binary polling the simulated tank and publishing to the real MQTT
//! broker: ready once connected, metrics count polls, SIGTERM flushes and exits cleanly.

use std::time::Duration;

use fieldline_runtime::CancellationToken;
use fieldline_testkit as kit;

#[tokio::test]
async fn polls_publishes_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    kit::require_backends()?;
    let stop = CancellationToken::new();
    let state = fieldline_sim::SimState::new();
    fieldline_sim::tank::init(&state);
    let (sim, _server) =
        fieldline_sim::serve_modbus_tcp("127.0.0.1:0".parse()?, state, stop.clone()).await?;
    let dir = tempfile::tempdir()?;
    let http = kit::free_addr()?;
    let grpc = kit::free_addr()?;
    let line = kit::unique("adapter");
    let file = dir.path().join("line.yaml");
    std::fs::write(
        &file,
        format!(
            "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nadapter:\n  grpc_listen: {grpc}\n  http_listen: {http}\n  state_dir: {state}\ndevices:\n  - {{ name: tank, type: t, protocol: modbus-tcp, endpoint: \"{sim}\", poll_interval: 100ms, tags: [ {{ name: temperature, address: \"holding:0\", type: f32 }} ] }}\n",
            mqtt = kit::MQTT,
            state = dir.path().join("state").display(),
        ),
    )?;
    let mut adapter = kit::ServiceProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_fieldline-adapter")),
        &["--config", &file.display().to_string()],
        http,
    )
    .await?;
    let published = kit::wait_for(Duration::from_secs(10), "published batches", || async {
        let (_, metrics) = kit::http_get(&format!("http://{http}/metrics"))
            .await
            .ok()?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("fieldline_adapter_batches_published_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .filter(|n| *n >= 3)
    })
    .await?;
    assert!(published >= 3);
    assert_eq!(adapter.terminate().await?, Some(0));
    let seq = std::fs::read_to_string(dir.path().join("state").join(format!("{line}.tank.seq")))?;
    assert!(
        seq.trim().parse::<u64>()? > 0,
        "the sequence reservation is on disk"
    );
    stop.cancel();
    Ok(())
}
