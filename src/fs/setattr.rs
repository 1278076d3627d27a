//! Attributes: getattr and setattr (mode, owner, size, times).

use std::os::fd::AsFd;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Attr, Caller, FsError, FsResult, KmsFs, e_io};
use crate::sys::{self, TimeSpec};

/// A time setattr sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// The current time.
    Now,
    /// This time.
    At(SystemTime),
}

/// The changes one setattr asks for (each `None` leaves that attribute alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Plain size (truncate or extend).
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<SetTime>,
    /// Modification time.
    pub mtime: Option<SetTime>,
    /// The handle the change comes through, if any.
    pub fh: Option<u64>,
}

fn spec(t: Option<SetTime>) -> TimeSpec {
    match t {
        None => TimeSpec::Omit,
        Some(SetTime::Now) => TimeSpec::Now,
        Some(SetTime::At(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::At(d.as_secs() as i64, i64::from(d.subsec_nanos())),
            // Before 1970: whole seconds down, nanoseconds up, as timespec has it.
            Err(before) => {
                let d = before.duration();
                let (secs, nanos) = (d.as_secs() as i64, i64::from(d.subsec_nanos()));
                if nanos == 0 {
                    TimeSpec::At(-secs, 0)
                } else {
                    TimeSpec::At(-secs - 1, 1_000_000_000 - nanos)
                }
            }
        },
    }
}

impl KmsFs {
    /// The attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let i = self.inode(ino)?;
        self.attr_of(ino, self.fd(&i)?.as_fd())
    }

    /// Apply `change` to `ino` for `caller`; returns the new attributes. A truncate by a
    /// caller other than root also clears set-ID bits (the kernel's FATTR_KILL_SUIDGID, which
    /// the FUSE library does not pass on, is set exactly for callers without CAP_FSETID).
    pub fn setattr(&self, caller: &Caller, ino: u64, change: SetAttr) -> FsResult<Attr> {
        self.change_in_step(ino, || self.do_setattr(caller, ino, change))
    }

    fn do_setattr(&self, caller: &Caller, ino: u64, change: SetAttr) -> FsResult<Attr> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        } = change;
        let inode = self.inode(ino)?;
        let fd = self.fd(&inode)?;
        let st = sys::stat_fd(fd.as_fd()).map_err(e_io)?;
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        // chmod by a caller outside the file's group (without CAP_FSETID) cannot set
        // set-group-ID: the kernel leaves that to the file system under FUSE (setattr_copy).
        let mode = mode.map(|m| {
            let keeps_sgid = caller.uid == 0 || self.in_group(caller, st.st_gid);
            if keeps_sgid { m } else { m & !libc::S_ISGID }
        });
        let changes_something = mode.is_some()
            || uid.is_some()
            || gid.is_some()
            || size.is_some()
            || atime.is_some()
            || mtime.is_some();
        if changes_something {
            self.writable()?;
        }
        if let (Some(mode), false) = (mode, is_link) {
            sys::chmod_fd(fd.as_fd(), mode & 0o7777).map_err(e_io)?;
            self.access_acl_follow_mode(fd.as_fd(), mode)?;
        }
        if uid.is_some() || gid.is_some() {
            sys::chown_fd(fd.as_fd(), uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))
                .map_err(e_io)?;
        }
        if let Some(size) = size {
            let file = match fh.and_then(|fh| self.handles.file(fh)) {
                Some(f) => f,
                None => {
                    let (fh, f) = self.open_crypt(ino, &inode)?;
                    self.release_handle(ino, fh);
                    f
                }
            };
            file.truncate(size).map_err(|e| FsError::crypt(&e))?;
            if caller.uid != 0 {
                self.kill_suid_sgid(&inode, caller)?;
            }
        }
        if atime.is_some() || mtime.is_some() {
            let (a, m) = (spec(atime), spec(mtime));
            if is_link {
                sys::set_times(fd.as_fd(), a, m)
            } else {
                sys::set_times_via_proc(fd.as_fd(), a, m)
            }
            .map_err(e_io)?;
        }
        self.attr_of(ino, fd.as_fd())
    }
}
