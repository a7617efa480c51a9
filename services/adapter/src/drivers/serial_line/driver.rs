//! The task that owns a serial-line device's port. Reads, requests and writes are serialized
//! here: a write waits until no request is waiting for its reply, and lines that arrive while
//! a write waits for its acknowledgement are still read as data.
//!
//! Every configured tag found in a line becomes a sample stamped when the line completed;
//! a field that does not fit its tag is Bad (decode_error or out_of_range), never a guess. In
//! request mode a tag missing from the reply is Bad, and a reply that does not come within
//! `timeout` makes every tag not yet read Bad (comm_failure). Lines that cannot be read at all
//! (invalid UTF-8, too long, unparsable) are counted by kind and logged at most every few
//! seconds. When the port fails (read error, end of file, the device file removed) every tag
//! is Bad (comm_failure) and the port is reopened with backoff.

use std::time::Duration;

use fieldline_core::{
    Quality, QualityReason, Sample, Value,
    config::serial_line::{SerialLineMode, render_template},
    deadband::Deadband,
};
use fieldline_proto::v1;
use fieldline_runtime::{CancellationToken, backoff::Backoff, now_ns};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
    time::Instant,
};
use tokio_serial::SerialStream;

use super::{
    config::Setup,
    parser::{Frame, Framer, decode},
};
use crate::{
    Error, Result,
    drivers::{
        DeviceContext, RememberedCommands, WriteRequest, check_value_command, command_result,
    },
};

/// A tag's reading: value (absent when Bad), quality, timestamp.
type Reading = (Option<Value>, Quality, i64);

/// Least time between two log lines about unreadable lines.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A request waiting for its reply.
struct Pending {
    sent: Instant,
    deadline: Instant,
    lines_left: u32,
    readings: Vec<Option<Reading>>,
    /// Why a reply line could not be read, when one could not.
    unreadable: Option<String>,
}

pub struct Driver {
    s: Setup,
    cx: DeviceContext,
    port: Option<SerialStream>,
    framer: Framer,
    backoff: Backoff,
    retry_at: Instant,
    /// Why the port is closed.
    down_reason: String,
    pending: Option<Pending>,
    deadbands: Vec<Deadband>,
    last_read: Vec<Instant>,
    stale: Vec<bool>,
    remembered: RememberedCommands,
    polls: Counter,
    /// From a request to its complete reply.
    poll_seconds: Histogram,
    good: Counter,
    bad: Counter,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Driver {
    pub fn new(s: Setup, cx: DeviceContext) -> Self {
        let device = s.name.clone();
        let samples = |q: &str| {
            cx.metrics
                .samples_read
                .get_or_create(&vec![
                    ("device", device.clone()),
                    ("quality", q.to_string()),
                ])
                .clone()
        };
        let (good, bad) = (samples("good"), samples("bad"));
        let polls = cx
            .metrics
            .polls
            .get_or_create(&vec![("device", device.clone())])
            .clone();
        let poll_seconds = cx
            .metrics
            .poll_seconds
            .get_or_create(&vec![("device", device.clone())])
            .clone();
        let n = s.tags.len();
        let remembered = cx.remembered(&s.name);
        Self {
            framer: Framer::new(s.max_line_length),
            backoff: Backoff::new(Duration::from_millis(250), s.max_backoff),
            retry_at: Instant::now(),
            down_reason: "not opened yet".into(),
            port: None,
            pending: None,
            deadbands: vec![Deadband::default(); n],
            last_read: vec![Instant::now(); n],
            stale: vec![false; n],
            remembered,
            polls,
            poll_seconds,
            good,
            bad,
            last_log: None,
            unlogged: 0,
            s,
            cx,
        }
    }

    pub async fn run(mut self, writes: &mut mpsc::Receiver<WriteRequest>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.s.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = vec![0u8; 4096];
        loop {
            if self.port.is_none() && Instant::now() >= self.retry_at {
                self.open();
            }
            let reply_due = self.pending.as_ref().map(|p| p.deadline);
            let closed = self.port.is_none();
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                read = read_some(&mut self.port, &mut buf) => self.on_read(read, &buf),
                _ = sleep_until(reply_due), if reply_due.is_some() => self.on_timeout(),
                _ = tokio::time::sleep_until(self.retry_at), if closed => {}
                _ = tick.tick() => self.on_tick().await,
                Some(w) = writes.recv(), if self.pending.is_none() => self.on_write(w).await,
            }
        }
    }

    fn open(&mut self) {
        match crate::serial::open(&self.s.path, &self.s.serial) {
            Ok(stream) => {
                tracing::info!(device = %self.s.name, port = %self.s.path, "serial port open");
                self.port = Some(stream);
                self.backoff.reset();
                self.framer.reset();
            }
            Err(error) => {
                self.cx.error(&self.s.name, error.kind());
                let delay = self.backoff.next_delay();
                self.retry_at = Instant::now() + delay;
                tracing::warn!(device = %self.s.name, %error, retry_in = ?delay, "cannot open the serial port");
                self.down_reason = error.to_string();
            }
        }
    }

    /// The port failed: everything not yet read is Bad, and the port is reopened later.
    fn port_failed(&mut self, reason: String) {
        self.port = None;
        if self.framer.reset() {
            self.cx.error(&self.s.name, "partial_line");
        }
        self.cx.error(&self.s.name, "port");
        let delay = self.backoff.next_delay();
        self.retry_at = Instant::now() + delay;
        tracing::warn!(device = %self.s.name, error = %reason, retry_in = ?delay, "serial port lost");
        self.down_reason = reason;
        let quality = Quality::bad(QualityReason::CommFailure, self.down_reason.clone());
        let mut readings = self
            .pending
            .take()
            .map(|p| p.readings)
            .unwrap_or_else(|| vec![None; self.s.tags.len()]);
        let now = now_ns();
        for r in readings.iter_mut().filter(|r| r.is_none()) {
            *r = Some((None, quality.clone(), now));
        }
        self.publish(readings);
    }

    fn on_read(&mut self, read: std::io::Result<usize>, buf: &[u8]) {
        match read {
            Ok(0) => self.port_failed("the port reported end of file".into()),
            Ok(n) => {
                let frames = self.framer.push(&buf[..n.min(buf.len())]);
                let now = now_ns();
                for frame in frames {
                    self.on_frame(frame, now);
                }
            }
            Err(e) => self.port_failed(format!("read failed: {e}")),
        }
    }

    fn on_frame(&mut self, frame: Frame, ts: i64) {
        let line = match frame {
            Frame::Overlong => {
                return self.unreadable(
                    "overlong_line",
                    format!("a line longer than {} bytes", self.s.max_line_length),
                );
            }
            Frame::Line(bytes) => match String::from_utf8(bytes) {
                Ok(line) => line,
                Err(e) => {
                    return self.unreadable("invalid_utf8", format!("a line is not UTF-8: {e}"));
                }
            },
        };
        if line.trim().is_empty() {
            return;
        }
        let fields = match self.s.parser.parse(&line) {
            Ok(fields) => fields,
            Err(e) => {
                let shown: String = line.chars().take(80).collect();
                return self.unreadable("unparsable_line", format!("{shown:?}: {e}"));
            }
        };
        let readings: Vec<Option<Reading>> = self
            .s
            .tags
            .iter()
            .map(|tag| {
                fields
                    .get(&tag.address)
                    .map(|field| match decode(tag, field) {
                        Ok(v) => (Some(v), Quality::Good, ts),
                        Err((reason, detail)) => (None, Quality::bad(reason, detail), ts),
                    })
            })
            .collect();
        match self.s.mode {
            SerialLineMode::Stream => self.publish(readings),
            SerialLineMode::Request => {
                let Some(pending) = self.pending.as_mut() else {
                    self.cx.error(&self.s.name, "unsolicited_line");
                    return;
                };
                for (slot, r) in pending.readings.iter_mut().zip(readings) {
                    if r.is_some() {
                        *slot = r;
                    }
                }
                self.reply_line_done();
            }
        }
    }

    /// A line that could not be read at all: counted, logged now and then, and in request
    /// mode it uses up a line of the reply.
    fn unreadable(&mut self, kind: &str, detail: String) {
        self.cx.error(&self.s.name, kind);
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            tracing::warn!(device = %self.s.name, kind, detail = %detail, suppressed = self.unlogged, "unreadable line");
            self.last_log = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        if let Some(pending) = self.pending.as_mut() {
            pending.unreadable = Some(detail);
            self.reply_line_done();
        }
    }

    /// One line of the reply was read; the reply is complete after `reply_lines`.
    fn reply_line_done(&mut self) {
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        pending.lines_left = pending.lines_left.saturating_sub(1);
        if pending.lines_left > 0 {
            return;
        }
        let Some(pending) = self.pending.take() else {
            return;
        };
        self.poll_seconds
            .observe(pending.sent.elapsed().as_secs_f64());
        let detail = match &pending.unreadable {
            Some(why) => format!("not in the reply; a reply line could not be read: {why}"),
            None => "not in the reply".to_string(),
        };
        let now = now_ns();
        let readings = pending
            .readings
            .into_iter()
            .map(|r| {
                r.or_else(|| {
                    Some((
                        None,
                        Quality::bad(QualityReason::DecodeError, detail.clone()),
                        now,
                    ))
                })
            })
            .collect();
        self.publish(readings);
    }

    fn on_timeout(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        self.cx.error(&self.s.name, "timeout");
        let quality = Quality::bad(
            QualityReason::CommFailure,
            format!("no reply within {}ms", self.s.timeout.as_millis()),
        );
        let now = now_ns();
        let readings = pending
            .readings
            .into_iter()
            .map(|r| r.or_else(|| Some((None, quality.clone(), now))))
            .collect();
        self.publish(readings);
    }

    async fn on_tick(&mut self) {
        if self.cx.sink.is_paused() {
            return; // the outbox is full and set to pause polling
        }
        if self.port.is_none() {
            if self.s.mode == SerialLineMode::Request {
                self.polls.inc();
            }
            let quality = Quality::bad(
                QualityReason::CommFailure,
                format!("port {} is not open: {}", self.s.path, self.down_reason),
            );
            let now = now_ns();
            self.publish(vec![Some((None, quality, now)); self.s.tags.len()]);
            return;
        }
        match self.s.mode {
            SerialLineMode::Stream => self.mark_stale(),
            SerialLineMode::Request => {
                if self.pending.is_some() {
                    return;
                }
                self.polls.inc();
                let request = self.s.request.clone();
                if let Err(error) = self.send(&request).await {
                    self.port_failed(error.to_string());
                    return;
                }
                let sent = Instant::now();
                self.pending = Some(Pending {
                    sent,
                    deadline: Instant::now() + self.s.timeout,
                    lines_left: self.s.reply_lines,
                    readings: vec![None; self.s.tags.len()],
                    unreadable: None,
                });
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(port) = self.port.as_mut() else {
            return Err(Error::PortClosed);
        };
        let write = async {
            port.write_all(bytes).await?;
            port.flush().await
        };
        match tokio::time::timeout(self.s.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::PortWrite(e)),
            Err(_) => Err(Error::PortWriteTimeout(self.s.timeout)),
        }
    }

    /// Tags without a reading for `stale_after` poll intervals become Bad (stale), once.
    fn mark_stale(&mut self) {
        if self.s.stale_after == 0 {
            return;
        }
        let limit = self.s.poll_interval * self.s.stale_after;
        let now = Instant::now();
        let mut readings = vec![None; self.s.tags.len()];
        for (i, r) in readings.iter_mut().enumerate() {
            if !self.stale[i] && now.duration_since(self.last_read[i]) > limit {
                self.stale[i] = true;
                *r = Some((
                    None,
                    Quality::bad(
                        QualityReason::Stale,
                        format!("no value for {} intervals", self.s.stale_after),
                    ),
                    now_ns(),
                ));
            }
        }
        self.publish_readings(readings, false);
    }

    fn publish(&mut self, readings: Vec<Option<Reading>>) {
        self.publish_readings(readings, true);
    }

    /// Counts the readings and publishes those that pass each tag's deadband, as one batch.
    fn publish_readings(&mut self, readings: Vec<Option<Reading>>, fresh: bool) {
        let now = now_ns();
        let mut samples = Vec::new();
        for (i, reading) in readings.into_iter().enumerate() {
            let Some((value, quality, ts)) = reading else {
                continue;
            };
            if fresh {
                self.last_read[i] = Instant::now();
                self.stale[i] = false;
            }
            if quality.is_good() {
                self.good.inc();
            } else {
                self.bad.inc();
            }
            let tag = &self.s.tags[i];
            if self.deadbands[i].should_report(&tag.deadband, &value, &quality, now) {
                samples.push(Sample {
                    tag: tag.name.clone(),
                    value,
                    quality,
                    timestamp_ns: ts,
                    server_timestamp_ns: None,
                });
            }
        }
        self.cx.publish(&self.s.name, samples);
    }

    async fn on_write(&mut self, w: WriteRequest) {
        let WriteRequest {
            command,
            tag,
            reply,
            ..
        } = w;
        if let Some(earlier) = self
            .remembered
            .repeat(&self.cx, &self.s.name, &tag, &command)
        {
            let _ = reply.send(earlier);
            return;
        }
        let result = self.write(&command, &tag).await;
        self.remembered.keep(&tag, &result);
        self.cx.count_write(&self.s.name, &tag, &command, &result);
        let _ = reply.send(result);
    }

    /// Checks, renders, sends and (with an ack) confirms one write.
    async fn write(&mut self, command: &v1::Command, tag_name: &str) -> v1::CommandResult {
        let failed =
            |detail: String| command_result(command, v1::CommandStatus::Failed, "", None, detail);
        let raw = match check_value_command(
            &self.s.tags,
            &self.s.name,
            tag_name,
            command,
            &self.remembered,
        ) {
            Ok((_, raw)) => raw,
            Err(rejected) => return rejected,
        };
        let Some(template) = self.s.writes.get(tag_name) else {
            return failed(format!("tag {tag_name} has no write template"));
        };
        let bytes = render_template(&template.pieces, &value_text(&raw));
        let ack = template.ack.clone();
        if self.port.is_none() {
            return failed(format!(
                "port {} is not open: {}",
                self.s.path, self.down_reason
            ));
        }
        if let Err(why) = self.remembered.sending(tag_name, command) {
            return failed(why);
        }
        if let Err(error) = self.send(&bytes).await {
            let reason = error.to_string();
            self.port_failed(reason.clone());
            return failed(reason);
        }
        if let Some(ack) = ack
            && let Err(error) = self.await_ack(&ack).await
        {
            self.cx.error(&self.s.name, error.kind());
            return failed(error.to_string());
        }
        command_result(command, v1::CommandStatus::Written, "", None, String::new())
    }

    /// Reads lines until one matches `ack` (confirmed) or one that is not data arrives
    /// (refused); data lines are read as usual meanwhile.
    async fn await_ack(&mut self, ack: &regex::Regex) -> Result<()> {
        let deadline = Instant::now() + self.s.timeout;
        let mut buf = vec![0u8; 1024];
        loop {
            let read = tokio::time::timeout_at(deadline, read_some(&mut self.port, &mut buf)).await;
            let n = match read {
                Err(_) => {
                    return Err(Error::AckTimeout {
                        expected: ack.as_str().to_string(),
                        after: self.s.timeout,
                    });
                }
                Ok(Ok(0)) => {
                    self.port_failed("the port reported end of file".into());
                    return Err(Error::AckPortClosed);
                }
                Ok(Err(e)) => {
                    self.port_failed(format!("read failed: {e}"));
                    return Err(Error::AckPortRead(e));
                }
                Ok(Ok(n)) => n,
            };
            let now = now_ns();
            let mut outcome = None;
            for frame in self.framer.push(&buf[..n.min(buf.len())]) {
                if outcome.is_some() {
                    self.on_frame(frame, now);
                    continue;
                }
                let text = match &frame {
                    Frame::Line(l) => std::str::from_utf8(l).ok().map(str::trim),
                    Frame::Overlong => None,
                };
                match text {
                    Some(t) if ack.is_match(t) => outcome = Some(Ok(())),
                    // A line that is not data is the device's answer to the write: a
                    // refusal such as `ERR`.
                    Some(t) if !t.is_empty() && self.s.parser.parse(t).is_err() => {
                        let shown: String = t.chars().take(80).collect();
                        outcome = Some(Err(Error::AckRefused {
                            answer: shown,
                            expected: ack.as_str().to_string(),
                        }));
                    }
                    _ => self.on_frame(frame, now),
                }
            }
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }
}

/// The value as the device reads it: bools as `1`/`0`, numbers in decimal.
fn value_text(v: &Value) -> String {
    match v {
        Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
        Value::I64(i) => i.to_string(),
        Value::U64(u) => u.to_string(),
        Value::F64(x) => x.to_string(),
        Value::String(s) => s.clone(),
    }
}

/// Reads from the port; never completes while the port is closed.
async fn read_some(port: &mut Option<SerialStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match port {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_as_the_device_reads_them() {
        assert_eq!(value_text(&Value::Bool(true)), "1");
        assert_eq!(value_text(&Value::Bool(false)), "0");
        assert_eq!(value_text(&Value::I64(-3)), "-3");
        assert_eq!(value_text(&Value::F64(21.5)), "21.5");
        assert_eq!(value_text(&Value::String("on".into())), "on");
    }
}
