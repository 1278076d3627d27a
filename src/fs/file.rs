//! Open files: open, read, write, sync, allocate, release.

use std::os::fd::AsFd;

use super::inodes::Inode;
use super::{Caller, FsError, FsResult, KmsFs, e_io};
use crate::content::CryptError;
use crate::keys::KeyError;
use crate::sys;

/// What an open gives the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The handle.
    pub fh: u64,
    /// Whether the kernel may keep its cached pages of the file (FOPEN_KEEP_CACHE).
    pub keep_cache: bool,
}

impl KmsFs {
    /// Open regular file `ino` with open(2) `flags`.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let inode = self.inode(ino)?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if write || flags & libc::O_TRUNC != 0 {
            self.writable()?;
        }
        let (fh, file) = self.open_crypt(ino, &inode)?;
        // Asked at most once, and only when needed: it may read the header.
        let key_cached = std::cell::OnceCell::new();
        let key_cached = || *key_cached.get_or_init(|| crate::content::key_is_cached(&file));
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
        if flags & libc::O_TRUNC != 0 {
            if let Err(e) = file.truncate(0) {
                self.release_handle(ino, fh);
                return Err(FsError::crypt(&e));
            }
        }
        Ok(Opened {
            fh,
            keep_cache: self.keep_cache(&inode, key_cached),
        })
    }

    /// Up to `size` plain bytes of handle `fh` (inode `ino`) at `offset`.
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        let file = self.handles.file(fh).ok_or(FsError::EBADF)?;
        file.read(offset, size).map_err(|e| {
            if matches!(
                &e,
                CryptError::Key {
                    err: KeyError::Refused(_),
                    ..
                }
            ) {
                self.drop_cached_pages(ino);
            }
            self.content_error(ino, &e)
        })
    }

    /// Write `data` at `offset` through handle `fh` (inode `ino`); `kill_suid`: the writer,
    /// when the kernel says it may not keep set-ID bits. Returns the bytes written.
    pub fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suid: Option<&Caller>,
    ) -> FsResult<u32> {
        self.writable()?;
        let file = self.handles.file(fh).ok_or(FsError::EBADF)?;
        if let Some(writer) = kill_suid {
            self.kill_suid_sgid(&*self.inode(ino)?, writer)?;
        }
        self.change_in_step(ino, || file.write(offset, data))
            .map(|n| n as u32)
            .map_err(|e| self.content_error(ino, &e))
    }

    /// Close handle `fh` of inode `ino`.
    pub fn release(&self, ino: u64, fh: u64) {
        self.release_handle(ino, fh);
    }

    /// fsync (or fdatasync) through handle `fh`; new directory IVs and sidecars first, so a
    /// file made durable keeps its name.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let file = self.handles.file(fh).ok_or(FsError::EBADF)?;
        self.names.sync_new().map_err(e_io)?;
        file.sync(datasync).map_err(|e| FsError::crypt(&e))
    }

    /// fallocate(2) `mode` over `offset..offset + length` through handle `fh` for `caller`:
    /// allocation (keeping or growing the size), punch hole (the range becomes a hole: its
    /// space is freed) and zero range; others are EOPNOTSUPP. Like a write, it clears set-ID
    /// bits for a caller other than root.
    pub fn fallocate(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()> {
        self.change_in_step(ino, || {
            self.writable()?;
            let file = self
                .handles
                .file(fh)
                .or_else(|| self.handles.file_of_inode(ino))
                .ok_or(FsError::EBADF)?;
            if caller.uid != 0 {
                self.kill_suid_sgid(&*self.inode(ino)?, caller)?;
            }
            let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            let end = offset.saturating_add(length);
            let crypt = |e| self.content_error(ino, &e);
            match mode & !libc::FALLOC_FL_KEEP_SIZE {
                0 => file.allocate(offset, length, keep_size).map_err(crypt)?,
                libc::FALLOC_FL_PUNCH_HOLE if keep_size => {
                    file.zero_range(offset, length).map_err(crypt)?
                }
                libc::FALLOC_FL_ZERO_RANGE => file.zero_range(offset, length).map_err(crypt)?,
                _ => return Err(FsError::EOPNOTSUPP),
            }
            if !keep_size && end > file.size().map_err(crypt)? {
                file.truncate(end).map_err(crypt)?;
            }
            Ok(())
        })
    }

    /// errno for a content error of file `ino`, logged (integrity and key failures) with the
    /// file's plain path, which the user knows, beside the backing name.
    pub(super) fn content_error(&self, ino: u64, e: &CryptError) -> FsError {
        if !matches!(e, CryptError::Io(_)) {
            match self.plain_path(ino) {
                Some(path) => tracing::error!(path = %path.display(), "{}: {e}", path.display()),
                None => tracing::error!("{e}"),
            }
        }
        FsError::of_crypt(e)
    }

    /// The plain path of `ino` in the mount ("/dir/file"), from its remembered place; None
    /// when some directory on the way is no longer known or its name does not decode.
    pub(super) fn plain_path(&self, ino: u64) -> Option<std::path::PathBuf> {
        let mut parts = Vec::new();
        let mut at = self.inodes.get(ino)?;
        // Bounded: a directory chain deeper than this is not a real tree.
        for _ in 0..4096 {
            if at.is_root {
                let mut path = std::path::PathBuf::from("/");
                path.extend(parts.iter().rev());
                return Some(path);
            }
            let (parent, backing) = at.place()?;
            let dir = self.inodes.get(parent)?;
            let fd = self.inodes.fd(&dir).ok()?;
            let plain = self
                .names
                .lister(fd.as_fd(), dir.is_root)
                .ok()?
                .plain(&backing)?;
            parts.push(plain);
            at = dir;
        }
        None
    }

    /// Whether `caller` is in group `gid` (its own group or a supplementary one).
    pub(super) fn in_group(&self, caller: &Caller, gid: u32) -> bool {
        caller.gid == gid || sys::creds::supplementary_groups(caller.pid).contains(&gid)
    }

    /// SEEK_DATA (`data`) or SEEK_HOLE from `offset` in handle `fh`: the offset found, or
    /// ENXIO at or past the end of file.
    pub fn lseek(&self, fh: u64, offset: i64, data: bool) -> FsResult<u64> {
        let file = self.handles.file(fh).ok_or(FsError::EBADF)?;
        // Before the start there is no data and no hole, as on ext4.
        let offset = u64::try_from(offset).map_err(|_| FsError::ENXIO)?;
        file.seek(offset, data)
            .map_err(|e| FsError::crypt(&e))?
            .ok_or(FsError::ENXIO)
    }

    /// Clear set-user-ID; set-group-ID when the group may execute or `caller` is not in the
    /// file's group; and (plaintext names only: no other mode stores it) file capabilities:
    /// what Linux does when a caller without CAP_FSETID writes, truncates or allocates. Under
    /// FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to us; the daemon's own root writes to
    /// the backing file would not do it.
    pub(super) fn kill_suid_sgid(&self, inode: &Inode, caller: &Caller) -> FsResult<()> {
        let fd = self.fd(inode)?;
        let st = sys::stat_fd(fd.as_fd()).map_err(e_io)?;
        let mode = st.st_mode;
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        let mut kill = libc::S_ISUID;
        if mode & libc::S_ISGID != 0
            && (mode & libc::S_IXGRP != 0 || !self.in_group(caller, st.st_gid))
        {
            kill |= libc::S_ISGID;
        }
        if mode & kill != 0 {
            sys::chmod_fd(fd.as_fd(), mode & 0o7777 & !kill).map_err(e_io)?;
            self.drop_cached_attr(inode.ino);
        }
        let caps = self
            .names
            .xattr_name(std::ffi::OsStr::new("security.capability"))
            .map_err(e_io)?;
        if sys::xattr::has(fd.as_fd(), &caps) {
            sys::xattr::remove(fd.as_fd(), &caps).map_err(e_io)?;
        }
        Ok(())
    }
}
