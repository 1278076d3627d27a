//! Every libc call of kmsfs, as thin safe wrappers: the *at() calls on O_PATH fds, the checked
//! opens of kmsfs's own metadata files (no symlink followed, no FIFO blocked on), extended
//! attributes, credentials, and process-wide calls. With the allocator and direct I/O
//! buffers, the only code allowed `unsafe`.

pub mod creds;
pub mod process;
pub mod xattr;

pub use creds::{ActingAs, peer_uid, supplementary_groups};
pub use process::{euid, with_umask};

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// Seconds since the Unix epoch now (0 for a clock before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Open `rel`, a path relative to directory `root`, without leaving `root` and without
/// following a symbolic link anywhere on the way (openat2 with RESOLVE_BENEATH and
/// RESOLVE_NO_SYMLINKS): a directory swapped for a link meanwhile is ELOOP, not followed.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &std::path::Path,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let path = cstr(rel.as_os_str())?;
    // SAFETY: open_how is plain data; zero is a valid value of every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

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

/// The error for a metadata file that is not a regular file (a symlink, FIFO, socket or
/// device planted where kmsfs expects one of its own files).
fn not_regular(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a regular file ({what}): refusing to use it"),
    )
}

/// Open `name` in `dir` as a regular file, whatever the backing store put there: a symlink is
/// not followed (ELOOP becomes "not a regular file"), a FIFO or device does not block the open
/// (O_NONBLOCK) and is refused after `fstat`. `flags` adds the access mode (and O_CREAT with
/// `mode`); O_NOFOLLOW, O_NONBLOCK, O_NOCTTY and O_CLOEXEC are always set.
pub fn open_regular(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<(OwnedFd, libc::stat)> {
    let fd = openat(
        dir,
        name,
        flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        mode,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => not_regular("a symbolic link"),
        _ => e,
    })?;
    let st = stat_fd(fd.as_fd())?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Ok((fd, st)),
        libc::S_IFIFO => Err(not_regular("a FIFO")),
        libc::S_IFDIR => Err(not_regular("a directory")),
        _ => Err(not_regular("a device or socket")),
    }
}

/// The contents of regular file `name` in `dir` (opened as by [`open_regular`]), refusing a
/// file over `max` bytes before reading it.
pub fn read_regular(dir: BorrowedFd<'_>, name: &OsStr, max: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let (fd, st) = open_regular(dir, name, libc::O_RDONLY, 0)?;
    if st.st_size < 0 || st.st_size as u64 > max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes, more than the {max} expected", st.st_size),
        ));
    }
    let mut buf = Vec::with_capacity(st.st_size as usize);
    std::fs::File::from(fd)
        .take(max as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file grew while read",
        ));
    }
    Ok(buf)
}

/// Replace (or create) `name` in `dir` with `data` atomically: written to a fresh temporary
/// name (O_EXCL, so nothing planted there is followed or reused), fsynced when `sync`, renamed
/// over `name`, and the directory fsynced when `sync` (then `dir` must not be O_PATH).
pub fn replace_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    data: &[u8],
    mode: u32,
    sync: bool,
) -> io::Result<()> {
    use std::io::Write;
    let suffix: [u8; 8] = crate::crypto::random_array().map_err(io::Error::other)?;
    let mut tmp = name.to_os_string();
    tmp.push(format!(".tmp.{}", hex::encode(suffix)));
    let fd = openat(
        dir,
        &tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        mode,
    )?;
    let mut f = std::fs::File::from(fd);
    let written = f
        .write_all(data)
        .and_then(|()| if sync { f.sync_all() } else { Ok(()) })
        .and_then(|()| renameat2(dir, &tmp, dir, name, 0));
    if let Err(e) = written {
        let _ = unlinkat(dir, &tmp, 0);
        return Err(e);
    }
    if sync {
        fsync(dir)?;
    }
    Ok(())
}

/// fsync(2) of any fd that is not O_PATH (a directory opened O_RDONLY, a file).
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
}

/// fchmod through an O_PATH-safe path (`/proc/self/fd/N`).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: valid C string.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// Whether `name` exists in `dir` (without following a symlink).
pub fn exists_at(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    let Ok(c) = cstr(name) else { return false };
    // SAFETY: zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and out pointer.
    unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) == 0
    }
}

/// fstatat(2) of `name` in `dir` without following a symlink.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    // SAFETY: zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and out pointer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// The path of the object behind `fd` as the kernel names it (`/proc/self/fd/N`).
pub fn fd_path(fd: BorrowedFd<'_>) -> io::Result<std::path::PathBuf> {
    std::fs::read_link(std::path::Path::new(OsStr::from_bytes(
        proc_path(fd).as_bytes(),
    )))
}

/// The backing path behind `fd`, for log lines (never fails: a placeholder when unknown).
pub fn describe(fd: BorrowedFd<'_>) -> String {
    fd_path(fd)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("fd {}", fd.as_raw_fd()))
}

/// A time for [`set_times`].
#[derive(Debug, Clone, Copy)]
pub enum TimeSpec {
    /// Leave it as it is.
    Omit,
    /// The current time.
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(i64, i64),
}

impl TimeSpec {
    fn timespec(self) -> libc::timespec {
        match self {
            TimeSpec::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            TimeSpec::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSpec::At(sec, nsec) => libc::timespec {
                tv_sec: sec as libc::time_t,
                tv_nsec: nsec as libc::c_long,
            },
        }
    }
}

/// Set the access and modification times of the object behind `fd` (any fd, O_PATH too; a
/// symlink itself, not its target).
pub fn set_times(fd: BorrowedFd<'_>, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    let times = [atime.timespec(), mtime.timespec()];
    // SAFETY: valid fd, empty path (the object itself) and a two-element times array.
    cvt(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// Set the access and modification times of the object behind `fd` through its
/// `/proc/self/fd` path (following it to the object: for files and directories, whose time
/// changes a writer who is not the owner may make too).
pub fn set_times_via_proc(fd: BorrowedFd<'_>, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    let times = [atime.timespec(), mtime.timespec()];
    let p = proc_path(fd);
    // SAFETY: valid C string and a two-element times array.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// Set the modification time of the object behind `fd` to `sec`.`nsec`, leaving its access
/// time.
pub fn set_mtime(fd: BorrowedFd<'_>, sec: i64, nsec: i64) -> io::Result<()> {
    set_times_via_proc(fd, TimeSpec::Omit, TimeSpec::At(sec, nsec))
}

/// Change the owner and group of the object behind `fd` (not following a symlink); `u32::MAX`
/// leaves one as it is.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd; empty path with AT_EMPTY_PATH names the fd itself.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// fchmod(2) of an open (not O_PATH) file.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// mknodat(2).
pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, dev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid dir fd and C string.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, dev as libc::dev_t) }).map(drop)
}

/// symlinkat(2): make `name` in `dir` a symbolic link to `target`.
pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let (t, c) = (cstr(target)?, cstr(name)?);
    // SAFETY: valid C strings and dir fd.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// A new hard link `name` in `dir` to the object behind `fd` (any fd, O_PATH too).
pub fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let (src, c) = (proc_path(fd), cstr(name)?);
    // SAFETY: valid C strings and dir fd; the proc path is followed to the object.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// The target of the symbolic link behind `link` (an O_PATH fd of the link itself).
pub fn readlink_fd(link: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, empty path (the link itself), buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// fstatvfs(2) of the file system holding `fd`.
pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    // SAFETY: zeroed statvfs is a valid out buffer.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut s) })?;
    Ok(s)
}

/// Drop the page cache of the file behind `fd` (advice; errors ignored).
pub fn drop_page_cache(fd: BorrowedFd<'_>) {
    // SAFETY: valid fd; advice only.
    unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// fallocate(2) of `len` bytes at `offset` with `mode` (e.g. punch hole).
pub fn fallocate(fd: BorrowedFd<'_>, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (
        libc::off64_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?,
        libc::off64_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?,
    );
    // SAFETY: valid fd; plain integer arguments.
    cvt(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// lseek(2) with SEEK_DATA or SEEK_HOLE: the next data or hole at or after `offset`, None at
/// end of file (ENXIO).
pub fn seek_data_or_hole(
    fd: BorrowedFd<'_>,
    offset: u64,
    whence: libc::c_int,
) -> io::Result<Option<u64>> {
    let at =
        libc::off64_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: valid fd; moves only this fd's offset, which kmsfs never uses (it reads with pread).
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), at, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// Start writing `len` bytes at `offset` of the file behind `fd` to the disk without waiting
/// (errors ignored: it only schedules I/O).
pub fn start_writeback(fd: BorrowedFd<'_>, offset: u64, len: usize) {
    // SAFETY: valid fd; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// A whole-file open-file-description lock of `kind` (F_RDLCK, F_WRLCK, F_UNLCK) with `cmd`
/// (F_OFD_SETLK, F_OFD_SETLKW), retried on EINTR.
pub fn ofd_lock(fd: BorrowedFd<'_>, kind: libc::c_short, cmd: libc::c_int) -> io::Result<()> {
    // SAFETY: zeroed flock is valid; l_pid must be 0 for OFD locks.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: valid fd and flock pointer.
        if unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &fl) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// flock(2) with `op` (LOCK_EX, LOCK_SH, LOCK_UN, with LOCK_NB); whether it succeeded.
pub fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> bool {
    // SAFETY: valid fd.
    unsafe { libc::flock(fd.as_raw_fd(), op) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory on the way that is a symbolic link (to inside or outside the root) is
    /// refused, as is ".." out of the root; plain subdirectories open.
    #[test]
    fn open_beneath_follows_no_link_and_stays_inside() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::create_dir_all(t.path().join("outside")).expect("mkdir");
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("out")).expect("link");
        std::os::unix::fs::symlink("a", root.join("in")).expect("link");
        let r = std::fs::File::open(&root).expect("root");
        let dir = libc::O_RDONLY | libc::O_DIRECTORY;
        assert!(open_beneath(r.as_fd(), std::path::Path::new("a/b"), dir).is_ok());
        assert!(open_beneath(r.as_fd(), std::path::Path::new("."), dir).is_ok());
        for bad in ["out", "in/b", "..", "a/../../outside"] {
            let e = open_beneath(r.as_fd(), std::path::Path::new(bad), dir).expect_err("refused");
            assert!(
                matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)),
                "{bad}: {e}"
            );
        }
    }
}
