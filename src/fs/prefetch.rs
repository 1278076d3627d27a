//! Directory key prefetch: a reader going through a directory one file at a time (`tar c`,
//! `cp -r`, `grep -r`) would pay one KMS round trip per file. After a few cold opens in one
//! directory, the other files' keys there are unwrapped ahead, several at once, on threads of
//! their own (never the FUSE workers), at most `MAX_FILES_PER_DIR` per directory.
//!
//! A reader walking a tree triggers this in one sibling directory after another. Once two
//! subdirectories of one parent have triggered, the next `LOOKAHEAD_DIRS` siblings are
//! prefetched too, and the reader's first open in each of them extends the lookahead by one,
//! so a tree walk stays ahead of the reader without speculating on directories nobody walks.
//!
//! A directory is prefetched once per key lifetime: the mark lapses after the key TTL, when
//! the key cache is emptied (`kmsfs forget`), and when the directory changes or is a new one
//! that reuses a deleted one's inode number.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use parking_lot::Mutex as PlMutex;

use crate::content::{Volume, prefetch_key};
use crate::keys::cache::KeyCache;
use crate::sys;

/// Cold opens in one directory that start its prefetch.
const COLD_OPENS_TO_TRIGGER: u32 = 3;
/// Subdirectories of one parent that must trigger before their siblings are prefetched.
const TRIGGERS_TO_WALK: u32 = 2;
/// Sibling directories prefetched ahead of a tree walk.
const LOOKAHEAD_DIRS: usize = 2;
/// Most files prefetched per directory.
const MAX_FILES_PER_DIR: usize = 1024;
/// Directories remembered (trigger counts and done marks), bounding memory.
const MAX_DIRS: usize = 10_000;

enum Job {
    /// List this directory and queue its files.
    Dir(OwnedFd),
    /// Prefetch up to this many not yet prefetched subdirectories of this directory, those
    /// listed after the one with this inode number first (the way the reader is going).
    Siblings(OwnedFd, usize, u64),
    /// Fetch the key of this file.
    File(Arc<OwnedFd>, std::ffi::OsString),
}

/// A backing directory as it is now: its inode number and change time. A directory that
/// gains or loses entries, or a new one that reuses a deleted one's inode number, differs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct DirVersion {
    ino: u64,
    ctime: (i64, i64),
}

/// A directory's prefetch: of which version, when, and in which key-cache generation.
struct Done {
    version: DirVersion,
    at: Instant,
    cache_clears: u64,
}

/// What the prefetcher knows about directories, by backing inode number.
#[derive(Default)]
struct Dirs {
    /// Cold opens seen per directory not yet prefetched.
    cold: HashMap<u64, u32>,
    /// Directories prefetched (or queued). A mark lapses when the directory changes, when
    /// the keys fetched may have expired (key TTL) or when the key cache was emptied.
    done: HashMap<u64, Done>,
    /// Directories prefetched ahead of a walk, whose first open extends the walk.
    ahead: HashSet<u64>,
    /// Triggered subdirectories per parent directory.
    triggered_children: HashMap<u64, u32>,
}

impl Dirs {
    /// Whether `dir` has a prefetch that still holds for the keys in `keys`.
    fn is_done(&self, dir: DirVersion, keys: &KeyCache) -> bool {
        self.done.get(&dir.ino).is_some_and(|d| {
            d.version == dir && d.cache_clears == keys.clear_count() && d.at.elapsed() < keys.ttl()
        })
    }

    /// Mark `dir` prefetched; false if it already was (and that still holds).
    fn claim(&mut self, dir: DirVersion, keys: &KeyCache) -> bool {
        if self.is_done(dir, keys) {
            return false;
        }
        if self.done.len() >= MAX_DIRS {
            self.done.clear();
            self.ahead.clear();
        }
        self.cold.remove(&dir.ino);
        self.done.insert(
            dir.ino,
            Done {
                version: dir,
                at: Instant::now(),
                cache_clears: keys.clear_count(),
            },
        );
        true
    }
}

/// The prefetcher: what it knows of directories and a pool of worker threads.
pub struct Prefetcher {
    jobs: Mutex<Sender<Job>>,
    dirs: Arc<PlMutex<Dirs>>,
    vault: Arc<Volume>,
}

impl std::fmt::Debug for Prefetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetcher").finish_non_exhaustive()
    }
}

/// The current version (inode number and change time) of a directory.
fn dir_id(dir: BorrowedFd<'_>) -> Option<DirVersion> {
    sys::stat_fd(dir).ok().map(|st| DirVersion {
        ino: st.st_ino,
        ctime: (st.st_ctime, st.st_ctime_nsec),
    })
}

/// A readable descriptor of the directory behind an O_PATH one.
fn open_dir(dir: BorrowedFd<'_>) -> Option<OwnedFd> {
    sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY).ok()
}

impl Prefetcher {
    /// A prefetcher for `vault` with `workers` threads (unwraps in flight at once).
    pub fn start(vault: Arc<Volume>, workers: usize) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let dirs = Arc::new(PlMutex::new(Dirs::default()));
        for i in 0..workers.max(1) {
            let (rx, tx, vault, dirs) = (rx.clone(), tx.clone(), vault.clone(), dirs.clone());
            std::thread::Builder::new()
                .name(format!("kmsfs-prefetch-{i}"))
                .spawn(move || worker(&rx, &tx, &vault, &dirs))?;
        }
        Ok(Prefetcher {
            jobs: Mutex::new(tx),
            dirs,
            vault,
        })
    }

    fn send(&self, job: Job) {
        if let Ok(tx) = self.jobs.lock() {
            let _ = tx.send(job);
        }
    }

    /// A file was opened cold (its key needed the KMS) in directory `dir` (O_PATH), whose
    /// parent is `parent`.
    pub fn cold_open(&self, dir: BorrowedFd<'_>, parent: Option<BorrowedFd<'_>>) {
        let keys = &self.vault.keys;
        // With a zero TTL a key is kept only while its file is open: a prefetched one would
        // be dropped unused, and every trigger would fetch the whole directory again.
        if keys.ttl().is_zero() {
            return;
        }
        let Some(id) = dir_id(dir) else { return };
        let parent_id = parent.and_then(dir_id);
        let walk = {
            let mut dirs = self.dirs.lock();
            if dirs.is_done(id, keys) {
                return;
            }
            if dirs.cold.len() >= MAX_DIRS {
                dirs.cold.clear();
                dirs.triggered_children.clear();
            }
            let n = dirs.cold.entry(id.ino).or_insert(0);
            *n += 1;
            if *n < COLD_OPENS_TO_TRIGGER || !dirs.claim(id, keys) {
                return;
            }
            parent_id.is_some_and(|p| {
                let t = dirs.triggered_children.entry(p.ino).or_insert(0);
                *t += 1;
                *t >= TRIGGERS_TO_WALK
            })
        };
        if let Some(fd) = open_dir(dir) {
            self.send(Job::Dir(fd));
        }
        if walk {
            if let Some(fd) = parent.and_then(open_dir) {
                self.send(Job::Siblings(fd, LOOKAHEAD_DIRS, id.ino));
            }
        }
    }

    /// A file was opened whose key was cached, in directory `dir` (O_PATH) under `parent`: if
    /// the reader just reached a directory prefetched ahead of it, look one directory further.
    pub fn warm_open(&self, dir: BorrowedFd<'_>, parent: Option<BorrowedFd<'_>>) {
        if self.dirs.lock().ahead.is_empty() {
            return;
        }
        let Some(id) = dir_id(dir) else { return };
        if !self.dirs.lock().ahead.remove(&id.ino) {
            return;
        }
        if let Some(fd) = parent.and_then(open_dir) {
            self.send(Job::Siblings(fd, 1, id.ino));
        }
    }
}

/// The entries of directory `dir` that `keep` accepts, in directory order.
fn entries(dir: &OwnedFd, keep: impl Fn(&std::fs::FileType) -> bool) -> Vec<std::fs::DirEntry> {
    let Ok(list) = sys::read_dir(dir.as_fd()) else {
        return Vec::new();
    };
    list.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| keep(&t)))
        .collect()
}

fn worker(rx: &Mutex<Receiver<Job>>, tx: &Sender<Job>, vault: &Volume, dirs: &PlMutex<Dirs>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Err(_) => return,
            Ok(Job::Dir(fd)) => {
                let dir = Arc::new(fd);
                for e in entries(&dir, |t| t.is_file())
                    .into_iter()
                    .take(MAX_FILES_PER_DIR)
                {
                    let _ = tx.send(Job::File(dir.clone(), e.file_name()));
                }
            }
            Ok(Job::Siblings(parent, n, from)) => {
                let mut queued = 0;
                let mut subdirs = entries(&parent, |t| t.is_dir());
                // Those after `from` first, then the rest (when `from` is gone or last).
                if let Some(at) = subdirs
                    .iter()
                    .position(|e| std::os::unix::fs::DirEntryExt::ino(e) == from)
                {
                    subdirs.rotate_left(at + 1);
                }
                for e in subdirs {
                    if queued == n {
                        break;
                    }
                    // The vault's own directory holds no files of the user.
                    if e.file_name().as_encoded_bytes().starts_with(b".kmsfs") {
                        continue;
                    }
                    let name = e.file_name();
                    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                    let Ok(fd) = sys::openat(parent.as_fd(), OsStr::new(&name), flags, 0) else {
                        continue;
                    };
                    let Some(id) = dir_id(fd.as_fd()) else {
                        continue;
                    };
                    {
                        let mut dirs = dirs.lock();
                        if !dirs.claim(id, &vault.keys) {
                            continue;
                        }
                        dirs.ahead.insert(id.ino);
                    }
                    let _ = tx.send(Job::Dir(fd));
                    queued += 1;
                }
            }
            Ok(Job::File(dir, name)) => {
                let Ok(fd) = sys::openat(
                    dir.as_fd(),
                    OsStr::new(&name),
                    libc::O_RDONLY | libc::O_NOFOLLOW,
                    0,
                ) else {
                    continue;
                };
                if let Err(e) = prefetch_key(&File::from(fd), vault) {
                    tracing::debug!("key prefetch of {}: {e}", name.to_string_lossy());
                }
            }
        }
    }
}
