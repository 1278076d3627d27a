//! Thin, safe wrappers over the *at() system calls the front end needs on O_PATH fds.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// A C string from an OS string (EINVAL on an interior NUL).
pub fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N`: reopens or names the object behind an O_PATH fd.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never holds a NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Turn a -1 return into the thread's errno.
pub fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// openat(2) returning an owned fd.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid fd and C string; the returned fd is owned by us.
    let fd =
        cvt(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: fd was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reopen the object behind an O_PATH fd with real access flags.
pub fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    let p = proc_path(fd);
    // SAFETY: valid C string; the returned fd is owned by us.
    let fd = cvt(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// lstat of the object behind `fd` (fstatat with AT_EMPTY_PATH, not following symlinks).
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, empty C string, valid out pointer.
    cvt(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// Raw fd of a borrowed fd (for calls that take one).
pub fn raw(fd: BorrowedFd<'_>) -> RawFd {
    fd.as_raw_fd()
}

/// Size, mtime and ctime of a file: any change to its content changes one of them.
pub type Stamp = [i64; 5];

/// The stamp of a file's stat.
pub fn stamp(st: &libc::stat) -> Stamp {
    [
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec,
    ]
}

/// The entries of directory `dir` (any fd of it, O_PATH too), through /proc/self/fd.
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<std::fs::ReadDir> {
    std::fs::read_dir(std::path::Path::new(OsStr::from_bytes(
        proc_path(dir).as_bytes(),
    )))
}

/// unlinkat(2).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// mkdirat(2).
pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) }).map(drop)
}

/// renameat2(2) (`flags`: RENAME_NOREPLACE, RENAME_EXCHANGE, ...).
pub fn renameat2(
    a: BorrowedFd<'_>,
    an: &OsStr,
    b: BorrowedFd<'_>,
    bn: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let (ac, bc) = (cstr(an)?, cstr(bn)?);
    // SAFETY: valid fds and C strings.
    cvt(unsafe {
        libc::renameat2(
            a.as_raw_fd(),
            ac.as_ptr(),
            b.as_raw_fd(),
            bc.as_ptr(),
            flags,
        )
    })
    .map(drop)
}
