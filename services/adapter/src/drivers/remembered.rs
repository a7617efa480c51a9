//! The command ids a device has been written with, kept in a journal in the adapter's state
//! folder, so a command sent again (a retry after a lost answer, a rule's request processed
//! again after a processor restart, either service restarted in between) gets its first
//! result and is never written to the device twice.
//!
//! Before a command goes to the device its id is journalled (fsync'd) as *sending*; after,
//! its result. A journal that holds a *sending* without a result (the adapter died while
//! writing) answers that command as failed with an unknown outcome, and does not write it
//! again: at most once, even across a crash. The journal is bounded in bytes (the oldest
//! records go first); the newest [`REMEMBERED_COMMANDS`] results are kept in memory.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::Path,
};

use fieldline_proto::v1;
use fieldline_runtime::now_ns;
use fieldline_wal::{Fsync, Wal, WalError, WhenFull};
use prost::Message;

use super::{DeviceContext, command_result, outcome};

/// How many command ids a device remembers for idempotency.
pub const REMEMBERED_COMMANDS: usize = 10_000;

/// Bytes of journal per device: room for several times [`REMEMBERED_COMMANDS`] results.
const JOURNAL_BYTES: u64 = 8 << 20;

const SENDING: u8 = b'S';
const RESULT: u8 = b'R';

/// Results of commands that reached a device, by command id.
pub struct RememberedCommands {
    results: HashMap<String, v1::CommandResult>,
    order: VecDeque<String>,
    /// When each tag was last written (ns), for its least time between writes.
    last_writes: HashMap<String, i64>,
    /// Ids journalled as sending whose result is still to come.
    in_flight: HashSet<String>,
    journal: Journal,
}

enum Journal {
    /// In memory only (tests of the drivers without a state folder).
    None,
    Open(Box<Wal>),
    /// The journal could not be opened or written: no write goes to the device.
    Unusable(String),
}

impl Default for RememberedCommands {
    fn default() -> Self {
        Self {
            results: HashMap::new(),
            order: VecDeque::new(),
            last_writes: HashMap::new(),
            in_flight: HashSet::new(),
            journal: Journal::None,
        }
    }
}

impl RememberedCommands {
    /// Opens (or creates) the journal in `dir` and takes in what it holds.
    pub fn open(dir: &Path) -> Result<Self, WalError> {
        let (mut wal, _) = Wal::open(dir, JOURNAL_BYTES, Fsync::Always, WhenFull::DropOldest)?;
        let (records, _) = wal.peek_many(usize::MAX, usize::MAX)?;
        let mut this = Self::default();
        let mut sending: Vec<(String, String)> = Vec::new();
        for record in records {
            match decode(&record) {
                Some(Record::Sending { tag, id }) => sending.push((tag, id)),
                Some(Record::Result { tag, result }) => {
                    sending.retain(|(_, id)| *id != result.command_id);
                    if touched(&result) {
                        this.remember(&tag, result);
                    }
                }
                None => {
                    tracing::warn!(journal = %dir.display(), "an unreadable command journal record skipped")
                }
            }
        }
        // Sent, or about to be, when the adapter stopped: the device may have it.
        for (tag, id) in sending {
            let command = v1::Command {
                id,
                ..Default::default()
            };
            let unknown = command_result(
                &command,
                v1::CommandStatus::Failed,
                "",
                None,
                "the adapter stopped while writing this command; whether the device took it is unknown, so it is not written again".into(),
            );
            this.remember(&tag, unknown);
        }
        this.journal = Journal::Open(Box::new(wal));
        Ok(this)
    }

    /// Remembers nothing durably and lets no write through, saying `why`.
    pub fn unusable(why: String) -> Self {
        Self {
            journal: Journal::Unusable(why),
            ..Self::default()
        }
    }

    /// The earlier result of `command`, when its id reached the device before: the command
    /// is answered with it and not written again. Counted as the `repeated` outcome of
    /// `writes_total` and logged.
    pub fn repeat(
        &self,
        cx: &DeviceContext,
        device: &str,
        tag: &str,
        command: &v1::Command,
    ) -> Option<v1::CommandResult> {
        let earlier = self.results.get(&command.id)?.clone();
        cx.metrics
            .writes
            .get_or_create(&vec![
                ("device", device.to_string()),
                ("outcome", "repeated".to_string()),
            ])
            .inc();
        tracing::info!(device, tag, command = %command.id, requested_by = %command.requested_by, outcome = outcome(&earlier), "a command already written came again; answered with its result, not written again");
        Some(earlier)
    }

    pub fn last_write(&self, tag: &str) -> Option<i64> {
        self.last_writes.get(tag).copied()
    }

    /// Journals that `command` for `tag` goes to the device now, before it does. `Err` (the
    /// reason) when that cannot be made durable: the command must then not be sent.
    pub fn sending(&mut self, tag: &str, command: &v1::Command) -> Result<(), String> {
        let record = encode_sending(tag, &command.id);
        self.append(&record)?;
        self.in_flight.insert(command.id.clone());
        Ok(())
    }

    /// Keeps `result`, of a command for `tag`, when it touched the device (written, or read
    /// back different), and notes the tag's write time. The result of a command that was
    /// sending is journalled whatever it is (one that failed before reaching the device may be
    /// sent again). A result that cannot be journalled is still remembered until the adapter
    /// stops, and the journal's *sending* answers for it after a restart.
    pub fn keep(&mut self, tag: &str, result: &v1::CommandResult) {
        if result.command_id.is_empty() {
            return;
        }
        if self.in_flight.remove(&result.command_id)
            && let Err(error) = self.append(&encode_result(tag, result))
        {
            tracing::warn!(command = %result.command_id, %error, "cannot journal a command's result");
        }
        if touched(result) {
            self.remember(tag, result.clone());
        }
    }

    fn remember(&mut self, tag: &str, result: v1::CommandResult) {
        let at = if result.timestamp_ns > 0 {
            result.timestamp_ns
        } else {
            now_ns()
        };
        let last = self.last_writes.entry(tag.to_string()).or_insert(at);
        *last = (*last).max(at);
        if self.results.contains_key(&result.command_id) {
            self.results.insert(result.command_id.clone(), result);
            return;
        }
        if self.order.len() >= REMEMBERED_COMMANDS
            && let Some(old) = self.order.pop_front()
        {
            self.results.remove(&old);
        }
        self.order.push_back(result.command_id.clone());
        self.results.insert(result.command_id.clone(), result);
    }

    fn append(&mut self, record: &[u8]) -> Result<(), String> {
        match &mut self.journal {
            Journal::None => Ok(()),
            Journal::Unusable(why) => Err(format!("the command journal is unusable: {why}")),
            Journal::Open(wal) => wal
                .append(record)
                .map(drop)
                .map_err(|e| format!("the command cannot be journalled, so it is not sent: {e}")),
        }
    }
}

/// Whether a command's result says it reached the device.
fn touched(result: &v1::CommandResult) -> bool {
    matches!(outcome(result), "written" | "readback_mismatch")
}

enum Record {
    Sending {
        tag: String,
        id: String,
    },
    Result {
        tag: String,
        result: v1::CommandResult,
    },
}

/// A record: its kind, the tag's length (u16) and name, then the command id (sending) or the
/// encoded `CommandResult` (result).
fn encode(kind: u8, tag: &str, rest: &[u8]) -> Vec<u8> {
    let tag = &tag.as_bytes()[..tag.len().min(u16::MAX as usize)];
    let mut record = Vec::with_capacity(3 + tag.len() + rest.len());
    record.push(kind);
    record.extend_from_slice(&(tag.len() as u16).to_le_bytes());
    record.extend_from_slice(tag);
    record.extend_from_slice(rest);
    record
}

fn encode_sending(tag: &str, id: &str) -> Vec<u8> {
    encode(SENDING, tag, id.as_bytes())
}

fn encode_result(tag: &str, result: &v1::CommandResult) -> Vec<u8> {
    encode(RESULT, tag, &result.encode_to_vec())
}

fn decode(record: &[u8]) -> Option<Record> {
    let (&kind, rest) = record.split_first()?;
    let len = usize::from(u16::from_le_bytes([*rest.first()?, *rest.get(1)?]));
    let tag = String::from_utf8(rest.get(2..2 + len)?.to_vec()).ok()?;
    let body = rest.get(2 + len..)?;
    match kind {
        SENDING => Some(Record::Sending {
            tag,
            id: String::from_utf8(body.to_vec()).ok()?,
        }),
        RESULT => Some(Record::Result {
            tag,
            result: v1::CommandResult::decode(body).ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(id: &str) -> v1::Command {
        v1::Command {
            id: id.into(),
            ..Default::default()
        }
    }

    fn written(id: &str) -> v1::CommandResult {
        command_result(
            &command(id),
            v1::CommandStatus::Written,
            "",
            None,
            String::new(),
        )
    }

    #[test]
    fn results_survive_a_restart_and_an_unfinished_write_is_never_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let c1 = written("c1");
        {
            let mut r = RememberedCommands::open(dir.path()).unwrap();
            r.sending("speed", &command("c1")).unwrap();
            r.keep("speed", &c1);
            // c3 failed before reaching the device: it may be sent again.
            r.sending("speed", &command("c3")).unwrap();
            let failed = command_result(
                &command("c3"),
                v1::CommandStatus::Failed,
                "",
                None,
                "connection refused".into(),
            );
            r.keep("speed", &failed);
            // Died between sending c2 and its result.
            r.sending("valve", &command("c2")).unwrap();
        }
        let r = RememberedCommands::open(dir.path()).unwrap();
        assert_eq!(r.results.get("c1"), Some(&c1));
        let unfinished = r.results.get("c2").expect("c2 is remembered");
        assert_eq!(unfinished.status, v1::CommandStatus::Failed as i32);
        assert!(unfinished.detail.contains("unknown"), "{unfinished:?}");
        assert!(r.last_write("speed").is_some() && r.last_write("valve").is_some());
        assert_eq!(
            r.results.get("c3"),
            None,
            "a failed write may be sent again"
        );
    }

    #[test]
    fn a_journal_that_cannot_be_used_lets_nothing_through() {
        let file = tempfile::NamedTempFile::new().unwrap();
        // A file where the journal's folder should be.
        let error = match RememberedCommands::open(file.path()) {
            Ok(_) => panic!("a journal opened on a file"),
            Err(e) => e,
        };
        let mut r = RememberedCommands::unusable(error.to_string());
        assert!(r.sending("speed", &command("c1")).is_err());
    }

    #[test]
    fn records_that_do_not_decode_are_refused_not_trusted() {
        assert!(decode(&[]).is_none());
        assert!(
            decode(&[SENDING, 200, 0, b'x']).is_none(),
            "tag longer than the record"
        );
        assert!(decode(&[b'?', 0, 0]).is_none());
        assert!(matches!(
            decode(&encode_sending("t", "id")),
            Some(Record::Sending { .. })
        ));
    }
}
