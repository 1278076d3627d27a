//! Small files the names layer writes (a new directory's IV file, a long name's sidecar) whose
//! fsync is deferred: the names in a directory need its IV on disk, but not before anything
//! in that directory could be.
//!
//! The guarantee kept: every such file is on disk before any fsync, fsyncdir, rename or link
//! through the mount returns (a durable entry never lands in a directory whose IV is not), at
//! unmount, and within [`FLUSH_EVERY`] otherwise (the daemon's flush thread). A crash before
//! that may lose the new directory's names, none of them fsynced, as a crash before fsync may
//! lose the new directory itself on any filesystem (docs/FORMAT.md, crash consistency).
//!
//! Syncing in batches, off the mkdir, keeps an `fsync` (one disk round trip, ~1 ms here) out of
//! every mkdir: untarring a tree of 2,000 directories spent 2.5 s in them.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::sys;

/// How often the daemon syncs what is pending without being asked.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Most files held unsynced (each holds a descriptor); the writer that would pass it syncs
/// them all itself.
const MOST_PENDING: usize = 512;

/// Files written but not yet synced (see the module doc).
#[derive(Default)]
pub struct Unsynced {
    pending: Mutex<Vec<File>>,
    /// Held for a whole flush, so a flush that finds nothing pending still waits for the
    /// files an earlier, concurrent flush took and is syncing.
    flushing: Mutex<()>,
    /// A sync failed where nobody was waiting (the flush thread): the next flush reports it.
    failed: AtomicBool,
}

impl Unsynced {
    /// Sync `file` before the next fsync through the mount returns.
    pub fn defer(&self, file: File) -> io::Result<()> {
        let full = {
            let mut pending = self.pending.lock();
            pending.push(file);
            pending.len() >= MOST_PENDING
        };
        if full { self.sync_pending() } else { Ok(()) }
    }

    /// Put every pending file on disk; the first error, after trying them all (each failure
    /// is logged: the names of that directory may not survive a crash). A failure no caller
    /// saw (`flush_unasked`) is reported by the next call.
    pub fn flush(&self) -> io::Result<()> {
        let r = self.sync_pending();
        if self.failed.swap(false, Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        r
    }

    /// `flush` from the flush thread: a failure is kept for the next `flush`.
    pub fn flush_unasked(&self) {
        if self.sync_pending().is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    fn sync_pending(&self) -> io::Result<()> {
        let _one_at_a_time = self.flushing.lock();
        let files = std::mem::take(&mut *self.pending.lock());
        if files.is_empty() {
            return Ok(());
        }
        // Start every write first so the disk sees them together, then wait for each.
        for f in &files {
            sys::start_writeback(f.as_fd(), 0, 0);
        }
        let mut first = None;
        for f in &files {
            if let Err(e) = f.sync_data() {
                tracing::error!(file = %sys::describe(f.as_fd()), "cannot sync a directory IV or long-name sidecar: {e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// How many files are pending.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn flush_empties_and_a_full_list_flushes_itself() {
        let dir = tempfile::tempdir().unwrap();
        let u = Unsynced::default();
        for i in 0..3 {
            let mut f = File::create(dir.path().join(i.to_string())).unwrap();
            f.write_all(b"iv").unwrap();
            u.defer(f).unwrap();
        }
        assert_eq!(u.len(), 3);
        u.flush().unwrap();
        assert!(u.is_empty());
        for i in 0..MOST_PENDING {
            u.defer(File::create(dir.path().join(format!("m{i}"))).unwrap())
                .unwrap();
        }
        assert!(u.is_empty(), "the writer that fills the list syncs it");
        u.flush().unwrap();
    }
}
