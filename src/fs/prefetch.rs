//! Directory key prefetch: a reader going through a directory one file at a time (`tar c`,
//! `cp -r`, `grep -r`) would pay one KMS round trip per file. After a few cold opens in one
//! directory, the other files' keys there are unwrapped ahead, several at once, on threads of
//! their own (never the FUSE workers), at most `MAX_FILES_PER_DIR` per directory.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use parking_lot::Mutex as PlMutex;

use crate::cryptfile::{Vault, prefetch_key};
use crate::sys;

/// Cold opens in one directory that start its prefetch.
const COLD_OPENS_TO_TRIGGER: u32 = 3;
/// Most files prefetched per directory.
const MAX_FILES_PER_DIR: usize = 1024;
/// Directories remembered (trigger counts and done marks), bounding memory.
const MAX_DIRS: usize = 10_000;

enum Job {
    /// List this directory and queue its files.
    Dir(OwnedFd),
    /// Fetch the key of this file.
    File(Arc<OwnedFd>, std::ffi::OsString),
}

/// The prefetcher: trigger counts per directory and a pool of worker threads.
pub struct Prefetcher {
    jobs: Mutex<Sender<Job>>,
    cold: PlMutex<std::collections::HashMap<u64, u32>>,
    done: PlMutex<HashSet<u64>>,
}

impl std::fmt::Debug for Prefetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetcher").finish_non_exhaustive()
    }
}

impl Prefetcher {
    /// A prefetcher for `vault` with `workers` threads (unwraps in flight at once).
    pub fn start(vault: Arc<Vault>, workers: usize) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let (rx, tx, vault) = (rx.clone(), tx.clone(), vault.clone());
            std::thread::Builder::new()
                .name(format!("kmsfs-prefetch-{i}"))
                .spawn(move || worker(&rx, &tx, &vault))?;
        }
        Ok(Prefetcher {
            jobs: Mutex::new(tx),
            cold: Default::default(),
            done: Default::default(),
        })
    }

    /// A file was opened cold (its key needed the KMS) in directory `dir_ino` (O_PATH `dir`).
    pub fn cold_open(&self, dir_ino: u64, dir: std::os::fd::BorrowedFd<'_>) {
        if self.done.lock().contains(&dir_ino) {
            return;
        }
        let mut cold = self.cold.lock();
        if cold.len() >= MAX_DIRS {
            cold.clear();
        }
        let n = cold.entry(dir_ino).or_insert(0);
        *n += 1;
        if *n < COLD_OPENS_TO_TRIGGER {
            return;
        }
        cold.remove(&dir_ino);
        drop(cold);
        let mut done = self.done.lock();
        if done.len() >= MAX_DIRS {
            done.clear();
        }
        done.insert(dir_ino);
        drop(done);
        if let Ok(fd) = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY) {
            if let Ok(tx) = self.jobs.lock() {
                let _ = tx.send(Job::Dir(fd));
            }
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, tx: &Sender<Job>, vault: &Vault) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Err(_) => return,
            Ok(Job::Dir(fd)) => {
                let dir = Arc::new(fd);
                let path = std::path::PathBuf::from(std::ffi::OsStr::new(&format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&dir)
                )));
                let Ok(entries) = std::fs::read_dir(&path) else {
                    continue;
                };
                let files = entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .take(MAX_FILES_PER_DIR);
                for e in files {
                    let _ = tx.send(Job::File(dir.clone(), e.file_name()));
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
