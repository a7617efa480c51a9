//! Fieldline's write-ahead log: where a stage keeps records, durably, until the next stage
//! has them. The storage service buffers batches in it while a backend is down; the adapter
//! keeps every batch in it (its outbox) until storage has acknowledged it.
//!
//! Records are appended to segment files as `[length u32 LE][crc32 u32 LE][payload]`. A
//! checkpoint file names the first record not yet consumed; reading starts there, in order,
//! and the checkpoint moves only when the caller commits, so a crash re-reads some records
//! and never skips one. At open, each segment is scanned: a torn or corrupt tail (a crash
//! mid-write, a damaged disk) is cut with a log line saying how much was lost. An append that
//! fails part-way (a full disk) is cut back at once, so what is appended after it stays
//! readable. A length read from a file is checked against the segment before anything is
//! allocated for it. The log is bounded in bytes; when full it either refuses the append (the
//! caller applies backpressure) or drops its oldest segment and counts the records dropped.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

/// Bytes of a record header: length and checksum.
pub const HEADER: u64 = 8;
/// Largest payload accepted; anything longer in a file is corruption.
const MAX_RECORD: u32 = 64 * 1024 * 1024;

/// When appended records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// fsync before every append returns: survives power loss.
    Always,
    /// Leave flushing to the operating system: survives a crash of the process, not of the
    /// machine.
    Os,
}

/// What to do when an append would exceed the size bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse the append; the caller waits and retries (nothing is lost).
    Backpressure,
    /// Drop the oldest segment to make room, counting what was dropped.
    DropOldest,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead buffer {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write-ahead buffer is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    #[error("a record of {0} bytes is larger than the buffer allows")]
    TooLarge(usize),
    #[error("write-ahead buffer {path}: corrupt record at byte {offset}")]
    Corrupt { path: PathBuf, offset: u64 },
}

impl WalError {
    /// The `kind` label of this error in `errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            WalError::Io { .. } => "buffer_io",
            WalError::Full { .. } => "buffer_full",
            WalError::TooLarge(_) => "buffer_too_large",
            WalError::Corrupt { .. } => "buffer_corrupt",
        }
    }
}

/// Where a record starts: segment id and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    len: u64,
    records: u64,
}

/// What opening found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records waiting to be replayed.
    pub pending: u64,
    /// Bytes cut from torn or corrupt segment ends.
    pub cut_bytes: u64,
}

/// A write-ahead buffer in one folder.
pub struct Wal {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    fsync: Fsync,
    when_full: WhenFull,
    segments: VecDeque<Segment>,
    writer: File,
    read: Position,
    /// Records between the checkpoint and the end.
    pending: u64,
    /// Records dropped because the buffer was full (drop-oldest).
    pub dropped: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

impl Wal {
    /// Opens (or creates) the buffer in `dir`, repairing a torn or corrupt tail.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        fsync: Fsync,
        when_full: WhenFull,
    ) -> Result<(Self, OpenReport), WalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".wal")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let checkpoint = read_checkpoint(dir);
        let mut report = OpenReport::default();
        let mut segments = VecDeque::new();
        for id in ids {
            let path = segment_path(dir, id);
            let (valid, records) = scan(&path)?;
            let actual = std::fs::metadata(&path).map_err(io(&path))?.len();
            if valid < actual {
                tracing::warn!(segment = %path.display(), kept = valid, cut = actual - valid, "cutting a torn or corrupt end of the write-ahead buffer");
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                file.set_len(valid).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
                report.cut_bytes += actual - valid;
            }
            segments.push_back(Segment {
                id,
                len: valid,
                records,
            });
        }
        // Segments wholly before the checkpoint were replayed already.
        let read = checkpoint.unwrap_or(Position {
            segment: segments.front().map_or(0, |s| s.id),
            offset: 0,
        });
        while segments.front().is_some_and(|s| s.id < read.segment) {
            if let Some(s) = segments.pop_front() {
                let _ = std::fs::remove_file(segment_path(dir, s.id));
            }
        }
        if segments.is_empty() {
            segments.push_back(Segment {
                id: read.segment.max(1),
                len: 0,
                records: 0,
            });
        }
        let read = if segments.front().is_some_and(|s| s.id == read.segment) {
            read
        } else {
            Position {
                segment: segments.front().map_or(1, |s| s.id),
                offset: 0,
            }
        };
        let last = segments.back().map_or(1, |s| s.id);
        let path = segment_path(dir, last);
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        writer.seek(SeekFrom::End(0)).map_err(io(&path))?;
        let segment_bytes = (max_bytes / 8).clamp(64 * 1024, 16 * 1024 * 1024);
        let mut wal = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            fsync,
            when_full,
            segments,
            writer,
            read,
            pending: 0,
            dropped: 0,
        };
        wal.pending = wal.count_pending()?;
        report.pending = wal.pending;
        Ok((wal, report))
    }

    /// Records waiting to be replayed.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Bytes held on disk.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn used_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Appends one record; it is durable (per the fsync policy) when this returns. Returns
    /// where it starts.
    pub fn append(&mut self, payload: &[u8]) -> Result<Position, WalError> {
        let starts = self.append_many(&[payload])?;
        Ok(starts[0])
    }

    /// Appends records with one fsync; they are durable (per the fsync policy) when this
    /// returns. Room is made (or refused) for all of them before any is written. Returns
    /// where each starts.
    pub fn append_many(&mut self, payloads: &[&[u8]]) -> Result<Vec<Position>, WalError> {
        let mut size = 0u64;
        for payload in payloads {
            if payload.len() > MAX_RECORD as usize {
                return Err(WalError::TooLarge(payload.len()));
            }
            size += HEADER + payload.len() as u64;
        }
        if size > self.max_bytes {
            return Err(WalError::TooLarge(size as usize));
        }
        while self.used_bytes() + size > self.max_bytes {
            match self.when_full {
                WhenFull::Backpressure => {
                    return Err(WalError::Full {
                        used: self.used_bytes(),
                        max: self.max_bytes,
                    });
                }
                WhenFull::DropOldest => {
                    if !self.drop_oldest()? {
                        return Err(WalError::Full {
                            used: self.used_bytes(),
                            max: self.max_bytes,
                        });
                    }
                }
            }
        }
        let mut starts = Vec::with_capacity(payloads.len());
        // Records go to the file in one write per segment: (start of the pending bytes, the
        // bytes, how many records they hold).
        let mut pending: Vec<u8> = Vec::with_capacity(size as usize);
        let mut pending_records = 0u64;
        for payload in payloads {
            let size = HEADER + payload.len() as u64;
            let current = self.segments.back().map_or(0, |s| s.len) + pending.len() as u64;
            if current > 0 && current + size > self.segment_bytes {
                self.write_pending(&mut pending, &mut pending_records)?;
                self.sync()?;
                self.rotate()?;
            }
            starts.push(Position {
                segment: self.segments.back().map_or(1, |s| s.id),
                offset: self.segments.back().map_or(0, |s| s.len) + pending.len() as u64,
            });
            pending.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            pending.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            pending.extend_from_slice(payload);
            pending_records += 1;
        }
        self.write_pending(&mut pending, &mut pending_records)?;
        self.sync()?;
        Ok(starts)
    }

    /// Writes records gathered for the current segment. When the write fails part-way (a full
    /// disk), what reached the file is cut again, so the next append does not follow garbage
    /// and hide itself from every later reader; none of these records counts as appended.
    fn write_pending(&mut self, pending: &mut Vec<u8>, records: &mut u64) -> Result<(), WalError> {
        if pending.is_empty() {
            return Ok(());
        }
        let start = self.end();
        let path = self.current_path();
        if let Err(error) = self.writer.write_all(pending) {
            let _ = self.writer.set_len(start.offset);
            let _ = self.writer.seek(SeekFrom::End(0));
            pending.clear();
            *records = 0;
            return Err(io(&path)(error));
        }
        if let Some(s) = self.segments.back_mut() {
            s.len += pending.len() as u64;
            s.records += *records;
        }
        self.pending += *records;
        pending.clear();
        *records = 0;
        Ok(())
    }

    /// Where the next record will be appended.
    pub fn end(&self) -> Position {
        self.segments.back().map_or(
            Position {
                segment: 1,
                offset: 0,
            },
            |s| Position {
                segment: s.id,
                offset: s.len,
            },
        )
    }

    /// Where the oldest record still held starts (records before it were consumed or
    /// dropped).
    pub fn oldest(&self) -> Position {
        self.read
    }

    fn sync(&mut self) -> Result<(), WalError> {
        if self.fsync == Fsync::Always {
            let path = self.current_path();
            self.writer.sync_data().map_err(io(&path))?;
        }
        Ok(())
    }

    /// Up to `max_records` records to replay, at most about `max_bytes` of payload (always at
    /// least one), and the position after the last, without consuming them.
    pub fn peek_many(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, Position), WalError> {
        let saved = self.read;
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut next = saved;
        while records.len() < max_records.max(1) && (records.is_empty() || bytes < max_bytes) {
            match self.peek()? {
                Some((payload, after)) => {
                    bytes += payload.len();
                    records.push(payload);
                    next = after;
                    self.read = after;
                }
                None => break,
            }
        }
        // Nothing is consumed until commit; only an advance past finished segments stays.
        if records.is_empty() {
            next = self.read;
        } else {
            self.read = saved;
        }
        Ok((records, next))
    }

    /// The next record to replay and the position after it, without consuming it.
    pub fn peek(&mut self) -> Result<Option<(Vec<u8>, Position)>, WalError> {
        loop {
            let Some(segment) = self.segments.iter().find(|s| s.id == self.read.segment) else {
                return Ok(None);
            };
            if self.read.offset < segment.len {
                return self.read_at(self.read);
            }
            // End of this segment: move to the next one, if there is one.
            match self.segments.iter().find(|s| s.id > self.read.segment) {
                Some(next) => {
                    self.read = Position {
                        segment: next.id,
                        offset: 0,
                    }
                }
                None => return Ok(None),
            }
        }
    }

    /// The record that starts at `at` and the position after it; `None` when `at` is at the
    /// end of its segment or in a segment that is gone (consumed or dropped).
    pub fn read_at(&self, at: Position) -> Result<Option<(Vec<u8>, Position)>, WalError> {
        let Some(segment) = self.segments.iter().find(|s| s.id == at.segment) else {
            return Ok(None);
        };
        if at.offset >= segment.len {
            return Ok(None);
        }
        let path = segment_path(&self.dir, segment.id);
        let corrupt = || WalError::Corrupt {
            path: path.clone(),
            offset: at.offset,
        };
        let mut file = File::open(&path).map_err(io(&path))?;
        file.seek(SeekFrom::Start(at.offset)).map_err(io(&path))?;
        let mut header = [0u8; HEADER as usize];
        file.read_exact(&mut header).map_err(io(&path))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // The length comes from disk: it must fit the segment before it sizes an allocation.
        let next = at.offset + HEADER + u64::from(len);
        if len > MAX_RECORD || next > segment.len {
            return Err(corrupt());
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact(&mut payload).map_err(io(&path))?;
        if crc32fast::hash(&payload) != crc {
            return Err(corrupt());
        }
        Ok(Some((
            payload,
            Position {
                segment: segment.id,
                offset: next,
            },
        )))
    }

    /// Where the segment after the one holding `at` starts, if there is one.
    pub fn next_segment(&self, at: Position) -> Option<Position> {
        self.segments
            .iter()
            .find(|s| s.id > at.segment)
            .map(|s| Position {
                segment: s.id,
                offset: 0,
            })
    }

    /// Marks everything before `next` as replayed, persists the checkpoint and deletes
    /// segments that are done.
    pub fn commit(&mut self, next: Position) -> Result<(), WalError> {
        self.commit_many(next, 1)
    }

    /// Marks `records` records, ending before `next`, as replayed.
    ///
    /// A commit that arrives after drop-oldest moved past `next` (the records were read,
    /// then dropped to make room, then reported done) changes nothing: they are already
    /// gone, and counted.
    pub fn commit_many(&mut self, next: Position, records: u64) -> Result<(), WalError> {
        if next < self.read {
            return Ok(());
        }
        self.read = next;
        self.pending = self.pending.saturating_sub(records);
        write_checkpoint(&self.dir, next, self.fsync)?;
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.id < next.segment)
        {
            if let Some(s) = self.segments.pop_front() {
                let path = segment_path(&self.dir, s.id);
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        segment_path(&self.dir, self.segments.back().map_or(1, |s| s.id))
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        let id = self.segments.back().map_or(1, |s| s.id + 1);
        let path = segment_path(&self.dir, id);
        self.writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        if self.fsync == Fsync::Always {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        self.segments.push_back(Segment {
            id,
            len: 0,
            records: 0,
        });
        Ok(())
    }

    /// Drops the oldest segment that is not being written; false when there is none.
    fn drop_oldest(&mut self) -> Result<bool, WalError> {
        if self.segments.len() < 2 {
            // Everything is in the segment being written: start a new one so the old can go.
            if self.segments.back().is_some_and(|s| s.len > 0) {
                self.rotate()?;
            } else {
                return Ok(false);
            }
        }
        let Some(oldest) = self.segments.pop_front() else {
            return Ok(false);
        };
        let unreplayed = if oldest.id == self.read.segment {
            // Records after the read position in this segment are lost.
            let (_, before) = scan_until(&segment_path(&self.dir, oldest.id), self.read.offset)?;
            oldest.records.saturating_sub(before)
        } else if oldest.id > self.read.segment {
            oldest.records
        } else {
            0
        };
        let path = segment_path(&self.dir, oldest.id);
        std::fs::remove_file(&path).map_err(io(&path))?;
        self.dropped += unreplayed;
        self.pending = self.pending.saturating_sub(unreplayed);
        let next = self.segments.front().map_or(oldest.id + 1, |s| s.id);
        if self.read.segment <= oldest.id {
            self.read = Position {
                segment: next,
                offset: 0,
            };
            write_checkpoint(&self.dir, self.read, self.fsync)?;
        }
        tracing::warn!(
            records = unreplayed,
            "write-ahead buffer full: dropped its oldest records"
        );
        Ok(true)
    }

    fn count_pending(&self) -> Result<u64, WalError> {
        let mut n = 0;
        for s in &self.segments {
            if s.id < self.read.segment {
                continue;
            }
            if s.id == self.read.segment {
                let (_, before) = scan_until(&segment_path(&self.dir, s.id), self.read.offset)?;
                n += s.records.saturating_sub(before);
            } else {
                n += s.records;
            }
        }
        Ok(n)
    }
}

/// Scans a segment: the length of its valid prefix and how many records it holds.
fn scan(path: &Path) -> Result<(u64, u64), WalError> {
    scan_until(path, u64::MAX)
}

/// Scans valid records up to `limit` bytes: (valid length, records).
fn scan_until(path: &Path, limit: u64) -> Result<(u64, u64), WalError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(io(path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io(path)(e)),
    }
    let (mut at, mut records) = (0usize, 0u64);
    while (at as u64) < limit && at + HEADER as usize <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + HEADER as usize;
        let Some(end) = start
            .checked_add(len as usize)
            .filter(|e| len <= MAX_RECORD && *e <= bytes.len())
        else {
            break;
        };
        if crc32fast::hash(&bytes[start..end]) != crc {
            break;
        }
        at = end;
        records += 1;
    }
    Ok((at as u64, records))
}

fn read_checkpoint(dir: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(dir.join("checkpoint")).ok()?;
    let (segment, offset) = text.trim().split_once(':')?;
    Some(Position {
        segment: segment.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

fn write_checkpoint(dir: &Path, at: Position, fsync: Fsync) -> Result<(), WalError> {
    let tmp = dir.join("checkpoint.tmp");
    let path = dir.join("checkpoint");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    writeln!(f, "{}:{}", at.segment, at.offset).map_err(io(&tmp))?;
    if fsync == Fsync::Always {
        f.sync_data().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max: u64, when_full: WhenFull) -> (Wal, OpenReport) {
        Wal::open(dir, max, Fsync::Always, when_full).unwrap()
    }

    fn drain(wal: &mut Wal) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((payload, next)) = wal.peek().unwrap() {
            out.push(payload);
            wal.commit(next).unwrap();
        }
        out
    }

    #[test]
    fn replays_in_order_and_remembers_progress_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, report) = open(dir.path(), 1 << 20, WhenFull::Backpressure);
        assert_eq!(report, OpenReport::default());
        for i in 0..5u8 {
            wal.append(&[i; 10]).unwrap();
        }
        let (first, next) = wal.peek().unwrap().unwrap();
        assert_eq!(first, vec![0; 10]);
        wal.commit(next).unwrap();
        drop(wal);
        let (mut wal, report) = open(dir.path(), 1 << 20, WhenFull::Backpressure);
        assert_eq!(
            report.pending, 4,
            "the replayed record is not replayed again"
        );
        assert_eq!(
            drain(&mut wal),
            (1..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>()
        );
        assert!(wal.is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 1 << 20, WhenFull::Backpressure);
        wal.append(b"first").unwrap();
        wal.append(b"second").unwrap();
        drop(wal);
        // A crash in the middle of a third append leaves half a record.
        let path = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, b'x']).unwrap();
        drop(f);
        let (mut wal, report) = open(dir.path(), 1 << 20, WhenFull::Backpressure);
        assert_eq!(
            report,
            OpenReport {
                pending: 2,
                cut_bytes: 9
            }
        );
        wal.append(b"third").unwrap();
        assert_eq!(
            drain(&mut wal),
            vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );
    }

    #[test]
    fn a_corrupt_record_ends_the_valid_part() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 1 << 20, WhenFull::Backpressure);
        wal.append(b"good").unwrap();
        wal.append(b"flipped").unwrap();
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        let (mut wal, report) = open(dir.path(), 1 << 20, WhenFull::Backpressure);
        assert_eq!(report.pending, 1);
        assert_eq!(report.cut_bytes, HEADER + 7);
        assert_eq!(drain(&mut wal), vec![b"good".to_vec()]);
    }

    #[test]
    fn a_full_buffer_refuses_or_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB segments and 192 KiB in all: room for three segments of 10 KiB records.
        let max = 3 * 64 * 1024;
        let (mut wal, _) = open(dir.path(), max, WhenFull::Backpressure);
        let record = vec![7u8; 10 * 1024];
        let mut accepted = 0;
        while wal.append(&record).is_ok() {
            accepted += 1;
        }
        assert!(matches!(wal.append(&record), Err(WalError::Full { .. })));
        assert_eq!(wal.pending(), accepted);
        // Replaying frees room again.
        let (_, next) = wal.peek().unwrap().unwrap();
        wal.commit(next).unwrap();
        drop(wal);

        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), max, WhenFull::DropOldest);
        for i in 0..100u32 {
            let mut r = record.clone();
            r[..4].copy_from_slice(&i.to_le_bytes());
            wal.append(&r).unwrap();
        }
        assert!(wal.dropped > 0);
        assert_eq!(
            wal.pending() + wal.dropped,
            100,
            "every record is either kept or counted as dropped"
        );
        let kept = drain(&mut wal);
        let first = u32::from_le_bytes([kept[0][0], kept[0][1], kept[0][2], kept[0][3]]);
        assert_eq!(
            u64::from(first),
            wal.dropped,
            "the oldest were dropped, the rest kept in order"
        );
        assert!(wal.used_bytes() <= max);
    }

    #[test]
    fn records_are_read_again_where_they_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 1 << 20, WhenFull::Backpressure);
        let starts = wal
            .append_many(&[b"one".as_slice(), b"two", b"three"])
            .unwrap();
        let (two, after) = wal.read_at(starts[1]).unwrap().unwrap();
        assert_eq!(two, b"two");
        assert_eq!(after, starts[2]);
        assert_eq!(wal.read_at(wal.end()).unwrap(), None);
        // Reading out of order consumes nothing.
        assert_eq!(wal.pending(), 3);
    }

    #[test]
    fn a_corrupt_length_is_refused_before_it_sizes_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 1 << 20, WhenFull::Backpressure);
        let at = wal.append(b"record").unwrap();
        // The length on disk turns huge after open (a disk that rots under a running log).
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(wal.read_at(at), Err(WalError::Corrupt { .. })));
    }

    #[test]
    fn a_commit_after_drop_oldest_moved_past_it_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let max = 3 * 64 * 1024;
        let (mut wal, _) = open(dir.path(), max, WhenFull::DropOldest);
        let record = vec![1u8; 10 * 1024];
        wal.append(&record).unwrap();
        // A replayer reads the first record...
        let (_, next) = wal.peek().unwrap().unwrap();
        // ...appends then drop its segment to make room...
        while wal.dropped == 0 {
            wal.append(&record).unwrap();
        }
        let (pending, dropped) = (wal.pending(), wal.dropped);
        // ...and the replayer's late commit neither moves reading back nor counts twice.
        wal.commit(next).unwrap();
        assert_eq!((wal.pending(), wal.dropped), (pending, dropped));
        assert!(wal.oldest() > next);
        assert_eq!(drain(&mut wal).len() as u64, pending);
    }

    #[test]
    fn segments_roll_over_and_are_deleted_once_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 1 << 20, WhenFull::Backpressure);
        for _ in 0..40 {
            wal.append(&[1u8; 8 * 1024]).unwrap();
        }
        let files = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "wal")
                })
                .count()
        };
        assert!(files() > 2, "rolled over into several segments");
        assert_eq!(drain(&mut wal).len(), 40);
        assert_eq!(files(), 1, "replayed segments are deleted");
    }
}
