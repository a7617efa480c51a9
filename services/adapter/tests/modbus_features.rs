//! Modbus driver behaviour a plant engineer relies on, against the simulated device over real
//! TCP: the planner learns a device's read limit, poll groups run at their own rates, tags go
//! stale when nothing can be read, and writes pass every check of the safe path.

use std::time::Duration;

use fieldline_core::Value;
use fieldline_proto::v1;
use fieldline_runtime::CancellationToken;
use fieldline_sim::SimState;
use fieldline_testkit as kit;

mod common;

use common::TestAdapter as Running;

async fn start(device: &str) -> anyhow::Result<Running> {
    common::start("features", device).await
}

async fn sim(
    configure: impl FnOnce(&mut fieldline_sim::Registers),
) -> anyhow::Result<(std::net::SocketAddr, SimState, CancellationToken)> {
    let state = SimState::new();
    state.with(configure);
    let stop = CancellationToken::new();
    let (addr, _task) =
        fieldline_sim::serve_modbus_tcp("127.0.0.1:0".parse()?, state.clone(), stop.clone())
            .await?;
    Ok((addr, state, stop))
}

fn good(s: &v1::Sample) -> bool {
    s.quality
        .as_ref()
        .is_some_and(|q| q.status == v1::QualityStatus::Good as i32)
}

#[tokio::test]
async fn a_read_the_device_refuses_is_split_and_remembered() -> anyhow::Result<()> {
    let (addr, _state, sim_stop) = sim(|r| {
        r.max_read_registers = 4;
        r.holding[..6].copy_from_slice(&[10, 11, 12, 13, 14, 15]);
    })
    .await?;
    let tags: String = (0..6)
        .map(|i| format!("      - {{ name: r{i}, address: \"holding:{i}\", type: u16 }}\n"))
        .collect();
    let mut run = start(&format!("  - name: plc\n    type: t\n    protocol: modbus-tcp\n    endpoint: \"{addr}\"\n    poll_interval: 100ms\n    tags:\n{tags}")).await?;
    // Several cycles: the first learns the split, the later ones use it.
    let mut stream = run.stream().await?;
    let ((), batches) = common::until(&mut stream, Duration::from_secs(30), "5 batches", |seen| {
        (seen.len() >= 5).then_some(())
    })
    .await?;
    let first = batches.first().ok_or_else(|| anyhow::anyhow!("no batch"))?;
    assert_eq!(first.samples.len(), 6);
    assert!(
        first.samples.iter().all(good),
        "the refused read is retried in parts within the same cycle: {first:?}"
    );
    assert_eq!(first.samples[5].value, Some(Value::U64(15).into()));
    assert!(
        run.metric("fieldline_adapter_request_splits_total{device=\"plc\"} ")
            .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        run.metric("fieldline_adapter_requests_per_cycle{device=\"plc\"} "),
        Some(2.0),
        "6 registers in reads of at most 4: two reads per cycle"
    );
    assert!(
        run.metric("fieldline_adapter_request_splits_total{device=\"plc\"} ") == Some(1.0),
        "learned once, not every cycle"
    );
    run.stop().await;
    sim_stop.cancel();
    Ok(())
}

#[tokio::test]
async fn poll_groups_run_at_their_own_rates() -> anyhow::Result<()> {
    let (addr, _state, sim_stop) = sim(|_| {}).await?;
    let mut run = start(&format!(
        "  - name: plc\n    type: t\n    protocol: modbus-tcp\n    endpoint: \"{addr}\"\n    poll_interval: 400ms\n    tags:\n      - {{ name: fast, address: \"holding:0\", type: u16, poll_interval: 50ms }}\n      - {{ name: slow, address: \"holding:1\", type: u16 }}\n"
    ))
    .await?;
    let count = |batches: &[v1::SampleBatch], tag: &str| {
        batches
            .iter()
            .flat_map(|b| &b.samples)
            .filter(|s| s.tag == tag)
            .count()
    };
    // Judged when the slow group has been polled three times, however long that took.
    let mut stream = run.stream().await?;
    let ((fast, slow), _) = common::until(
        &mut stream,
        Duration::from_secs(30),
        "three polls of the slow group",
        |seen| {
            let slow = count(seen, "slow");
            (slow >= 3).then(|| (count(seen, "fast"), slow))
        },
    )
    .await?;
    assert!(slow >= 2, "slow group polled: {slow}");
    assert!(
        fast >= 4 * slow,
        "the 50ms group is polled far more often than the 400ms one: {fast} vs {slow}"
    );
    run.stop().await;
    sim_stop.cancel();
    Ok(())
}

#[tokio::test]
async fn tags_go_stale_while_the_device_cannot_be_read() -> anyhow::Result<()> {
    let (addr, _state, sim_stop) = sim(|_| {}).await?;
    let mut run = start(&format!(
        "  - name: plc\n    type: t\n    protocol: modbus-tcp\n    endpoint: \"{addr}\"\n    poll_interval: 50ms\n    max_backoff: 5s\n    stale_after: 3\n    tags:\n      - {{ name: a, address: \"holding:0\", type: u16 }}\n"
    ))
    .await?;
    let mut stream = run
        .client
        .stream_samples(v1::StreamSamplesRequest::default())
        .await?
        .into_inner();
    sim_stop.cancel();
    let reason = |want: v1::QualityReason| {
        move |b: &v1::SampleBatch| {
            b.samples
                .iter()
                .any(|s| s.quality.as_ref().is_some_and(|q| q.reason == want as i32))
        }
    };
    let mut seen_comm = false;
    let stale = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(b) = stream.message().await? {
            seen_comm |= reason(v1::QualityReason::CommFailure)(&b);
            if reason(v1::QualityReason::Stale)(&b) {
                return anyhow::Ok(b);
            }
        }
        anyhow::bail!("stream ended")
    })
    .await??;
    assert!(seen_comm, "the failed read itself is reported first");
    assert!(
        stale.samples.iter().all(|s| s.value.is_none()),
        "a stale sample carries no value"
    );
    run.stop().await;
    Ok(())
}

fn command(line: &str, id: &str, tag: &str, value: Value) -> v1::Command {
    v1::Command {
        ttl_ns: 0,
        id: id.into(),
        tag: format!("{line}/plc/{tag}"),
        value: Some(value.into()),
        deadline_ns: 0,
        requested_by: "test".into(),
        reason: "test".into(),
    }
}

#[tokio::test]
async fn writes_pass_every_check_of_the_safe_path() -> anyhow::Result<()> {
    let (addr, state, sim_stop) = sim(|_| {}).await?;
    let mut run = start(&format!(
        "  - name: plc\n    type: t\n    protocol: modbus-tcp\n    endpoint: \"{addr}\"\n    poll_interval: 200ms\n    write_multiple: true\n    tags:\n      - {{ name: setpoint, address: \"holding:10\", type: f32, writable: true, min: 0, max: 100 }}\n      - {{ name: pump, address: \"coil:3\", type: bool, writable: true }}\n      - {{ name: flag, address: \"holding:20.2\", type: bool, writable: true }}\n      - {{ name: level, address: \"input:0\", type: u16 }}\n"
    ))
    .await?;
    let line = run.line.clone();
    let status = |r: &v1::CommandResult| v1::CommandStatus::try_from(r.status).unwrap_or_default();

    let ok = run
        .client
        .write(command(&line, "c1", "setpoint", Value::F64(42.5)))
        .await?
        .into_inner();
    assert_eq!(status(&ok), v1::CommandStatus::Written, "{ok:?}");
    assert_eq!(ok.read_back, Some(Value::F64(42.5).into()));
    assert_eq!(
        state.with(|r| [r.holding[10], r.holding[11]]),
        [0x422A, 0x0000],
        "42.5f32 = 0x422A0000, high word first"
    );

    let coil = run
        .client
        .write(command(&line, "c2", "pump", Value::Bool(true)))
        .await?
        .into_inner();
    assert_eq!(status(&coil), v1::CommandStatus::Written, "{coil:?}");
    assert!(state.with(|r| r.coils[3]));

    state.with(|r| r.holding[20] = 0b1000_0001);
    let bit = run
        .client
        .write(command(&line, "c3", "flag", Value::Bool(true)))
        .await?
        .into_inner();
    assert_eq!(status(&bit), v1::CommandStatus::Written, "{bit:?}");
    assert_eq!(
        state.with(|r| r.holding[20]),
        0b1000_0101,
        "only bit 2 changed"
    );

    for (id, tag, value, by) in [
        ("r1", "setpoint", Value::F64(100.5), "max"),
        ("r2", "setpoint", Value::F64(-1.0), "min"),
        ("r3", "level", Value::I64(1), "not_writable"),
        ("r4", "nope", Value::I64(1), "unknown_tag"),
        ("r5", "pump", Value::I64(1), "type"),
        ("r6", "setpoint", Value::F64(f64::NAN), "value"),
    ] {
        let r = run
            .client
            .write(command(&line, id, tag, value))
            .await?
            .into_inner();
        assert_eq!(
            (status(&r), r.rejected_by.as_str()),
            (v1::CommandStatus::Rejected, by),
            "{id}: {r:?}"
        );
    }
    let mut late = command(&line, "r7", "setpoint", Value::F64(1.0));
    late.deadline_ns = fieldline_runtime::now_ns() - 1;
    let r = run.client.write(late).await?.into_inner();
    assert_eq!(r.rejected_by, "deadline");
    assert_eq!(
        state.with(|r| r.holding[10]),
        0x422A,
        "no rejected command reached the device"
    );

    // The same command id again: the earlier result, and the device is not written twice.
    state.with(|r| r.holding[10] = 0);
    let again = run
        .client
        .write(command(&line, "c1", "setpoint", Value::F64(42.5)))
        .await?
        .into_inner();
    assert_eq!(again, ok, "a redelivered command returns its first result");
    assert_eq!(state.with(|r| r.holding[10]), 0, "and is not written again");
    run.stop().await;
    sim_stop.cancel();
    Ok(())
}

#[tokio::test]
async fn commands_published_on_the_bus_never_reach_the_device() -> anyhow::Result<()> {
    use prost::Message;
    let (addr, state, sim_stop) = sim(|r| r.holding[7] = 3).await?;
    let run = start(&format!(
        "  - name: plc\n    type: t\n    protocol: modbus-tcp\n    endpoint: \"{addr}\"\n    poll_interval: 200ms\n    tags:\n      - {{ name: speed, address: \"holding:7\", type: i16, writable: true, min: -100, max: 100 }}\n"
    ))
    .await?;
    let line = run.line.clone();
    let (host, port) = kit::MQTT
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("MQTT address"))?;
    let (client, mut events) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new(kit::unique("cmd-test"), host, port.parse()?),
        16,
    );
    // Anyone may publish on the broker here: a Command on the device's `cmd` topic, as an
    // intruder would send it, bypassing the processor's interlocks and audit.
    let topic = format!("fieldline/v1/{line}/plc/cmd");
    client
        .subscribe(format!("{topic}/result"), rumqttc::QoS::AtLeastOnce)
        .await?;
    let mut answers = 0;
    let listened: Result<anyhow::Result<()>, _> =
        tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match events.poll().await? {
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                        client
                            .publish(
                                &topic,
                                rumqttc::QoS::AtLeastOnce,
                                false,
                                command(&line, "intruder", "speed", Value::I64(-42))
                                    .encode_to_vec(),
                            )
                            .await?;
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)) => answers += 1,
                    _ => {}
                }
            }
        })
        .await;
    assert!(listened.is_err(), "the MQTT client failed: {listened:?}");
    // Fifteen polls later the device still holds its own value, and nobody answered.
    assert_eq!(
        state.with(|r| r.holding[7]),
        3,
        "the command reached the device"
    );
    assert_eq!(answers, 0, "the adapter answered a command from the bus");
    // Writes still reach the device the one way there is: AdapterService.Write.
    let written = run
        .client
        .clone()
        .write(command(&line, "c-grpc", "speed", Value::I64(-42)))
        .await?
        .into_inner();
    assert_eq!(
        written.status,
        v1::CommandStatus::Written as i32,
        "{written:?}"
    );
    assert_eq!(state.with(|r| r.holding[7]), -42i16 as u16);
    run.stop().await;
    sim_stop.cancel();
    Ok(())
}

#[tokio::test]
async fn a_command_id_is_written_once_even_across_an_adapter_restart() -> anyhow::Result<()> {
    let (addr, state, sim_stop) = sim(|_| {}).await?;
    let devices = format!(
        "  - name: plc\n    type: t\n    protocol: modbus-tcp\n    endpoint: \"{addr}\"\n    poll_interval: 200ms\n    tags:\n      - {{ name: speed, address: \"holding:7\", type: i16, writable: true, min: -100, max: 100 }}\n"
    );
    let folder = tempfile::tempdir()?;
    let line = kit::unique("restart");
    let mut run = common::start_at(&line, &devices, folder.path()).await?;
    let first = run
        .client
        .write(command(&line, "once", "speed", Value::I64(-42)))
        .await?
        .into_inner();
    assert_eq!(first.status, v1::CommandStatus::Written as i32, "{first:?}");
    assert_eq!(state.with(|r| r.holding[7]), -42i16 as u16);
    run.stop().await;

    // Someone changes the value at the panel; the adapter starts again on its folder and the
    // same command arrives (a retry whose first answer was lost with the restart).
    state.with(|r| r.holding[7] = 5);
    let mut run = common::start_at(&line, &devices, folder.path()).await?;
    let again = run
        .client
        .write(command(&line, "once", "speed", Value::I64(-42)))
        .await?
        .into_inner();
    assert_eq!(again, first, "the first result, from the journal");
    assert_eq!(state.with(|r| r.holding[7]), 5, "not written a second time");
    assert_eq!(
        run.metric("fieldline_adapter_writes_total{device=\"plc\",outcome=\"repeated\"} "),
        Some(1.0)
    );
    // A new id is written as usual.
    let other = run
        .client
        .write(command(&line, "twice", "speed", Value::I64(-42)))
        .await?
        .into_inner();
    assert_eq!(other.status, v1::CommandStatus::Written as i32, "{other:?}");
    assert_eq!(state.with(|r| r.holding[7]), -42i16 as u16);
    run.stop().await;
    sim_stop.cancel();
    Ok(())
}
