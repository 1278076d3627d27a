//! Inode numbers of the mount ↔ O_PATH fds of backing objects.
//!
//! Each known inode holds an O_PATH fd, so renames and hard links of the backing object never
//! leave us with a stale path. Backing objects are keyed by (st_dev, st_ino): every hard link
//! of a file is one inode of the mount.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use parking_lot::Mutex;

/// One inode of the mount.
#[derive(Debug)]
pub struct Inode {
    /// Its inode number in the mount.
    pub ino: u64,
    fd: OwnedFd,
    key: (u64, u64),
    nlookup: Mutex<u64>,
    /// The directory it was last looked up in (for directory key prefetch).
    parent: std::sync::atomic::AtomicU64,
    /// Whether this is the mount's root (the vault directory).
    pub is_root: bool,
    /// The backing file as it was when the kernel's cached pages of it were last in step.
    cached_as: Mutex<Option<crate::sys::Stamp>>,
}

/// The (st_dev, st_ino) that identifies a backing object.
pub fn key_of(st: &libc::stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl Inode {
    /// The O_PATH fd of the backing object.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The backing object's (st_dev, st_ino).
    pub fn key(&self) -> (u64, u64) {
        self.key
    }

    /// The inode number of the directory it was last looked up in.
    pub fn parent(&self) -> u64 {
        self.parent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The backing object's stamp as it is now (None when it cannot be stat'ed).
    pub fn backing_stamp(&self) -> Option<crate::sys::Stamp> {
        crate::sys::stat_fd(self.fd())
            .ok()
            .map(|st| crate::sys::stamp(&st))
    }

    /// After a change through the mount: the pages are in step with `after` if they were with
    /// `before`, else unknown.
    pub fn note_change(&self, before: Option<crate::sys::Stamp>, after: Option<crate::sys::Stamp>) {
        let mut cached_as = self.cached_as.lock();
        *cached_as = if before.is_some() && *cached_as == before {
            after
        } else {
            None
        };
    }

    /// Record that the kernel's cached pages match the backing file as `now`; returns whether
    /// they matched it as it was before (the file did not change in between).
    pub fn cached_pages_match(&self, now: crate::sys::Stamp) -> bool {
        self.cached_as.lock().replace(now) == Some(now)
    }
}

#[derive(Debug, Default)]
struct Tables {
    by_ino: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<(u64, u64), u64>,
    next: u64,
}

/// All inodes the kernel currently knows.
#[derive(Debug)]
pub struct InodeTable {
    tables: Mutex<Tables>,
}

/// The root's inode number (FUSE fixes it at 1).
pub const ROOT: u64 = 1;

impl InodeTable {
    /// A table holding the root, backed by `root_fd`.
    pub fn new(root_fd: OwnedFd, st: &libc::stat) -> Self {
        let key = key_of(st);
        let root = Arc::new(Inode {
            ino: ROOT,
            fd: root_fd,
            key,
            nlookup: Mutex::new(1),
            parent: ROOT.into(),
            cached_as: Mutex::new(None),
            is_root: true,
        });
        let mut t = Tables {
            next: ROOT + 1,
            ..Default::default()
        };
        t.by_ino.insert(ROOT, root);
        t.by_key.insert(key, ROOT);
        InodeTable {
            tables: Mutex::new(t),
        }
    }

    /// The inode `ino`, if known.
    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.tables.lock().by_ino.get(&ino).cloned()
    }

    /// Count one more kernel reference to the object behind `fd` (with stat `st`, found in
    /// directory `parent`), returning its inode number; a known object keeps its number and
    /// the new fd is closed.
    pub fn remember(&self, fd: OwnedFd, st: &libc::stat, parent: u64) -> u64 {
        let key = key_of(st);
        let mut t = self.tables.lock();
        if let Some(&ino) = t.by_key.get(&key) {
            if let Some(inode) = t.by_ino.get(&ino) {
                *inode.nlookup.lock() += 1;
                inode
                    .parent
                    .store(parent, std::sync::atomic::Ordering::Relaxed);
                return ino;
            }
        }
        let ino = t.next;
        t.next += 1;
        let parent = parent.into();
        t.by_ino.insert(
            ino,
            Arc::new(Inode {
                ino,
                fd,
                key,
                nlookup: Mutex::new(1),
                parent,
                is_root: false,
                cached_as: Mutex::new(None),
            }),
        );
        t.by_key.insert(key, ino);
        ino
    }

    /// The kernel dropped `n` references to `ino`; at zero the inode and its fd go.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.tables.lock();
        let gone = match t.by_ino.get(&ino) {
            Some(inode) => {
                let mut count = inode.nlookup.lock();
                *count = count.saturating_sub(n);
                *count == 0
            }
            None => false,
        };
        if gone {
            if let Some(inode) = t.by_ino.remove(&ino) {
                t.by_key.remove(&inode.key);
            }
        }
    }

    /// Number of inodes known.
    pub fn len(&self) -> usize {
        self.tables.lock().by_ino.len()
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}
