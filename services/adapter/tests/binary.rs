//! The `fieldline-adapter` binary polling the simulated tank and publishing to the real MQTT
//! broker: ready once connected, metrics count polls, SIGTERM flushes and exits cleanly.

use std::time::Duration;

use fieldline_runtime::CancellationToken;
use fieldline_testkit as kit;

#[tokio::test]
async fn polls_publishes_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    kit::require_mqtt()?;
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
    let log = adapter.stdout().await;
    assert!(log.contains("adapter started"), "{log}");
    assert!(kit::warnings_and_errors(&log).is_empty(), "{log}");
    let seq = std::fs::read_to_string(dir.path().join("state").join(format!("{line}.tank.seq")))?;
    assert!(
        seq.trim().parse::<u64>()? > 0,
        "the sequence reservation is on disk"
    );
    stop.cancel();
    Ok(())
}

/// A poll still waiting for its reply when SIGTERM arrives completes, and its batch reaches
/// the broker before the adapter exits.
#[tokio::test]
async fn a_poll_in_flight_at_sigterm_is_published() -> anyhow::Result<()> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use fieldline_proto::v1;
    use prost::Message;

    kit::require_mqtt()?;
    // Answers 7 at once until armed; then every reply carries 42 and comes after 2 s, so a
    // sample of 42 can only come from a poll that was in flight at SIGTERM.
    let slow = Arc::new(AtomicBool::new(false));
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
    let armed = slow.clone();
    let device = kit::faulty_modbus(move |_, request| {
        if armed.load(Ordering::SeqCst) {
            let _ = asked_tx.send(());
            kit::Answer::Delayed(
                Duration::from_secs(2),
                kit::modbus_reply(request, &kit::registers_pdu(request, 42)),
            )
        } else {
            kit::Answer::Bytes(kit::modbus_reply(request, &kit::registers_pdu(request, 7)))
        }
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let http = kit::free_addr()?;
    let grpc = kit::free_addr()?;
    let line = kit::unique("inflight");
    let file = dir.path().join("line.yaml");
    std::fs::write(
        &file,
        format!(
            "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nadapter:\n  grpc_listen: {grpc}\n  http_listen: {http}\n  state_dir: {state}\ndevices:\n  - {{ name: plc, type: t, protocol: modbus-tcp, endpoint: \"{device}\", poll_interval: 100ms, timeout: 10s, tags: [ {{ name: level, address: \"holding:0\", type: u16 }} ] }}\n",
            mqtt = kit::MQTT,
            state = dir.path().join("state").display(),
        ),
    )?;
    let mut bus = kit::subscribe(&format!("fieldline/v1/{line}/+/samples")).await?;
    let mut adapter = kit::ServiceProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_fieldline-adapter")),
        &["--config", &file.display().to_string()],
        http,
    )
    .await?;
    // The value of the first sample in the next batch on the bus, within `within`.
    async fn next_level(
        bus: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
        within: Duration,
    ) -> anyhow::Result<Vec<Option<v1::Value>>> {
        let (_, payload) = tokio::time::timeout(within, bus.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no batch on the bus within {within:?}"))?
            .ok_or_else(|| anyhow::anyhow!("the bus client stopped"))?;
        let batch = v1::SampleBatch::decode(payload.as_slice())?;
        Ok(batch.samples.into_iter().map(|s| s.value).collect())
    }
    let first = next_level(&mut bus, Duration::from_secs(10)).await?;
    assert_eq!(first, vec![Some(fieldline_core::Value::U64(7).into())]);
    slow.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), asked.recv())
        .await
        .map_err(|_| anyhow::anyhow!("the adapter sent no request after arming"))?;
    // The request is at the device, its reply 2 s away.
    assert_eq!(adapter.terminate().await?, Some(0));
    let mut seen = Vec::new();
    let forty_two = Some(fieldline_core::Value::U64(42).into());
    while !seen.contains(&forty_two) {
        match next_level(&mut bus, Duration::from_secs(5)).await {
            Ok(values) => seen.extend(values),
            Err(e) => anyhow::bail!(
                "the batch of the poll in flight was not published ({e}); seen: {seen:?}"
            ),
        }
    }
    Ok(())
}
