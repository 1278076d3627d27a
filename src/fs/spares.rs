//! Spare backing files: empty files made ahead of need in `.kmsfs/spares-HOST`, so that a create
//! is a rename into place instead of an inode allocation on the client's critical path.
//!
//! Allocating an inode is the dearest part of a create on the backing file system (on ext4
//! it scans for a free inode and, without a journal, skips recently deleted ones: 70-600 us a
//! file measured here, against about 25 us for rename + fchmod + futimens). A background
//! thread keeps `--spare-files` spares ready while the application does other work.
//!
//! A spare is an empty file, mode 0600, owned by the daemon: it holds no header and no key
//! until the first write, exactly like a freshly created file. Spares left by a crash are
//! removed at the next mount. Not used on shared stores (another host may list the meta
//! directory), when the vault root has a default ACL (a rename would not inherit it), or in a
//! set-group-ID directory (a rename would not give the directory's group). A sync tool that
//! watches the vault sees spares come and go: `--spare-files 0` turns them off.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::sys;

/// A pool of ready empty backing files and the thread that refills it.
#[derive(Debug)]
pub struct Spares {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: OwnedFd,
    /// Spares kept ready; the refill starts when fewer than half are left.
    target: usize,
    /// Set when the backing file system cannot rename without replacing: spares are useless.
    unusable: AtomicBool,
    ready: Mutex<Ready>,
    wanted: Condvar,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct Ready {
    files: VecDeque<(OsString, OwnedFd)>,
    next_name: u64,
}

/// A spare taken from the pool: an open (read-write) empty file and its name in the pool.
#[derive(Debug)]
pub struct Spare {
    name: OsString,
    fd: OwnedFd,
}

impl Spares {
    /// Start a pool of `target` spares in directory `name` of `meta_dir` (the vault's
    /// `.kmsfs`; one directory per host), clearing spares a crash left.
    pub fn start(meta_dir: BorrowedFd<'_>, name: &OsStr, target: usize) -> io::Result<Spares> {
        match sys::mkdirat(meta_dir, name, 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let dir = sys::openat(
            meta_dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        remove_all(dir.as_fd())?;
        let shared = Arc::new(Shared {
            dir,
            target: target.max(2),
            unusable: AtomicBool::new(false),
            ready: Mutex::new(Ready::default()),
            wanted: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("kmsfs-spares".into())
            .spawn(move || worker.refill())?;
        Ok(Spares { shared })
    }

    /// A ready spare, if the pool has one (it never waits for the refill).
    pub fn take(&self) -> Option<Spare> {
        if self.shared.unusable.load(Ordering::Relaxed) {
            return None;
        }
        let mut ready = self.shared.ready.lock().ok()?;
        let (name, fd) = ready.files.pop_front()?;
        if ready.files.len() < self.shared.target / 2 {
            self.shared.wanted.notify_one();
        }
        Some(Spare { name, fd })
    }

    /// Move `spare` to `name` in `dir` (never over an existing entry) and give it `mode` and
    /// the current times, as a newly created file has. On failure the spare is removed.
    pub fn place(
        &self,
        spare: Spare,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        let placed = sys::renameat2(
            self.shared.dir.as_fd(),
            &spare.name,
            dir,
            name,
            libc::RENAME_NOREPLACE,
        );
        if let Err(e) = placed {
            let _ = sys::unlinkat(self.shared.dir.as_fd(), &spare.name, 0);
            if e.raw_os_error() == Some(libc::EINVAL) {
                tracing::info!(
                    "the vault's file system cannot rename without replacing: no spares"
                );
                self.shared.unusable.store(true, Ordering::Relaxed);
                self.shared.wanted.notify_one();
            }
            return Err(e);
        }
        let fd = spare.fd;
        let fixed = sys::fchmod(fd.as_fd(), mode & 0o7777)
            .and_then(|()| sys::set_times(fd.as_fd(), sys::TimeSpec::Now, sys::TimeSpec::Now));
        if let Err(e) = fixed {
            // Not left in place with the spare's mode: the caller makes the file afresh.
            let _ = sys::unlinkat(dir, name, 0);
            return Err(e);
        }
        Ok(fd)
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wanted.notify_one();
        if let Ok(mut ready) = self.shared.ready.lock() {
            for (name, _fd) in ready.files.drain(..) {
                let _ = sys::unlinkat(self.shared.dir.as_fd(), &name, 0);
            }
        }
    }
}

impl Shared {
    /// The refill loop: once the pool falls below half, top it up to `READY`.
    fn refill(&self) {
        let mut filling = false;
        loop {
            let name = {
                let Ok(mut ready) = self.ready.lock() else {
                    return;
                };
                loop {
                    if self.stop.load(Ordering::Relaxed) || self.unusable.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = ready.files.len();
                    filling = n < self.target && (filling || n < self.target / 2);
                    if filling {
                        break;
                    }
                    ready = match self.wanted.wait(ready) {
                        Ok(r) => r,
                        Err(_) => return,
                    };
                }
                ready.next_name += 1;
                OsString::from(format!("s{}", ready.next_name))
            };
            let made = sys::openat(
                self.dir.as_fd(),
                &name,
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW,
                0o600,
            );
            match made {
                Ok(fd) => {
                    let Ok(mut ready) = self.ready.lock() else {
                        return;
                    };
                    if self.stop.load(Ordering::Relaxed) {
                        let _ = sys::unlinkat(self.dir.as_fd(), &name, 0);
                        return;
                    }
                    ready.files.push_back((name, fd));
                }
                Err(e) => {
                    // Creates make their files themselves meanwhile; try again later.
                    tracing::debug!("cannot make a spare backing file: {e}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }
}

/// Remove every entry of the spare directory `dir` (spares left by a crash).
fn remove_all(dir: BorrowedFd<'_>) -> io::Result<()> {
    for entry in sys::read_dir(dir)? {
        let entry = entry?;
        let _ = sys::unlinkat(dir, &entry.file_name(), 0);
    }
    Ok(())
}
