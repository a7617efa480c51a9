//! Replies a real device or gateway may send: every exception code, wrong function codes,
//! wrong lengths, wrong transaction ids, stray bytes, half frames, silence. Each one gives a
//! Bad sample with the right reason (never a value, never a panic) and the adapter recovers as
//! soon as the device answers properly again.

use std::time::Duration;

use fieldline_proto::v1;
use fieldline_testkit::{self as kit, Answer, modbus_reply, registers_pdu};

mod common;

/// Runs the adapter against a server that misbehaves on its first `faults` requests, then
/// answers 7; returns the first Bad sample's quality and checks a Good 7 follows.
async fn scenario<F>(faults: u64, broken: F) -> anyhow::Result<v1::Quality>
where
    F: Fn(&[u8]) -> Answer + Send + Sync + 'static,
{
    // The faults are armed only once the test is watching, so none goes unseen.
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let remaining = armed.clone();
    let addr = kit::faulty_modbus(move |_, request| {
        use std::sync::atomic::Ordering;
        let faulty = remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if faulty {
            broken(request)
        } else {
            Answer::Bytes(modbus_reply(request, &registers_pdu(request, 7)))
        }
    })
    .await?;
    let device = format!(
        "  - {{ name: plc, type: t, protocol: modbus-tcp, endpoint: \"{addr}\", poll_interval: 50ms, timeout: 200ms, max_backoff: 200ms, tags: [ {{ name: a, address: \"holding:3\", type: u16 }} ] }}\n"
    );
    let mut run = common::start("malformed", &device).await?;
    let mut stream = run.stream().await?;
    armed.store(faults, std::sync::atomic::Ordering::SeqCst);
    let mut bad = None;
    let recovered = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(batch) = stream.message().await? {
            for s in batch.samples {
                let q = s.quality.unwrap_or_default();
                if q.status == v1::QualityStatus::Bad as i32 {
                    assert!(s.value.is_none(), "a Bad sample carries no value");
                    bad.get_or_insert(q);
                } else if bad.is_some() {
                    assert_eq!(s.value, Some(fieldline_core::Value::U64(7).into()));
                    return anyhow::Ok(());
                }
            }
        }
        anyhow::bail!("stream ended")
    })
    .await;
    run.stop().await;
    recovered.map_err(|_| {
        anyhow::anyhow!("no Bad sample followed by a Good one (first Bad: {bad:?})")
    })??;
    bad.ok_or_else(|| anyhow::anyhow!("no Bad sample"))
}

fn reason(q: &v1::Quality) -> v1::QualityReason {
    v1::QualityReason::try_from(q.reason).unwrap_or_default()
}

#[tokio::test]
async fn every_exception_code_is_a_bad_sample_carrying_that_code() -> anyhow::Result<()> {
    kit::require_mqtt()?;
    for code in [1u8, 2, 3, 4, 5, 6, 8, 10, 11, 0x42] {
        let q = scenario(1, move |req| {
            Answer::Bytes(modbus_reply(req, &[req[7] | 0x80, code]))
        })
        .await?;
        assert_eq!(
            (reason(&q), q.exception_code),
            (v1::QualityReason::DeviceException, u32::from(code)),
            "code {code}: {q:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn malformed_replies_are_comm_failures_and_the_adapter_recovers() -> anyhow::Result<()> {
    kit::require_mqtt()?;
    type Script = Box<dyn Fn(&[u8]) -> Answer + Send + Sync>;
    let cases: Vec<(&str, Script)> = vec![
        (
            "wrong function code",
            Box::new(|req| Answer::Bytes(modbus_reply(req, &[0x04, 2, 0, 7]))),
        ),
        (
            "wrong transaction id",
            Box::new(|req| {
                let mut frame = modbus_reply(req, &registers_pdu(req, 7));
                frame[0] ^= 0xFF;
                Answer::Bytes(frame)
            }),
        ),
        (
            "byte count larger than the data",
            Box::new(|req| Answer::Bytes(modbus_reply(req, &[0x03, 8, 0, 7]))),
        ),
        (
            "stray bytes before the reply",
            Box::new(|req| {
                let mut frame = vec![0xDE, 0xAD, 0xBE, 0xEF, 0x00];
                frame.extend(modbus_reply(req, &registers_pdu(req, 7)));
                Answer::Bytes(frame)
            }),
        ),
        (
            "half a frame, then the connection drops",
            Box::new(|req| {
                Answer::BytesThenClose(modbus_reply(req, &registers_pdu(req, 7))[..5].to_vec())
            }),
        ),
        (
            "the connection drops mid-stream",
            Box::new(|_| Answer::BytesThenClose(Vec::new())),
        ),
        ("no reply at all", Box::new(|_| Answer::Silence)),
        // A well-framed reply with the wrong number of registers. Some protocol libraries
        // only check this in debug builds (and panic there); the adapter checks it itself.
        (
            "fewer registers than asked",
            Box::new(|req| Answer::Bytes(modbus_reply(req, &[0x03, 0]))),
        ),
        (
            "more registers than asked",
            Box::new(|req| Answer::Bytes(modbus_reply(req, &[0x03, 4, 0, 7, 0, 7]))),
        ),
    ];
    for (name, script) in cases {
        let q = scenario(1, script)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        assert!(
            matches!(
                reason(&q),
                v1::QualityReason::CommFailure | v1::QualityReason::DecodeError
            ),
            "{name}: {q:?}"
        );
        assert!(!q.detail.is_empty(), "{name}: the reason is explained");
    }
    Ok(())
}

#[tokio::test]
async fn a_device_slower_than_its_interval_skips_cycles_instead_of_piling_them_up()
-> anyhow::Result<()> {
    kit::require_mqtt()?;
    let addr = kit::faulty_modbus(|_, request| {
        Answer::Delayed(
            Duration::from_millis(120),
            modbus_reply(request, &registers_pdu(request, 7)),
        )
    })
    .await?;
    let device = format!(
        "  - {{ name: slow, type: t, protocol: modbus-tcp, endpoint: \"{addr}\", poll_interval: 50ms, timeout: 1s, tags: [ {{ name: a, address: \"holding:0\", type: u16 }} ] }}\n"
    );
    let started = tokio::time::Instant::now();
    let run = common::start("slow", &device).await?;
    let value = |prefix: &str| run.metric(prefix).unwrap_or(0.0);
    let polls_of = "fieldline_adapter_polls_total{device=\"slow\"} ";
    let overruns_of = "fieldline_adapter_overruns_total{device=\"slow\",interval=\"50ms\"} ";
    // Each poll takes 120 ms against a 50 ms grid, so each one overruns: wait for a dozen.
    kit::wait_for(
        Duration::from_secs(30),
        "12 polls of the slow device",
        || async { (value(polls_of) >= 12.0).then_some(()) },
    )
    .await?;
    let overruns = value(overruns_of);
    let polls = value(polls_of);
    let elapsed = started.elapsed();
    // A scheduler that caught up on missed ticks would run back-to-back, but never count a
    // skip; one that piled polls up would poll more often than 120 ms replies allow.
    assert!(
        overruns >= 5.0,
        "overrun cycles are skipped and counted: {overruns}"
    );
    let answerable = elapsed.as_secs_f64() / 0.120 + 1.0;
    assert!(
        polls <= answerable,
        "no more polls than the device can answer in {elapsed:?}: {polls}"
    );
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_write_the_device_confirms_wrongly_is_a_failed_command() -> anyhow::Result<()> {
    kit::require_mqtt()?;
    // Reads answer 7; a write of one register is "confirmed" with another value.
    let addr = kit::faulty_modbus(|_, req| match req[7] {
        0x06 => Answer::Bytes(modbus_reply(req, &[0x06, req[8], req[9], 0xBE, 0xEF])),
        _ => Answer::Bytes(modbus_reply(req, &registers_pdu(req, 7))),
    })
    .await?;
    let device = format!(
        "  - {{ name: plc, type: t, protocol: modbus-tcp, endpoint: \"{addr}\", poll_interval: 1s, tags: [ {{ name: sp, address: \"holding:2\", type: u16, writable: true }} ] }}\n"
    );
    let mut run = common::start("echo", &device).await?;
    let line = run.line.clone();
    let command = v1::Command {
        id: "e1".into(),
        tag: format!("{line}/plc/sp"),
        value: Some(fieldline_core::Value::U64(5).into()),
        ..Default::default()
    };
    let result = run.client.write(command).await?.into_inner();
    assert_eq!(
        result.status,
        v1::CommandStatus::Failed as i32,
        "{result:?}"
    );
    assert!(
        result.detail.contains("confirmed"),
        "the wrong echo is named: {result:?}"
    );
    run.stop().await;
    Ok(())
}
