//! New entries: files (with a handle), directories, symbolic links, device nodes and FIFOs.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::inodes::{self, Inode};
use super::{Caller, Entry, FsError, FsResult, KmsFs, e_io};
use crate::content::CryptFile;
use crate::sys;

impl KmsFs {
    /// For a root daemon serving other users (`--allow-other`): act as `caller` on this thread
    /// while a backing entry is made, so it is theirs from the first moment (owner, group, or
    /// the set-group-ID directory's group, as the kernel decides) and the backing permission
    /// checks are theirs. Nothing to do for a daemon serving only its own user.
    fn as_caller(&self, caller: &Caller) -> FsResult<Option<sys::ActingAs>> {
        if !self.is_root_user || (caller.uid == 0 && caller.gid == 0) {
            return Ok(None);
        }
        let groups = sys::supplementary_groups(caller.pid);
        sys::ActingAs::begin(caller.uid, caller.gid, &groups)
            .map(Some)
            .map_err(e_io)
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

    /// Give the new entry `ino` the ACLs it inherited (nothing when there are none).
    fn give_inherited(&self, ino: u64, acls: &super::acl::Inherited) -> FsResult<()> {
        if acls.access.is_none() && acls.default.is_none() {
            return Ok(());
        }
        let inode = self.inode(ino)?;
        let fd = self.fd(&inode)?;
        self.give_acls(fd.as_fd(), acls)
    }

    /// A device node, FIFO or socket `name` in `parent`.
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        let p = self.inode(parent)?;
        let bname = self.new_name(&p, name)?;
        let pfd = self.fd(&p)?;
        let acls = self.inherited(pfd.as_fd(), mode, umask, false);
        let acting = self.as_caller(caller)?;
        self.names
            .create(pfd.as_fd(), &bname, |b| {
                sys::mknodat(pfd.as_fd(), b, acls.mode, u64::from(rdev))
            })
            .map_err(e_io)?;
        drop(acting);
        let entry = self.lookup_backing(&p, &bname)?;
        self.give_inherited(entry.attr.ino, &acls)?;
        Ok(entry)
    }

    /// A new directory `name` in `parent`.
    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        let p = self.inode(parent)?;
        let bname = self.new_name(&p, name)?;
        let pfd = self.fd(&p)?;
        let acls = self.inherited(pfd.as_fd(), mode, umask, true);
        let acting = self.as_caller(caller)?;
        self.names
            .mkdir(pfd.as_fd(), &bname, acls.mode)
            .map_err(e_io)?;
        drop(acting);
        let entry = self.lookup_backing(&p, &bname)?;
        self.give_inherited(entry.attr.ino, &acls)?;
        Ok(entry)
    }

    /// A new symbolic link `name` in `parent` to `target`.
    pub fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> FsResult<Entry> {
        let p = self.inode(parent)?;
        let bname = self.new_name(&p, name)?;
        let t = self.names.link_target(target.as_os_str()).map_err(e_io)?;
        let pfd = self.fd(&p)?;
        let acting = self.as_caller(caller)?;
        self.names
            .create(pfd.as_fd(), &bname, |b| sys::symlinkat(&t, pfd.as_fd(), b))
            .map_err(e_io)?;
        drop(acting);
        self.lookup_backing(&p, &bname)
    }

    /// Create (or, without O_EXCL, open) regular file `name` in `parent` and open it: the entry
    /// and the new handle.
    pub fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Entry, u64)> {
        let p = self.inode(parent)?;
        let bname = self.new_name(&p, name)?;
        let excl = flags & libc::O_EXCL;
        let pfd = self.fd(&p)?;
        let acls = self.inherited(pfd.as_fd(), mode, umask, false);
        let acting = self.as_caller(caller)?;
        let created = self
            .names
            .create(pfd.as_fd(), &bname, |b| {
                self.make_file(&p, b, acls.mode, excl, acting.is_some())
            })
            .map_err(e_io)?;
        drop(acting);
        if acls.access.is_some() {
            self.give_acls(created.as_fd(), &acls)?;
        }
        let entry = self.lookup_backing(&p, &bname)?;
        let ino = entry.attr.ino;
        let inode = self.inode(ino)?;
        // The descriptor the create returned serves the file, unless it is open already
        // or the name meanwhile leads elsewhere (another host renamed or replaced it).
        let same = sys::stat_fd(created.as_fd()).is_ok_and(|st| inodes::key_of(&st) == inode.key());
        let (fh, file) = if same {
            self.handles.open_file(ino, || {
                self.inodes.pin(&inode).map_err(e_io)?;
                Ok::<_, FsError>(CryptFile::new(File::from(created), self.vault.clone()))
            })?
        } else {
            self.open_crypt(ino, &inode)?
        };
        if flags & libc::O_TRUNC != 0 {
            // Cheap for a new file: an empty backing file needs no lock and no syscall.
            if let Err(e) = file.truncate(0) {
                self.release_handle(ino, fh);
                return Err(FsError::crypt(&e));
            }
            if entry.attr.size > 0 {
                self.pages_in_step(&inode);
                let attr = self.attr_of(ino, self.fd(&inode)?.as_fd())?;
                return Ok((self.entry(attr), fh));
            }
        }
        self.pages_in_step(&inode);
        Ok((entry, fh))
    }
}
