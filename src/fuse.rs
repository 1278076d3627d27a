//! The FUSE adapter: the only code that names fuser's request and reply types. Each operation
//! unpacks the request, calls the filesystem (`crate::fs`), and fills the reply, so the
//! filesystem itself is tested without FUSE in the loop (as mountpoint-s3 does).

use std::ffi::OsStr;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{
    Attr, Caller, DirSink, Entry, FsError, Invalidator, Kind, KmsFs, SetAttr, SetTime,
};

/// A filesystem served to the kernel.
#[derive(Debug)]
pub struct FuseFs(pub KmsFs);

/// The kernel's notifier, as the filesystem's invalidator.
pub struct Notify(pub fuser::Notifier);

impl Invalidator for Notify {
    fn inval_inode(&self, ino: u64) {
        if let Err(e) = self.0.inval_inode(INodeNo(ino), 0, 0) {
            tracing::debug!("page cache invalidation of inode {ino}: {e}");
        }
    }

    fn inval_attr(&self, ino: u64) {
        // A negative offset: attributes only, no pages (so no page lock is waited for).
        if let Err(e) = self.0.inval_inode(INodeNo(ino), -1, 0) {
            tracing::debug!("attribute invalidation of inode {ino}: {e}");
        }
    }
}

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.code())
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Directory => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::NamedPipe => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::RegularFile => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The attributes of a negative entry: node id 0, nothing else read.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(before_epoch_fixed(t)),
    })
}

/// fuser 0.18 turns a kernel time before 1970, (seconds −s, nanoseconds n), into 1970 − s − n
/// instead of 1970 − s + n: undo that, so 1969-12-31 23:59:59.25 stays .25 and not .75.
fn before_epoch_fixed(t: SystemTime) -> SystemTime {
    match std::time::UNIX_EPOCH.duration_since(t) {
        Ok(d) if d.subsec_nanos() != 0 => {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs(d.as_secs())
                + std::time::Duration::from_nanos(u64::from(d.subsec_nanos()))
        }
        _ => t,
    }
}

impl FuseFs {
    fn reply_entry(&self, reply: ReplyEntry, r: Result<Entry, FsError>) {
        match r {
            Ok(e) => reply.entry(
                &self.0.attr_ttl(),
                &file_attr(&e.attr),
                Generation(e.generation),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// Reply with an xattr value or list: the size when asked for 0 bytes, ERANGE when too small.
fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, FsError>) {
    match r {
        Err(e) => reply.error(errno(e)),
        Ok(buf) if size == 0 => reply.size(buf.len() as u32),
        Ok(buf) if buf.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(buf) => reply.data(&buf),
    }
}

/// readdirplus entries into the kernel's reply buffer.
struct PlusSink<'a> {
    reply: &'a mut ReplyDirectoryPlus,
    ttl: std::time::Duration,
}

impl DirSink for PlusSink<'_> {
    fn add(&mut self, name: &OsStr, next: u64, e: &Entry) -> bool {
        self.reply.add(
            INodeNo(e.attr.ino),
            next,
            name,
            &self.ttl,
            &file_attr(&e.attr),
            Generation(e.generation),
        )
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        // The kernel asks for attributes with the entries when a lookup of them would follow.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        // We clear set-user/group-ID bits on write and truncate ourselves (`kill_suid_sgid`),
        // which spares every write() the kernel's GETXATTR "security.capability" round trip.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // POSIX ACLs: the kernel enforces them (under default_permissions) and keeps the mode
        // in step; we store them as xattrs (encrypted like the others).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_POSIX_ACL);
        // The umask comes unapplied with each create: a directory's default ACL replaces it.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DONT_MASK);
        // FUSE_WRITEBACK_CACHE only when asked (`--writeback-cache`): written data then waits
        // in the kernel's page cache, and a killed daemon loses writes already acknowledged
        // (by default it does not: tests/crash.rs).
        if self.0.writeback_cache() {
            let _ = config.add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE);
        }
        // Lookups and listings in one directory may run at once (the daemon locks what it
        // must itself).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn destroy(&mut self) {
        self.0.destroy();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.0.lookup(parent.0, name) {
            // A name that is not there: the kernel may remember that for the attribute TTL
            // (node id 0 is a negative entry) where no other host can make it meanwhile.
            Err(e) if e == FsError::ENOENT && self.0.single_writer() => {
                let ttl = self.0.attr_ttl();
                reply.entry(&ttl, &negative_attr(), Generation(0));
            }
            r => self.reply_entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.0.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.getattr(ino.0) {
            Ok(a) => reply.attr(&self.0.attr_ttl(), &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
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
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|f| f.0),
        };
        match self.0.setattr(&caller(req), ino.0, change) {
            Ok(a) => reply.attr(&self.0.attr_ttl(), &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.0.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
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
        let r = self
            .0
            .mknod(&caller(req), parent.0, name, mode, umask, rdev);
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
        self.reply_entry(
            reply,
            self.0.mkdir(&caller(req), parent.0, name, mode, umask),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.0.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.0.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            reply,
            self.0.symlink(&caller(req), parent.0, link_name, target),
        );
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
        let r = self
            .0
            .rename(parent.0, name, newparent.0, newname, flags.bits());
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
        self.reply_entry(reply, self.0.link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.0.open(ino.0, flags.0) {
            Ok(o) => {
                let flags = if o.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(o.fh), flags)
            }
            Err(e) => reply.error(errno(e)),
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
        match self.0.read(ino.0, fh.0, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let writer = caller(req);
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self
            .0
            .write(ino.0, fh.0, offset, data, kill.then_some(&writer))
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
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
        self.0.release(ino.0, fh.0);
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
        reply_empty(reply, self.0.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel keeps a single writer's listings (it drops them itself when the
        // directory changes through the mount); listings of a shared store are read anew.
        let flags = if self.0.single_writer() {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        match self.0.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self
            .0
            .readdir(ino.0, fh.0, offset, |ino, next, kind, name| {
                reply.add(INodeNo(ino), next, file_type(kind), name)
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.0.attr_ttl();
        let mut sink = PlusSink {
            reply: &mut reply,
            ttl,
        };
        match self.0.readdirplus(ino.0, fh.0, offset, &mut sink) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.releasedir(fh.0);
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
        reply_empty(reply, self.0.fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.0.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.0.setxattr(&caller(req), ino.0, name, value, flags),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.0.getxattr(ino.0, name));
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
        reply_xattr(reply, size, self.0.listxattr(ino.0));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.0.removexattr(ino.0, name));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.0.access(ino.0));
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
        match self
            .0
            .create(&caller(req), parent.0, name, mode, umask, flags)
        {
            Ok((e, fh)) => reply.created(
                &self.0.attr_ttl(),
                &file_attr(&e.attr),
                Generation(e.generation),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .0
            .fallocate(&caller(req), ino.0, fh.0, offset, length, mode);
        reply_empty(reply, r);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            // The kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself.
            _ => return reply.error(Errno::EINVAL),
        };
        match self.0.lseek(fh.0, offset, data) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno(e)),
        }
    }
}
