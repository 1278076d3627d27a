//! Open files: open, read, write, sync, allocate, release.

use std::os::fd::AsFd;

use super::inodes::Inode;
use super::{FsError, FsResult, KmsFs, e_io};
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
            FsError::crypt(&e)
        })
    }

    /// Write `data` at `offset` through handle `fh` (inode `ino`); `kill_suid` when the kernel
    /// says the writer may not keep set-ID bits. Returns the bytes written.
    pub fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suid: bool,
    ) -> FsResult<u32> {
        self.writable()?;
        let file = self.handles.file(fh).ok_or(FsError::EBADF)?;
        if kill_suid {
            self.kill_suid_sgid(&*self.inode(ino)?)?;
        }
        self.change_in_step(ino, || file.write(offset, data))
            .map(|n| n as u32)
            .map_err(|e| FsError::crypt(&e))
    }

    /// Close handle `fh` of inode `ino`.
    pub fn release(&self, ino: u64, fh: u64) {
        self.release_handle(ino, fh);
    }

    /// fsync (or fdatasync) through handle `fh`.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let file = self.handles.file(fh).ok_or(FsError::EBADF)?;
        file.sync(datasync).map_err(|e| FsError::crypt(&e))
    }

    /// fallocate(2) `mode` over `offset..offset + length` through handle `fh`: allocation
    /// (keeping or growing the size), punch hole and zero range; others are EOPNOTSUPP.
    pub fn fallocate(
        &self,
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
            let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            let end = offset.saturating_add(length);
            let crypt = |e| FsError::crypt(&e);
            match mode & !libc::FALLOC_FL_KEEP_SIZE {
                0 => {}
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

    /// Clear set-user-ID, and set-group-ID when the group may execute, and (plaintext names
    /// only: no other mode stores it) file capabilities: what Linux does when a caller without
    /// CAP_FSETID writes or truncates a file. Under FUSE_HANDLE_KILLPRIV_V2 the kernel leaves
    /// this to us; the daemon's own root writes to the backing file would not do it.
    pub(super) fn kill_suid_sgid(&self, inode: &Inode) -> FsResult<()> {
        let fd = self.fd(inode)?;
        let mode = sys::stat_fd(fd.as_fd()).map_err(e_io)?.st_mode;
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        let mut kill = libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            kill |= libc::S_ISGID;
        }
        if mode & kill != 0 {
            sys::chmod_fd(fd.as_fd(), mode & 0o7777 & !kill).map_err(e_io)?;
        }
        let caps = c"security.capability";
        if !self.names.is_encrypted() && sys::xattr::has(fd.as_fd(), caps) {
            sys::xattr::remove(fd.as_fd(), caps).map_err(e_io)?;
        }
        Ok(())
    }
}
