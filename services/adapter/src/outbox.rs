//! The adapter's outbox: every batch stays on disk until storage has it.
//!
//! A batch is appended to a write-ahead log ([`fieldline_wal`]) before it is published, and
//! leaves only when the line's processor reports it stored (its per-device
//! [`v1::StoredUpTo`] watermark). The broker is transport: a broker that forgets, a session
//! that is gone, a processor that dies mid-flight or an adapter killed during an outage cost
//! nothing, because whatever was not acknowledged is sent again from here.
//!
//! Batches are published in the order they were appended. Each one names the previous batch
//! of its device that is still held here (`previous_sequence`), so the processor can tell a
//! batch that overtook a lost one and wait for it; a batch whose predecessor is stored or gone
//! names none. The log is bounded in bytes: when full, the oldest batches are dropped and
//! counted (a device cannot be made to wait), or the append is refused so that polling pauses.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::Arc,
    time::Instant,
};

use fieldline_proto::{samples_topic, v1};
use fieldline_wal::{Fsync, Position, Wal, WalError, WhenFull};
use prost::Message;

/// A batch encoded for the bus, without `previous_sequence` (added when it is sent).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub line: String,
    pub device: String,
    pub sequence: u64,
    pub payload: Vec<u8>,
}

impl Encoded {
    pub fn new(batch: &v1::SampleBatch) -> Self {
        Self {
            line: batch.line.clone(),
            device: batch.device.clone(),
            sequence: batch.sequence,
            payload: batch.encode_to_vec(),
        }
    }
}

/// A batch to publish now.
#[derive(Debug, Clone)]
pub struct Outgoing {
    id: u64,
    pub topic: Arc<str>,
    pub payload: Vec<u8>,
    again: bool,
}

/// How the outbox keeps its log.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub max_bytes: u64,
    pub fsync: Fsync,
    pub when_full: WhenFull,
    /// Payload bytes kept in memory for sending; beyond, batches are read back from disk.
    pub memory_bytes: usize,
}

#[derive(Debug)]
struct Entry {
    device: u32,
    sequence: u64,
    start: Position,
    acked: bool,
    /// Whether it is queued in `again`.
    again: bool,
    payload: Option<Arc<[u8]>>,
    sent_at: Option<Instant>,
}

#[derive(Debug)]
struct Device {
    name: String,
    topic: Arc<str>,
    /// Ids of the device's batches not yet stored, oldest first.
    unacked: VecDeque<u64>,
    /// The highest watermark heard.
    stored: u64,
}

/// What opening found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Batches held from before, to be sent again.
    pub batches: usize,
    /// Bytes cut from a torn or corrupt end of the log.
    pub cut_bytes: u64,
    /// Records that were not batches (left out).
    pub unreadable: usize,
}

/// What an append did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Appended {
    pub batches: usize,
    /// Batches dropped to make room (drop-oldest), never stored.
    pub dropped: usize,
}

pub struct Outbox {
    wal: Wal,
    entries: VecDeque<Entry>,
    /// Id of `entries[0]`.
    first_id: u64,
    devices: Vec<Device>,
    by_name: HashMap<String, u32>,
    /// Next entry to send in order.
    cursor: u64,
    /// Entries to send again before the cursor moves on.
    again: VecDeque<u64>,
    cached_bytes: usize,
    memory_bytes: usize,
    unacked: usize,
    /// Released records whose checkpoint is not written yet, and where it will point.
    uncommitted: u64,
    commit_to: Option<Position>,
    last_commit: Instant,
}

/// How often the log's checkpoint is written at most while batches are released. A
/// checkpoint that lags only means that after a crash some stored batches are sent again,
/// which the processor drops; a segment is freed at once.
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Outbox {
    /// Opens (or creates) the outbox in `dir`; every batch held from before is sent again.
    pub fn open(dir: &Path, settings: &OutboxSettings) -> Result<(Self, Recovered), WalError> {
        let (wal, report) = Wal::open(dir, settings.max_bytes, settings.fsync, settings.when_full)?;
        let mut outbox = Self {
            wal,
            entries: VecDeque::new(),
            first_id: 0,
            devices: Vec::new(),
            by_name: HashMap::new(),
            cursor: 0,
            again: VecDeque::new(),
            cached_bytes: 0,
            memory_bytes: settings.memory_bytes,
            unacked: 0,
            uncommitted: 0,
            commit_to: None,
            last_commit: Instant::now(),
        };
        let mut recovered = Recovered {
            cut_bytes: report.cut_bytes,
            ..Recovered::default()
        };
        let mut at = outbox.wal.oldest();
        loop {
            let record = match outbox.wal.read_at(at) {
                Ok(Some(record)) => record,
                Ok(None) => match outbox.wal.next_segment(at) {
                    Some(next) => {
                        at = next;
                        continue;
                    }
                    None => break,
                },
                Err(error) => {
                    // Opening repaired torn ends already; what is left unreadable stays
                    // unread (and is dropped with its segment), the rest is kept.
                    tracing::error!(%error, "outbox record unreadable; the batches after it in its segment are left out");
                    recovered.unreadable += 1;
                    match outbox.wal.next_segment(at) {
                        Some(next) => {
                            at = next;
                            continue;
                        }
                        None => break,
                    }
                }
            };
            let (payload, next) = record;
            match v1::SampleBatch::decode(payload.as_slice()) {
                Ok(batch) => {
                    outbox.push(&batch.line, &batch.device, batch.sequence, at, None);
                    recovered.batches += 1;
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox record is not a batch; left out");
                    recovered.unreadable += 1;
                    outbox.push_placeholder(at);
                }
            }
            at = next;
        }
        outbox.trim()?;
        Ok((outbox, recovered))
    }

    /// Batches not yet stored.
    pub fn pending(&self) -> usize {
        self.unacked
    }

    /// Bytes the log holds on disk.
    pub fn used_bytes(&self) -> u64 {
        self.wal.used_bytes()
    }

    /// Appends batches with one sync; they are durable (per the fsync policy) when this
    /// returns. With drop-oldest, batches dropped to make room are counted in the result.
    pub fn append(&mut self, batches: &[Encoded]) -> Result<Appended, WalError> {
        if batches.is_empty() {
            return Ok(Appended::default());
        }
        let payloads: Vec<&[u8]> = batches.iter().map(|b| b.payload.as_slice()).collect();
        let dropped_before = self.wal.dropped;
        let starts = self.wal.append_many(&payloads)?;
        let dropped = if self.wal.dropped > dropped_before {
            self.prune_dropped()
        } else {
            0
        };
        for (batch, start) in batches.iter().zip(starts) {
            let cache = self.cached_bytes + batch.payload.len() <= self.memory_bytes;
            let payload = cache.then(|| Arc::<[u8]>::from(batch.payload.as_slice()));
            if cache {
                self.cached_bytes += batch.payload.len();
            }
            self.push(&batch.line, &batch.device, batch.sequence, start, payload);
        }
        Ok(Appended {
            batches: batches.len(),
            dropped,
        })
    }

    /// Takes a watermark: every batch of `device` up to `stored` is stored. Returns how many
    /// batches that released.
    pub fn acknowledge(&mut self, device: &str, stored: u64) -> Result<usize, WalError> {
        let Some(&index) = self.by_name.get(device) else {
            return Ok(0);
        };
        let d = &mut self.devices[index as usize];
        d.stored = d.stored.max(stored);
        let mut released = 0;
        while let Some(&id) = d.unacked.front() {
            let Some(entry) = self
                .entries
                .get_mut((id - self.first_id) as usize)
                .filter(|e| e.sequence <= stored)
            else {
                break;
            };
            d.unacked.pop_front();
            entry.acked = true;
            if let Some(payload) = entry.payload.take() {
                self.cached_bytes -= payload.len();
            }
            released += 1;
        }
        self.unacked -= released;
        if released > 0 {
            self.trim()?;
        }
        Ok(released)
    }

    /// Sends everything not yet stored again, from the oldest (a new broker session).
    pub fn resend_all(&mut self) {
        self.cursor = self.first_id;
        for id in self.again.drain(..) {
            if let Some(e) = self.entries.get_mut((id - self.first_id) as usize) {
                e.again = false;
            }
        }
    }

    /// Sends again the batches of `device` after `stored` (the processor saw a gap).
    pub fn resend_device(&mut self, device: &str, stored: u64) -> usize {
        let Some(&index) = self.by_name.get(device) else {
            return 0;
        };
        let mut queued = 0;
        for &id in &self.devices[index as usize].unacked {
            if id >= self.cursor {
                break; // not sent yet: goes out in order anyway
            }
            let Some(e) = self.entries.get_mut((id - self.first_id) as usize) else {
                continue;
            };
            if e.sequence > stored && !e.again {
                e.again = true;
                self.again.push_back(id);
                queued += 1;
            }
        }
        queued
    }

    /// Sends again the oldest batch of each device not yet stored: after a silence, a probe
    /// that either is a duplicate (the processor drops it) or fills what was lost (and the
    /// processor then reports any further gap, since the batches after it name it).
    pub fn resend_oldest(&mut self) -> usize {
        let mut queued = 0;
        for d in &self.devices {
            let Some(&id) = d.unacked.front() else {
                continue;
            };
            if id >= self.cursor {
                continue; // not sent yet: goes out in order anyway
            }
            if let Some(e) = self.entries.get_mut((id - self.first_id) as usize)
                && !e.again
            {
                e.again = true;
                self.again.push_back(id);
                queued += 1;
            }
        }
        queued
    }

    /// When the oldest batch not yet stored was last sent; `None` when there is none, or it
    /// has not been sent since the last [`Outbox::resend_all`].
    pub fn oldest_sent_at(&self) -> Option<Instant> {
        let id = self
            .devices
            .iter()
            .filter_map(|d| d.unacked.front())
            .min()?;
        self.entries
            .get((id - self.first_id) as usize)
            .and_then(|e| e.sent_at)
    }

    /// The next batch to publish, if any: batches sent again first, then in order.
    pub fn next_to_send(&mut self) -> Result<Option<Outgoing>, WalError> {
        while let Some(id) = self.again.pop_front() {
            let Some(e) = self.entries.get_mut((id - self.first_id) as usize) else {
                continue;
            };
            e.again = false;
            if !e.acked {
                return self.outgoing(id, true).map(Some);
            }
        }
        while self.cursor < self.first_id + self.entries.len() as u64 {
            let id = self.cursor;
            self.cursor += 1;
            if self
                .entries
                .get((id - self.first_id) as usize)
                .is_some_and(|e| !e.acked)
            {
                return self.outgoing(id, false).map(Some);
            }
        }
        Ok(None)
    }

    /// Gives back a batch [`Outbox::next`] returned that could not be handed to the client.
    pub fn put_back(&mut self, outgoing: Outgoing) {
        let Some(e) = self
            .entries
            .get_mut(outgoing.id.wrapping_sub(self.first_id) as usize)
        else {
            return;
        };
        if outgoing.again {
            e.again = true;
            self.again.push_front(outgoing.id);
        } else {
            self.cursor = self.cursor.min(outgoing.id);
        }
    }

    /// Marks a batch handed to the client.
    pub fn sent(&mut self, outgoing: &Outgoing, at: Instant) {
        if let Some(e) = self
            .entries
            .get_mut(outgoing.id.wrapping_sub(self.first_id) as usize)
        {
            e.sent_at = Some(at);
        }
    }

    fn outgoing(&mut self, id: u64, again: bool) -> Result<Outgoing, WalError> {
        let index = (id - self.first_id) as usize;
        let e = &self.entries[index];
        let device = &self.devices[e.device as usize];
        // The predecessor is named only while it is held here: one that is stored or was
        // dropped will never come, and the processor must not wait for it.
        let previous = match device.unacked.binary_search(&id) {
            Ok(pos) if pos > 0 => {
                self.entries[(device.unacked[pos - 1] - self.first_id) as usize].sequence
            }
            _ => 0,
        };
        let mut payload = match &e.payload {
            Some(p) => p.to_vec(),
            None => match self.wal.read_at(e.start)? {
                Some((p, _)) => p,
                None => Vec::new(),
            },
        };
        if previous > 0 {
            // Field 6 (previous_sequence), varint: a field may follow the others on the wire.
            payload.push(6 << 3);
            prost::encoding::encode_varint(previous, &mut payload);
        }
        Ok(Outgoing {
            id,
            topic: device.topic.clone(),
            payload,
            again,
        })
    }

    fn device(&mut self, line: &str, name: &str) -> u32 {
        if let Some(&index) = self.by_name.get(name) {
            return index;
        }
        let index = self.devices.len() as u32;
        self.devices.push(Device {
            name: name.to_string(),
            topic: samples_topic(line, name).into(),
            unacked: VecDeque::new(),
            stored: 0,
        });
        self.by_name.insert(name.to_string(), index);
        index
    }

    fn push(
        &mut self,
        line: &str,
        device: &str,
        sequence: u64,
        start: Position,
        payload: Option<Arc<[u8]>>,
    ) {
        let index = self.device(line, device);
        let id = self.first_id + self.entries.len() as u64;
        let d = &mut self.devices[index as usize];
        // A watermark heard before the batch was appended (a batch the processor stored
        // before a crash of this adapter) releases it at once.
        let acked = sequence <= d.stored;
        if !acked {
            d.unacked.push_back(id);
            self.unacked += 1;
        }
        self.entries.push_back(Entry {
            device: index,
            sequence,
            start,
            acked,
            again: false,
            payload: if acked { None } else { payload },
            sent_at: None,
        });
    }

    /// A record that is not a batch: held (acked) only so positions stay in order.
    fn push_placeholder(&mut self, start: Position) {
        self.entries.push_back(Entry {
            device: u32::MAX,
            sequence: 0,
            start,
            acked: true,
            again: false,
            payload: None,
            sent_at: None,
        });
    }

    /// Forgets entries drop-oldest removed from the log. Returns how many were not stored.
    fn prune_dropped(&mut self) -> usize {
        let oldest = self.wal.oldest();
        let mut lost = 0;
        while self.entries.front().is_some_and(|e| e.start < oldest) {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            let id = self.first_id;
            self.first_id += 1;
            if let Some(p) = &e.payload {
                self.cached_bytes -= p.len();
            }
            if !e.acked {
                lost += 1;
                self.unacked -= 1;
                if let Some(d) = self.devices.get_mut(e.device as usize)
                    && d.unacked.front() == Some(&id)
                {
                    d.unacked.pop_front();
                }
            }
        }
        self.cursor = self.cursor.max(self.first_id);
        self.again.retain(|&id| id >= self.first_id);
        if lost > 0 {
            tracing::warn!(
                lost,
                "outbox full: the oldest batches were dropped before storage had them"
            );
        }
        lost
    }

    /// Releases the stored prefix of the log.
    fn trim(&mut self) -> Result<(), WalError> {
        let mut released = 0u64;
        while self.entries.front().is_some_and(|e| e.acked) {
            self.entries.pop_front();
            self.first_id += 1;
            released += 1;
        }
        if released == 0 {
            return Ok(());
        }
        self.cursor = self.cursor.max(self.first_id);
        self.again.retain(|&id| id >= self.first_id);
        let next = self
            .entries
            .front()
            .map_or_else(|| self.wal.end(), |e| e.start);
        self.uncommitted += released;
        self.commit_to = Some(next);
        if next.segment > self.wal.oldest().segment || self.last_commit.elapsed() >= COMMIT_EVERY {
            self.commit()?;
        }
        Ok(())
    }

    /// Writes the checkpoint for everything released so far (and frees finished segments).
    pub fn commit(&mut self) -> Result<(), WalError> {
        if let Some(next) = self.commit_to.take() {
            self.wal.commit_many(next, self.uncommitted)?;
            self.uncommitted = 0;
            self.last_commit = Instant::now();
        }
        Ok(())
    }

    /// Names of the devices with batches held, and how many each.
    pub fn held(&self) -> Vec<(String, usize)> {
        self.devices
            .iter()
            .filter(|d| !d.unacked.is_empty())
            .map(|d| (d.name.clone(), d.unacked.len()))
            .collect()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Err(error) = self.commit() {
            tracing::warn!(%error, "cannot write the outbox checkpoint; stored batches will be sent again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_bytes: u64) -> OutboxSettings {
        OutboxSettings {
            max_bytes,
            fsync: Fsync::Os,
            when_full: WhenFull::DropOldest,
            memory_bytes: 1 << 20,
        }
    }

    fn batch(device: &str, sequence: u64) -> Encoded {
        Encoded::new(&v1::SampleBatch {
            line: "l".into(),
            device: device.into(),
            adapter_id: "a".into(),
            sequence,
            samples: vec![v1::Sample {
                tag: "t".into(),
                timestamp_ns: sequence as i64,
                ..Default::default()
            }],
            previous_sequence: 0,
        })
    }

    fn drain(outbox: &mut Outbox) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Some(o) = outbox.next_to_send().expect("next") {
            let b = v1::SampleBatch::decode(o.payload.as_slice()).expect("decodes");
            outbox.sent(&o, Instant::now());
            out.push((b.sequence, b.previous_sequence));
        }
        out
    }

    #[test]
    fn batches_name_the_predecessor_still_held_and_leave_when_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, _) = Outbox::open(dir.path(), &settings(1 << 20)).expect("open");
        outbox
            .append(&[batch("a", 10), batch("b", 5), batch("a", 11)])
            .expect("append");
        assert_eq!(drain(&mut outbox), vec![(10, 0), (5, 0), (11, 10)]);
        assert_eq!(outbox.acknowledge("a", 10).expect("ack"), 1);
        assert_eq!(outbox.pending(), 2);
        // After a new session everything not stored goes again; 11's predecessor is stored,
        // so it names none.
        outbox.resend_all();
        assert_eq!(drain(&mut outbox), vec![(5, 0), (11, 0)]);
        assert_eq!(outbox.acknowledge("b", 5).expect("ack"), 1);
        assert_eq!(outbox.acknowledge("a", 11).expect("ack"), 1);
        assert_eq!(outbox.pending(), 0);
        assert!(drain(&mut outbox).is_empty());
    }

    #[test]
    fn a_gap_resends_only_that_devices_batches_after_the_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, _) = Outbox::open(dir.path(), &settings(1 << 20)).expect("open");
        outbox
            .append(&[batch("a", 1), batch("b", 1), batch("a", 2), batch("a", 3)])
            .expect("append");
        drain(&mut outbox);
        outbox.acknowledge("a", 1).expect("ack");
        assert_eq!(outbox.resend_device("a", 1), 2);
        // Queued twice, sent once.
        assert_eq!(outbox.resend_device("a", 1), 0);
        assert_eq!(drain(&mut outbox), vec![(2, 0), (3, 2)]);
        // After a silence only the oldest of each device goes again.
        assert_eq!(outbox.resend_oldest(), 2);
        assert_eq!(drain(&mut outbox), vec![(2, 0), (1, 0)]);
    }

    #[test]
    fn what_is_not_stored_survives_a_restart_and_goes_again_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut outbox, _) = Outbox::open(dir.path(), &settings(1 << 20)).expect("open");
            outbox
                .append(&[batch("a", 1), batch("a", 2), batch("b", 7), batch("a", 3)])
                .expect("append");
            drain(&mut outbox);
            outbox.acknowledge("a", 1).expect("ack");
        }
        let (mut outbox, recovered) = Outbox::open(dir.path(), &settings(1 << 20)).expect("open");
        assert_eq!(recovered.batches, 3);
        assert_eq!(outbox.pending(), 3);
        assert_eq!(drain(&mut outbox), vec![(2, 0), (7, 0), (3, 2)]);
        // A watermark heard again after the restart releases what it covers.
        outbox.acknowledge("a", 3).expect("ack");
        outbox.acknowledge("b", 7).expect("ack");
        drop(outbox);
        let (outbox, recovered) = Outbox::open(dir.path(), &settings(1 << 20)).expect("open");
        assert_eq!((recovered.batches, outbox.pending()), (0, 0));
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_the_survivors_wait_for_nothing_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 64 KiB segments: each batch of ~50 KiB fills one.
        let (mut outbox, _) = Outbox::open(dir.path(), &settings(200 * 1024)).expect("open");
        let big = |sequence: u64| {
            Encoded::new(&v1::SampleBatch {
                line: "l".into(),
                device: "a".into(),
                adapter_id: "x".repeat(50 * 1024),
                sequence,
                ..Default::default()
            })
        };
        let mut dropped = 0;
        for sequence in 1..=8 {
            dropped += outbox.append(&[big(sequence)]).expect("append").dropped;
        }
        assert!(dropped > 0, "the bound was reached");
        assert_eq!(
            outbox.pending() + dropped,
            8,
            "every batch is held or counted"
        );
        assert!(outbox.used_bytes() <= 200 * 1024);
        let first = outbox.next_to_send().expect("next").expect("a batch");
        let mut payload = first.payload.as_slice();
        // The oldest survivor's predecessor was dropped: it names none.
        let decoded = v1::SampleBatch::decode(&mut payload).expect("decodes");
        assert_eq!(decoded.previous_sequence, 0);
        assert_eq!(decoded.sequence, 1 + dropped as u64);
    }

    #[test]
    fn batches_beyond_the_memory_budget_are_read_back_from_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = settings(1 << 20);
        s.memory_bytes = 0;
        let (mut outbox, _) = Outbox::open(dir.path(), &s).expect("open");
        outbox
            .append(&[batch("a", 1), batch("a", 2)])
            .expect("append");
        assert_eq!(drain(&mut outbox), vec![(1, 0), (2, 1)]);
    }
}
