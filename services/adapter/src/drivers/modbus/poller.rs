//! The Modbus poll loop of one device.
//!
//! Device faults and transport faults are kept apart: an exception response makes the tags of
//! that request Bad with the exception code and the loop goes on; a timeout or a broken
//! connection makes every tag not yet read Bad (`comm_failure`), drops the connection and
//! reconnects with capped, jittered backoff. Ticks that are missed while a poll overruns are
//! skipped, never bunched up.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use fieldline_core::{
    Quality, QualityReason, Sample, SampleBatch, Value,
    codec::{DataType, Table},
    config::{DeviceConfig, ResolvedModbusTag},
    deadband::Deadband,
};
use fieldline_proto::v1;
use fieldline_runtime::{CancellationToken, backoff::Backoff, now_ns};
use tokio::sync::mpsc;
use tokio_modbus::{
    ExceptionCode, Slave,
    client::{Client, Context, Reader, Writer},
};

use super::planner::{PlanLimits, ReadRequest, TagSpan, plan};
use crate::drivers::{DeviceContext, WriteRequest};

/// Commands whose results are remembered for idempotency.
const REMEMBERED_COMMANDS: usize = 1024;

/// Why a poll did not try the device: the reconnect backoff has not expired.
const WAITING: &str = "waiting to reconnect";

/// A configured Modbus TCP device, ready to run.
/// A configured Modbus TCP device, ready to run.
pub struct ModbusDevice {
    config: DeviceConfig,
    tags: Vec<ResolvedModbusTag>,
    spans: Vec<TagSpan>,
    limits: PlanLimits,
    groups: Vec<PollGroup>,
}

/// Tags polled at one interval, with the reads that fetch them.
struct PollGroup {
    interval: Duration,
    plan: Vec<ReadRequest>,
    next_due: tokio::time::Instant,
}

enum Reply {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Outcome of one request: data, a device exception, or a transport fault.
enum Outcome {
    Data(Reply),
    Exception(ExceptionCode),
    Transport(String),
}

impl ModbusDevice {
    /// Resolves the tags, forms poll groups and plans their reads. The config was validated,
    /// so errors here mean a caller skipped validation; they are reported, not unwrapped.
    pub fn new(config: DeviceConfig) -> Result<Self, String> {
        let mut tags = Vec::with_capacity(config.tags.len());
        for tag in &config.tags {
            let resolved = tag.resolve().map_err(|problems| {
                let text: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
                format!("tag {}: {}", tag.name, text.join("; "))
            })?;
            tags.push(resolved);
        }
        let spans: Vec<TagSpan> = tags
            .iter()
            .enumerate()
            .map(|(i, t)| TagSpan {
                tag: i,
                table: t.address.table,
                offset: t.address.offset,
                width: if t.address.table.is_bits() {
                    1
                } else {
                    t.codec.register_count()
                },
            })
            .collect();
        let limits = PlanLimits {
            max_registers: config.max_registers,
            max_bits: config.max_bits,
            max_gap: config.request_gap,
        };
        let mut intervals: Vec<Duration> = tags
            .iter()
            .map(|t| t.poll_interval.unwrap_or(config.poll_interval))
            .collect();
        intervals.sort_unstable();
        intervals.dedup();
        let now = tokio::time::Instant::now();
        let groups = intervals
            .into_iter()
            .map(|interval| {
                let members: Vec<TagSpan> = spans
                    .iter()
                    .filter(|s| {
                        tags[s.tag].poll_interval.unwrap_or(config.poll_interval) == interval
                    })
                    .copied()
                    .collect();
                PollGroup {
                    interval,
                    plan: plan(&members, limits),
                    next_due: now,
                }
            })
            .collect();
        Ok(Self {
            config,
            tags,
            spans,
            limits,
            groups,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Polls until `stop`, serving writes from `writes` between polls.
    pub async fn run(
        self,
        cx: DeviceContext,
        mut writes: mpsc::Receiver<WriteRequest>,
        stop: CancellationToken,
    ) {
        let device = self.config.name.clone();
        let tag_count = self.tags.len();
        let backoff = Backoff::new(Duration::from_millis(250), self.config.max_backoff);
        let mut poller = Poller {
            device: self,
            connection: None,
            backoff,
            retry_at: tokio::time::Instant::now(),
            deadbands: vec![Deadband::default(); tag_count],
            last_read: vec![None; tag_count],
            stale: vec![false; tag_count],
            remembered: HashMap::new(),
            remembered_order: VecDeque::new(),
        };
        let groups: Vec<String> = poller
            .device
            .groups
            .iter()
            .map(|g| format!("{}ms", g.interval.as_millis()))
            .collect();
        tracing::info!(device = %device, endpoint = %poller.device.config.endpoint, groups = ?groups, "polling");
        loop {
            let due = poller
                .device
                .groups
                .iter()
                .map(|g| g.next_due)
                .min()
                .unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(due) => poller.poll_due(&cx).await,
                Some(request) = writes.recv() => {
                    let result = poller.write(&cx, &request.tag, &request.command).await;
                    let _ = request.reply.send(result);
                }
            }
        }
        if let Some(mut ctx) = poller.connection.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ctx.disconnect()).await;
        }
        tracing::info!(device = %device, "stopped polling");
    }
}

/// A tag's reading from one poll: value (absent when Bad), quality, timestamp.
type Reading = (Option<Value>, Quality, i64);

struct Poller {
    device: ModbusDevice,
    connection: Option<Context>,
    backoff: Backoff,
    retry_at: tokio::time::Instant,
    deadbands: Vec<Deadband>,
    /// When each tag was last read (Good or Bad), for staleness.
    last_read: Vec<Option<tokio::time::Instant>>,
    /// Tags already reported stale since their last reading.
    stale: Vec<bool>,
    remembered: HashMap<String, v1::CommandResult>,
    remembered_order: VecDeque<String>,
}

impl Poller {
    fn labels(&self) -> Vec<(&'static str, String)> {
        vec![("device", self.device.config.name.clone())]
    }

    fn error(&self, cx: &DeviceContext, kind: &str) {
        cx.metrics
            .errors
            .get_or_create(&vec![
                ("device", self.device.config.name.clone()),
                ("kind", kind.to_string()),
            ])
            .inc();
    }

    /// Connects if there is no connection and the backoff allows an attempt now.
    async fn ensure_connected(&mut self, cx: &DeviceContext) -> Result<(), String> {
        if self.connection.is_some() {
            return Ok(());
        }
        if tokio::time::Instant::now() < self.retry_at {
            return Err(WAITING.into());
        }
        let config = &self.device.config;
        let attempt = async {
            let addr = tokio::net::lookup_host(&config.endpoint)
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", config.endpoint))?
                .next()
                .ok_or_else(|| format!("{} resolves to no address", config.endpoint))?;
            connect(addr, config.unit_id, config.timeout).await
        };
        match attempt.await {
            Ok(ctx) => {
                tracing::info!(device = %config.name, endpoint = %config.endpoint, "connected");
                self.connection = Some(ctx);
                self.backoff.reset();
                Ok(())
            }
            Err(e) => {
                self.error(cx, "connect");
                self.schedule_reconnect(&e);
                Err(e)
            }
        }
    }

    fn schedule_reconnect(&mut self, reason: &str) {
        self.connection = None;
        let delay = self.backoff.next_delay();
        self.retry_at = tokio::time::Instant::now() + delay;
        tracing::warn!(device = %self.device.config.name, error = %reason, retry_in = ?delay, "device connection lost");
    }

    async fn request(&mut self, table: Table, start: u16, count: u16) -> Outcome {
        let Some(ctx) = self.connection.as_mut() else {
            return Outcome::Transport("not connected".into());
        };
        let timeout = self.device.config.timeout;
        let result = tokio::time::timeout(timeout, async {
            match table {
                Table::Coil => ctx
                    .read_coils(start, count)
                    .await
                    .map(|r| r.map(Reply::Bits)),
                Table::Discrete => ctx
                    .read_discrete_inputs(start, count)
                    .await
                    .map(|r| r.map(Reply::Bits)),
                Table::Input => ctx
                    .read_input_registers(start, count)
                    .await
                    .map(|r| r.map(Reply::Words)),
                Table::Holding => ctx
                    .read_holding_registers(start, count)
                    .await
                    .map(|r| r.map(Reply::Words)),
            }
        })
        .await;
        match result {
            Err(_) => Outcome::Transport(format!(
                "no response within {}",
                humantime_duration(timeout)
            )),
            Ok(Err(e)) => Outcome::Transport(e.to_string()),
            Ok(Ok(Err(code))) => Outcome::Exception(code),
            Ok(Ok(Ok(reply))) => Outcome::Data(reply),
        }
    }

    /// Polls every group that is due, then schedules each one's next cycle on its own grid:
    /// cycles never drift, and cycles missed while a poll overran are skipped and counted.
    async fn poll_due(&mut self, cx: &DeviceContext) {
        let now = tokio::time::Instant::now();
        let due: Vec<usize> = (0..self.device.groups.len())
            .filter(|g| self.device.groups[*g].next_due <= now)
            .collect();
        let mut readings: Vec<Option<Reading>> = vec![None; self.device.tags.len()];
        for g in due {
            self.poll_group(cx, g, &mut readings).await;
            let after = tokio::time::Instant::now();
            let group = &mut self.device.groups[g];
            group.next_due += group.interval;
            if group.next_due <= after {
                let behind = after.duration_since(group.next_due);
                let skipped =
                    1 + u32::try_from(behind.as_nanos() / group.interval.as_nanos().max(1))
                        .unwrap_or(u32::MAX);
                group.next_due += group.interval * skipped;
                let labels = vec![
                    ("device", self.device.config.name.clone()),
                    ("interval", format!("{}ms", group.interval.as_millis())),
                ];
                cx.metrics
                    .overruns
                    .get_or_create(&labels)
                    .inc_by(u64::from(skipped));
            }
        }
        self.mark_stale(&mut readings);
        self.publish(cx, readings);
    }

    /// One cycle of one poll group: its planned reads, in order. A multi-tag read the device
    /// refuses (illegal address or value) is split in the plan and the halves are read at once.
    async fn poll_group(&mut self, cx: &DeviceContext, g: usize, readings: &mut [Option<Reading>]) {
        let started = std::time::Instant::now();
        if let Err(reason) = self.ensure_connected(cx).await {
            if reason != WAITING {
                let now = now_ns();
                let quality = Quality::bad(QualityReason::CommFailure, reason);
                for req in &self.device.groups[g].plan {
                    for &(tag, _) in &req.tags {
                        readings[tag] = Some((None, quality.clone(), now));
                    }
                }
            }
            return;
        }
        let mut queue: VecDeque<ReadRequest> = self.device.groups[g].plan.iter().cloned().collect();
        let mut requests = 0u64;
        let mut answered = false;
        while let Some(req) = queue.pop_front() {
            requests += 1;
            cx.metrics
                .requests
                .get_or_create(&vec![
                    ("device", self.device.config.name.clone()),
                    ("table", req.table.to_string()),
                ])
                .inc();
            let outcome = self.request(req.table, req.start, req.count).await;
            let now = now_ns();
            match outcome {
                Outcome::Data(reply) => {
                    answered = true;
                    for &(tag, pos) in &req.tags {
                        readings[tag] = Some(decode(&self.device.tags[tag], &reply, pos, now));
                    }
                }
                Outcome::Exception(code) => {
                    let refused_size = matches!(
                        code,
                        ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue
                    );
                    if refused_size
                        && let Some(parts) = self.learn_split(cx, g, &req, &code.to_string())
                    {
                        for part in parts.into_iter().rev() {
                            queue.push_front(part);
                        }
                        continue;
                    }
                    answered = true;
                    self.error(cx, "exception");
                    let quality = Quality::bad(
                        QualityReason::DeviceException(u8::from(code)),
                        code.to_string(),
                    );
                    for &(tag, _) in &req.tags {
                        readings[tag] = Some((None, quality.clone(), now));
                    }
                }
                Outcome::Transport(reason) => {
                    self.error(cx, "transport");
                    // A device that answered smaller reads this cycle but not this one may be
                    // refusing its size by silence: read it in halves from the next cycle on.
                    if answered {
                        let _ = self.learn_split(cx, g, &req, &reason);
                    }
                    let quality = Quality::bad(QualityReason::CommFailure, reason.clone());
                    for r in std::iter::once(&req).chain(queue.iter()) {
                        for &(tag, _) in &r.tags {
                            readings[tag] = Some((None, quality.clone(), now));
                        }
                    }
                    self.schedule_reconnect(&reason);
                    break;
                }
            }
        }
        let labels = self.labels();
        cx.metrics.polls.get_or_create(&labels).inc();
        cx.metrics
            .poll_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        cx.metrics
            .requests_per_cycle
            .get_or_create(&labels)
            .set(i64::try_from(requests).unwrap_or(i64::MAX));
    }

    /// Replaces `req` in group `g`'s plan by smaller reads and returns them; `None` when it
    /// cannot be split. Calling it again for a request already split returns the same parts.
    fn learn_split(
        &mut self,
        cx: &DeviceContext,
        g: usize,
        req: &ReadRequest,
        why: &str,
    ) -> Option<Vec<ReadRequest>> {
        let parts = super::planner::split(req, &self.device.spans, self.device.limits)?;
        let plan = &mut self.device.groups[g].plan;
        if let Some(pos) = plan.iter().position(|r| r == req) {
            plan.splice(pos..=pos, parts.iter().cloned());
            cx.metrics
                .request_splits
                .get_or_create(&self.labels())
                .inc();
            tracing::info!(device = %self.device.config.name, table = %req.table, start = req.start, count = req.count, reason = why, "device refused a large read; reading it in smaller parts from now on");
        }
        Some(parts)
    }

    /// Tags without a reading for `stale_after` of their intervals become Bad (stale), once.
    fn mark_stale(&mut self, readings: &mut [Option<Reading>]) {
        let now = tokio::time::Instant::now();
        let stale_after = self.device.config.stale_after;
        for (i, reading) in readings.iter_mut().enumerate() {
            if reading.is_some() {
                self.last_read[i] = Some(now);
                self.stale[i] = false;
                continue;
            }
            if stale_after == 0 || self.stale[i] {
                continue;
            }
            let interval = self.device.tags[i]
                .poll_interval
                .unwrap_or(self.device.config.poll_interval);
            let since = *self.last_read[i].get_or_insert(now);
            if now.duration_since(since) > interval * stale_after {
                self.stale[i] = true;
                let detail = format!("no reading for {} intervals", stale_after);
                *reading = Some((None, Quality::bad(QualityReason::Stale, detail), now_ns()));
            }
        }
    }

    /// Counts the readings and publishes those that pass each tag's deadband, as one batch.
    fn publish(&mut self, cx: &DeviceContext, readings: Vec<Option<Reading>>) {
        let now = now_ns();
        let mut samples = Vec::new();
        for (i, reading) in readings.into_iter().enumerate() {
            let Some((value, quality, ts)) = reading else {
                continue;
            };
            let q = if quality.is_good() { "good" } else { "bad" };
            cx.metrics
                .samples_read
                .get_or_create(&vec![
                    ("device", self.device.config.name.clone()),
                    ("quality", q.to_string()),
                ])
                .inc();
            let tag = &self.device.tags[i];
            if self.deadbands[i].should_report(&tag.deadband, &value, &quality, now) {
                samples.push(Sample {
                    tag: tag.name.clone(),
                    value,
                    quality,
                    timestamp_ns: ts,
                });
            }
        }
        if samples.is_empty() {
            return;
        }
        let sequence = match cx
            .sequence
            .lock()
            .map_err(|_| "sequence lock poisoned".to_string())
            .and_then(|mut s| s.take().map_err(|e| e.to_string()))
        {
            Ok(n) => n,
            Err(error) => {
                self.error(cx, "sequence");
                tracing::error!(device = %self.device.config.name, %error, "cannot number the batch; not published");
                return;
            }
        };
        cx.sink.send(SampleBatch {
            line: cx.line.clone(),
            device: self.device.config.name.clone(),
            adapter_id: cx.adapter_id.clone(),
            sequence,
            samples,
        });
    }

    /// The adapter's last line of defence for writes: the tag must be writable, the value
    /// within limits and the deadline not passed; a command id seen before returns the earlier
    /// result without writing again; after the write the value is read back and compared.
    async fn write(
        &mut self,
        cx: &DeviceContext,
        tag_name: &str,
        command: &v1::Command,
    ) -> v1::CommandResult {
        if let Some(done) = self.remembered.get(&command.id) {
            return done.clone();
        }
        let result = self.write_once(cx, tag_name, command).await;
        let outcome = match v1::CommandStatus::try_from(result.status) {
            Ok(v1::CommandStatus::Written) => "written",
            Ok(v1::CommandStatus::Rejected) => "rejected",
            Ok(v1::CommandStatus::ReadbackMismatch) => "readback_mismatch",
            _ => "failed",
        };
        cx.metrics
            .writes
            .get_or_create(&vec![
                ("device", self.device.config.name.clone()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        tracing::info!(device = %self.device.config.name, tag = tag_name, command = %command.id, requested_by = %command.requested_by, outcome, detail = %result.detail, "write");
        // Rejections and transport failures did not reach the device; a retry with the same id
        // may succeed later, so only results that touched the device are remembered.
        if matches!(outcome, "written" | "readback_mismatch") && !command.id.is_empty() {
            if self.remembered_order.len() >= REMEMBERED_COMMANDS
                && let Some(old) = self.remembered_order.pop_front()
            {
                self.remembered.remove(&old);
            }
            self.remembered_order.push_back(command.id.clone());
            self.remembered.insert(command.id.clone(), result.clone());
        }
        result
    }

    async fn write_once(
        &mut self,
        cx: &DeviceContext,
        tag_name: &str,
        command: &v1::Command,
    ) -> v1::CommandResult {
        let reject = |by: &str, detail: String| {
            result(command, v1::CommandStatus::Rejected, by, None, detail)
        };
        if command.id.is_empty() {
            return reject(
                "command_id",
                "a command needs an id (its idempotency key)".into(),
            );
        }
        let Some(index) = self.device.tags.iter().position(|t| t.name == tag_name) else {
            return reject(
                "unknown_tag",
                format!("device {} has no tag {tag_name:?}", self.device.config.name),
            );
        };
        let tag = self.device.tags[index].clone();
        if !tag.writable {
            return reject("not_writable", format!("tag {tag_name} is not writable"));
        }
        let value = match command.value.clone().map(Value::try_from) {
            Some(Ok(v)) => v,
            _ => return reject("value", "the command carries no value".into()),
        };
        if let Some(x) = value.as_f64().filter(|_| !matches!(value, Value::Bool(_))) {
            if !x.is_finite() {
                return reject("value", format!("{x} is not a finite number"));
            }
            if let Some(min) = tag.min
                && x < min
            {
                return reject("min", format!("{x} is below the minimum {min}"));
            }
            if let Some(max) = tag.max
                && x > max
            {
                return reject("max", format!("{x} is above the maximum {max}"));
            }
        }
        let words = if tag.address.table.is_bits() {
            match value {
                Value::Bool(_) => Vec::new(),
                _ => return reject("type", format!("{tag_name} is a coil and takes a bool")),
            }
        } else if tag.codec.bit.is_some() {
            if !matches!(value, Value::Bool(_)) {
                return reject("type", format!("{tag_name} is a bit and takes a bool"));
            }
            Vec::new()
        } else {
            match tag.codec.encode_registers(&value) {
                Ok(words) => words,
                Err(e) => return reject("type", e.to_string()),
            }
        };
        if command.deadline_ns > 0 && now_ns() > command.deadline_ns {
            return reject(
                "deadline",
                "the command's deadline passed before it could be written".into(),
            );
        }
        if let Err(e) = self.ensure_connected(cx).await {
            return result(
                command,
                v1::CommandStatus::Failed,
                "",
                None,
                format!("device not reachable: {e}"),
            );
        }
        let written = self.perform_write(&tag, &value, &words).await;
        match written {
            Outcome::Data(_) => {}
            Outcome::Exception(code) => {
                self.error(cx, "exception");
                return result(
                    command,
                    v1::CommandStatus::Failed,
                    "",
                    None,
                    format!("device refused the write: {code}"),
                );
            }
            Outcome::Transport(reason) => {
                self.error(cx, "transport");
                self.schedule_reconnect(&reason);
                return result(
                    command,
                    v1::CommandStatus::Failed,
                    "",
                    None,
                    format!("write not confirmed: {reason}"),
                );
            }
        }
        let width = if tag.address.table.is_bits() {
            1
        } else {
            tag.codec.register_count()
        };
        let read_back = match self
            .request(tag.address.table, tag.address.offset, width)
            .await
        {
            Outcome::Data(reply) => decode(&tag, &reply, 0, now_ns()).0,
            Outcome::Exception(_) | Outcome::Transport(_) => None,
        };
        match read_back {
            Some(back) if same_value(&back, &value, tag.codec.data_type) => result(
                command,
                v1::CommandStatus::Written,
                "",
                Some(back),
                String::new(),
            ),
            Some(back) => {
                let detail = format!("wrote {value}, read back {back}");
                result(
                    command,
                    v1::CommandStatus::ReadbackMismatch,
                    "",
                    Some(back),
                    detail,
                )
            }
            None => result(
                command,
                v1::CommandStatus::ReadbackMismatch,
                "",
                None,
                "written, but the value could not be read back".into(),
            ),
        }
    }

    async fn perform_write(
        &mut self,
        tag: &ResolvedModbusTag,
        value: &Value,
        words: &[u16],
    ) -> Outcome {
        let offset = tag.address.offset;
        if let (Some(bit), Value::Bool(on)) = (tag.codec.bit, value) {
            // A bit inside a holding register: read, modify, write back.
            let current = match self.request(Table::Holding, offset, 1).await {
                Outcome::Data(Reply::Words(w)) if w.len() == 1 => w[0],
                Outcome::Data(_) => {
                    return Outcome::Transport("short reply to the read before a bit write".into());
                }
                other => return other,
            };
            let word = if *on {
                current | (1 << bit)
            } else {
                current & !(1 << bit)
            };
            return self
                .send_write(Table::Holding, offset, &[word], false)
                .await;
        }
        match (tag.address.table, value) {
            (Table::Coil, Value::Bool(on)) => self.send_write(Table::Coil, offset, &[], *on).await,
            _ => self.send_write(Table::Holding, offset, words, false).await,
        }
    }

    async fn send_write(
        &mut self,
        table: Table,
        offset: u16,
        words: &[u16],
        coil: bool,
    ) -> Outcome {
        let Some(ctx) = self.connection.as_mut() else {
            return Outcome::Transport("not connected".into());
        };
        let timeout = self.device.config.timeout;
        let multiple = self.device.config.write_multiple;
        let sent = tokio::time::timeout(timeout, async {
            match (table, words, multiple) {
                (Table::Coil, _, false) => ctx.write_single_coil(offset, coil).await,
                (Table::Coil, _, true) => ctx.write_multiple_coils(offset, &[coil]).await,
                (_, [word], false) => ctx.write_single_register(offset, *word).await,
                (_, words, _) => ctx.write_multiple_registers(offset, words).await,
            }
        })
        .await;
        match sent {
            Err(_) => Outcome::Transport(format!(
                "no response within {}",
                humantime_duration(timeout)
            )),
            Ok(Err(e)) => Outcome::Transport(e.to_string()),
            Ok(Ok(Err(code))) => Outcome::Exception(code),
            Ok(Ok(Ok(()))) => Outcome::Data(Reply::Words(Vec::new())),
        }
    }
}

async fn connect(addr: SocketAddr, unit: u8, timeout: Duration) -> Result<Context, String> {
    match tokio::time::timeout(
        timeout,
        tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)),
    )
    .await
    {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!(
            "cannot connect to {addr} within {}",
            humantime_duration(timeout)
        )),
    }
}

/// Decodes one tag from a reply; anything short or undecodable is a Bad sample.
fn decode(
    tag: &ResolvedModbusTag,
    reply: &Reply,
    pos: u16,
    ts: i64,
) -> (Option<Value>, Quality, i64) {
    let pos = usize::from(pos);
    let decoded = match reply {
        Reply::Bits(bits) => match bits.get(pos) {
            Some(bit) => Ok(tag.codec.decode_bit(*bit)),
            None => Err((
                QualityReason::DecodeError,
                format!("reply holds {} bits, tag needs bit {pos}", bits.len()),
            )),
        },
        Reply::Words(words) => {
            let width = usize::from(tag.codec.register_count());
            match words.get(pos..pos + width) {
                Some(slice) => tag.codec.decode_registers(slice).map_err(|e| {
                    let reason = match e {
                        fieldline_core::codec::DecodeError::OutOfRange(_) => {
                            QualityReason::OutOfRange
                        }
                        _ => QualityReason::DecodeError,
                    };
                    (reason, e.to_string())
                }),
                None => Err((
                    QualityReason::DecodeError,
                    format!(
                        "reply holds {} registers, tag needs {}..{}",
                        words.len(),
                        pos,
                        pos + width
                    ),
                )),
            }
        }
    };
    match decoded {
        Ok(value) => (Some(value), Quality::Good, ts),
        Err((reason, detail)) => (None, Quality::bad(reason, detail), ts),
    }
}

/// Whether a read-back value equals the requested one, allowing for f32 rounding.
fn same_value(back: &Value, wanted: &Value, data_type: DataType) -> bool {
    match (back.as_f64(), wanted.as_f64()) {
        (Some(a), Some(b)) if data_type == DataType::F32 || matches!(back, Value::F64(_)) => {
            (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
        }
        (Some(a), Some(b)) => a == b,
        _ => back == wanted,
    }
}

fn result(
    command: &v1::Command,
    status: v1::CommandStatus,
    rejected_by: &str,
    read_back: Option<Value>,
    detail: String,
) -> v1::CommandResult {
    v1::CommandResult {
        command_id: command.id.clone(),
        status: status as i32,
        rejected_by: rejected_by.to_string(),
        read_back: read_back.map(Into::into),
        detail,
        timestamp_ns: now_ns(),
    }
}

fn humantime_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_core::codec::{Address, TagCodec};

    fn tag(data_type: DataType) -> ResolvedModbusTag {
        ResolvedModbusTag {
            name: "t".into(),
            address: Address {
                table: Table::Holding,
                offset: 0,
                bit: None,
            },
            codec: TagCodec::new(data_type),
            deadband: Default::default(),
            poll_interval: None,
            writable: false,
            min: None,
            max: None,
        }
    }

    #[test]
    fn a_short_reply_is_bad_not_zero() {
        let (value, quality, _) = decode(&tag(DataType::U32), &Reply::Words(vec![1]), 0, 0);
        assert_eq!(value, None);
        assert!(matches!(
            quality,
            Quality::Bad {
                reason: QualityReason::DecodeError,
                ..
            }
        ));
        let (value, quality, _) = decode(&tag(DataType::Bool), &Reply::Bits(vec![]), 3, 0);
        assert_eq!(value, None);
        assert!(quality.is_bad());
    }

    #[test]
    fn nan_from_the_device_is_out_of_range() {
        let (value, quality, _) = decode(&tag(DataType::F32), &Reply::Words(vec![0x7FC0, 0]), 0, 0);
        assert_eq!(value, None);
        assert!(matches!(
            quality,
            Quality::Bad {
                reason: QualityReason::OutOfRange,
                ..
            }
        ));
    }

    #[test]
    fn read_back_comparison_tolerates_f32_rounding_only() {
        assert!(same_value(
            &Value::F64(0.1f32 as f64),
            &Value::F64(0.1),
            DataType::F32
        ));
        assert!(!same_value(
            &Value::F64(0.2),
            &Value::F64(0.1),
            DataType::F32
        ));
        assert!(same_value(&Value::I64(5), &Value::I64(5), DataType::I16));
        assert!(!same_value(&Value::I64(5), &Value::I64(6), DataType::I16));
        assert!(same_value(
            &Value::Bool(true),
            &Value::Bool(true),
            DataType::Bool
        ));
    }
}
