//! Serial-line devices over a socat pty pair standing in for the USB cable. The device end is
//! driven by the test itself writing raw bytes (so garbage is exactly what the test says) or
//! by the simulated sensor board: request/reply key-value lines, streamed JSON lines with
//! invalid UTF-8, overlong, unparsable and partial lines among them, a regex parser, a port
//! that vanishes and comes back, and writes rendered from templates.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc as std_mpsc,
    },
    time::Duration,
};

use fieldline_core::Value;
use fieldline_proto::v1;
use fieldline_testkit as kit;

mod common;

/// An adapter for one device with a live stream of its batches and every sample seen so far.
struct Running {
    inner: common::TestAdapter,
    stream: tonic::Streaming<v1::SampleBatch>,
    seen: Vec<v1::Sample>,
}

async fn start(device: &str) -> anyhow::Result<Running> {
    let mut inner = common::start("serial", device).await?;
    let stream = inner.stream().await?;
    Ok(Running {
        inner,
        stream,
        seen: Vec::new(),
    })
}

impl Running {
    /// Collects samples until `done` holds for those seen since `from`; fails after 15 s.
    async fn until(
        &mut self,
        what: &str,
        from: usize,
        done: impl Fn(&[v1::Sample]) -> bool,
    ) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !done(&self.seen[from.min(self.seen.len())..]) {
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Ok(Ok(Some(batch))) => self.seen.extend(batch.samples),
                Ok(Ok(None)) => anyhow::bail!("the stream ended waiting for {what}"),
                Ok(Err(e)) => anyhow::bail!("the stream failed waiting for {what}: {e}"),
                Err(_) => anyhow::bail!(
                    "timed out waiting for {what}; seen: {:#?}",
                    &self.seen[from.min(self.seen.len())..]
                ),
            }
        }
        Ok(self.seen.len())
    }

    fn errors(&self, kind: &str) -> f64 {
        self.inner
            .metric(&format!(
                "fieldline_adapter_errors_total{{device=\"dev\",kind=\"{kind}\"}} "
            ))
            .unwrap_or(0.0)
    }

    async fn write(
        &mut self,
        id: &str,
        tag: &str,
        value: Value,
    ) -> anyhow::Result<v1::CommandResult> {
        let command = v1::Command {
            ttl_ns: 0,
            id: id.into(),
            tag: format!("{}/dev/{tag}", self.inner.line),
            value: Some(value.into()),
            deadline_ns: 0,
            requested_by: "test".into(),
            reason: "test".into(),
        };
        Ok(self.inner.client.write(command).await?.into_inner())
    }
}

fn status(s: &v1::Sample) -> Option<(v1::QualityStatus, v1::QualityReason)> {
    let q = s.quality.as_ref()?;
    Some((
        v1::QualityStatus::try_from(q.status).ok()?,
        v1::QualityReason::try_from(q.reason).unwrap_or_default(),
    ))
}

fn good(s: &v1::Sample) -> bool {
    status(s).is_some_and(|(st, _)| st == v1::QualityStatus::Good)
}

fn bad(s: &v1::Sample, reason: v1::QualityReason) -> bool {
    status(s) == Some((v1::QualityStatus::Bad, reason)) && s.value.is_none()
}

fn good_values(samples: &[v1::Sample], tag: &str) -> Vec<Value> {
    samples
        .iter()
        .filter(|s| s.tag == tag && good(s))
        .filter_map(|s| s.value.clone().and_then(|v| Value::try_from(v).ok()))
        .collect()
}

fn device(port: &Path, body: &str) -> String {
    format!(
        "  - name: dev\n    type: arduino\n    protocol: serial-line\n    endpoint: \"{}\"\n    serial: {{ baud_rate: 115200 }}\n{body}",
        port.display()
    )
}

fn open(path: &Path) -> anyhow::Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?)
}

/// A device on `port` that reads lines and answers each with `reply(n, line)` (nothing when
/// `None`); every line it receives goes to the returned channel, bytes exactly as received.
fn scripted_device(
    port: PathBuf,
    reply: impl Fn(usize, &str) -> Option<Vec<u8>> + Send + 'static,
) -> anyhow::Result<std_mpsc::Receiver<Vec<u8>>> {
    let file = open(&port)?;
    let mut writer = file.try_clone()?;
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(file);
        let mut n = 0;
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line).to_string();
            let _ = tx.send(line);
            if let Some(bytes) = reply(n, text.trim_end())
                && writer.write_all(&bytes).is_err()
            {
                return;
            }
            n += 1;
        }
    });
    Ok(rx)
}

#[tokio::test]
async fn request_reply_key_values_with_missing_out_of_range_and_silent_replies()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pty = kit::PtyPair::new(dir.path()).await?;
    // Until the test watches, the device answers a baseline; then it plays the script.
    let go = Arc::new(AtomicUsize::new(0));
    let step = go.clone();
    let requests = scripted_device(pty.b.clone(), move |_, line| {
        if line != "READ_SENSORS" {
            return Some(b"ERR\n".to_vec());
        }
        let n = step.load(Ordering::SeqCst);
        if n == 0 {
            return Some(b"TEMP:20.0,HUM:39\r\n".to_vec());
        }
        step.store(n + 1, Ordering::SeqCst);
        match n {
            1 => Some(b"TEMP:21.5,HUM:40\r\n".to_vec()),
            2 => Some(b"TEMP:22.0\r\n".to_vec()),
            3 => Some(b"TEMP:22.5,HUM:70000\r\n".to_vec()),
            4 => None,
            _ => Some(b"TEMP:23.5,HUM:41\r\n".to_vec()),
        }
    })?;
    let mut run = start(&device(
        &pty.a,
        "    poll_interval: 100ms\n    timeout: 300ms\n    serial_line: { request: 'READ_SENSORS\\n', line_ending: \"\\r\\n\" }\n    tags:\n      - { name: temp, address: TEMP, type: f32 }\n      - { name: hum, address: HUM, type: u16 }\n",
    ))
    .await?;
    run.until("the baseline", 0, |s| {
        good_values(s, "temp").contains(&Value::F64(20.0))
    })
    .await?;
    go.store(1, Ordering::SeqCst);
    run.until("the reply after the silent one", 0, |s| {
        good_values(s, "temp").contains(&Value::F64(23.5))
    })
    .await?;
    let start_at = run
        .seen
        .iter()
        .position(|s| s.tag == "temp" && s.value == Some(Value::F64(21.5).into()))
        .ok_or_else(|| anyhow::anyhow!("the first scripted reply is missing"))?;
    let seen = run.seen[start_at..].to_vec();
    assert_eq!(
        good_values(&seen, "temp")[..4],
        [21.5, 22.0, 22.5, 23.5].map(Value::F64),
        "each reply's temperature, in order, none for the silent request"
    );
    assert_eq!(good_values(&seen, "hum")[0], Value::U64(40));
    let hum: Vec<&v1::Sample> = seen.iter().filter(|s| s.tag == "hum").collect();
    assert!(
        bad(hum[1], v1::QualityReason::DecodeError),
        "missing from the reply: {:?}",
        hum[1]
    );
    assert!(
        bad(hum[2], v1::QualityReason::OutOfRange),
        "70000 is no u16: {:?}",
        hum[2]
    );
    assert!(
        bad(hum[3], v1::QualityReason::CommFailure),
        "no reply: {:?}",
        hum[3]
    );
    assert_eq!(hum[4].value, Some(Value::U64(41).into()));
    assert!(run.errors("timeout") >= 1.0);
    let first = requests.recv_timeout(Duration::from_secs(5))?;
    assert_eq!(first, b"READ_SENSORS\n", "the request, exactly");
    run.inner.stop().await;
    Ok(())
}

#[tokio::test]
async fn streamed_json_lines_survive_garbage_and_a_vanishing_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut pty = kit::PtyPair::new(dir.path()).await?;
    let mut dev = open(&pty.b)?;
    let mut run = start(&device(
        &pty.a,
        "    poll_interval: 100ms\n    stale_after: 0\n    max_backoff: 1s\n    serial_line: { mode: stream, parser: { format: json }, max_line_length: 64 }\n    tags:\n      - { name: temp, address: /temp, type: f64 }\n      - { name: hum, address: /env/hum, type: u16 }\n",
    ))
    .await?;
    let line = |t: &str, h: &str| format!("{{\"temp\": {t}, \"env\": {{\"hum\": {h}}}}}\n");
    let mut bytes = Vec::new();
    bytes.extend(line("20.5", "30").bytes());
    bytes.extend(b"\xff\xfe\xfd not utf-8\n");
    bytes.extend(line("20.6", "31").bytes());
    bytes.extend([b'x'; 200]);
    bytes.extend(b"\n");
    bytes.extend(line("20.7", "32").bytes());
    bytes.extend(b"this is not json\n");
    bytes.extend(line("20.8", "70000").bytes());
    bytes.extend(line("\"abc\"", "33").bytes());
    bytes.extend(line("20.9", "34").bytes());
    bytes.extend(b"{\"temp\": 99.9, \"en");
    dev.write_all(&bytes)?;
    run.until("the last whole line", 0, |s| {
        good_values(s, "temp").contains(&Value::F64(20.9))
    })
    .await?;
    let seen = run.seen.clone();
    assert_eq!(
        good_values(&seen, "temp"),
        [20.5, 20.6, 20.7, 20.8, 20.9].map(Value::F64),
        "every good line, exactly, and nothing invented"
    );
    assert_eq!(
        good_values(&seen, "hum"),
        [30, 31, 32, 33, 34].map(Value::U64)
    );
    assert_eq!(
        seen.iter()
            .filter(|s| s.tag == "hum" && bad(s, v1::QualityReason::OutOfRange))
            .count(),
        1
    );
    assert_eq!(
        seen.iter()
            .filter(|s| s.tag == "temp" && bad(s, v1::QualityReason::DecodeError))
            .count(),
        1,
        "a string where a number belongs"
    );
    assert_eq!(run.errors("invalid_utf8"), 1.0);
    assert_eq!(run.errors("overlong_line"), 1.0);
    assert_eq!(run.errors("unparsable_line"), 1.0);

    drop(dev);
    pty.unplug().await;
    let from = run.seen.len();
    run.until("Bad comm_failure while the port is gone", from, |s| {
        s.iter()
            .any(|s| s.tag == "temp" && bad(s, v1::QualityReason::CommFailure))
            && s.iter()
                .any(|s| s.tag == "hum" && bad(s, v1::QualityReason::CommFailure))
    })
    .await?;
    assert_eq!(
        run.errors("partial_line"),
        1.0,
        "the cut-off line is dropped"
    );
    assert!(
        !good_values(&run.seen, "temp").contains(&Value::F64(99.9)),
        "and never read"
    );

    pty.restart().await?;
    let mut dev = open(&pty.b)?;
    let from = run.seen.len();
    // The adapter may not have reopened the port yet: repeat the line until it is read.
    let mut resumed = false;
    for _ in 0..60 {
        dev.write_all(line("24.5", "45").as_bytes())?;
        if tokio::time::timeout(
            Duration::from_millis(250),
            run.until("values after the port came back", from, |s| {
                good_values(s, "temp").contains(&Value::F64(24.5))
            }),
        )
        .await
        .is_ok_and(|r| r.is_ok())
        {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "values resume once the port is back");
    run.inner.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_simulated_board_is_read_through_a_regex() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pty = kit::PtyPair::new(dir.path()).await?;
    let stop = fieldline_runtime::CancellationToken::new();
    let (_board, _task) = fieldline_sim::serve_serial(
        fieldline_sim::SerialSimConfig {
            port: pty.b.clone(),
            stream: Some(Duration::from_millis(50)),
        },
        stop.clone(),
    )?;
    let mut run = start(&device(
        &pty.a,
        "    poll_interval: 100ms\n    serial_line:\n      mode: stream\n      parser: { format: regex, pattern: '^TEMP:(?P<temp>-?[0-9.]+),HUM:(?P<hum>[0-9]+)$' }\n    tags:\n      - { name: temp, address: temp, type: f32, unit: degC }\n      - { name: hum, address: hum, type: i32 }\n",
    ))
    .await?;
    run.until("five readings of each", 0, |s| {
        good_values(s, "temp").len() >= 5 && good_values(s, "hum").len() >= 5
    })
    .await?;
    for v in good_values(&run.seen, "temp") {
        assert!(
            matches!(v, Value::F64(t) if (20.9..=22.1).contains(&t)),
            "{v:?}"
        );
    }
    for v in good_values(&run.seen, "hum") {
        assert!(
            matches!(v, Value::I64(h) if (37..=43).contains(&h)),
            "{v:?}"
        );
    }
    assert!(run.seen.iter().all(good), "nothing Bad: {:?}", run.seen);
    stop.cancel();
    run.inner.stop().await;
    Ok(())
}

#[tokio::test]
async fn writes_render_their_template_once_and_unsafe_ones_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pty = kit::PtyPair::new(dir.path()).await?;
    let received = scripted_device(pty.b.clone(), |_, line| {
        if line.starts_with("LED,") || line.starts_with("SET ") {
            Some(b"OK\n".to_vec())
        } else {
            Some(b"TEMP:21.5\n".to_vec())
        }
    })?;
    let mut run = start(&device(
        &pty.a,
        "    poll_interval: 200ms\n    serial_line:\n      request: \"READ_SENSORS\\n\"\n      writes:\n        led: { template: 'LED,{pin},{value}\\n', params: { pin: \"13\" }, ack: OK }\n        setpoint: { template: 'SET {value}\\r\\n', ack: 'OK|DONE' }\n    tags:\n      - { name: temp, address: TEMP, type: f32 }\n      - { name: led, address: LED, type: bool, writable: true }\n      - { name: setpoint, address: SP, type: f64, writable: true, min: 0, max: 100 }\n",
    ))
    .await?;
    let written = |r: &v1::CommandResult| r.status == v1::CommandStatus::Written as i32;

    let first = run.write("c1", "led", Value::Bool(true)).await?;
    assert!(written(&first), "{first:?}");
    let again = run.write("c1", "led", Value::Bool(true)).await?;
    assert!(
        written(&again),
        "the same id gets the same result: {again:?}"
    );
    let sp = run.write("c2", "setpoint", Value::F64(42.5)).await?;
    assert!(written(&sp), "{sp:?}");

    let refused = run.write("c3", "temp", Value::F64(1.0)).await?;
    assert_eq!(
        (refused.status, refused.rejected_by.as_str()),
        (v1::CommandStatus::Rejected as i32, "not_writable")
    );
    let too_high = run.write("c4", "setpoint", Value::F64(100.5)).await?;
    assert_eq!(
        (too_high.status, too_high.rejected_by.as_str()),
        (v1::CommandStatus::Rejected as i32, "max")
    );
    let off = run.write("c5", "led", Value::Bool(false)).await?;
    assert!(written(&off), "{off:?}");

    let writes: Vec<Vec<u8>> = received
        .try_iter()
        .filter(|l| !l.starts_with(b"READ_SENSORS"))
        .collect();
    assert_eq!(
        writes,
        [
            b"LED,13,1\n".to_vec(),
            b"SET 42.5\r\n".to_vec(),
            b"LED,13,0\n".to_vec()
        ],
        "each template exactly; the repeat and the refused writes never reach the device"
    );
    assert_eq!(
        run.inner
            .metric("fieldline_adapter_writes_total{device=\"dev\",outcome=\"rejected\"} "),
        Some(2.0)
    );
    run.inner.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_simulated_board_answers_requests_and_takes_led_writes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pty = kit::PtyPair::new(dir.path()).await?;
    let stop = fieldline_runtime::CancellationToken::new();
    let (board, _task) = fieldline_sim::serve_serial(
        fieldline_sim::SerialSimConfig {
            port: pty.b.clone(),
            stream: None,
        },
        stop.clone(),
    )?;
    let mut run = start(&device(
        &pty.a,
        "    poll_interval: 100ms\n    timeout: 500ms\n    serial_line:\n      request: 'READ_SENSORS\\n'\n      writes:\n        led: { template: 'LED,{pin},{value}\\n', params: { pin: \"13\" }, ack: OK }\n        level: { template: 'LED,{pin},{value}\\n', params: { pin: \"9\" }, ack: OK }\n        mute: { template: '{value}', ack: OK }\n    tags:\n      - { name: temp, address: TEMP, type: f32 }\n      - { name: hum, address: HUM, type: u16 }\n      - { name: led, address: LED, type: bool, writable: true }\n      - { name: level, address: LEVEL, type: i32, writable: true }\n      - { name: mute, address: MUTE, type: i32, writable: true }\n",
    ))
    .await?;
    run.until("a reading", 0, |s| {
        !good_values(s, "temp").is_empty() && !good_values(s, "hum").is_empty()
    })
    .await?;
    let on = run.write("w1", "led", Value::Bool(true)).await?;
    assert_eq!(on.status, v1::CommandStatus::Written as i32, "{on:?}");
    assert_eq!(board.led(13), Some(true));
    // The board answers ERR to a state it does not know: the write is not confirmed.
    let refused = run.write("w2", "level", Value::I64(5)).await?;
    assert_eq!(
        refused.status,
        v1::CommandStatus::Failed as i32,
        "{refused:?}"
    );
    assert!(
        refused.detail.contains("the device answered \"ERR\""),
        "{refused:?}"
    );
    assert_eq!(board.led(9), None);
    assert!(board.commands().iter().any(|c| c == "LED,9,5"));
    assert_eq!(
        run.errors("unparsable_line"),
        0.0,
        "the refusal is no garbage"
    );
    // Without an answer at all, the write is not confirmed either.
    let silent = run.write("w3", "mute", Value::I64(1)).await?;
    assert_eq!(
        silent.status,
        v1::CommandStatus::Failed as i32,
        "{silent:?}"
    );
    assert!(silent.detail.contains("no reply matching"), "{silent:?}");
    let from = run.seen.len();
    run.until("readings after the writes", from, |s| {
        !good_values(s, "temp").is_empty()
    })
    .await?;
    stop.cancel();
    run.inner.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_silent_stream_goes_stale_and_recovers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pty = kit::PtyPair::new(dir.path()).await?;
    let mut dev = open(&pty.b)?;
    let mut run = start(&device(
        &pty.a,
        "    poll_interval: 100ms\n    stale_after: 2\n    serial_line: { mode: stream }\n    tags:\n      - { name: temp, address: TEMP, type: f32 }\n",
    ))
    .await?;
    dev.write_all(b"TEMP:19.5\n")?;
    run.until("the reading", 0, |s| {
        good_values(s, "temp").contains(&Value::F64(19.5))
    })
    .await?;
    let from = run.seen.len();
    run.until("staleness", from, |s| {
        s.iter().any(|s| bad(s, v1::QualityReason::Stale))
    })
    .await?;
    let from = run.seen.len();
    dev.write_all(b"TEMP:19.75\n")?;
    run.until("the next reading", from, |s| {
        good_values(s, "temp").contains(&Value::F64(19.75))
    })
    .await?;
    run.inner.stop().await;
    Ok(())
}
