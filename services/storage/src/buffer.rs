//! The write-ahead buffer as the storage service uses it: appends that wait for room
//! (backpressure) or make it (drop-oldest), and a replayer that drains the buffer into the
//! backends in order once they are back.
//!
//! Each record is one request: its batch and its plant records ([`Entry`]). Records written
//! by versions that buffered a bare `SampleBatch` are read as that batch.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use fieldline_core::{
    SampleBatch,
    config::{BatchConfig, BufferConfig, FsyncPolicy, WhenFull},
};
use fieldline_proto::v1;
use fieldline_runtime::CancellationToken;
use fieldline_wal::{Fsync, Wal, WalError};
use prost::Message;
use tokio::sync::Notify;

use crate::{
    Backends,
    events::PlantRecords,
    metrics::StorageMetrics,
    service::{write_records_with_retry, write_with_retry},
};

/// One buffered request as it is kept on disk. Its field numbers lie above those of
/// `SampleBatch` (1 to 6), so a bare batch from an earlier version decodes as an empty entry.
#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(message, optional, tag = "15")]
    batch: Option<v1::SampleBatch>,
    #[prost(message, optional, tag = "16")]
    records: Option<v1::PlantRecords>,
}

/// An [`Entry`] read for its records only: the batch's bytes are skipped, not decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct RecordsOnly {
    #[prost(message, optional, tag = "16")]
    records: Option<v1::PlantRecords>,
}

/// The buffer record of one request.
pub fn entry(batch: Option<v1::SampleBatch>, records: Option<v1::PlantRecords>) -> Vec<u8> {
    Entry { batch, records }.encode_to_vec()
}

/// A buffer record as its batch and records; a bare batch of an earlier version too.
fn decode(payload: &[u8]) -> Result<Entry, prost::DecodeError> {
    let entry = Entry::decode(payload)?;
    if entry.batch.is_none() && entry.records.is_none() {
        return Ok(Entry {
            batch: Some(v1::SampleBatch::decode(payload)?),
            records: None,
        });
    }
    Ok(entry)
}

pub struct Buffer {
    wal: Arc<Mutex<Wal>>,
    /// Wakes the replayer when something was appended.
    appended: Notify,
    /// Wakes appenders waiting for room when something was replayed.
    room: Notify,
    /// False from a failed direct write until the buffer has drained again.
    healthy: AtomicBool,
    metrics: StorageMetrics,
    /// Most buffered bytes replayed in one backend write (about `max_points` samples).
    replay_bytes: usize,
}

/// Encoded size of a sample, roughly, to size replay writes like live ones.
const BYTES_PER_SAMPLE: usize = 40;

impl Buffer {
    /// Opens the buffer, repairing a torn tail; batches left from before are replayed first.
    pub fn open(
        config: &BufferConfig,
        batch: &BatchConfig,
        metrics: StorageMetrics,
    ) -> Result<Self, WalError> {
        let fsync = match config.fsync {
            FsyncPolicy::Always => Fsync::Always,
            FsyncPolicy::Os => Fsync::Os,
        };
        let when_full = match config.when_full {
            WhenFull::Backpressure => fieldline_wal::WhenFull::Backpressure,
            WhenFull::DropOldest => fieldline_wal::WhenFull::DropOldest,
        };
        let (wal, report) = Wal::open(&config.dir, config.max_size.0, fsync, when_full)?;
        if report.pending > 0 || report.cut_bytes > 0 {
            tracing::info!(dir = %config.dir.display(), pending = report.pending, cut_bytes = report.cut_bytes, "write-ahead buffer opened with batches to replay");
        }
        let buffer = Self {
            wal: Arc::new(Mutex::new(wal)),
            appended: Notify::new(),
            room: Notify::new(),
            healthy: AtomicBool::new(report.pending == 0),
            metrics,
            replay_bytes: batch.max_points.saturating_mul(BYTES_PER_SAMPLE),
        };
        buffer.update_gauges();
        if report.pending > 0 {
            buffer.appended.notify_one();
        }
        Ok(buffer)
    }

    /// True when writes may go straight to the backends: nothing is waiting in the buffer
    /// (so nothing can be overtaken) and the last direct write worked.
    pub fn direct(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && self.lock().is_empty()
    }

    /// A direct write failed: buffer from now on until the buffer has drained.
    pub fn backend_down(&self) {
        self.healthy.store(false, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wal> {
        // A panic while appending cannot leave the file inconsistent (a torn record is cut
        // at the next open), so a poisoned lock is taken over.
        self.wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update_gauges(&self) {
        let wal = self.lock();
        self.metrics
            .buffer_pending
            .set(i64::try_from(wal.pending()).unwrap_or(i64::MAX));
        self.metrics
            .buffer_bytes
            .set(i64::try_from(wal.used_bytes()).unwrap_or(i64::MAX));
    }

    /// Appends encoded batches; returns once they are durable. While the buffer is full
    /// (with backpressure) it waits for the replayer to make room; `None` when stopped first.
    pub async fn append(
        &self,
        payloads: Vec<Vec<u8>>,
        stop: &CancellationToken,
    ) -> Option<Result<(), WalError>> {
        let max_bytes = self.lock().max_bytes();
        // Parts small enough to fit a buffer that is partly full, each appended whole.
        let mut parts: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut part_bytes = 0u64;
        for payload in payloads {
            let size = payload.len() as u64 + fieldline_wal::HEADER;
            if part_bytes + size > max_bytes / 4 && parts.last().is_some_and(|p| !p.is_empty()) {
                parts.push(Vec::new());
                part_bytes = 0;
            }
            part_bytes += size;
            if let Some(part) = parts.last_mut() {
                part.push(payload);
            }
        }
        for part in parts {
            match self.append_part(Arc::new(part), stop).await? {
                Ok(()) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(()))
    }

    async fn append_part(
        &self,
        part: Arc<Vec<Vec<u8>>>,
        stop: &CancellationToken,
    ) -> Option<Result<(), WalError>> {
        loop {
            let wal = self.wal.clone();
            let records = part.clone();
            let appended = tokio::task::spawn_blocking(move || {
                let mut wal = wal
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let before = wal.dropped;
                let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
                wal.append_many(&slices).map(|_| wal.dropped - before)
            })
            .await;
            match appended {
                Ok(Ok(dropped)) => {
                    if dropped > 0 {
                        self.metrics.buffer_dropped.inc_by(dropped);
                    }
                    self.update_gauges();
                    self.appended.notify_one();
                    return Some(Ok(()));
                }
                Ok(Err(WalError::Full { .. })) => {
                    self.metrics.buffer_full_waits.inc();
                    tokio::select! {
                        _ = self.room.notified() => {}
                        _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                        _ = stop.cancelled() => return None,
                    }
                }
                Ok(Err(e)) => return Some(Err(e)),
                Err(join) => {
                    return Some(Err(WalError::Io {
                        path: "buffer".into(),
                        source: std::io::Error::other(join.to_string()),
                    }));
                }
            }
        }
    }

    /// The plant records still in the buffer, oldest first, for a processor that resumes
    /// before they reached the database. Reads one record at a time, so appends and the
    /// replayer go on meanwhile; what the replayer consumed meanwhile is in the database.
    pub async fn pending_records(self: &Arc<Self>) -> Result<Vec<v1::PlantRecords>, WalError> {
        let wal = self.wal.clone();
        let scan = tokio::task::spawn_blocking(move || {
            let lock = || {
                wal.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            let mut found = Vec::new();
            let (mut at, end) = {
                let wal = lock();
                (wal.oldest(), wal.end())
            };
            while at < end {
                let next = {
                    let wal = lock();
                    at = at.max(wal.oldest());
                    match wal.read_at(at)? {
                        Some(read) => Some(read),
                        None => {
                            // End of a segment: the next one, if any.
                            match wal.next_segment(at) {
                                Some(next) => {
                                    at = next;
                                    continue;
                                }
                                None => None,
                            }
                        }
                    }
                };
                let Some((payload, after)) = next else { break };
                at = after;
                if let Ok(RecordsOnly {
                    records: Some(records),
                }) = RecordsOnly::decode(payload.as_slice())
                {
                    found.push(records);
                }
            }
            Ok(found)
        })
        .await;
        scan.unwrap_or_else(|join| {
            Err(WalError::Io {
                path: "buffer".into(),
                source: std::io::Error::other(join.to_string()),
            })
        })
    }

    /// Drains the buffer into `sinks`, in order, until `stop`. Records are replayed in
    /// groups as large as live writes, and removed only after every sink took them (or
    /// refused them for good).
    pub async fn replay(self: Arc<Self>, backends: Backends, stop: CancellationToken) {
        let Some(sinks) = backends.wait(&stop).await else {
            return;
        };
        loop {
            let wal = self.wal.clone();
            let replay_bytes = self.replay_bytes;
            let next = tokio::task::spawn_blocking(move || {
                wal.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .peek_many(usize::MAX, replay_bytes)
            })
            .await;
            let (payloads, position) = match next {
                Ok(Ok((records, _))) if records.is_empty() => {
                    self.healthy.store(true, Ordering::Release);
                    tokio::select! {
                        _ = self.appended.notified() => continue,
                        _ = stop.cancelled() => return,
                    }
                }
                Ok(Ok(records)) => records,
                Ok(Err(error)) => {
                    tracing::error!(%error, "cannot read the write-ahead buffer; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
                Err(_) => return,
            };
            let records = payloads.len() as u64;
            let mut batches = Vec::with_capacity(payloads.len());
            let mut plant = Vec::new();
            for payload in payloads {
                // Only valid requests are buffered; a record that fails to decode passed its
                // checksum, so it was written by an incompatible version: skip it, loudly.
                let entry = match decode(&payload) {
                    Ok(entry) => entry,
                    Err(error) => {
                        tracing::error!(%error, "skipping a buffered record that does not decode");
                        continue;
                    }
                };
                if let Some(wire) = entry.batch {
                    match SampleBatch::try_from(wire) {
                        Ok(batch) => batches.push(batch),
                        Err(error) => {
                            tracing::error!(%error, "skipping a buffered record that is not a valid batch")
                        }
                    }
                }
                if let Some(wire) = entry.records {
                    match PlantRecords::from_wire(wire) {
                        Ok(rows) => plant.push(rows),
                        Err(error) => {
                            tracing::error!(%error, "skipping buffered plant records that are not valid")
                        }
                    }
                }
            }
            if !batches.is_empty() {
                for sink in sinks.iter() {
                    if write_with_retry(sink, &self.metrics, &batches, &stop)
                        .await
                        .is_none()
                    {
                        return;
                    }
                }
                self.metrics.buffer_replayed.inc_by(batches.len() as u64);
            }
            if !plant.is_empty() {
                match backends.events() {
                    Some(events) => {
                        let rows: Vec<&PlantRecords> = plant.iter().collect();
                        if write_records_with_retry(&events, &self.metrics, &rows, &stop)
                            .await
                            .is_none()
                        {
                            return;
                        }
                    }
                    None => tracing::error!(
                        sets = plant.len(),
                        "buffered plant records dropped: storage has no SQL database now"
                    ),
                }
            }
            let wal = self.wal.clone();
            let committed = tokio::task::spawn_blocking(move || {
                wal.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .commit_many(position, records)
            })
            .await;
            if let Ok(Err(error)) = committed {
                tracing::error!(%error, "cannot record replay progress; the batches may be replayed again");
            }
            self.update_gauges();
            self.room.notify_waiters();
        }
    }
}
