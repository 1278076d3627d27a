//! The FUSE front end: a `fuser::Filesystem` over a backing directory.
//!
//! Tree shape, ownership, modes, times and links pass through to the backing directory; names,
//! symlink targets and xattrs go through `names` (encrypted or plain); file content goes
//! through `cryptfile`. This layer knows nothing of ciphers: it sees plain sizes and
//! `CryptError`s.

pub mod attr;
pub mod errno;
pub mod handles;
pub mod inodes;
pub mod prefetch;
pub mod spares;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirEntryExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::cryptfile::{CryptError, CryptFile, Vault};
use crate::keys::KeyError;
use crate::names::{BackingName, Names};
use crate::sys;
use handles::{DirEntry, DirHandle, Handles};
use inodes::{Inode, InodeTable};

/// Options of the front end.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Refuse every change.
    pub read_only: bool,
    /// How long the kernel may cache attributes and entries. Safe for a single-writer mount:
    /// every change goes through this daemon, which keeps the kernel informed.
    pub attr_ttl: Duration,
    /// Most descriptors kept for inodes that no handle has open (see `inodes`).
    pub fd_cache: usize,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            read_only: false,
            attr_ttl: Duration::from_secs(1),
            fd_cache: 1024,
        }
    }
}

/// The mounted filesystem.
#[derive(Debug)]
pub struct KmsFs {
    vault: Arc<Vault>,
    names: Names,
    inodes: Arc<InodeTable>,
    handles: Arc<Handles>,
    opts: FsOptions,
    is_root_user: bool,
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    prefetch: Option<prefetch::Prefetcher>,
    spares: Option<spares::Spares>,
}

type Result<T> = std::result::Result<T, Errno>;

/// The default size of the inode descriptor cache under an open-file limit of `limit`: a
/// quarter of it, leaving the rest to files applications open (each holds its own), at least
/// 64 and at most 16,384 (beyond that, reopening a cold inode by name, about 2 µs, costs
/// nothing next to the kernel round trip that asked for it).
pub fn default_fd_cache(limit: u64) -> usize {
    (limit / 4).clamp(64, 16_384) as usize
}

/// The changes one `setattr` asks for (each `None` leaves that attribute alone).
struct AttrChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
    fh: Option<FileHandle>,
    /// A truncate that must also clear set-ID bits (see `kill_suid_sgid`).
    kill_suid_sgid: bool,
}

fn e_io(e: io::Error) -> Errno {
    errno::io(&e)
}

impl KmsFs {
    /// A filesystem over the backing directory `root`.
    pub fn new(root: &Path, vault: Arc<Vault>, names: Names, opts: FsOptions) -> io::Result<Self> {
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
            // SAFETY: geteuid has no preconditions.
            is_root_user: unsafe { libc::geteuid() } == 0,
            notifier: Arc::default(),
            prefetch: None,
            spares: None,
        })
    }

    /// The vault the mount serves (key cache, layout).
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
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
            .inode(INodeNo(inodes::ROOT))
            .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        let root_fd = self
            .inodes
            .fd(&root)
            .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)))?;
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

    /// A new regular file `name` in `parent` with `mode`, opened read-write: a spare moved
    /// into place when there is one (not in a set-group-ID directory, whose group a rename
    /// would not give, nor for another user), else made here. `excl` is 0 or O_EXCL.
    fn make_file(
        &self,
        parent: &Inode,
        name: &OsStr,
        mode: u32,
        excl: i32,
        for_other_user: bool,
    ) -> io::Result<OwnedFd> {
        let pfd = self.inodes.fd(parent)?;
        // A spare belongs to the daemon: not for a file made for another user.
        if let Some(pool) = self.spares.as_ref().filter(|_| !for_other_user) {
            let setgid = sys::stat_fd(pfd.as_fd())?.st_mode & libc::S_ISGID != 0;
            let spare = if setgid { None } else { pool.take() };
            if let Some(spare) = spare {
                match pool.place(spare, pfd.as_fd(), name, mode) {
                    Ok(fd) => return Ok(fd),
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) && excl != 0 => {
                        return Err(e);
                    }
                    // The name exists (open it) or is on another file system: as below.
                    Err(_) => {}
                }
            }
        }
        self.inodes.retrying(|| {
            sys::openat(
                pfd.as_fd(),
                name,
                libc::O_CREAT | libc::O_RDWR | libc::O_NOFOLLOW | excl,
                mode,
            )
        })
    }

    /// Where the mount puts the session's notifier once the session exists.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Drop the kernel's cached pages of `ino` when its key was refused, so no plaintext
    /// outlives the key. Done on another thread: the kernel may hold this inode's page locks
    /// while the request that found the refusal is still being answered.
    fn drop_cached_pages(&self, ino: u64) {
        if let Some(n) = self.notifier.get().cloned() {
            let _ = std::thread::Builder::new()
                .name("kmsfs-inval".into())
                .spawn(move || {
                    if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                        tracing::debug!("page cache invalidation of inode {ino}: {e}");
                    }
                });
        }
    }

    /// Number of open file handles.
    pub fn open_files(&self) -> usize {
        self.handles.open_files()
    }

    fn inode(&self, ino: INodeNo) -> Result<Arc<Inode>> {
        self.inodes.get(ino.0).ok_or(Errno::ESTALE)
    }

    /// The backing descriptor of `inode` (held, or reopened from its place).
    fn fd(&self, inode: &Inode) -> Result<inodes::Fd> {
        self.inodes.fd(inode).map_err(e_io)
    }

    /// Before `name` in `dir` is removed or replaced: its backing object and link count, with
    /// its descriptor held if the kernel knows it (its remembered place may be this name).
    fn before_removal(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Option<((u64, u64), u64)> {
        let st = sys::stat_at(dir, name).ok()?;
        let key = inodes::key_of(&st);
        if let Some(inode) = self.inodes.get(self.inodes.ino_of(key)) {
            let _ = self.inodes.fd(&inode);
        }
        Some((key, st.st_nlink))
    }

    /// The generation of inode `ino` for the kernel's entry (see `inodes`).
    fn generation(&self, ino: INodeNo) -> Generation {
        Generation(self.inodes.get(ino.0).map_or(0, |i| i.generation()))
    }

    fn attr_of(&self, ino: u64, fd: BorrowedFd<'_>) -> Result<FileAttr> {
        let st = sys::stat_fd(fd).map_err(e_io)?;
        Ok(self.plain_attr(ino, &st))
    }

    /// The attributes the mount shows for a backing `st`: plain sizes of files and symlinks.
    fn plain_attr(&self, ino: u64, st: &libc::stat) -> FileAttr {
        let mut a = attr::from_stat(ino, st, &self.vault);
        if a.kind == FileType::Symlink {
            a.size = self.names.link_size(a.size);
        }
        a
    }

    fn writable(&self) -> Result<()> {
        if self.opts.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// The backing name for a new entry `name` in `parent` (reserved names refused).
    fn new_name(&self, parent: &Inode, name: &OsStr) -> Result<BackingName> {
        self.writable()?;
        if self.names.is_reserved(parent.is_root, name) {
            return Err(Errno::EPERM);
        }
        self.names
            .backing(self.fd(parent)?.as_fd(), name)
            .map_err(e_io)
    }

    fn existing_name(&self, parent: &Inode, name: &OsStr) -> Result<BackingName> {
        if self.names.is_reserved(parent.is_root, name) {
            return Err(Errno::ENOENT);
        }
        self.names
            .backing(self.fd(parent)?.as_fd(), name)
            .map_err(e_io)
    }

    /// Look `bname` up in `parent` and count a kernel reference.
    fn lookup_backing(&self, parent: &Inode, bname: &OsStr) -> Result<FileAttr> {
        let pfd = self.fd(parent)?;
        let fd = self
            .inodes
            .open_at(pfd.as_fd(), bname, libc::O_PATH | libc::O_NOFOLLOW)
            .map_err(e_io)?;
        let st = sys::stat_fd(fd.as_fd()).map_err(e_io)?;
        let inode = self.inodes.remember(fd, &st, parent.ino, bname);
        Ok(self.plain_attr(inode.ino, &st))
    }

    /// For a root daemon serving other users (`--allow-other`): act as the requesting user on
    /// this thread while a backing entry is made, so it is theirs from the first moment (owner,
    /// group, or the set-group-ID directory's group, as the kernel decides) and the backing
    /// permission checks are theirs. Nothing to do for a daemon serving only its own user.
    fn as_caller(&self, req: &Request) -> Result<Option<sys::ActingAs>> {
        if !self.is_root_user || (req.uid() == 0 && req.gid() == 0) {
            return Ok(None);
        }
        let groups = sys::supplementary_groups(req.pid());
        sys::ActingAs::begin(req.uid(), req.gid(), &groups)
            .map(Some)
            .map_err(e_io)
    }

    fn reply_entry(&self, reply: ReplyEntry, r: Result<FileAttr>) {
        match r {
            Ok(attr) => reply.entry(&self.opts.attr_ttl, &attr, self.generation(attr.ino)),
            Err(e) => reply.error(e),
        }
    }

    /// The open `CryptFile` of a regular file inode (shared by all its handles). While it is
    /// open, the inode's descriptor is kept (unpinned at the last release).
    fn open_crypt(&self, ino: u64, inode: &Inode) -> Result<(u64, Arc<CryptFile>)> {
        self.handles.open_file(ino, || {
            let path_fd = self.fd(inode)?;
            let reopen = |flags| self.inodes.retrying(|| sys::reopen(path_fd.as_fd(), flags));
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

    /// Clear set-user-ID, and set-group-ID when the group may execute, and (plaintext names
    /// only: no other mode stores it) file capabilities: what Linux does when a caller without
    /// CAP_FSETID writes or truncates a file. Under FUSE_HANDLE_KILLPRIV_V2 the kernel leaves
    /// this to us; the daemon's own root writes to the backing file would not do it.
    fn kill_suid_sgid(&self, inode: &Inode) -> Result<()> {
        let fd = self.fd(inode)?;
        let mode = sys::stat_fd(fd.as_fd()).map_err(e_io)?.st_mode;
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        let mut kill = libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            kill |= libc::S_ISGID;
        }
        let path = sys::proc_path(fd.as_fd());
        if mode & kill != 0 {
            // SAFETY: valid C string.
            sys::cvt(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777 & !kill) }).map_err(e_io)?;
        }
        let caps = c"security.capability";
        // SAFETY: valid C strings; a null buffer of length 0 asks only for the size.
        if !self.names.is_encrypted()
            && unsafe { libc::getxattr(path.as_ptr(), caps.as_ptr(), std::ptr::null_mut(), 0) } > 0
        {
            // SAFETY: valid C strings.
            sys::cvt(unsafe { libc::removexattr(path.as_ptr(), caps.as_ptr()) }).map_err(e_io)?;
        }
        Ok(())
    }

    fn do_setattr(&self, ino: INodeNo, change: AttrChange) -> Result<FileAttr> {
        let AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
            kill_suid_sgid,
        } = change;
        let inode = self.inode(ino)?;
        let fd = self.fd(&inode)?;
        let is_link =
            sys::stat_fd(fd.as_fd()).map_err(e_io)?.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if mode.is_some()
            || uid.is_some()
            || gid.is_some()
            || size.is_some()
            || atime.is_some()
            || mtime.is_some()
        {
            self.writable()?;
        }
        let path = sys::proc_path(fd.as_fd());
        if let Some(mode) = mode {
            if !is_link {
                // SAFETY: valid C string.
                sys::cvt(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) }).map_err(e_io)?;
            }
        }
        if uid.is_some() || gid.is_some() {
            let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
            // SAFETY: valid fd; empty path with AT_EMPTY_PATH names the fd itself.
            sys::cvt(unsafe {
                libc::fchownat(
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    u,
                    g,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })
            .map_err(e_io)?;
        }
        if let Some(size) = size {
            let file = match fh.and_then(|fh| self.handles.file(fh.0)) {
                Some(f) => f,
                None => {
                    let (fh, f) = self.open_crypt(ino.0, &inode)?;
                    self.release(ino.0, fh);
                    f
                }
            };
            file.truncate(size).map_err(|e| errno::crypt(&e))?;
            if kill_suid_sgid {
                self.kill_suid_sgid(&inode)?;
            }
        }
        if atime.is_some() || mtime.is_some() {
            let ts = |t: Option<TimeOrNow>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(TimeOrNow::Now) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(TimeOrNow::SpecificTime(t)) => {
                    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                    libc::timespec {
                        tv_sec: d.as_secs() as libc::time_t,
                        tv_nsec: d.subsec_nanos() as libc::c_long,
                    }
                }
            };
            let times = [ts(atime), ts(mtime)];
            let rc = if is_link {
                // SAFETY: valid fd, empty path names the symlink itself.
                unsafe {
                    libc::utimensat(
                        fd.as_raw_fd(),
                        c"".as_ptr(),
                        times.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    )
                }
            } else {
                // SAFETY: valid C string and times array.
                unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }
            };
            sys::cvt(rc).map_err(e_io)?;
        }
        self.attr_of(ino.0, fd.as_fd())
    }

    /// Close handle `fh` of inode `ino`; the last close of a file lets its key go (TTL 0) and
    /// its descriptor be closed when the cache needs room.
    fn release(&self, ino: u64, fh: u64) {
        if let Some(file) = self.handles.release_file(ino, fh) {
            if let Some(id) = file.file_id() {
                self.vault.keys.release(&id);
            }
            self.inodes.unpin(ino);
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

    fn read_dir(&self, inode: &Inode) -> Result<DirHandle> {
        let fd = self.fd(inode)?;
        let dir = self
            .inodes
            .retrying(|| sys::read_dir(fd.as_fd()))
            .map_err(e_io)?;
        let lister = self.names.lister(fd.as_fd(), inode.is_root).map_err(e_io)?;
        let dot = |name: &str, ino: u64| DirEntry {
            ino,
            kind: FileType::Directory,
            name: name.into(),
            backing: name.into(),
        };
        let mut entries = vec![dot(".", inode.ino), dot("..", inode.parent())];
        let dev = inode.key().0;
        for entry in dir {
            let entry = entry.map_err(e_io)?;
            let Some(name) = lister.plain(&entry.file_name()) else {
                continue;
            };
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            entries.push(DirEntry {
                // The number `stat` gives (d_ino of a mount point inside the vault excepted).
                ino: self.inodes.ino_of((dev, entry.ino())),
                kind,
                name,
                backing: entry.file_name(),
            });
        }
        Ok(DirHandle { entries })
    }

    /// The `/proc/self/fd` path of inode `ino`, with the descriptor it names (keep it alive
    /// while the path is used).
    fn xattr_path(&self, ino: INodeNo) -> Result<(inodes::Fd, std::ffi::CString)> {
        let fd = self.fd(&*self.inode(ino)?)?;
        let st = sys::stat_fd(fd.as_fd()).map_err(e_io)?;
        // The proc path follows links; user xattrs do not exist on symlinks anyway.
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(Errno::EPERM);
        }
        let path = sys::proc_path(fd.as_fd());
        Ok((fd, path))
    }
}

/// Answer an operation that returns nothing but success or an errno.
fn reply_empty<T>(reply: ReplyEmpty, r: Result<T>) {
    match r {
        Ok(_) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Reply with an xattr value or list: the size when asked for 0 bytes, ERANGE when too small.
fn reply_xattr_buf(reply: ReplyXattr, size: u32, buf: &[u8]) {
    if size == 0 {
        reply.size(buf.len() as u32);
    } else if buf.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(buf);
    }
}

/// Call an xattr getter twice: once for the size, once for the bytes.
fn xattr_bytes(get: impl Fn(*mut libc::c_void, usize) -> libc::ssize_t) -> Result<Vec<u8>> {
    loop {
        let n = get(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(e_io(io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; n as usize];
        let m = get(buf.as_mut_ptr().cast(), buf.len());
        if m >= 0 {
            buf.truncate(m as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(e_io(err));
        }
    }
}

impl Filesystem for KmsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        // The kernel asks for attributes with the entries when a lookup of them would follow.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        // We clear set-user/group-ID bits on write and truncate ourselves (`kill_suid_sgid`),
        // which spares every write() the kernel's GETXATTR "security.capability" round trip.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        Ok(())
    }

    fn destroy(&mut self) {
        self.vault.keys.clear();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.inode(parent).and_then(|p| {
            let bname = self.existing_name(&p, name)?;
            self.lookup_backing(&p, &bname)
        });
        match r {
            Ok(attr) => reply.entry(&self.opts.attr_ttl, &attr, self.generation(attr.ino)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self
            .inode(ino)
            .and_then(|i| self.attr_of(ino.0, self.fd(&i)?.as_fd()))
        {
            Ok(attr) => reply.attr(&self.opts.attr_ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
            // fuser does not pass FATTR_KILL_SUIDGID on; the kernel sets it on a truncate by a
            // caller without CAP_FSETID, which for all practical purposes means non-root.
            kill_suid_sgid: size.is_some() && req.uid() != 0,
        };
        match self.change_in_step(ino.0, || self.do_setattr(ino, change)) {
            Ok(attr) => reply.attr(&self.opts.attr_ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self
            .inode(ino)
            .and_then(|i| self.names.read_link(self.fd(&i)?.as_fd()).map_err(e_io));
        match r {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.inode(parent).and_then(|p| {
            let bname = self.new_name(&p, name)?;
            let pfd = self.fd(&p)?;
            let acting = self.as_caller(req)?;
            self.names
                .create(pfd.as_fd(), &bname, |b| {
                    let c = sys::cstr(b)?;
                    // SAFETY: valid dir fd and C string.
                    sys::cvt(unsafe {
                        libc::mknodat(
                            pfd.as_raw_fd(),
                            c.as_ptr(),
                            mode & !umask,
                            libc::dev_t::from(rdev),
                        )
                    })
                })
                .map_err(e_io)?;
            drop(acting);
            self.lookup_backing(&p, &bname)
        });
        self.reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.inode(parent).and_then(|p| {
            let bname = self.new_name(&p, name)?;
            let pfd = self.fd(&p)?;
            let acting = self.as_caller(req)?;
            self.names
                .mkdir(pfd.as_fd(), &bname, mode & !umask)
                .map_err(e_io)?;
            drop(acting);
            self.lookup_backing(&p, &bname)
        });
        self.reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.inode(parent).and_then(|p| {
            self.writable()?;
            let bname = self.existing_name(&p, name)?;
            let pfd = self.fd(&p)?;
            let gone = self.before_removal(pfd.as_fd(), &bname);
            self.names.unlink(pfd.as_fd(), &bname).map_err(e_io)?;
            if let Some((key, nlink)) = gone {
                self.inodes
                    .removed(key, p.ino, &bname, nlink.saturating_sub(1));
            }
            Ok(())
        });
        reply_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.inode(parent).and_then(|p| {
            self.writable()?;
            let bname = self.existing_name(&p, name)?;
            let pfd = self.fd(&p)?;
            let gone = self.before_removal(pfd.as_fd(), &bname);
            self.names.rmdir(pfd.as_fd(), &bname).map_err(e_io)?;
            if let Some((key, _)) = gone {
                self.inodes.removed(key, p.ino, &bname, 0);
            }
            Ok(())
        });
        reply_empty(reply, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.inode(parent).and_then(|p| {
            let bname = self.new_name(&p, link_name)?;
            let t = sys::cstr(&self.names.link_target(target.as_os_str()).map_err(e_io)?)
                .map_err(e_io)?;
            let pfd = self.fd(&p)?;
            let acting = self.as_caller(req)?;
            self.names
                .create(pfd.as_fd(), &bname, |b| {
                    let c = sys::cstr(b)?;
                    // SAFETY: valid C strings and dir fd.
                    sys::cvt(unsafe { libc::symlinkat(t.as_ptr(), pfd.as_raw_fd(), c.as_ptr()) })
                })
                .map_err(e_io)?;
            drop(acting);
            self.lookup_backing(&p, &bname)
        });
        self.reply_entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let p = self.inode(parent)?;
            let np = self.inode(newparent)?;
            let from = self.existing_name(&p, name)?;
            let to = self.new_name(&np, newname)?;
            let (pfd, npfd) = (self.fd(&p)?, self.fd(&np)?);
            let moving = sys::stat_at(pfd.as_fd(), &from)
                .ok()
                .map(|st| inodes::key_of(&st));
            let replaced = self.before_removal(npfd.as_fd(), &to);
            self.names
                .rename(pfd.as_fd(), &from, npfd.as_fd(), &to, flags.bits())
                .map_err(e_io)?;
            // The inode table follows: the moved object's place, and the one replaced or
            // exchanged with it.
            if let Some(key) = moving {
                self.inodes.renamed(key, np.ino, &to);
            }
            match replaced {
                Some((key, _)) if Some(key) == moving => {}
                Some((key, _)) if flags.contains(RenameFlags::RENAME_EXCHANGE) => {
                    self.inodes.renamed(key, p.ino, &from);
                }
                Some((key, nlink)) => {
                    let dir = self
                        .inodes
                        .get(self.inodes.ino_of(key))
                        .and_then(|i| self.fd(&i).ok())
                        .and_then(|fd| sys::stat_fd(fd.as_fd()).ok())
                        .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
                    let left = if dir { 0 } else { nlink.saturating_sub(1) };
                    self.inodes.removed(key, np.ino, &to, left);
                }
                None => {}
            }
            Ok(())
        })();
        reply_empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let inode = self.inode(ino)?;
            let np = self.inode(newparent)?;
            let bname = self.new_name(&np, newname)?;
            let (fd, npfd) = (self.fd(&inode)?, self.fd(&np)?);
            let src = sys::proc_path(fd.as_fd());
            self.names
                .create(npfd.as_fd(), &bname, |b| {
                    let c = sys::cstr(b)?;
                    // SAFETY: valid C strings and dir fd; the proc path is followed to the object.
                    sys::cvt(unsafe {
                        libc::linkat(
                            libc::AT_FDCWD,
                            src.as_ptr(),
                            npfd.as_raw_fd(),
                            c.as_ptr(),
                            libc::AT_SYMLINK_FOLLOW,
                        )
                    })
                })
                .map_err(e_io)?;
            self.lookup_backing(&np, &bname)
        })();
        self.reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let inode = self.inode(ino)?;
            let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
            if write || flags.0 & libc::O_TRUNC != 0 {
                self.writable()?;
            }
            let (fh, file) = self.open_crypt(ino.0, &inode)?;
            // Asked at most once, and only when needed: it may read the header.
            let key_cached = std::cell::OnceCell::new();
            let key_cached = || *key_cached.get_or_init(|| crate::cryptfile::key_is_cached(&file));
            if let Some(p) = &self.prefetch {
                if let Some(dir) = self.inodes.get(inode.parent()) {
                    let parent = self.inodes.get(dir.parent()).filter(|_| !dir.is_root);
                    let parent_fd = parent.and_then(|p| self.inodes.fd(&p).ok());
                    if let Ok(dir_fd) = self.inodes.fd(&dir) {
                        let parent_fd = parent_fd.as_ref().map(|f| f.as_fd());
                        if key_cached() {
                            p.warm_open(dir_fd.as_fd(), parent_fd);
                        } else {
                            p.cold_open(dir_fd.as_fd(), parent_fd);
                        }
                    }
                }
            }
            // A damaged file still opens: its intact blocks read, its damaged end gives EIO.
            if flags.0 & libc::O_TRUNC != 0 {
                if let Err(e) = file.truncate(0) {
                    self.release(ino.0, fh);
                    return Err(errno::crypt(&e));
                }
            }
            Ok((fh, self.keep_cache(&inode, key_cached)))
        })();
        match r {
            Ok((fh, keep)) => {
                let flags = if keep {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.handles.file(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        match file.read(offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                if matches!(
                    &e,
                    CryptError::Key {
                        err: KeyError::Refused(_),
                        ..
                    }
                ) {
                    self.drop_cached_pages(ino.0);
                }
                reply.error(errno::crypt(&e))
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let Some(file) = self.handles.file(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.inode(ino).and_then(|i| self.kill_suid_sgid(&i)) {
                return reply.error(e);
            }
        }
        match self.change_in_step(ino.0, || file.write(offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno::crypt(&e)),
        }
    }

    // No `flush`: writes go straight to the backing file, so nothing is buffered here, and the
    // default ENOSYS tells the kernel to stop sending one round trip per close.

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release(ino.0, fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(file) = self.handles.file(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        match file.sync(datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno::crypt(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.inode(ino).and_then(|i| self.read_dir(&i)) {
            Ok(dir) => reply.opened(FileHandle(self.handles.open_dir(dir)), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = self.handles.dir(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, e) in dir.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    /// Entries with their attributes, sparing `ls -l`, `find`, `stat` and openers of every
    /// file one LOOKUP each. Every entry but "." and ".." counts as a lookup of its inode.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (Some(dir), Ok(parent)) = (self.handles.dir(fh.0), self.inode(ino)) else {
            return reply.error(Errno::EBADF);
        };
        let ttl = self.opts.attr_ttl;
        let mut added = 0;
        for (i, e) in dir.entries.iter().enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            if i < 2 {
                // The kernel takes nothing from "." and ".." but their names.
                let Ok(attr) = self
                    .fd(&parent)
                    .and_then(|fd| self.attr_of(ino.0, fd.as_fd()))
                else {
                    continue;
                };
                if reply.add(ino, next, &e.name, &ttl, &attr, Generation(0)) {
                    break;
                }
                added += 1;
                continue;
            }
            let attr = match self.lookup_backing(&parent, &e.backing) {
                Ok(attr) => attr,
                // Removed since opendir: left out.
                Err(err) if err == Errno::ENOENT || err == Errno::ESTALE => continue,
                // Anything else (e.g. out of descriptors) must not shorten the listing
                // silently: end this batch (the kernel asks again from here) or fail it.
                Err(err) if added == 0 => return reply.error(err),
                Err(_) => break,
            };
            if reply.add(
                attr.ino,
                next,
                &e.name,
                &ttl,
                &attr,
                self.generation(attr.ino),
            ) {
                // Not sent: the kernel will not count this lookup.
                self.inodes.forget(attr.ino.0, 1);
                break;
            }
            added += 1;
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.release_dir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.inode(ino).and_then(|i| {
            let fd: OwnedFd = sys::reopen(self.fd(&i)?.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(e_io)?;
            File::from(fd).sync_all().map_err(e_io)
        });
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = self.inode(INodeNo(inodes::ROOT)).and_then(|root| {
            // SAFETY: zeroed statvfs is a valid out buffer.
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: valid fd and out pointer.
            sys::cvt(unsafe { libc::fstatvfs(self.fd(&root)?.as_raw_fd(), &mut s) })
                .map_err(e_io)?;
            Ok(s)
        });
        match r {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .writable()
            .and_then(|()| self.xattr_path(ino))
            .and_then(|(_i, path)| {
                let n = self.names.xattr_name(name).map_err(e_io)?;
                let value = self.names.seal_xattr(&n, value).map_err(e_io)?;
                // SAFETY: valid C strings and value buffer.
                sys::cvt(unsafe {
                    libc::setxattr(
                        path.as_ptr(),
                        n.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        flags,
                    )
                })
                .map_err(e_io)
            });
        reply_empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.xattr_path(ino).and_then(|(_i, path)| {
            let n = self.names.xattr_name(name).map_err(e_io)?;
            // SAFETY: valid C strings; buffer pointer and length come from xattr_bytes.
            let stored = xattr_bytes(|buf, len| unsafe {
                libc::getxattr(path.as_ptr(), n.as_ptr(), buf, len)
            })?;
            self.names.open_xattr(&n, stored).map_err(e_io)
        });
        match r {
            Ok(v) => reply_xattr_buf(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }

    /// No ioctl is supported (ENOTTY); answered here so that `isatty()` on every open, as
    /// Python and stdio do, is not logged as an unimplemented operation.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = match self.xattr_path(ino) {
            // Symlinks have no user xattrs: list nothing rather than fail `ls -l`.
            Err(Errno::EPERM) => Ok(Vec::new()),
            Err(e) => Err(e),
            // SAFETY: valid C string; buffer pointer and length come from xattr_bytes.
            Ok((_i, path)) => {
                xattr_bytes(|buf, len| unsafe { libc::listxattr(path.as_ptr(), buf.cast(), len) })
                    .map(|list| self.names.plain_xattr_list(list))
            }
        };
        match r {
            Ok(v) => reply_xattr_buf(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .writable()
            .and_then(|()| self.xattr_path(ino))
            .and_then(|(_i, path)| {
                let n = self.names.xattr_name(name).map_err(e_io)?;
                // SAFETY: valid C strings.
                sys::cvt(unsafe { libc::removexattr(path.as_ptr(), n.as_ptr()) }).map_err(e_io)
            });
        reply_empty(reply, r);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions makes the kernel check modes; here only existence matters.
        match self.inode(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let p = self.inode(parent)?;
            let bname = self.new_name(&p, name)?;
            let excl = flags & libc::O_EXCL;
            let acting = self.as_caller(req)?;
            let pfd = self.fd(&p)?;
            let created = self
                .names
                .create(pfd.as_fd(), &bname, |b| {
                    self.make_file(&p, b, mode & !umask, excl, acting.is_some())
                })
                .map_err(e_io)?;
            drop(acting);
            let attr = self.lookup_backing(&p, &bname)?;
            let inode = self.inode(attr.ino)?;
            // The descriptor the create returned serves the file, unless it is open already
            // or the name meanwhile leads elsewhere (another host renamed or replaced it).
            let same =
                sys::stat_fd(created.as_fd()).is_ok_and(|st| inodes::key_of(&st) == inode.key());
            let (fh, file) = if same {
                self.handles.open_file(attr.ino.0, || {
                    self.inodes.pin(&inode).map_err(e_io)?;
                    Ok::<_, Errno>(CryptFile::new(File::from(created), self.vault.clone()))
                })?
            } else {
                self.open_crypt(attr.ino.0, &inode)?
            };
            if flags & libc::O_TRUNC != 0 {
                // Cheap for a new file: an empty backing file needs no lock and no syscall.
                if let Err(e) = file.truncate(0) {
                    self.release(attr.ino.0, fh);
                    return Err(errno::crypt(&e));
                }
                if attr.size > 0 {
                    self.pages_in_step(&inode);
                    return Ok((self.attr_of(attr.ino.0, self.fd(&inode)?.as_fd())?, fh));
                }
            }
            self.pages_in_step(&inode);
            Ok((attr, fh))
        })();
        match r {
            Ok((attr, fh)) => reply.created(
                &self.opts.attr_ttl,
                &attr,
                self.generation(attr.ino),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.change_in_step(ino.0, || {
            self.writable()?;
            let file = self
                .handles
                .file(fh.0)
                .or_else(|| self.handles.file_of_inode(ino.0))
                .ok_or(Errno::EBADF)?;
            let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            let end = offset.saturating_add(length);
            let crypt = |e| errno::crypt(&e);
            match mode & !libc::FALLOC_FL_KEEP_SIZE {
                0 => {}
                libc::FALLOC_FL_PUNCH_HOLE if keep_size => {
                    file.zero_range(offset, length).map_err(crypt)?
                }
                libc::FALLOC_FL_ZERO_RANGE => file.zero_range(offset, length).map_err(crypt)?,
                _ => return Err(Errno::EOPNOTSUPP),
            }
            if !keep_size && end > file.size().map_err(crypt)? {
                file.truncate(end).map_err(crypt)?;
            }
            Ok(())
        });
        reply_empty(reply, r);
    }
}

/// Drop the kernel's cached pages of every open file whose key is no longer fresh in the cache
/// (past its TTL, evicted, forgotten), so no plaintext is served from the page cache longer
/// than its key may be used: the next read needs the key again. Called by the mount's
/// key-expiry thread several times per TTL.
pub fn drop_pages_of_stale_keys(handles: &Handles, vault: &Vault, notifier: &fuser::Notifier) {
    for (ino, file) in handles.open_files_by_inode() {
        // Nothing read since the last drop: no need to read the header to find the key.
        if !file.pages_may_be_cached() {
            continue;
        }
        let stale = file
            .stored_file_id()
            .is_some_and(|id| !vault.keys.contains(&id));
        if stale && file.take_pages_cached() {
            if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                tracing::debug!("page cache invalidation of inode {ino}: {e}");
            }
        }
    }
}
