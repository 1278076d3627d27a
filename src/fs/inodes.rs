//! Inode numbers of the mount ↔ backing objects, with a bounded number of open descriptors.
//!
//! **Numbers.** A mount inode's number is its backing object's inode number (st_ino), so it is
//! the same at every mount, on every host of a shared store that shows the same st_ino, in
//! `stat` and in `readdir`, and hard links share it. Two exceptions keep FUSE's rules: the
//! vault root is 1, and a backing object whose st_ino is 1 takes the root's backing number
//! instead (a swap, so numbers stay unique). Objects on another device than the vault root
//! (a file system mounted inside the vault) get their number from a hash of the device in
//! the top bits.
//!
//! **Descriptors.** Each known inode remembers where it is: its directory's inode and its
//! backing name there, updated by lookups and by renames through the mount. An `O_PATH`
//! descriptor is kept for at most `limit` of them, least recently used first out; any other
//! is reopened from its place on use and checked to be the same object (else `ESTALE`). The
//! root's descriptor, and those of inodes with open handles (`pin`), are always kept, so an
//! open file that is unlinked or renamed away by another host stays usable. When the process
//! runs out of descriptors (`EMFILE`, `ENFILE`), the cache is halved and the call retried,
//! so that error reaches no application while the cache can shrink.
//!
//! **Generations.** The backing store hands out a freed inode number again. When an inode was
//! removed through the mount (`removed`) and its number comes back in a lookup, the entry gets
//! a new generation, which tells the kernel it is another file (FUSE's rule for reused node
//! ids); lookup counts are kept across generations, since the kernel's FORGETs of the old
//! inode arrive under the same number.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use crate::sys;

/// The root's inode number (FUSE fixes it at 1).
pub const ROOT: u64 = 1;

/// Memory one known inode costs, beyond its name (documented in kmsfs.1, `status`).
pub const BYTES_PER_INODE: usize = 320;

/// A backing object's descriptor, shared with the operations using it right now.
pub type Fd = Arc<OwnedFd>;

/// One inode of the mount.
#[derive(Debug)]
pub struct Inode {
    /// Its inode number in the mount.
    pub ino: u64,
    key: (u64, u64),
    generation: AtomicU64,
    /// Kernel references (lookups not yet forgotten), across generations.
    nlookup: Mutex<u64>,
    /// Where it is: its directory's inode number and its backing name there (None: the root,
    /// or removed).
    place: Mutex<Option<(u64, OsString)>>,
    /// Its `O_PATH` descriptor, when held.
    fd: Mutex<Option<Fd>>,
    /// Open handles: while any, the descriptor is kept.
    pins: AtomicUsize,
    /// Removed through the mount: a new lookup of its number is another file.
    removed: std::sync::atomic::AtomicBool,
    /// Pinned (one pin) until the kernel forgets it: its remembered name was unlinked while
    /// other links remain, so it could not be reopened.
    sticky: std::sync::atomic::AtomicBool,
    /// Whether this is the mount's root (the vault directory).
    pub is_root: bool,
    /// The backing file as it was when the kernel's cached pages of it were last in step.
    cached_as: Mutex<Option<sys::Stamp>>,
}

/// The (st_dev, st_ino) that identifies a backing object.
pub fn key_of(st: &libc::stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl Inode {
    /// The backing object's (st_dev, st_ino).
    pub fn key(&self) -> (u64, u64) {
        self.key
    }

    /// Its generation (see the module doc), for the kernel's entries.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The inode number of the directory it was last found in (the root for the root).
    pub fn parent(&self) -> u64 {
        self.place.lock().as_ref().map_or(ROOT, |(p, _)| *p)
    }

    /// Its directory's inode number and its backing name there (None: the root, or removed).
    pub fn place(&self) -> Option<(u64, OsString)> {
        self.place.lock().clone()
    }

    /// After a change through the mount: the pages are in step with `after` if they were with
    /// `before`, else unknown.
    pub fn note_change(&self, before: Option<sys::Stamp>, after: Option<sys::Stamp>) {
        let mut cached_as = self.cached_as.lock();
        *cached_as = if before.is_some() && *cached_as == before {
            after
        } else {
            None
        };
    }

    /// Record that the kernel's cached pages match the backing file as `now`; returns whether
    /// they matched it as it was before (the file did not change in between).
    pub fn cached_pages_match(&self, now: sys::Stamp) -> bool {
        self.cached_as.lock().replace(now) == Some(now)
    }
}

#[derive(Debug, Default)]
struct Tables {
    by_ino: HashMap<u64, Arc<Inode>>,
}

/// All inodes the kernel currently knows.
#[derive(Debug)]
pub struct InodeTable {
    tables: Mutex<Tables>,
    /// Inodes holding a descriptor (not pinned, not the root), least recently used first.
    held: Mutex<LruCache<u64, ()>>,
    limit: AtomicUsize,
    root_key: (u64, u64),
}

/// The mount's number for backing object `key`, in a vault whose root is `root`.
pub fn plain_ino(root: (u64, u64), key: (u64, u64)) -> u64 {
    let (dev, ino) = key;
    if dev != root.0 {
        // Another file system inside the vault: the device, hashed, in the top 16 bits.
        let h = (dev.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) | 0x8000;
        return (h << 48) ^ (ino & 0x0000_ffff_ffff_ffff);
    }
    if key == root {
        ROOT
    } else if ino == ROOT {
        root.1
    } else {
        ino
    }
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl InodeTable {
    /// A table holding the root, backed by `root_fd`, keeping at most `limit` other
    /// descriptors.
    pub fn new(root_fd: OwnedFd, st: &libc::stat, limit: usize) -> Self {
        let key = key_of(st);
        let root = Arc::new(Inode {
            ino: ROOT,
            key,
            generation: AtomicU64::new(0),
            nlookup: Mutex::new(1),
            place: Mutex::new(None),
            fd: Mutex::new(Some(Arc::new(root_fd))),
            pins: AtomicUsize::new(0),
            removed: false.into(),
            sticky: false.into(),
            cached_as: Mutex::new(None),
            is_root: true,
        });
        let mut t = Tables::default();
        t.by_ino.insert(ROOT, root);
        InodeTable {
            tables: Mutex::new(t),
            held: Mutex::new(LruCache::unbounded()),
            limit: AtomicUsize::new(limit.max(1)),
            root_key: key,
        }
    }

    /// The mount's number for backing object `key`.
    pub fn ino_of(&self, key: (u64, u64)) -> u64 {
        plain_ino(self.root_key, key)
    }

    /// The inode `ino`, if known.
    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.tables.lock().by_ino.get(&ino).cloned()
    }

    /// The descriptor of `inode`: held, or reopened from its place (and checked to be the same
    /// object; ESTALE if it is gone or another object is there now).
    pub fn fd(&self, inode: &Inode) -> io::Result<Fd> {
        self.fd_at_depth(inode, 0)
    }

    fn fd_at_depth(&self, inode: &Inode, depth: usize) -> io::Result<Fd> {
        if let Some(fd) = inode.fd.lock().clone() {
            if !inode.is_root && inode.pins.load(Ordering::Relaxed) == 0 {
                self.held.lock().promote(&inode.ino);
            }
            return Ok(fd);
        }
        let stale = || io::Error::from_raw_os_error(libc::ESTALE);
        if depth > 4096 {
            return Err(stale());
        }
        let (parent, name) = inode.place.lock().clone().ok_or_else(stale)?;
        let parent = self.get(parent).ok_or_else(stale)?;
        let pfd = self.fd_at_depth(&parent, depth + 1)?;
        let fd = self.open_at(pfd.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW)?;
        let st = sys::stat_fd(fd.as_fd())?;
        if key_of(&st) != inode.key {
            return Err(stale());
        }
        Ok(self.hold(inode, fd))
    }

    /// openat(2) that, when the process is out of descriptors, halves the cache and tries once
    /// more.
    pub fn open_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        flags: libc::c_int,
    ) -> io::Result<OwnedFd> {
        self.retrying(|| sys::openat(dir, name, flags, 0))
    }

    /// Run `f`; if it fails for want of descriptors, halve the cache and run it once more.
    pub fn retrying<T>(&self, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match f() {
            Err(e) if is_out_of_fds(&e) => {
                let held = self.held.lock().len();
                tracing::info!(held, "out of descriptors: closing half of the cached ones");
                self.shrink_to(held / 2);
                f()
            }
            r => r,
        }
    }

    /// Keep `fd` as `inode`'s descriptor (one already held wins), within the limit.
    fn hold(&self, inode: &Inode, fd: OwnedFd) -> Fd {
        let fd = {
            let mut slot = inode.fd.lock();
            if let Some(held) = slot.as_ref() {
                return held.clone();
            }
            let fd = Arc::new(fd);
            *slot = Some(fd.clone());
            fd
        };
        if !inode.is_root && inode.pins.load(Ordering::Relaxed) == 0 {
            self.held.lock().put(inode.ino, ());
            self.shrink_to(self.limit.load(Ordering::Relaxed));
        }
        fd
    }

    /// Close cached descriptors, least recently used first, until at most `n` are held.
    fn shrink_to(&self, n: usize) {
        loop {
            let victim = {
                let mut held = self.held.lock();
                if held.len() <= n {
                    return;
                }
                held.pop_lru().map(|(ino, ())| ino)
            };
            let Some(ino) = victim else { return };
            if let Some(inode) = self.get(ino) {
                if inode.pins.load(Ordering::Relaxed) == 0 {
                    inode.fd.lock().take();
                }
            }
        }
    }

    /// Most descriptors cached for inodes without open handles.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Descriptors held now (the root's and pinned ones included).
    pub fn fds_held(&self) -> usize {
        let t = self.tables.lock();
        t.by_ino.values().filter(|i| i.fd.lock().is_some()).count()
    }

    /// Count one more kernel reference to the object behind `fd` (with stat `st`), found as
    /// `name` in directory `parent`; returns the inode (a known object keeps its number and
    /// its held descriptor, and the new one is closed).
    pub fn remember(&self, fd: OwnedFd, st: &libc::stat, parent: u64, name: &OsStr) -> Arc<Inode> {
        let key = key_of(st);
        let ino = self.ino_of(key);
        let inode = {
            let mut t = self.tables.lock();
            if let Some(inode) = t.by_ino.get(&ino).cloned() {
                *inode.nlookup.lock() += 1;
                if !inode.is_root {
                    *inode.place.lock() = Some((parent, name.to_os_string()));
                }
                if inode.removed.swap(false, Ordering::Relaxed) {
                    // The backing store reused the number of a removed object.
                    inode.generation.fetch_add(1, Ordering::Relaxed);
                    inode.fd.lock().take();
                    *inode.cached_as.lock() = None;
                }
                inode
            } else {
                let inode = Arc::new(Inode {
                    ino,
                    key,
                    generation: AtomicU64::new(0),
                    nlookup: Mutex::new(1),
                    place: Mutex::new(Some((parent, name.to_os_string()))),
                    fd: Mutex::new(None),
                    pins: AtomicUsize::new(0),
                    removed: false.into(),
                    sticky: false.into(),
                    is_root: false,
                    cached_as: Mutex::new(None),
                });
                t.by_ino.insert(ino, inode.clone());
                inode
            }
        };
        self.hold(&inode, fd);
        inode
    }

    /// The kernel dropped `n` references to `ino`; at zero the inode and its descriptor go.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.tables.lock();
        let gone = match t.by_ino.get(&ino) {
            Some(inode) => {
                let mut count = inode.nlookup.lock();
                *count = count.saturating_sub(n);
                if *count == 0 && inode.sticky.swap(false, Ordering::Relaxed) {
                    inode.pins.fetch_sub(1, Ordering::Relaxed);
                }
                *count == 0 && inode.pins.load(Ordering::Relaxed) == 0
            }
            None => false,
        };
        if gone {
            t.by_ino.remove(&ino);
            drop(t);
            self.held.lock().pop(&ino);
        }
    }

    /// An open handle of `inode` exists: keep its descriptor while it does.
    pub fn pin(&self, inode: &Inode) -> io::Result<()> {
        let fd = self.fd(inode)?;
        if inode.pins.fetch_add(1, Ordering::Relaxed) == 0 {
            self.held.lock().pop(&inode.ino);
            let mut slot = inode.fd.lock();
            if slot.is_none() {
                *slot = Some(fd);
            }
        }
        Ok(())
    }

    /// An open handle of `ino` was released.
    pub fn unpin(&self, ino: u64) {
        let Some(inode) = self.get(ino) else { return };
        if inode.pins.fetch_sub(1, Ordering::Relaxed) == 1 {
            let forgotten = *inode.nlookup.lock() == 0;
            if forgotten {
                self.tables.lock().by_ino.remove(&ino);
            } else if inode.fd.lock().is_some() {
                self.held.lock().put(ino, ());
                self.shrink_to(self.limit.load(Ordering::Relaxed));
            }
        }
    }

    /// `name` in directory `parent` was renamed to `new_name` in `new_parent` through the mount
    /// (the object behind it is `key`): the inode's place follows.
    pub fn renamed(&self, key: (u64, u64), new_parent: u64, new_name: &OsStr) {
        if let Some(inode) = self.get(self.ino_of(key)) {
            if !inode.is_root && inode.key == key {
                *inode.place.lock() = Some((new_parent, new_name.to_os_string()));
            }
        }
    }

    /// The entry `name` of directory `parent`, backing object `key` with `nlink` links left,
    /// was removed through the mount. At no link left, the object is gone: its number may come
    /// back as another file. With links left, its descriptor is kept, since its remembered
    /// place may be the name just removed.
    pub fn removed(&self, key: (u64, u64), parent: u64, name: &OsStr, nlink: u64) {
        let Some(inode) = self.get(self.ino_of(key)) else {
            return;
        };
        if inode.key != key || inode.is_root {
            return;
        }
        let mut place = inode.place.lock();
        let here = place
            .as_ref()
            .is_some_and(|(p, n)| *p == parent && n.as_os_str() == name);
        if nlink == 0 {
            inode.removed.store(true, Ordering::Relaxed);
            *place = None;
        } else if here && inode.fd.lock().is_some() {
            // Its other names are unknown, so it could not be reopened: keep the descriptor
            // until the kernel forgets it (or looks it up again under another name).
            *place = None;
            if !inode.sticky.swap(true, Ordering::Relaxed)
                && inode.pins.fetch_add(1, Ordering::Relaxed) == 0
            {
                self.held.lock().pop(&inode.ino);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn table(dir: &std::path::Path, limit: usize) -> InodeTable {
        let root = sys::openat(
            std::fs::File::open(dir).expect("open").as_fd(),
            OsStr::new("."),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .expect("root");
        let st = sys::stat_fd(root.as_fd()).expect("stat");
        InodeTable::new(root, &st, limit)
    }

    fn look(t: &InodeTable, parent: &Inode, name: &str) -> Arc<Inode> {
        let pfd = t.fd(parent).expect("parent fd");
        let fd = t
            .open_at(
                pfd.as_fd(),
                OsStr::new(name),
                libc::O_PATH | libc::O_NOFOLLOW,
            )
            .expect("open");
        let st = sys::stat_fd(fd.as_fd()).expect("stat");
        t.remember(fd, &st, parent.ino, OsStr::new(name))
    }

    #[test]
    fn numbers_are_the_backing_inode_numbers_with_the_root_swapped() {
        let root = (7, 1000);
        assert_eq!(plain_ino(root, root), ROOT);
        assert_eq!(plain_ino(root, (7, 1)), 1000);
        assert_eq!(plain_ino(root, (7, 42)), 42);
        let other = plain_ino(root, (8, 42));
        assert!(other > 1 << 62 && other != 42, "{other:x}");
    }

    /// Many inodes, few descriptors: every one still resolves (reopened from its place), the
    /// cache never exceeds its limit, renames are followed, and a removed-and-replaced name
    /// gives ESTALE rather than another file.
    #[test]
    fn descriptors_stay_bounded_and_reopen_from_their_place() {
        let d = tempfile::tempdir().expect("tempdir");
        for i in 0..50 {
            std::fs::create_dir(d.path().join(format!("d{i}"))).expect("mkdir");
            std::fs::write(d.path().join(format!("d{i}/f")), b"x").expect("write");
        }
        let t = table(d.path(), 8);
        let root = t.get(ROOT).expect("root");
        let mut files = Vec::new();
        for i in 0..50 {
            let dir = look(&t, &root, &format!("d{i}"));
            files.push((i, look(&t, &dir, "f")));
            assert!(t.held.lock().len() <= 8, "cache over its limit");
        }
        for (i, f) in &files {
            let fd = t.fd(f).expect("reopened");
            let st = sys::stat_fd(fd.as_fd()).expect("stat");
            let want = std::fs::metadata(d.path().join(format!("d{i}/f"))).expect("meta");
            assert_eq!(st.st_ino, want.ino());
            assert_eq!(f.ino, want.ino(), "the mount's number is the backing one");
        }
        // A rename through the mount is followed.
        std::fs::rename(d.path().join("d3"), d.path().join("moved")).expect("mv");
        let d3 = t.get(files[3].1.parent()).expect("d3 known");
        t.renamed(d3.key(), ROOT, OsStr::new("moved"));
        t.shrink_to(0);
        assert!(
            t.fd(&files[3].1).is_ok(),
            "not found after its directory moved"
        );
        // Another file in place of a known name (renamed over it behind the mount's back) is
        // not taken for it.
        std::fs::rename(d.path().join("d5/f"), d.path().join("d4/f")).expect("mv over");
        t.shrink_to(0);
        let e = t.fd(&files[4].1).expect_err("another file under the name");
        assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
    }

    #[test]
    fn pinned_and_removed_with_links_left_keep_their_descriptor() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("a"), b"x").expect("write");
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).expect("link");
        std::fs::write(d.path().join("open"), b"y").expect("write");
        let t = table(d.path(), 1);
        let root = t.get(ROOT).expect("root");
        let a = look(&t, &root, "a");
        let b = look(&t, &root, "b");
        assert_eq!(a.ino, b.ino, "hard links share the number");
        let open = look(&t, &root, "open");
        t.pin(&open).expect("pin");
        std::fs::remove_file(d.path().join("open")).expect("rm");
        t.removed(open.key(), ROOT, OsStr::new("open"), 0);
        t.fd(&b)
            .expect("held before the unlink, as the file system does");
        std::fs::remove_file(d.path().join("b")).expect("rm b");
        t.removed(b.key(), ROOT, OsStr::new("b"), 1);
        for name in ["x1", "x2"] {
            std::fs::write(d.path().join(name), b"z").expect("write");
            look(&t, &root, name);
        }
        t.shrink_to(0);
        assert!(
            t.fd(&open).is_ok(),
            "an open, unlinked file lost its descriptor"
        );
        assert!(
            t.fd(&a).is_ok(),
            "a file whose remembered name was unlinked"
        );
        t.unpin(open.ino);
        t.forget(open.ino, 1);
        assert!(t.get(open.ino).is_none());
    }

    #[test]
    fn a_reused_number_gets_a_new_generation_and_keeps_its_count() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("f"), b"x").expect("write");
        let t = table(d.path(), 4);
        let root = t.get(ROOT).expect("root");
        let f = look(&t, &root, "f");
        assert_eq!(f.generation(), 0);
        t.removed(f.key(), ROOT, OsStr::new("f"), 0);
        let again = look(&t, &root, "f");
        assert_eq!(again.ino, f.ino);
        assert_eq!(again.generation(), 1);
        t.forget(f.ino, 1);
        assert!(
            t.get(f.ino).is_some(),
            "the new generation's lookup still counts"
        );
        t.forget(f.ino, 1);
        assert!(t.get(f.ino).is_none());
    }
}
