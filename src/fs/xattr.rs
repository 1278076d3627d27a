//! Extended attributes (encrypted `user.*` ones in an encrypted-names vault, see `names`).

use std::ffi::OsStr;
use std::os::fd::AsFd;

use super::{Caller, FsError, FsResult, KmsFs, e_io, inodes};
use crate::sys;

impl KmsFs {
    /// The descriptor of `ino` for xattr calls: EPERM for a symlink (user xattrs do not exist
    /// on symlinks, and the /proc path the calls go through would follow it).
    fn xattr_fd(&self, ino: u64) -> FsResult<inodes::Fd> {
        let fd = self.fd(&*self.inode(ino)?)?;
        let st = sys::stat_fd(fd.as_fd()).map_err(e_io)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(FsError::EPERM);
        }
        Ok(fd)
    }

    /// Set xattr `name` of `ino` to `value` (`flags`: XATTR_CREATE, XATTR_REPLACE) for
    /// `caller` (an access ACL sets the mode, as chmod does).
    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        self.writable()?;
        let fd = self.xattr_fd(ino)?;
        let n = self.names.xattr_name(name).map_err(e_io)?;
        let sealed = self.names.seal_xattr(&n, value).map_err(e_io)?;
        let acl = name == OsStr::new(super::acl::ACCESS);
        if acl && super::acl::mode_bits(value).is_none() {
            return Err(FsError::EINVAL);
        }
        if acl && super::acl::is_equivalent(value) {
            // An ACL that says no more than the mode is the mode (as on ext4): not stored.
            match sys::xattr::remove(fd.as_fd(), &n) {
                Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e_io(e)),
                _ => {}
            }
        } else {
            sys::xattr::set(fd.as_fd(), &n, &sealed, flags).map_err(e_io)?;
        }
        if acl {
            self.access_acl_set(caller, ino, fd.as_fd(), value)?;
        }
        Ok(())
    }

    /// The value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let fd = self.xattr_fd(ino)?;
        let n = self.names.xattr_name(name).map_err(e_io)?;
        let stored = sys::xattr::get(fd.as_fd(), &n).map_err(e_io)?;
        self.names.open_xattr(&n, stored).map_err(e_io)
    }

    /// The xattr names of `ino` (each NUL-terminated); none for a symlink.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.xattr_fd(ino) {
            // Symlinks have no user xattrs: list nothing rather than fail `ls -l`.
            Err(FsError::EPERM) => Ok(Vec::new()),
            Err(e) => Err(e),
            Ok(fd) => sys::xattr::list(fd.as_fd())
                .map(|list| self.names.plain_xattr_list(list))
                .map_err(e_io),
        }
    }

    /// Remove xattr `name` of `ino`.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        let fd = self.xattr_fd(ino)?;
        let n = self.names.xattr_name(name).map_err(e_io)?;
        sys::xattr::remove(fd.as_fd(), &n).map_err(e_io)
    }
}
