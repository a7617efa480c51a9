//! The one safe write path: every write, from a control rule or from the MES, passes the same
//! checks in the same order, goes to the adapter (which checks again and reads back), is
//! compared with what was read back (a mismatch raises the tag's read-back alarm) and leaves
//! an audit row.
//!
//! Checks, in order: a known tag of this line, then core's one write check (a command id,
//! writable, a finite value, min and max, the deadline, an interlock holding the tag, the
//! largest step from the current value, the least time between writes of the tag). A command
//! id seen before returns the first result without writing again. State that cannot be read
//! (a poisoned lock) refuses the write.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldline_core::{
    Value,
    config::LineConfig,
    records::{CommandAudit, CommandStatus},
    rules::same,
    write::{self, WriteLimits},
};
use fieldline_proto::v1::{self, adapter_service_client::AdapterServiceClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::{engine::Engine, latest::Latest, metrics::ProcessorMetrics, records::Recorder};

/// Results kept for answering a repeated command id.
const REMEMBERED: usize = 10_000;
/// Longest a write may take when its command has no deadline.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a write's read-back alarm transitions go.
pub type AlarmSender = mpsc::UnboundedSender<crate::line::Effect>;

pub struct WritePath {
    line: String,
    limits: HashMap<(String, String), WriteLimits>,
    adapter: AdapterServiceClient<Channel>,
    engine: Arc<Mutex<Engine>>,
    latest: Latest,
    audit: Option<Recorder>,
    alarms: AlarmSender,
    metrics: ProcessorMetrics,
    /// What the adapter is shown on every write (`authorization: Bearer …`), when the line
    /// has `adapter.write_token`.
    write_token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    done: Mutex<(HashMap<String, v1::CommandResult>, VecDeque<String>)>,
    running: Mutex<HashSet<String>>,
    last_write: Mutex<HashMap<(String, String), i64>>,
}

impl WritePath {
    /// The write path of `config`'s line; `write_token` is the adapter's, already read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &LineConfig,
        adapter: AdapterServiceClient<Channel>,
        write_token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
        engine: Arc<Mutex<Engine>>,
        latest: Latest,
        audit: Option<Recorder>,
        alarms: AlarmSender,
        metrics: ProcessorMetrics,
    ) -> Self {
        let mut limits = HashMap::new();
        for d in &config.devices {
            for t in d.tags() {
                limits.insert((d.name().to_string(), t.name.clone()), WriteLimits::of(t));
            }
        }
        Self {
            line: config.line.clone(),
            limits,
            adapter,
            write_token,
            engine,
            latest,
            audit,
            alarms,
            metrics,
            done: Mutex::default(),
            running: Mutex::default(),
            last_write: Mutex::default(),
        }
    }

    /// Writes one tag; `source` is the rule's name, "mes" or "mqtt".
    pub async fn write(&self, command: v1::Command, source: &str) -> v1::CommandResult {
        let now = fieldline_runtime::now_ns();
        // A time to live is measured from here, on this clock.
        let command = command.anchored(now);
        if command.id.is_empty() {
            return rejected(
                &command,
                "command_id",
                "a command needs an id (its idempotency key)".into(),
            );
        }
        match self.remembered(&command.id) {
            Ok(Some(previous)) => return previous,
            Ok(None) => {}
            Err(()) => {
                return rejected(
                    &command,
                    "internal",
                    "the results of earlier commands cannot be read; nothing is written".into(),
                );
            }
        }
        if !self.lock_running().insert(command.id.clone()) {
            return rejected(
                &command,
                "in_progress",
                format!("command {} is being written", command.id),
            );
        }
        let result = self.checked_write(&command, source, now).await;
        self.lock_running().remove(&command.id);
        self.remember(&result);
        let status = v1::CommandStatus::try_from(result.status).unwrap_or_default();
        self.metrics
            .writes
            .get_or_create(&vec![
                (
                    "source",
                    match source {
                        "mes" | "mqtt" => source,
                        _ => "rule",
                    }
                    .to_string(),
                ),
                ("status", format!("{status:?}").to_lowercase()),
            ])
            .inc();
        result
    }

    async fn checked_write(
        &self,
        command: &v1::Command,
        source: &str,
        now: i64,
    ) -> v1::CommandResult {
        let Some((device, tag)) = self.parse_path(&command.tag) else {
            let result = rejected(
                command,
                "unknown_tag",
                format!("{:?} is not a tag path of line {}", command.tag, self.line),
            );
            return result;
        };
        let value = command.value.clone().and_then(|v| Value::try_from(v).ok());
        let old_value = self.latest.value(&self.line, &device, &tag);
        let mut audit = CommandAudit {
            command_id: command.id.clone(),
            line: self.line.clone(),
            device: device.clone(),
            tag: tag.clone(),
            value: value.clone().unwrap_or(Value::String(String::new())),
            source: source.to_string(),
            requested_by: command.requested_by.clone(),
            reason: command.reason.clone(),
            deadline_ns: command.deadline_ns,
            requested_ns: now,
            status: CommandStatus::Requested,
            rejected_by: None,
            old_value: old_value.clone(),
            read_back: None,
            detail: None,
            finished_ns: None,
        };
        if let Err((check, detail)) = self.check(
            command,
            &device,
            &tag,
            value.as_ref(),
            old_value.as_ref(),
            source,
            now,
        ) {
            let result = rejected(command, check, detail);
            audit.status = CommandStatus::Rejected;
            audit.rejected_by = Some(check.to_string());
            audit.detail = Some(result.detail.clone());
            audit.finished_ns = Some(result.timestamp_ns);
            self.record(audit);
            tracing::info!(command = %command.id, tag = %command.tag, source, check, detail = %result.detail, "write refused");
            return result;
        }
        audit.status = CommandStatus::Accepted;
        self.record(audit.clone());
        self.lock_last_write()
            .insert((device.clone(), tag.clone()), now);
        let timeout = if command.deadline_ns > 0 {
            Duration::from_nanos(u64::try_from(command.deadline_ns - now).unwrap_or(0))
        } else {
            DEFAULT_TIMEOUT
        };
        // The adapter judges what is left of the deadline on its own clock.
        let mut forwarded = command.clone().with_ttl(now);
        if forwarded.requested_by.is_empty() {
            forwarded.requested_by = source.to_string();
        }
        let mut request = tonic::Request::new(forwarded);
        if let Some(token) = &self.write_token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        let answer = tokio::time::timeout(timeout, self.adapter.clone().write(request)).await;
        let result = match answer {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => failed(command, format!("adapter: {}", status.message())),
            Err(_) => failed(
                command,
                format!("no answer from the adapter within {timeout:?}"),
            ),
        };
        let status = v1::CommandStatus::try_from(result.status).unwrap_or_default();
        let read_back = result
            .read_back
            .clone()
            .and_then(|v| Value::try_from(v).ok());
        // The tag's read-back alarm follows every write that reached the device.
        let verdict = match (status, &read_back, &value) {
            (v1::CommandStatus::ReadbackMismatch, _, _) => Some(false),
            (v1::CommandStatus::Written, Some(r), Some(v)) => Some(same(r, v)),
            _ => None,
        };
        if let Some(ok) = verdict {
            let effects = self
                .engine
                .lock()
                .map(|mut e| {
                    let effects = e.readback(&device, &tag, ok, result.timestamp_ns.max(now));
                    if let Some(audit) = &self.audit
                        && !effects.alarm_events.is_empty()
                    {
                        let mut records = audit.empty();
                        records.alarm_events = effects.alarm_events.clone();
                        records.alarm_states = e
                            .statuses(&effects.alarm_events)
                            .iter()
                            .map(Into::into)
                            .collect();
                        audit.record(records);
                    }
                    effects
                })
                .ok();
            if let Some(effects) = effects
                && !effects.alarm_events.is_empty()
            {
                let _ = self
                    .alarms
                    .send(crate::line::Effect::Alarms(effects.alarm_events));
            }
        }
        audit.status = match (status, verdict) {
            (v1::CommandStatus::Written, Some(true)) => CommandStatus::Verified,
            (v1::CommandStatus::Written, Some(false))
            | (v1::CommandStatus::ReadbackMismatch, _) => CommandStatus::ReadbackMismatch,
            (v1::CommandStatus::Written, None) => CommandStatus::Written,
            (v1::CommandStatus::Rejected, _) => CommandStatus::Rejected,
            _ => CommandStatus::Failed,
        };
        audit.rejected_by = (!result.rejected_by.is_empty()).then(|| result.rejected_by.clone());
        audit.read_back = read_back;
        audit.detail = (!result.detail.is_empty()).then(|| result.detail.clone());
        audit.finished_ns = Some(fieldline_runtime::now_ns());
        self.record(audit);
        tracing::info!(command = %command.id, tag = %command.tag, source, status = ?status, detail = %result.detail, "write done");
        result
    }

    /// The one write check of core, with this line's limits, the tag's last write and the
    /// interlock holding it. Fails closed: state it cannot read refuses the write.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        command: &v1::Command,
        device: &str,
        tag: &str,
        value: Option<&Value>,
        current: Option<&Value>,
        source: &str,
        now: i64,
    ) -> Result<(), (&'static str, String)> {
        let key = (device.to_string(), tag.to_string());
        let Some(limits) = self.limits.get(&key) else {
            return Err(("unknown_tag", format!("device {device} has no tag {tag:?}")));
        };
        let held = match self.engine.lock() {
            Ok(engine) => engine.hold(device, tag),
            Err(_) => {
                return Err((
                    "internal",
                    "the interlock state cannot be read; nothing is written".into(),
                ));
            }
        };
        let last_write_ns = match self.last_write.lock() {
            Ok(last) => last.get(&key).copied(),
            Err(_) => {
                return Err((
                    "internal",
                    "the last write times cannot be read; nothing is written".into(),
                ));
            }
        };
        let proposed = write::Proposed {
            id: &command.id,
            tag,
            value,
            current,
            last_write_ns,
            deadline_ns: command.deadline_ns,
            now_ns: now,
            held: held.as_ref(),
            source,
        };
        write::check(limits, &proposed).map_err(|r| (r.by, r.detail))
    }

    fn parse_path(&self, path: &str) -> Option<(String, String)> {
        let mut parts = path.splitn(3, '/');
        let (line, device, tag) = (parts.next()?, parts.next()?, parts.next()?);
        (line == self.line && !device.is_empty() && !tag.is_empty())
            .then(|| (device.to_string(), tag.to_string()))
    }

    fn record(&self, audit: CommandAudit) {
        if let Some(recorder) = &self.audit {
            let mut records = recorder.empty();
            records.commands.push(v1::CommandRecord::from(&audit));
            recorder.record(records);
        }
    }

    /// The result of an earlier command with this id; `Err` when that cannot be known.
    fn remembered(&self, id: &str) -> Result<Option<v1::CommandResult>, ()> {
        let done = self.done.lock().map_err(drop)?;
        Ok(done.0.get(id).cloned())
    }

    fn remember(&self, result: &v1::CommandResult) {
        if let Ok(mut done) = self.done.lock() {
            let (map, order) = &mut *done;
            if map
                .insert(result.command_id.clone(), result.clone())
                .is_none()
            {
                order.push_back(result.command_id.clone());
            }
            while order.len() > REMEMBERED {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_last_write(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), i64>> {
        self.last_write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn rejected(command: &v1::Command, check: &str, detail: String) -> v1::CommandResult {
    v1::CommandResult {
        command_id: command.id.clone(),
        status: v1::CommandStatus::Rejected as i32,
        rejected_by: check.to_string(),
        read_back: None,
        detail,
        timestamp_ns: fieldline_runtime::now_ns(),
    }
}

fn failed(command: &v1::Command, detail: String) -> v1::CommandResult {
    v1::CommandResult {
        command_id: command.id.clone(),
        status: v1::CommandStatus::Failed as i32,
        rejected_by: String::new(),
        read_back: None,
        detail,
        timestamp_ns: fieldline_runtime::now_ns(),
    }
}
