//! The Modbus poll loop of one link: a TCP device, a TCP gateway with several unit ids, or an
//! RTU bus with several slaves. One task owns the link and schedules every slave on it.
//!
//! Device faults and transport faults are kept apart: an exception response makes the tags of
//! that request Bad with the exception code and polling goes on; a transport fault makes the
//! tags not yet read Bad (`comm_failure`). Whether it also takes the link down is the link's
//! call (see [`super::link`]): on TCP it does, on an RTU bus only the slave that failed is
//! backed off, so the others keep their rates. Each poll group runs on its own fixed grid;
//! cycles missed while a poll overran are skipped and counted, never bunched up.

use std::time::Duration;

use fieldline_core::{
    Quality, QualityReason, Sample, SampleBatch, Value,
    codec::{DataType, DecodeError, Table},
    config::{DeviceConfig, ModbusDeviceConfig, ResolvedModbusTag},
    deadband::Deadband,
};
use fieldline_proto::v1;
use fieldline_runtime::{CancellationToken, backoff::Backoff, now_ns};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use tokio::{sync::mpsc, time::Instant};
use tokio_modbus::ExceptionCode;

use super::{
    link::{Link, LinkKind, Outcome, Reply, WriteOp},
    planner::{PlanLimits, ReadRequest, TagSpan, plan, split},
};
use crate::{
    Error, Result,
    drivers::{
        DeviceContext, PAUSED_WAIT, RememberedCommands, WriteRequest, check_write, command_result,
    },
};

/// A configured Modbus device (one unit id), ready to be polled on its link.
pub struct ModbusDevice {
    config: ModbusDeviceConfig,
    link: LinkKind,
    tags: Vec<ResolvedModbusTag>,
    spans: Vec<TagSpan>,
    limits: PlanLimits,
    groups: Vec<PollGroup>,
}

/// Tags polled at one interval, with the reads that fetch them.
struct PollGroup {
    interval: Duration,
    plan: Vec<ReadRequest>,
    next_due: Instant,
}

/// A tag's reading from one poll: value (absent when Bad), quality, timestamp.
type Reading = (Option<Value>, Quality, i64);

impl ModbusDevice {
    /// Resolves the tags, forms poll groups and plans their reads. The config was validated,
    /// so errors here mean a caller skipped validation; they are reported, not unwrapped.
    pub fn new(device: &DeviceConfig) -> Result<Self> {
        let (config, link) = match device {
            DeviceConfig::ModbusTcp(c) => (
                c.clone(),
                LinkKind::Tcp {
                    endpoint: c.endpoint.clone(),
                },
            ),
            DeviceConfig::ModbusRtu(c) => (
                c.clone(),
                LinkKind::Rtu {
                    port: c.endpoint.clone(),
                    serial: c.serial.unwrap_or_default(),
                },
            ),
            other => {
                return Err(Error::WrongProtocol {
                    device: other.name().to_string(),
                    expected: "Modbus",
                });
            }
        };
        let mut tags = Vec::with_capacity(config.tags.len());
        for tag in &config.tags {
            let resolved = tag
                .resolve()
                .map_err(|problems| Error::tag(&tag.name, problems))?;
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
        let interval_of = |t: &ResolvedModbusTag| t.poll_interval.unwrap_or(config.poll_interval);
        let mut intervals: Vec<Duration> = tags.iter().map(interval_of).collect();
        intervals.sort_unstable();
        intervals.dedup();
        let now = Instant::now();
        let groups = intervals
            .into_iter()
            .map(|interval| {
                let members: Vec<TagSpan> = spans
                    .iter()
                    .filter(|s| interval_of(&tags[s.tag]) == interval)
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
            link,
            tags,
            spans,
            limits,
            groups,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The link this device is reached through.
    pub fn link_kind(&self) -> LinkKind {
        self.link.clone()
    }
}

/// One device on a link, with everything that is its own.
struct Slave {
    device: ModbusDevice,
    cx: DeviceContext,
    deadbands: Vec<Deadband>,
    /// When each tag was last read (Good or Bad), for staleness.
    last_read: Vec<Option<Instant>>,
    /// Tags already reported stale since their last reading.
    stale: Vec<bool>,
    remembered: RememberedCommands,
    /// Backoff of this slave alone, after it failed to answer on a shared bus.
    backoff: Backoff,
    retry_at: Instant,
    meters: Meters,
}

/// This device's hot-path metrics, looked up once instead of per sample.
struct Meters {
    polls: Counter,
    poll_seconds: Histogram,
    requests_per_cycle: Gauge,
    /// Requests by table: coil, discrete, input, holding.
    requests: [Counter; 4],
    good: Counter,
    bad: Counter,
}

impl Meters {
    fn new(metrics: &crate::metrics::AdapterMetrics, device: &str) -> Self {
        let labels = vec![("device", device.to_string())];
        let requests = [Table::Coil, Table::Discrete, Table::Input, Table::Holding].map(|t| {
            metrics
                .requests
                .get_or_create(&vec![
                    ("device", device.to_string()),
                    ("table", t.to_string()),
                ])
                .clone()
        });
        let samples = |q: &str| {
            metrics
                .samples_read
                .get_or_create(&vec![
                    ("device", device.to_string()),
                    ("quality", q.to_string()),
                ])
                .clone()
        };
        Self {
            polls: metrics.polls.get_or_create(&labels).clone(),
            poll_seconds: metrics.poll_seconds.get_or_create(&labels).clone(),
            requests_per_cycle: metrics.requests_per_cycle.get_or_create(&labels).clone(),
            requests,
            good: samples("good"),
            bad: samples("bad"),
        }
    }

    fn request(&self, table: Table) -> &Counter {
        &self.requests[match table {
            Table::Coil => 0,
            Table::Discrete => 1,
            Table::Input => 2,
            Table::Holding => 3,
        }]
    }
}

impl Slave {
    fn name(&self) -> &str {
        &self.device.config.name
    }

    fn labels(&self) -> Vec<(&'static str, String)> {
        vec![("device", self.name().to_string())]
    }

    fn error(&self, kind: &str) {
        self.cx
            .metrics
            .errors
            .get_or_create(&vec![
                ("device", self.name().to_string()),
                ("kind", kind.to_string()),
            ])
            .inc();
    }

    fn unit(&self) -> u8 {
        self.device.config.unit_id
    }

    fn timeout(&self) -> Duration {
        self.device.config.timeout
    }
}

/// The devices on one link, polled by one task.
pub struct ModbusBus {
    link: Link,
    slaves: Vec<Slave>,
}

impl ModbusBus {
    /// A bus for devices that share `kind`; `max_backoff` caps reconnect delays.
    pub fn new(kind: LinkKind, devices: Vec<(ModbusDevice, DeviceContext)>) -> Self {
        let max_backoff = devices
            .iter()
            .map(|(d, _)| d.config.max_backoff)
            .max()
            .unwrap_or(Duration::from_secs(30));
        let slaves = devices
            .into_iter()
            .map(|(device, cx)| {
                let n = device.tags.len();
                // A silent slave costs a whole timeout of bus time per attempt: retry it slowly.
                let base = (device.config.timeout * 4).max(Duration::from_secs(1));
                let backoff = Backoff::new(base, device.config.max_backoff);
                let meters = Meters::new(&cx.metrics, &device.config.name);
                let remembered = cx.remembered(&device.config.name);
                Slave {
                    meters,
                    device,
                    cx,
                    deadbands: vec![Deadband::default(); n],
                    last_read: vec![None; n],
                    stale: vec![false; n],
                    remembered,
                    backoff,
                    retry_at: Instant::now(),
                }
            })
            .collect();
        Self {
            link: Link::new(kind, max_backoff),
            slaves,
        }
    }

    /// Polls until `stop`, serving writes for any of the bus's devices between polls.
    pub async fn run(mut self, writes: &mut mpsc::Receiver<WriteRequest>, stop: CancellationToken) {
        let link = self.link.kind.describe();
        let devices: Vec<String> = self
            .slaves
            .iter()
            .map(|s| format!("{}@{}", s.name(), s.unit()))
            .collect();
        tracing::info!(link = %link, devices = ?devices, "polling");
        loop {
            let due = self
                .slaves
                .iter()
                .flat_map(|s| s.device.groups.iter().map(|g| g.next_due))
                .min()
                .unwrap_or_else(Instant::now);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(due) => self.poll_due().await,
                Some(request) = writes.recv() => {
                    let result = match self.slaves.iter().position(|s| s.name() == request.device) {
                        Some(i) => self.write(i, &request.tag, &request.command).await,
                        None => command_result(&request.command, v1::CommandStatus::Rejected, "unknown_device", None, format!("no device {:?} on this link", request.device)),
                    };
                    let _ = request.reply.send(result);
                }
            }
        }
        self.link.close().await;
        tracing::info!(link = %link, "stopped polling");
    }

    /// Polls every group of every slave that is due, then schedules each group's next cycle
    /// on its own grid, skipping (and counting) cycles missed while a poll overran.
    async fn poll_due(&mut self) {
        if self.slaves.first().is_some_and(|s| s.cx.sink.is_paused()) {
            // The outbox is full and set to pause polling: nothing read now could be kept.
            tokio::time::sleep(PAUSED_WAIT).await;
            return;
        }
        for s in 0..self.slaves.len() {
            let now = Instant::now();
            let due: Vec<usize> = (0..self.slaves[s].device.groups.len())
                .filter(|g| self.slaves[s].device.groups[*g].next_due <= now)
                .collect();
            if due.is_empty() {
                continue;
            }
            let mut readings: Vec<Option<Reading>> = vec![None; self.slaves[s].device.tags.len()];
            for g in due {
                self.poll_group(s, g, &mut readings).await;
                let after = Instant::now();
                let slave = &mut self.slaves[s];
                let group = &mut slave.device.groups[g];
                group.next_due += group.interval;
                if group.next_due <= after {
                    let behind = after.duration_since(group.next_due);
                    let skipped =
                        1 + u32::try_from(behind.as_nanos() / group.interval.as_nanos().max(1))
                            .unwrap_or(u32::MAX);
                    group.next_due += group.interval * skipped;
                    let labels = vec![
                        ("device", slave.device.config.name.clone()),
                        ("interval", format!("{}ms", group.interval.as_millis())),
                    ];
                    slave
                        .cx
                        .metrics
                        .overruns
                        .get_or_create(&labels)
                        .inc_by(u64::from(skipped));
                }
            }
            let slave = &mut self.slaves[s];
            mark_stale(slave, &mut readings);
            publish(slave, readings);
        }
    }

    /// One cycle of one poll group of slave `s`: its planned reads, in order. A multi-tag read
    /// the device refuses (illegal address or value) is split in the plan and the halves are
    /// read at once.
    async fn poll_group(&mut self, s: usize, g: usize, readings: &mut [Option<Reading>]) {
        let started = std::time::Instant::now();
        let timeout = self.slaves[s].timeout();
        if let Err(error) = self.link.ensure_open(timeout).await {
            if !matches!(error, Error::Waiting) {
                self.slaves[s].error(error.kind());
                fill(
                    &self.slaves[s].device.groups[g].plan,
                    readings,
                    &Quality::bad(QualityReason::CommFailure, error.to_string()),
                );
            }
            return;
        }
        if Instant::now() < self.slaves[s].retry_at {
            // Backed off after failing to answer; its tags go stale rather than hold the bus.
            return;
        }
        // The plan is walked by index, not copied: a read the device refuses is replaced in
        // place by its parts, which are then read from the same position.
        let unit = self.slaves[s].unit();
        let mut i = 0;
        let mut requests = 0i64;
        let mut answered = false;
        while let Some((table, start, count)) = self.slaves[s].device.groups[g]
            .plan
            .get(i)
            .map(|r| (r.table, r.start, r.count))
        {
            requests += 1;
            self.slaves[s].meters.request(table).inc();
            let outcome = self.link.read(unit, table, start, count, timeout).await;
            let now = now_ns();
            let slave = &mut self.slaves[s];
            match outcome {
                Outcome::Data(reply) => {
                    answered = true;
                    let tags = &slave.device.tags;
                    for &(tag, pos) in &slave.device.groups[g].plan[i].tags {
                        readings[tag] = Some(decode(&tags[tag], &reply, pos, now));
                    }
                    i += 1;
                }
                Outcome::Exception(code) => {
                    let refused_size = matches!(
                        code,
                        ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue
                    );
                    if refused_size && learn_split(slave, g, i, &code.to_string()) {
                        continue;
                    }
                    answered = true;
                    slave.error("exception");
                    let quality = Quality::bad(
                        QualityReason::DeviceException(u8::from(code)),
                        code.to_string(),
                    );
                    for &(tag, _) in &slave.device.groups[g].plan[i].tags {
                        readings[tag] = Some((None, quality.clone(), now));
                    }
                    i += 1;
                }
                Outcome::Transport { error, link_broken } => {
                    let reason = error.to_string();
                    slave.error("transport");
                    // A device that answered smaller reads this cycle but not this one may be
                    // refusing its size by silence: read it in parts from the next cycle on.
                    if answered {
                        learn_split(slave, g, i, &reason);
                    }
                    let quality = Quality::bad(QualityReason::CommFailure, reason.clone());
                    fill(&slave.device.groups[g].plan[i..], readings, &quality);
                    if link_broken {
                        self.link.fail(&reason);
                    } else {
                        let delay = slave.backoff.next_delay();
                        slave.retry_at = Instant::now() + delay;
                        tracing::warn!(device = %slave.name(), unit = slave.unit(), error = %reason, retry_in = ?delay, "slave not answering; the rest of the bus carries on");
                    }
                    break;
                }
            }
        }
        let slave = &mut self.slaves[s];
        if answered {
            slave.backoff.reset();
        }
        slave.meters.polls.inc();
        slave
            .meters
            .poll_seconds
            .observe(started.elapsed().as_secs_f64());
        slave.meters.requests_per_cycle.set(requests);
    }

    /// The adapter's last line of defence for writes: the tag must be writable, the value
    /// within limits and the deadline not passed; a command id seen before returns the earlier
    /// result without writing again; after the write the value is read back and compared.
    async fn write(
        &mut self,
        s: usize,
        tag_name: &str,
        command: &v1::Command,
    ) -> v1::CommandResult {
        let slave = &self.slaves[s];
        if let Some(earlier) = slave
            .remembered
            .repeat(&slave.cx, slave.name(), tag_name, command)
        {
            return earlier;
        }
        let result = self.write_once(s, tag_name, command).await;
        let outcome = match v1::CommandStatus::try_from(result.status) {
            Ok(v1::CommandStatus::Written) => "written",
            Ok(v1::CommandStatus::Rejected) => "rejected",
            Ok(v1::CommandStatus::ReadbackMismatch) => "readback_mismatch",
            _ => "failed",
        };
        let slave = &mut self.slaves[s];
        slave
            .cx
            .metrics
            .writes
            .get_or_create(&vec![
                ("device", slave.name().to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        tracing::info!(device = %slave.name(), tag = tag_name, command = %command.id, requested_by = %command.requested_by, outcome, detail = %result.detail, "write");
        // Rejections and transport failures did not reach the device; a retry with the same id
        // may succeed later, so only results that touched the device are remembered.
        slave.remembered.keep(tag_name, &result);
        result
    }

    async fn write_once(
        &mut self,
        s: usize,
        tag_name: &str,
        command: &v1::Command,
    ) -> v1::CommandResult {
        let slave = &self.slaves[s];
        let (tag, value, words) =
            match check_command(&slave.device, tag_name, command, &slave.remembered) {
                Ok(checked) => checked,
                Err(rejected) => return rejected,
            };
        let (unit, timeout, multiple) = {
            let slave = &self.slaves[s];
            (
                slave.unit(),
                slave.timeout(),
                slave.device.config.write_multiple,
            )
        };
        if let Err(e) = self.link.ensure_open(timeout).await {
            return command_result(
                command,
                v1::CommandStatus::Failed,
                "",
                None,
                format!("device not reachable: {e}"),
            );
        }
        if let Err(why) = self.slaves[s].remembered.sending(tag_name, command) {
            return command_result(command, v1::CommandStatus::Failed, "", None, why);
        }
        let offset = tag.address.offset;
        let written = match (tag.codec.bit, &value, tag.address.table) {
            (Some(bit), Value::Bool(on), _) => {
                // A bit inside a holding register: read, modify, write back.
                match self
                    .link
                    .read(unit, Table::Holding, offset, 1, timeout)
                    .await
                {
                    Outcome::Data(Reply::Words(w)) if w.len() == 1 => {
                        let word = if *on {
                            w[0] | (1 << bit)
                        } else {
                            w[0] & !(1 << bit)
                        };
                        self.link
                            .write(
                                unit,
                                offset,
                                WriteOp::Registers {
                                    words: &[word],
                                    multiple,
                                },
                                timeout,
                            )
                            .await
                    }
                    Outcome::Data(_) => Outcome::Transport {
                        error: Error::FaultyReply {
                            detail: "short reply to the read before a bit write".into(),
                        },
                        link_broken: false,
                    },
                    other => other,
                }
            }
            (None, Value::Bool(on), Table::Coil) => {
                self.link
                    .write(unit, offset, WriteOp::Coil { on: *on, multiple }, timeout)
                    .await
            }
            _ => {
                self.link
                    .write(
                        unit,
                        offset,
                        WriteOp::Registers {
                            words: &words,
                            multiple,
                        },
                        timeout,
                    )
                    .await
            }
        };
        match written {
            Outcome::Data(_) => {}
            Outcome::Exception(code) => {
                self.slaves[s].error("exception");
                return command_result(
                    command,
                    v1::CommandStatus::Failed,
                    "",
                    None,
                    format!("device refused the write: {code}"),
                );
            }
            Outcome::Transport { error, link_broken } => {
                let reason = error.to_string();
                self.slaves[s].error("transport");
                if link_broken {
                    self.link.fail(&reason);
                }
                return command_result(
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
            .link
            .read(unit, tag.address.table, offset, width, timeout)
            .await
        {
            Outcome::Data(reply) => decode(&tag, &reply, 0, now_ns()).0,
            Outcome::Exception(_) | Outcome::Transport { .. } => None,
        };
        match read_back {
            Some(back) if same_value(&back, &value, tag.codec.data_type) => command_result(
                command,
                v1::CommandStatus::Written,
                "",
                Some(back),
                String::new(),
            ),
            Some(back) => {
                let detail = format!("wrote {value}, read back {back}");
                command_result(
                    command,
                    v1::CommandStatus::ReadbackMismatch,
                    "",
                    Some(back),
                    detail,
                )
            }
            None => command_result(
                command,
                v1::CommandStatus::ReadbackMismatch,
                "",
                None,
                "written, but the value could not be read back".into(),
            ),
        }
    }
}

/// The checks a command passes before anything is sent: a known tag, core's one write check
/// (an id, writable, a value within min/max, the deadline, the least time since the tag's last
/// write), and a value its registers can hold. Returns the tag, the value and the encoded
/// words.
fn check_command(
    device: &ModbusDevice,
    tag_name: &str,
    command: &v1::Command,
    remembered: &RememberedCommands,
) -> Result<(ResolvedModbusTag, Value, Vec<u16>), v1::CommandResult> {
    let reject = |by: &str, detail: String| {
        command_result(command, v1::CommandStatus::Rejected, by, None, detail)
    };
    let Some(tag) = device.tags.iter().find(|t| t.name == tag_name) else {
        return Err(reject(
            "unknown_tag",
            format!("device {} has no tag {tag_name:?}", device.config.name),
        ));
    };
    let value = command.value.clone().and_then(|v| Value::try_from(v).ok());
    check_write(&tag.write, tag_name, value.as_ref(), command, remembered)
        .map_err(|r| reject(r.by, r.detail))?;
    let value = value.ok_or_else(|| reject("value", "the command carries no value".into()))?;
    let words = if tag.address.table.is_bits() || tag.codec.bit.is_some() {
        if !matches!(value, Value::Bool(_)) {
            return Err(reject(
                "type",
                format!("{tag_name} is a single bit and takes a bool"),
            ));
        }
        Vec::new()
    } else {
        tag.codec
            .encode_registers(&value)
            .map_err(|e| reject("type", e.to_string()))?
    };
    Ok((tag.clone(), value, words))
}

/// Replaces read `i` of group `g`'s plan by smaller reads; false when it cannot be split.
fn learn_split(slave: &mut Slave, g: usize, i: usize, why: &str) -> bool {
    let plan = &mut slave.device.groups[g].plan;
    let Some(parts) = plan
        .get(i)
        .and_then(|req| split(req, &slave.device.spans, slave.device.limits))
    else {
        return false;
    };
    let req = plan.splice(i..=i, parts).next();
    slave
        .cx
        .metrics
        .request_splits
        .get_or_create(&slave.labels())
        .inc();
    if let Some(req) = req {
        tracing::info!(device = %slave.name(), table = %req.table, start = req.start, count = req.count, reason = why, "device refused a large read; reading it in smaller parts from now on");
    }
    true
}

/// Marks every tag served by `plan` with `quality`.
fn fill(plan: &[ReadRequest], readings: &mut [Option<Reading>], quality: &Quality) {
    let now = now_ns();
    for req in plan {
        for &(tag, _) in &req.tags {
            readings[tag] = Some((None, quality.clone(), now));
        }
    }
}

/// Tags without a reading for `stale_after` of their intervals become Bad (stale), once.
fn mark_stale(slave: &mut Slave, readings: &mut [Option<Reading>]) {
    let now = Instant::now();
    let stale_after = slave.device.config.stale_after;
    for (i, reading) in readings.iter_mut().enumerate() {
        if reading.is_some() {
            slave.last_read[i] = Some(now);
            slave.stale[i] = false;
            continue;
        }
        if stale_after == 0 || slave.stale[i] {
            continue;
        }
        let interval = slave.device.tags[i]
            .poll_interval
            .unwrap_or(slave.device.config.poll_interval);
        let since = *slave.last_read[i].get_or_insert(now);
        if now.duration_since(since) > interval * stale_after {
            slave.stale[i] = true;
            *reading = Some((
                None,
                Quality::bad(
                    QualityReason::Stale,
                    format!("no reading for {stale_after} intervals"),
                ),
                now_ns(),
            ));
        }
    }
}

/// Counts the readings and publishes those that pass each tag's deadband, as one batch.
fn publish(slave: &mut Slave, readings: Vec<Option<Reading>>) {
    let now = now_ns();
    let mut samples = Vec::new();
    let (mut good, mut bad) = (0u64, 0u64);
    for (i, reading) in readings.into_iter().enumerate() {
        let Some((value, quality, ts)) = reading else {
            continue;
        };
        if quality.is_good() {
            good += 1;
        } else {
            bad += 1;
        }
        let tag = &slave.device.tags[i];
        if slave.deadbands[i].should_report(&tag.deadband, &value, &quality, now) {
            samples.push(Sample {
                tag: tag.name.clone(),
                value,
                quality,
                timestamp_ns: ts,
                server_timestamp_ns: None,
            });
        }
    }
    slave.meters.good.inc_by(good);
    slave.meters.bad.inc_by(bad);
    if samples.is_empty() {
        return;
    }
    // A panic elsewhere while the lock was held cannot leave the numbers inconsistent: the
    // reservation is written before it is used. So a poisoned lock is taken over.
    let sequence = slave
        .cx
        .sequence
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .map_err(|e| e.to_string());
    let sequence = match sequence {
        Ok(n) => n,
        Err(error) => {
            slave.error("sequence");
            tracing::error!(device = %slave.name(), %error, "cannot number the batch; not published");
            return;
        }
    };
    slave.cx.sink.send(SampleBatch {
        line: slave.cx.line.clone(),
        device: slave.device.config.name.clone(),
        adapter_id: slave.cx.adapter_id.clone(),
        sequence,
        samples,
    });
}

/// Decodes one tag from a reply; anything short or undecodable is a Bad sample.
fn decode(tag: &ResolvedModbusTag, reply: &Reply, pos: u16, ts: i64) -> Reading {
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
                        DecodeError::OutOfRange(_) => QualityReason::OutOfRange,
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
        Reply::Done => Err((
            QualityReason::DecodeError,
            "a write confirmation carries no value".into(),
        )),
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

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_core::{
        codec::{Address, TagCodec},
        config::LineConfig,
    };

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
            write: Default::default(),
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

    #[test]
    fn command_checks_refuse_before_anything_is_sent() {
        let yaml = "line: l\ndevices:\n  - { name: d, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ { name: sp, address: \"holding:0\", type: i16, writable: true, min: -10, max: 10 }, { name: ro, address: \"input:0\", type: u16 }, { name: c, address: \"coil:0\", type: bool, writable: true } ] }\n";
        let config = LineConfig::from_yaml(yaml).unwrap();
        let device = ModbusDevice::new(&config.devices[0]).unwrap();
        let cmd = |id: &str, v: Option<Value>| v1::Command {
            id: id.into(),
            value: v.map(Into::into),
            ..Default::default()
        };
        let refused = |tag: &str, c: v1::Command| {
            check_command(&device, tag, &c, &RememberedCommands::default())
                .err()
                .map(|r| r.rejected_by)
        };
        assert_eq!(
            refused("sp", cmd("", Some(Value::I64(1)))),
            Some("command_id".into())
        );
        assert_eq!(
            refused("nope", cmd("a", Some(Value::I64(1)))),
            Some("unknown_tag".into())
        );
        assert_eq!(
            refused("ro", cmd("a", Some(Value::I64(1)))),
            Some("not_writable".into())
        );
        assert_eq!(refused("sp", cmd("a", None)), Some("value".into()));
        assert_eq!(
            refused("sp", cmd("a", Some(Value::I64(11)))),
            Some("max".into())
        );
        assert_eq!(
            refused("sp", cmd("a", Some(Value::F64(-10.5)))),
            Some("min".into())
        );
        assert_eq!(
            refused("sp", cmd("a", Some(Value::F64(1.5)))),
            Some("type".into())
        );
        assert_eq!(
            refused("c", cmd("a", Some(Value::I64(1)))),
            Some("type".into())
        );
        let (_, value, words) = check_command(
            &device,
            "sp",
            &cmd("a", Some(Value::I64(-2))),
            &RememberedCommands::default(),
        )
        .unwrap();
        assert_eq!((value, words), (Value::I64(-2), vec![0xFFFE]));
    }
}
