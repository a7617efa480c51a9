//! The plant records the processor keeps beside the samples: the current state of every
//! alarm, the audit of every write request, and how far each device's batches are stored.
//! Storage keeps them in the line's SQL database; they travel there in
//! `fieldline.v1.PlantRecords`.

use std::fmt;

use crate::{Value, alarm::AlarmState};

/// The current state of one alarm: what the processor saves after each transition and loads
/// at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmStatus {
    pub line: String,
    pub alarm_id: String,
    pub device: String,
    pub tag: String,
    pub kind: String,
    pub priority: u32,
    pub state: AlarmState,
    /// The alarm condition is present. Must agree with `state` unless the alarm is shelved or
    /// out of service, where it says what the alarm returns to.
    pub active: bool,
    /// The last activation has been acknowledged. Same rule as `active`.
    pub acked: bool,
    /// Until when the alarm stays shelved; set exactly when `state` is [`AlarmState::Shelved`].
    pub shelved_until_ns: Option<i64>,
    /// The value at the last transition.
    pub value: Option<Value>,
    pub message: String,
    /// `seq` of the transition that produced this state. A save with a lower `last_seq` than
    /// the stored one changes nothing, so a replayed older state never wins.
    pub last_seq: u64,
    /// When the last transition happened, ns since epoch.
    pub changed_ns: i64,
    /// The alarm machine's own persisted form (JSON), from which it resumes exactly.
    pub snapshot: Option<String>,
}

impl AlarmStatus {
    /// The alarm is out of service (its state says so; there is no separate flag).
    pub fn out_of_service(&self) -> bool {
        self.state == AlarmState::OutOfService
    }
}

/// Where a write request stands. Later stages replace earlier ones, never the reverse; the
/// first final status recorded stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandStatus {
    /// Received, not yet checked.
    Requested,
    /// Passed the safety checks (writable, limits, deadline); about to be written.
    Accepted,
    /// The device took the write; the read-back is pending or the device cannot be read back.
    Written,
    /// Written and read back equal to the requested value.
    Verified,
    /// Refused before anything was sent to the device; see `rejected_by`.
    Rejected,
    /// Sent, but the device refused it or the transport failed.
    Failed,
    /// Written, but the value read back differs from the value requested.
    ReadbackMismatch,
}

impl CommandStatus {
    pub const ALL: [CommandStatus; 7] = [
        CommandStatus::Requested,
        CommandStatus::Accepted,
        CommandStatus::Written,
        CommandStatus::Verified,
        CommandStatus::Rejected,
        CommandStatus::Failed,
        CommandStatus::ReadbackMismatch,
    ];

    /// The name stored in the database (the adapter's outcome names where they overlap).
    pub fn code(self) -> &'static str {
        match self {
            CommandStatus::Requested => "requested",
            CommandStatus::Accepted => "accepted",
            CommandStatus::Written => "written",
            CommandStatus::Verified => "verified",
            CommandStatus::Rejected => "rejected",
            CommandStatus::Failed => "failed",
            CommandStatus::ReadbackMismatch => "readback_mismatch",
        }
    }

    /// The value of a stored name; `None` for a name this version does not know.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Order of the stages: 0 requested, 1 accepted, 2 written, 3 final.
    pub fn stage(self) -> i16 {
        match self {
            CommandStatus::Requested => 0,
            CommandStatus::Accepted => 1,
            CommandStatus::Written => 2,
            CommandStatus::Verified
            | CommandStatus::Rejected
            | CommandStatus::Failed
            | CommandStatus::ReadbackMismatch => 3,
        }
    }

    /// No later stage can follow.
    pub fn is_final(self) -> bool {
        self.stage() == 3
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One write request and, once known, its result. Recorded when the request arrives and
/// again at each later stage under the same `command_id`; it stays one row.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandAudit {
    /// The command's idempotency key.
    pub command_id: String,
    pub line: String,
    pub device: String,
    pub tag: String,
    /// The value requested.
    pub value: Value,
    /// What asked for the write: a control rule's name or "mes".
    pub source: String,
    /// The person or system on whose behalf it was asked.
    pub requested_by: String,
    pub reason: String,
    /// Latest time the write may still be performed (ns since epoch); 0 means no deadline.
    pub deadline_ns: i64,
    /// When the request arrived, ns since epoch.
    pub requested_ns: i64,
    pub status: CommandStatus,
    /// Which check refused the command, e.g. "not_writable", "max", "deadline".
    pub rejected_by: Option<String>,
    /// The tag's value read before the write.
    pub old_value: Option<Value>,
    /// The value read back after the write.
    pub read_back: Option<Value>,
    pub detail: Option<String>,
    /// When the current status was reached, ns since epoch; none while only requested.
    pub finished_ns: Option<i64>,
}

/// How far the processor has taken a device's batches: every batch up to `stored_seq` is
/// stored, and `plugin_state` is what the device's plugins kept right after it (opaque JSON,
/// for a device whose type has plugins). Keyed by line and device; a lower `stored_seq` never
/// replaces a higher one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProgress {
    pub line: String,
    pub device: String,
    pub stored_seq: u64,
    pub updated_ns: i64,
    pub plugin_state: Option<String>,
}
