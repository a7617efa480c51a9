//! A disk that fills up in the middle of an append, on a real filesystem: a 256 KiB tmpfs
//! mounted for the test (the test runs as root, as the test command does).

use std::{path::Path, process::Command};

use fieldline_wal::{Fsync, Wal, WalError, WhenFull};

/// A small tmpfs, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the test needs root): {status}"
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn an_append_that_hits_a_full_disk_leaves_no_garbage_behind() {
    let disk = SmallDisk::mount("256k");
    let log = disk.path().join("log");
    let (mut wal, _) = Wal::open(&log, 1 << 30, Fsync::Always, WhenFull::Backpressure).unwrap();
    wal.append(b"before").unwrap();
    // Fill the disk but for a little, then append a record bigger than what is left: part of
    // it reaches the disk before the write fails.
    let filler = disk.path().join("filler");
    let free = 256 * 1024 - 3 * 4096 - 4096;
    std::fs::write(&filler, vec![0u8; free]).unwrap();
    let big = vec![7u8; 16 * 1024];
    let error = wal.append(&big).expect_err("the disk is full");
    assert!(
        matches!(&error, WalError::Io { source, .. } if source.raw_os_error() == Some(28)),
        "ENOSPC, got {error}"
    );
    // Room again: the next record follows the last good one, not the torn one.
    std::fs::remove_file(&filler).unwrap();
    wal.append(b"after").unwrap();
    drop(wal);
    let (mut wal, report) =
        Wal::open(&log, 1 << 30, Fsync::Always, WhenFull::Backpressure).unwrap();
    assert_eq!(report.cut_bytes, 0, "nothing torn was left to cut");
    let mut read = Vec::new();
    while let Some((payload, next)) = wal.peek().unwrap() {
        read.push(payload);
        wal.commit(next).unwrap();
    }
    assert_eq!(read, vec![b"before".to_vec(), b"after".to_vec()]);
}
