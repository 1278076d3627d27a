//! The filesystem: plain methods over a backing directory (lookup, create, read, write,
//! setattr, readdirplus, xattrs, ...), each returning [`FsError`] on failure. The FUSE adapter
//! (`crate::fuse`) is the only code that speaks to the kernel; this layer knows nothing of
//! the FUSE library, and is tested in-process against a directory in a temporary dir.
//!
//! Tree shape, ownership, modes, times and links pass through to the backing directory; names,
//! symlink targets and xattrs go through `names` (encrypted or plain); file content goes
//! through `content`. This layer knows nothing of ciphers: it sees plain sizes and
//! `CryptError`s. The operations are grouped as gocryptfs's front end groups them: `dir`
//! (lookup, listing, renames, links, removal), `create` (new entries), `file` (open, read,
//! write, allocate), `setattr`, `xattr`.

mod acl;
pub mod attr;
mod create;
mod dir;
pub mod error;
mod file;
pub mod handles;
pub mod inodes;
pub mod prefetch;
mod setattr;
pub mod spares;
mod xattr;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::content::{CryptFile, Volume};
use crate::names::{BackingName, Names};
use crate::sys;
pub use attr::{Attr, Kind};
pub use dir::DirSink;
pub use error::{FsError, FsResult};
use handles::Handles;
use inodes::{Inode, InodeTable};
pub use setattr::{SetAttr, SetTime};

/// Options of the filesystem.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Refuse every change.
    pub read_only: bool,
    /// How long the kernel may cache attributes and entries. Safe for a single-writer mount:
    /// every change goes through this daemon, which keeps the kernel informed.
    pub attr_ttl: Duration,
    /// Most descriptors kept for inodes that no handle has open (see `inodes`).
    pub fd_cache: usize,
    /// Reads of files leave the backing access times alone (O_NOATIME; the times shown are
    /// the backing store's): the `noatime` mount flag.
    pub noatime: bool,
    /// The kernel may hold written data in its page cache and send it later in large writes
    /// (FUSE_WRITEBACK_CACHE, `--writeback-cache`): only for a mount that is the vault's one
    /// writer; a killed daemon then loses what was not yet fsynced.
    pub writeback_cache: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            read_only: false,
            attr_ttl: Duration::from_secs(1),
            fd_cache: 1024,
            noatime: false,
            writeback_cache: false,
        }
    }
}

/// The default size of the inode descriptor cache under an open-file limit of `limit`: a
/// quarter of it, leaving the rest to files applications open (each holds its own), at least
/// 64 and at most 16,384 (beyond that, reopening a cold inode by name, about 2 µs, costs
/// nothing next to the kernel round trip that asked for it).
pub fn default_fd_cache(limit: u64) -> usize {
    (limit / 4).clamp(64, 16_384) as usize
}

/// Who asks (from the kernel's request): a root daemon serving other users acts as them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process (thread) id.
    pub pid: u32,
}

impl Caller {
    /// root (and the daemon itself in tests).
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// An entry for the kernel: the attributes and the generation of the inode's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The attributes.
    pub attr: Attr,
    /// The generation (see `inodes`).
    pub generation: u64,
}

/// Tells the kernel to drop its cached pages of an inode (the adapter's notifier).
pub trait Invalidator: Send + Sync {
    /// Drop the cached pages of `ino`.
    fn inval_inode(&self, ino: u64);
    /// Drop the cached attributes of `ino` (changed behind the kernel's back, e.g. set-ID
    /// bits cleared by an fallocate).
    fn inval_attr(&self, ino: u64);
}

/// The mounted filesystem.
pub struct KmsFs {
    vault: Arc<Volume>,
    names: Names,
    inodes: Arc<InodeTable>,
    handles: Arc<Handles>,
    opts: FsOptions,
    is_root_user: bool,
    invalidator: Arc<std::sync::OnceLock<Arc<dyn Invalidator>>>,
    prefetch: Option<prefetch::Prefetcher>,
    spares: Option<spares::Spares>,
    /// Hole maps of files whose last name is gone while the kernel still knows the inode (a
    /// lookup may still open it): removed when the kernel forgets it, or at unmount.
    doomed_maps: parking_lot::Mutex<std::collections::HashMap<u64, crate::format::Id>>,
}

impl std::fmt::Debug for KmsFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsFs")
            .field("names", &self.names)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn e_io(e: io::Error) -> FsError {
    FsError::io(&e)
}

impl KmsFs {
    /// A filesystem over the backing directory `root`.
    pub fn new(root: &Path, vault: Arc<Volume>, names: Names, opts: FsOptions) -> io::Result<Self> {
        let dir = File::open(root)?;
        let fd = sys::openat(
            dir.as_fd(),
            OsStr::new("."),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        let st = sys::stat_fd(fd.as_fd())?;
        Ok(KmsFs {
            vault,
            names,
            inodes: Arc::new(InodeTable::new(fd, &st, opts.fd_cache)),
            handles: Arc::new(Handles::default()),
            opts,
            is_root_user: sys::euid() == 0,
            invalidator: Arc::default(),
            prefetch: None,
            spares: None,
            doomed_maps: Default::default(),
        })
    }

    /// The vault the mount serves (key cache, layout).
    pub fn vault(&self) -> &Arc<Volume> {
        &self.vault
    }

    /// How long the kernel may cache attributes and entries.
    pub fn attr_ttl(&self) -> Duration {
        self.opts.attr_ttl
    }

    /// Whether this mount is the vault's one writer (the store is not shared with other
    /// hosts): the kernel may then cache directory listings and missing names, since every
    /// change goes through this daemon and the kernel itself.
    pub fn single_writer(&self) -> bool {
        !self
            .vault
            .shared_store
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the kernel caches writes (see `FsOptions::writeback_cache`).
    pub fn writeback_cache(&self) -> bool {
        self.opts.writeback_cache
    }

    /// The inode table, shared with the control socket (status).
    pub fn inode_table(&self) -> Arc<InodeTable> {
        self.inodes.clone()
    }

    /// The open-handle table, shared with the control socket (status, forget).
    pub fn handles(&self) -> Arc<Handles> {
        self.handles.clone()
    }

    /// Unwrap the keys of a directory ahead of a reader going through it file by file, with
    /// `workers` unwraps in flight (worth it when the key provider is a remote KMS).
    pub fn enable_prefetch(&mut self, workers: usize) -> io::Result<()> {
        self.prefetch = Some(prefetch::Prefetcher::start(self.vault.clone(), workers)?);
        Ok(())
    }

    /// Make new files from spares made ahead by a background thread (see `spares`).
    /// `host` names this host (safe in a file name): each host has its own spares.
    pub fn enable_spares(&mut self, ready: usize, host: &str) -> io::Result<()> {
        let root = self
            .inodes
            .get(inodes::ROOT)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        let root_fd = self.inodes.fd(&root)?;
        let meta = sys::openat(
            root_fd.as_fd(),
            OsStr::new(crate::vault::META_DIR),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let dir = format!("spares-{host}");
        self.spares = Some(spares::Spares::start(
            meta.as_fd(),
            OsStr::new(&dir),
            ready,
        )?);
        Ok(())
    }

    /// Where the mount puts the kernel's notifier once the session exists.
    pub fn invalidator_slot(&self) -> Arc<std::sync::OnceLock<Arc<dyn Invalidator>>> {
        self.invalidator.clone()
    }

    /// Number of open file handles.
    pub fn open_files(&self) -> usize {
        self.handles.open_files()
    }

    /// Unmounting: drop every key.
    pub fn destroy(&self) {
        if let Err(e) = self.names.sync_new() {
            tracing::error!("new directory IVs not synced at unmount: {e}");
        }
        self.remove_doomed_maps();
        self.vault.keys.clear();
    }

    /// Drop the kernel's cached pages of `ino` when its key was refused, so no plaintext
    /// outlives the key. Done on another thread: the kernel may hold this inode's page locks
    /// while the request that found the refusal is still being answered.
    fn drop_cached_pages(&self, ino: u64) {
        if let Some(inval) = self.invalidator.get().cloned() {
            let _ = std::thread::Builder::new()
                .name("kmsfs-inval".into())
                .spawn(move || inval.inval_inode(ino));
        }
    }

    /// The kernel's cached attributes of `ino` are stale.
    fn drop_cached_attr(&self, ino: u64) {
        if let Some(inval) = self.invalidator.get() {
            inval.inval_attr(ino);
        }
    }

    fn inode(&self, ino: u64) -> FsResult<Arc<Inode>> {
        self.inodes.get(ino).ok_or(FsError::ESTALE)
    }

    /// The backing descriptor of `inode` (held, or reopened from its place).
    fn fd(&self, inode: &Inode) -> FsResult<inodes::Fd> {
        self.inodes.fd(inode).map_err(e_io)
    }

    /// The entry of inode `ino` with attributes `attr`.
    fn entry(&self, attr: Attr) -> Entry {
        let generation = self.inodes.get(attr.ino).map_or(0, |i| i.generation());
        Entry { attr, generation }
    }

    fn attr_of(&self, ino: u64, fd: BorrowedFd<'_>) -> FsResult<Attr> {
        let st = sys::stat_fd(fd).map_err(e_io)?;
        Ok(self.plain_attr(ino, &st))
    }

    /// The attributes the mount shows for a backing `st`: plain sizes of files and symlinks.
    fn plain_attr(&self, ino: u64, st: &libc::stat) -> Attr {
        let mut a = attr::from_stat(ino, st, &self.vault);
        if a.kind == Kind::Symlink {
            a.size = self.names.link_size(a.size);
        }
        a
    }

    fn writable(&self) -> FsResult<()> {
        if self.opts.read_only {
            Err(FsError::EROFS)
        } else {
            Ok(())
        }
    }

    /// The backing name for a new entry `name` in `parent` (reserved names refused).
    fn new_name(&self, parent: &Inode, name: &OsStr) -> FsResult<BackingName> {
        self.writable()?;
        if self.names.is_reserved(parent.is_root, name) {
            return Err(FsError::EPERM);
        }
        self.names
            .backing(self.fd(parent)?.as_fd(), name)
            .map_err(e_io)
    }

    fn existing_name(&self, parent: &Inode, name: &OsStr) -> FsResult<BackingName> {
        if self.names.is_reserved(parent.is_root, name) {
            return Err(FsError::ENOENT);
        }
        self.names
            .backing(self.fd(parent)?.as_fd(), name)
            .map_err(e_io)
    }

    /// Look `bname` up in `parent` and count a kernel reference.
    fn lookup_backing(&self, parent: &Inode, bname: &OsStr) -> FsResult<Entry> {
        let pfd = self.fd(parent)?;
        let fd = self
            .inodes
            .open_at(pfd.as_fd(), bname, libc::O_PATH | libc::O_NOFOLLOW)
            .map_err(e_io)?;
        let st = sys::stat_fd(fd.as_fd()).map_err(e_io)?;
        let inode = self.inodes.remember(fd, &st, parent.ino, bname);
        Ok(Entry {
            attr: self.plain_attr(inode.ino, &st),
            generation: inode.generation(),
        })
    }

    /// The open `CryptFile` of a regular file inode (shared by all its handles). While it is
    /// open, the inode's descriptor is kept (unpinned at the last release).
    fn open_crypt(&self, ino: u64, inode: &Inode) -> FsResult<(u64, Arc<CryptFile>)> {
        self.handles.open_file(ino, || {
            let path_fd = self.fd(inode)?;
            let noatime = if self.opts.noatime {
                libc::O_NOATIME
            } else {
                0
            };
            let reopen = |flags: libc::c_int| {
                self.inodes
                    .retrying(|| sys::reopen(path_fd.as_fd(), flags | noatime))
                    // O_NOATIME needs the owner or CAP_FOWNER.
                    .or_else(|e| match e.raw_os_error() {
                        Some(libc::EPERM) if noatime != 0 => {
                            self.inodes.retrying(|| sys::reopen(path_fd.as_fd(), flags))
                        }
                        _ => Err(e),
                    })
            };
            let fd = reopen(libc::O_RDWR)
                .or_else(|e| {
                    if e.raw_os_error() == Some(libc::EACCES)
                        || e.raw_os_error() == Some(libc::EROFS)
                    {
                        reopen(libc::O_RDONLY)
                    } else {
                        Err(e)
                    }
                })
                .map_err(e_io)?;
            self.inodes.pin(inode).map_err(e_io)?;
            Ok(CryptFile::new(File::from(fd), self.vault.clone()))
        })
    }

    /// Close handle `fh` of inode `ino`; the last close of a file lets its key go (TTL 0) and
    /// its descriptor be closed when the cache needs room.
    fn release_handle(&self, ino: u64, fh: u64) {
        if let Some(file) = self.handles.release_file(ino, fh) {
            if let Some(id) = file.file_id() {
                self.vault.keys.release(&id);
            }
            let unlinked = file.unlinked_map();
            self.inodes.unpin(ino);
            // The kernel may open an unlinked file again until it forgets it: its map goes
            // then — or now, when the forget came first and the inode is gone already.
            if let Some(id) = unlinked {
                self.doom_map(ino, id);
            }
        }
    }

    /// The backing file's stamp now (None when it cannot be reached).
    fn backing_stamp(&self, inode: &Inode) -> Option<sys::Stamp> {
        let fd = self.inodes.fd(inode).ok()?;
        sys::stat_fd(fd.as_fd()).ok().map(|st| sys::stamp(&st))
    }

    /// Run `change`, made through this mount (which keeps the kernel's pages in step with it),
    /// and note how the backing file looks after it; but only if it looked as last noted
    /// before it: otherwise something else changed it and its cached pages are not trusted.
    /// Noted here, not at close: a close is answered after the closer has moved on.
    fn change_in_step<R>(&self, ino: u64, change: impl FnOnce() -> R) -> R {
        let inode = self.inodes.get(ino);
        let before = inode.as_deref().and_then(|i| self.backing_stamp(i));
        let r = change();
        if let Some(inode) = inode {
            inode.note_change(before, self.backing_stamp(&inode));
        }
        r
    }

    /// Note how a new file looks: the kernel has no pages of it yet.
    fn pages_in_step(&self, inode: &Inode) {
        if let Some(now) = self.backing_stamp(inode) {
            inode.cached_pages_match(now);
        }
    }

    /// Whether an open may keep the kernel's cached pages of `inode` (else the kernel drops
    /// them): the backing file has not changed since they were last in step, no other host
    /// can have written it, and its key is still fresh (`key_cached`, asked last: it may read
    /// the header; pages are also dropped when a key goes stale, see
    /// `drop_pages_of_stale_keys`).
    fn keep_cache(&self, inode: &Inode, key_cached: impl FnOnce() -> bool) -> bool {
        let shared = self
            .vault
            .shared_store
            .load(std::sync::atomic::Ordering::Relaxed);
        let Some(now) = self.backing_stamp(inode) else {
            return false;
        };
        inode.cached_pages_match(now) && !shared && key_cached()
    }
}

/// Drop the kernel's cached pages of every open file whose key is no longer fresh in the cache
/// (past its TTL, evicted, forgotten), so no plaintext is served from the page cache longer
/// than its key may be used: the next read needs the key again. Called by the mount's
/// key-expiry thread several times per TTL.
pub fn drop_pages_of_stale_keys(handles: &Handles, vault: &Volume, inval: &dyn Invalidator) {
    for (ino, file) in handles.open_files_by_inode() {
        // Nothing read since the last drop: no need to read the header to find the key.
        if !file.pages_may_be_cached() {
            continue;
        }
        let stale = file
            .stored_file_id()
            .is_some_and(|id| !vault.keys.contains(&id));
        if stale && file.take_pages_cached() {
            inval.inval_inode(ino);
        }
    }
}

#[cfg(test)]
mod tests;
