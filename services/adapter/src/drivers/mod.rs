//! Device drivers, one folder per protocol. A driver owns its device connection, polls on
//! schedule (or subscribes), turns what the device says into samples (Bad with a reason when a
//! value cannot be read) and performs writes handed to it through the adapter's safe write
//! path.

pub mod modbus;
pub mod mqtt;
pub mod opcua;
mod remembered;
pub mod serial_line;

pub use remembered::{REMEMBERED_COMMANDS, RememberedCommands};

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use fieldline_core::{
    config::ResolvedValueTag,
    sample::{Sample, SampleBatch, Value},
};
use fieldline_proto::v1;
use fieldline_runtime::now_ns;
use tokio::sync::{mpsc, oneshot};

use crate::{metrics::AdapterMetrics, publisher::BatchSink, sequence::Sequence};

/// A write on its way to the driver that owns the device, with where to send the outcome.
pub struct WriteRequest {
    pub command: v1::Command,
    /// Device name; several devices may share one driver task (a bus).
    pub device: String,
    /// Tag name within the device.
    pub tag: String,
    pub reply: oneshot::Sender<v1::CommandResult>,
}

/// The handle through which the rest of the adapter reaches a running device.
#[derive(Clone)]
pub struct DeviceHandle {
    pub name: String,
    pub writes: mpsc::Sender<WriteRequest>,
}

impl DeviceHandle {
    /// Hands `command` for `tag` to the device's driver and waits for the outcome; `Err` says
    /// why the driver could not take it.
    pub async fn write(
        &self,
        command: v1::Command,
        tag: String,
    ) -> crate::Result<v1::CommandResult> {
        let (reply, outcome) = oneshot::channel();
        let request = WriteRequest {
            // From here on its time to live is a deadline on this clock.
            command: command.anchored(now_ns()),
            device: self.name.clone(),
            tag,
            reply,
        };
        self.writes
            .send(request)
            .await
            .map_err(|_| crate::Error::DriverStopped)?;
        outcome
            .await
            .map_err(|_| crate::Error::DriverStoppedDuringWrite)
    }
}

/// How long a driver waits before it looks again while polling is paused (a full outbox).
pub const PAUSED_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// What every driver needs from the adapter.
#[derive(Clone)]
pub struct DeviceContext {
    pub line: String,
    pub adapter_id: String,
    pub sink: BatchSink,
    pub metrics: AdapterMetrics,
    pub sequence: Arc<Mutex<Sequence>>,
    /// Folder of the devices' command journals (`{state_dir}/commands`).
    pub commands_dir: PathBuf,
}

impl DeviceContext {
    /// The commands `device` remembers, from its journal: a command id that reached the
    /// device before a restart is not written again after it. A journal that cannot be opened
    /// is logged and refuses every write to the device (`RememberedCommands::sending`).
    pub fn remembered(&self, device: &str) -> RememberedCommands {
        RememberedCommands::open(&self.commands_dir.join(device)).unwrap_or_else(|error| {
            tracing::error!(device, %error, "the device's command journal cannot be opened; its writes are refused");
            RememberedCommands::unusable(error.to_string())
        })
    }

    /// Numbers `samples` as the device's next batch and hands it to the publisher; false
    /// (logged and counted) when no sequence number could be taken.
    pub fn publish(&self, device: &str, samples: Vec<Sample>) -> bool {
        if samples.is_empty() {
            return true;
        }
        // The reservation is written before it is used, so a lock poisoned by a panic
        // elsewhere cannot leave the numbers inconsistent: it is taken over.
        let sequence = self
            .sequence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match sequence {
            Ok(sequence) => {
                self.sink.send(SampleBatch {
                    line: self.line.clone(),
                    device: device.to_string(),
                    adapter_id: self.adapter_id.clone(),
                    sequence,
                    samples,
                });
                true
            }
            Err(error) => {
                self.error(device, "sequence");
                tracing::error!(device, %error, "cannot number the batch; not published");
                false
            }
        }
    }

    /// Counts an error of `kind` for `device`.
    pub fn error(&self, device: &str, kind: &str) {
        self.metrics
            .errors
            .get_or_create(&vec![
                ("device", device.to_string()),
                ("kind", kind.to_string()),
            ])
            .inc();
    }

    /// Counts a write's outcome and logs it.
    pub fn count_write(
        &self,
        device: &str,
        tag: &str,
        command: &v1::Command,
        result: &v1::CommandResult,
    ) {
        let outcome = outcome(result);
        self.metrics
            .writes
            .get_or_create(&vec![
                ("device", device.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        tracing::info!(device, tag, command = %command.id, requested_by = %command.requested_by, outcome, detail = %result.detail, "write");
    }
}

/// The device's `samples_read{quality}` counters, looked up once (a driver counts every
/// reading).
#[derive(Clone)]
pub struct SampleMeters {
    good: prometheus_client::metrics::counter::Counter,
    bad: prometheus_client::metrics::counter::Counter,
}

impl SampleMeters {
    pub fn new(cx: &DeviceContext, device: &str) -> Self {
        let counter = |quality: &str| {
            cx.metrics
                .samples_read
                .get_or_create(&vec![
                    ("device", device.to_string()),
                    ("quality", quality.to_string()),
                ])
                .clone()
        };
        Self {
            good: counter("good"),
            bad: counter("bad"),
        }
    }

    /// Counts one reading of `quality` (Uncertain counts as bad: not fit for use as is).
    pub fn count(&self, quality: &fieldline_core::sample::Quality) {
        if quality.is_good() {
            self.good.inc();
        } else {
            self.bad.inc();
        }
    }
}

/// The outcome of a write as a metric label.
pub fn outcome(result: &v1::CommandResult) -> &'static str {
    match v1::CommandStatus::try_from(result.status) {
        Ok(v1::CommandStatus::Written) => "written",
        Ok(v1::CommandStatus::Rejected) => "rejected",
        Ok(v1::CommandStatus::ReadbackMismatch) => "readback_mismatch",
        _ => "failed",
    }
}

/// A command's result.
pub fn command_result(
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

/// The checks a command for a value tag (serial-line, opcua, mqtt) passes before anything is
/// sent: a known tag, then core's one write check (an id, writable, a value within min/max,
/// the deadline, the least time since the tag's last write). Returns the tag and the raw value
/// to send (scale and offset undone).
pub fn check_value_command<'t>(
    tags: &'t [ResolvedValueTag],
    device: &str,
    tag_name: &str,
    command: &v1::Command,
    remembered: &RememberedCommands,
) -> Result<(&'t ResolvedValueTag, Value), v1::CommandResult> {
    let reject = |by: &str, detail: String| {
        command_result(command, v1::CommandStatus::Rejected, by, None, detail)
    };
    let Some(tag) = tags.iter().find(|t| t.name == tag_name) else {
        return Err(reject(
            "unknown_tag",
            format!("device {device} has no tag {tag_name:?}"),
        ));
    };
    let value = command.value.clone().and_then(|v| Value::try_from(v).ok());
    check_write(&tag.write, tag_name, value.as_ref(), command, remembered)
        .map_err(|r| reject(r.by, r.detail))?;
    let value = value.ok_or_else(|| reject("value", "the command carries no value".into()))?;
    let raw = tag
        .unconvert(value)
        .map_err(|e| reject("type", e.to_string()))?;
    Ok((tag, raw))
}

/// Core's one write check as a driver applies it: no interlock state and no current value
/// here (the processor has both); the tag's last write is the driver's own.
pub fn check_write(
    limits: &fieldline_core::write::WriteLimits,
    tag: &str,
    value: Option<&Value>,
    command: &v1::Command,
    remembered: &RememberedCommands,
) -> Result<(), fieldline_core::write::Refusal> {
    fieldline_core::write::check(
        limits,
        &fieldline_core::write::Proposed {
            id: &command.id,
            tag,
            value,
            current: None,
            last_write_ns: remembered.last_write(tag),
            deadline_ns: command.deadline_ns,
            now_ns: now_ns(),
            held: None,
            source: "adapter",
        },
    )
}
