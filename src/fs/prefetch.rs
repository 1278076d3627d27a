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
//! A reader that opens cold files one after another across directories (`grep -r` over a
//! source tree, where most directories hold one to three files, none reaching the trigger) is
//! walking a tree: `WALK_COLD_OPENS` cold opens within `WALK_WINDOW` put the prefetcher in walk
//! mode. There the first cold open in a directory prefetches its whole subtree (depth first in
//! listing order, the order the reader goes, at most `MAX_TREE_FILES` files), and siblings
//! prefetched ahead are whole subtrees too.
//!
//! A directory is prefetched once per key lifetime: the mark lapses after the key TTL, when
//! the key cache is emptied (`kmsfs forget`), and when the directory changes or is a new one
//! that reuses a deleted one's inode number.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
/// Cold opens (in any directories) within `WALK_WINDOW` that mean a reader walks a tree.
const WALK_COLD_OPENS: usize = 6;
/// See `WALK_COLD_OPENS`.
const WALK_WINDOW: Duration = Duration::from_secs(3);
/// Files a walk's sibling lookahead keeps queued ahead of the reader: enough for the KMS's
/// round trip at the pace a reader of small files goes (~0.1 ms a file, 20 ms a round trip).
const WALK_AHEAD_FILES: usize = 128;
/// Most files prefetched for one subtree in walk mode.
const MAX_TREE_FILES: usize = 256;
/// Deepest directory a subtree prefetch goes into (a bound, not a limit real trees reach).
const MAX_TREE_DEPTH: usize = 64;
/// Most files prefetched per directory.
const MAX_FILES_PER_DIR: usize = 1024;
/// Directories remembered (trigger counts and done marks), bounding memory.
const MAX_DIRS: usize = 10_000;

enum Job {
    /// Queue the files of this directory and, within this many files, of the directories
    /// under it not yet prefetched (0: this directory's files only).
    Tree(OwnedFd, usize),
    /// Prefetch not yet prefetched subdirectories of this directory, those listed after the
    /// one with this inode number first (the way the reader is going), as far as `Ahead` says.
    Siblings(OwnedFd, Ahead, u64),
    /// Fetch the key of this file.
    File(Arc<OwnedFd>, std::ffi::OsString),
}

/// How far a sibling lookahead goes.
#[derive(Clone, Copy)]
enum Ahead {
    /// This many directories, their own files only.
    Dirs(usize),
    /// Whole subtrees (walk mode), until this many files are queued.
    Files(usize),
}

impl Ahead {
    /// A lookahead by `dirs` directories, or in walk mode by `WALK_AHEAD_FILES` files.
    fn new(walking: bool, dirs: usize) -> Self {
        if walking {
            Ahead::Files(WALK_AHEAD_FILES)
        } else {
            Ahead::Dirs(dirs)
        }
    }
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
    /// When the last `WALK_COLD_OPENS` cold opens were.
    recent_cold: VecDeque<Instant>,
}

impl Dirs {
    /// Count a cold open now; whether the recent ones mean a tree walk.
    fn walking_after_cold_open(&mut self) -> bool {
        if self.recent_cold.len() == WALK_COLD_OPENS {
            self.recent_cold.pop_front();
        }
        self.recent_cold.push_back(Instant::now());
        self.is_walking()
    }

    /// Whether the recent cold opens mean a tree walk.
    fn is_walking(&self) -> bool {
        self.recent_cold.len() == WALK_COLD_OPENS
            && self
                .recent_cold
                .front()
                .is_some_and(|t| t.elapsed() < WALK_WINDOW)
    }

    /// Whether `dir` has a prefetch that still holds for the keys in `keys`.
    fn is_done(&self, dir: DirVersion, keys: &KeyCache) -> bool {
        self.done.get(&dir.ino).is_some_and(|d| {
            d.version == dir && d.cache_clears == keys.clear_count() && d.at.elapsed() < keys.ttl()
        })
    }

    /// Take back a claim of `dir` whose prefetch did not happen.
    fn unclaim(&mut self, dir: DirVersion) {
        if self.done.get(&dir.ino).is_some_and(|d| d.version == dir) {
            self.done.remove(&dir.ino);
        }
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
        let (walk, walking) = {
            let mut dirs = self.dirs.lock();
            let walking = dirs.walking_after_cold_open();
            if dirs.is_done(id, keys) {
                return;
            }
            if dirs.cold.len() >= MAX_DIRS {
                dirs.cold.clear();
                dirs.triggered_children.clear();
            }
            let n = dirs.cold.entry(id.ino).or_insert(0);
            *n += 1;
            let needed = if walking { 1 } else { COLD_OPENS_TO_TRIGGER };
            if *n < needed || !dirs.claim(id, keys) {
                return;
            }
            let walk = parent_id.is_some_and(|p| {
                let t = dirs.triggered_children.entry(p.ino).or_insert(0);
                *t += 1;
                *t >= TRIGGERS_TO_WALK
            });
            (walk, walking)
        };
        if let Some(fd) = open_dir(dir) {
            let below = if walking { MAX_TREE_FILES } else { 0 };
            self.send(Job::Tree(fd, below));
        }
        if walk {
            if let Some(fd) = parent.and_then(open_dir) {
                self.send(Job::Siblings(
                    fd,
                    Ahead::new(walking, LOOKAHEAD_DIRS),
                    id.ino,
                ));
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
        let walking = {
            let mut dirs = self.dirs.lock();
            if !dirs.ahead.remove(&id.ino) {
                return;
            }
            dirs.is_walking()
        };
        if let Some(fd) = parent.and_then(open_dir) {
            self.send(Job::Siblings(fd, Ahead::new(walking, 1), id.ino));
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

/// Queue the files of the tree under `top` (already claimed) depth first in listing order,
/// claiming each directory below it; a directory prefetched already is passed over with what
/// is under it. At most `budget` files, or all of the top directory's; returns how many were
/// queued.
fn queue_tree(
    top: OwnedFd,
    budget: usize,
    tx: &Sender<Job>,
    vault: &Volume,
    dirs: &PlMutex<Dirs>,
) -> usize {
    let mut budget = budget;
    let mut queued = 0;
    // Each level: the directory and its subdirectories still to visit, in listing order.
    let mut stack: Vec<std::vec::IntoIter<std::fs::DirEntry>> = Vec::new();
    let mut parents: Vec<Arc<OwnedFd>> = Vec::new();
    let mut next = Some((top, None));
    loop {
        if let Some((fd, id)) = next.take() {
            let dir = Arc::new(fd);
            let (subdirs, files): (Vec<_>, Vec<_>) = entries(&dir, |t| t.is_file() || t.is_dir())
                .into_iter()
                .partition(|e| e.file_type().is_ok_and(|t| t.is_dir()));
            // A directory below the top whose files do not all fit is left for its own
            // trigger; the top gets all its files, like a directory prefetched alone.
            if let Some(id) = id.filter(|_| files.len() > budget) {
                dirs.lock().unclaim(id);
                return queued;
            }
            for e in files.into_iter().take(MAX_FILES_PER_DIR) {
                budget = budget.saturating_sub(1);
                queued += 1;
                let _ = tx.send(Job::File(dir.clone(), e.file_name()));
            }
            if budget == 0 {
                return queued;
            }
            if stack.len() < MAX_TREE_DEPTH {
                stack.push(subdirs.into_iter());
                parents.push(dir);
            }
        }
        let (Some(level), Some(parent)) = (stack.last_mut(), parents.last()) else {
            return queued;
        };
        let Some(e) = level.next() else {
            stack.pop();
            parents.pop();
            continue;
        };
        if e.file_name().as_encoded_bytes().starts_with(b".kmsfs") {
            continue;
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let Ok(fd) = sys::openat(parent.as_fd(), &e.file_name(), flags, 0) else {
            continue;
        };
        if let Some(id) = dir_id(fd.as_fd()).filter(|id| dirs.lock().claim(*id, &vault.keys)) {
            next = Some((fd, Some(id)));
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, tx: &Sender<Job>, vault: &Volume, dirs: &PlMutex<Dirs>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Err(_) => return,
            Ok(Job::Tree(fd, below)) => {
                queue_tree(fd, below, tx, vault, dirs);
            }
            Ok(Job::Siblings(parent, ahead, from)) => {
                // Directories (Dirs) or files (Files) still to queue.
                let mut left = match ahead {
                    Ahead::Dirs(n) | Ahead::Files(n) => n,
                };
                let mut subdirs = entries(&parent, |t| t.is_dir());
                // Those after `from` first, then the rest (when `from` is gone or last).
                if let Some(at) = subdirs
                    .iter()
                    .position(|e| std::os::unix::fs::DirEntryExt::ino(e) == from)
                {
                    subdirs.rotate_left(at + 1);
                }
                for e in subdirs {
                    if left == 0 {
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
                    match ahead {
                        Ahead::Dirs(_) => {
                            let _ = tx.send(Job::Tree(fd, 0));
                            left -= 1;
                        }
                        Ahead::Files(_) => {
                            let n = queue_tree(fd, left.min(MAX_TREE_FILES), tx, vault, dirs);
                            // A directory with no files still counts, so the walk ends.
                            left = left.saturating_sub(n.max(1));
                        }
                    }
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
