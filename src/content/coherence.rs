//! Coherence on shared stores: writers on several hosts serialized by a lock on the backing
//! file (with a deadline), cached pages dropped when another host changed the file, and a
//! failed read tried once more under the lock.

use super::*;

impl CryptFile {
    /// Serialize changes with writers on other hosts (a POSIX lock on the backing file, which
    /// GlusterFS and NFS honour) and drop a cached header that another host has replaced, so a
    /// read-modify-write never mixes two file ids. On one host the `RwLock` already serializes.
    pub(super) fn lock_for_change(
        &self,
        state: &mut Option<Keyed>,
    ) -> Result<BackingLock<'_>, CryptError> {
        self.lock_backing(state, true)
    }

    /// `lock_for_change` with an exclusive (`write`) or shared lock.
    pub(super) fn lock_backing(
        &self,
        state: &mut Option<Keyed>,
        write: bool,
    ) -> Result<BackingLock<'_>, CryptError> {
        let lock = BackingLock::acquire(&self.file, self.shared(), write)?;
        if let Some(keyed) = state.as_ref().filter(|_| self.shared()) {
            // Another host may have made or changed the hole map since it was read.
            keyed.holes.lock().forget();
        }
        if let Some(keyed) = state.as_ref() {
            let mut id = [0u8; 16];
            let n = read_full(&self.file, &mut id, header_offset::FILE_ID as u64)?;
            if n < id.len() || id != keyed.header.file_id {
                *state = None;
            }
        }
        Ok(lock)
    }

    /// The second try of a failed read on a shared store: under a shared lock on the backing
    /// file no other host is halfway through a write, the pages are fresh and a header another
    /// host replaced is reloaded. Success means the first try raced a write (not counted as
    /// tampering); failure is damage.
    pub(super) fn reread_under_lock(&self, offset: u64, len: usize) -> Result<Vec<u8>, CryptError> {
        let mut state = self.state.write();
        let _lock = self.lock_backing(&mut state, false)?;
        if state.is_none() && len > 0 && self.backing_len()? > 0 {
            *state = Some(self.load()?);
        }
        self.read_locked(&state, offset, len)
    }

    /// Shared stores: drop the backing file's cached pages if it changed (size, mtime or ctime)
    /// since they were last dropped. Another host's writes do not invalidate them, and a file
    /// opened again while a handle keeps it open on this host is served by the same
    /// `CryptFile`: without this, that open would read what was cached before the other
    /// host's write and close (close-to-open).
    pub(super) fn drop_stale_pages(&self) -> Result<(), CryptError> {
        let stamp = crate::sys::stamp(&crate::sys::stat_fd(std::os::fd::AsFd::as_fd(&self.file))?);
        let mut seen = self.seen.lock();
        if *seen != Some(stamp) {
            crate::sys::drop_page_cache(std::os::fd::AsFd::as_fd(&self.file));
            *seen = Some(stamp);
            if let Some(keyed) = self.state.read().as_ref() {
                keyed.holes.lock().forget();
            }
        }
        Ok(())
    }

    pub(super) fn shared(&self) -> bool {
        self.vault
            .shared_store
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A whole-file OFD lock on a backing file, exclusive for changes or shared for a second try
/// at a read, released on drop.
pub(super) struct BackingLock<'a> {
    file: Option<&'a File>,
    /// On a shared store: drop stale cached pages after locking, flush (a write lock) before
    /// unlocking, so the next host's read-modify-write or read starts from what this one wrote
    /// (as NFS does).
    shared: bool,
    write: bool,
}

impl<'a> BackingLock<'a> {
    fn acquire(file: &'a File, shared: bool, write: bool) -> std::io::Result<Self> {
        static UNSUPPORTED: std::sync::atomic::AtomicBool =
            std::sync::atomic::AtomicBool::new(false);
        let none = BackingLock {
            file: None,
            shared,
            write,
        };
        // On one host the state lock already serializes writers, and other local users must
        // not be able to stall the mount by locking a backing file they can open.
        if !shared || UNSUPPORTED.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(none);
        }
        let kind = if write { libc::F_WRLCK } else { libc::F_RDLCK };
        match ofd_lock_within(file, kind as libc::c_short, LOCK_WAIT) {
            Ok(()) => {
                if shared {
                    crate::sys::drop_page_cache(std::os::fd::AsFd::as_fd(file));
                }
                Ok(BackingLock {
                    file: Some(file),
                    ..none
                })
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS)
                ) =>
            {
                // A backing store without locks: one host per vault stays safe.
                tracing::warn!(
                    "the backing file system has no POSIX locks ({e}): concurrent writers on several hosts are not serialized"
                );
                UNSUPPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(none)
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for BackingLock<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.file {
            if self.shared && self.write {
                if let Err(e) = f.sync_data() {
                    tracing::error!("flushing a shared backing file before unlocking: {e}");
                }
            }
            let _ = ofd_lock(f, libc::F_UNLCK as libc::c_short, libc::F_OFD_SETLK);
        }
    }
}

/// How long a writer on a shared store waits for another host's lock on a backing file before
/// the operation fails (EIO, logged): long enough for any honest write, short enough that a
/// lock held forever (a hung host, or anyone who can open the backing file) cannot hang it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Take an OFD lock of `kind`, polling (1 ms doubling to 100 ms) until `wait` has passed.
fn ofd_lock_within(
    file: &File,
    kind: libc::c_short,
    wait: std::time::Duration,
) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match ofd_lock(file, kind, libc::F_OFD_SETLK) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                let now = std::time::Instant::now();
                if now >= deadline {
                    tracing::error!(
                        file = %crate::sys::describe(std::os::fd::AsFd::as_fd(file)),
                        "another process has held a lock on this backing file for {} s: failing the operation",
                        wait.as_secs()
                    );
                    return Err(std::io::Error::from_raw_os_error(libc::EIO));
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

fn ofd_lock(file: &File, kind: libc::c_short, cmd: libc::c_int) -> std::io::Result<()> {
    crate::sys::ofd_lock(std::os::fd::AsFd::as_fd(file), kind, cmd)
}
