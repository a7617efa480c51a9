//! Per-device sequence numbers that only ever grow, across restarts.
//!
//! Writing a file per batch would cost an fsync per poll, so numbers are reserved in blocks:
//! the file holds the end of the current block, and after a restart numbering resumes above
//! it. Numbering also never starts below the current time in microseconds, so even an adapter
//! whose state folder was lost (a pod without a volume) continues above every number it used
//! before, as long as it published fewer than a million batches per second per device.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

/// Numbers reserved per file write.
const BLOCK: u64 = 10_000;

/// Failure to persist the reservation; the adapter must not publish unnumbered batches.
#[derive(Debug, thiserror::Error)]
#[error("sequence state {path}: {source}")]
pub struct SequenceError {
    path: PathBuf,
    source: std::io::Error,
}

/// The sequence of one device.
#[derive(Debug)]
pub struct Sequence {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
}

impl Sequence {
    /// Opens (or creates) the state for `device` under `dir`.
    pub fn open(dir: &Path, line: &str, device: &str, now_us: u64) -> Result<Self, SequenceError> {
        let path = dir.join(format!("{line}.{device}.seq"));
        let err = |source| SequenceError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let stored = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    tracing::warn!(path = %path.display(), "sequence state is unreadable; continuing from the clock");
                    0
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(e)),
        };
        let start = stored.max(now_us).max(1);
        let mut seq = Self {
            path,
            next: start,
            reserved_until: start,
        };
        seq.reserve()?;
        Ok(seq)
    }

    /// The next number, persisting a new block first when the current one is used up.
    pub fn take(&mut self) -> Result<u64, SequenceError> {
        if self.next >= self.reserved_until {
            self.reserve()?;
        }
        let n = self.next;
        self.next += 1;
        Ok(n)
    }

    fn reserve(&mut self) -> Result<(), SequenceError> {
        let until = self.next.saturating_add(BLOCK);
        let tmp = self.path.with_extension("seq.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{until}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|source| SequenceError {
            path: self.path.clone(),
            source,
        })?;
        self.reserved_until = until;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_growing_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sequence::open(dir.path(), "l", "d", 5).unwrap();
        let first: Vec<u64> = (0..3).map(|_| s.take().unwrap()).collect();
        assert_eq!(first, vec![5, 6, 7]);
        drop(s);
        // Same clock reading (or a clock that went backwards): still above what was used.
        let mut s = Sequence::open(dir.path(), "l", "d", 1).unwrap();
        assert!(s.take().unwrap() > 7);
    }

    #[test]
    fn crossing_a_block_reserves_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sequence::open(dir.path(), "l", "d", 1).unwrap();
        let mut last = 0;
        for _ in 0..(BLOCK + 5) {
            let n = s.take().unwrap();
            assert!(n > last);
            last = n;
        }
        let stored: u64 = std::fs::read_to_string(dir.path().join("l.d.seq"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(stored > last);
    }

    #[test]
    fn lost_or_corrupt_state_falls_back_to_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("l.d.seq"), "garbage").unwrap();
        let mut s = Sequence::open(dir.path(), "l", "d", 1_000_000).unwrap();
        assert_eq!(s.take().unwrap(), 1_000_000);
    }
}
