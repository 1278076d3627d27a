//! Thin, safe wrappers over the *at() system calls the front end needs on O_PATH fds, and the
//! checked opens of kmsfs's own metadata files (no symlink followed, no FIFO blocked on).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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

/// Set the modification time of the object behind `fd` (any fd, O_PATH too) to `sec`.`nsec`,
/// leaving its access time.
pub fn set_mtime(fd: BorrowedFd<'_>, sec: i64, nsec: i64) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let p = proc_path(fd);
    // SAFETY: valid C string and a two-element times array.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// The backing path behind `fd`, for log lines (never fails: a placeholder when unknown).
pub fn describe(fd: BorrowedFd<'_>) -> String {
    fd_path(fd)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("fd {}", fd.as_raw_fd()))
}

/// The user id of the process at the other end of a connected Unix socket (SO_PEERCRED).
pub fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: zeroed ucred is a valid out buffer.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd, out buffer and its length.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// Run `f` with the process umask set to `mask`, then restore it. The umask is process-wide:
/// use it only where no other thread creates files meanwhile, or where they pass modes that
/// `mask` leaves alone.
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(mask) };
    let r = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    r
}

/// The supplementary groups of process (or thread) `pid`, from `/proc/PID/status`; empty when
/// it cannot be read (the process is gone).
pub fn supplementary_groups(pid: u32) -> Vec<libc::gid_t> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn set_thread_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // The raw system call changes this thread only; glibc's setgroups() would change them all.
    // SAFETY: a valid array of `groups.len()` gids.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// This thread's file-system identity switched to another user (setfsuid, setfsgid and the
/// supplementary groups, all per thread), so what it creates is theirs from the first moment
/// and permission checks are theirs; restored to the daemon's own on drop.
#[derive(Debug)]
pub struct ActingAs {
    own_groups: Vec<libc::gid_t>,
}

impl ActingAs {
    /// Act as `uid`:`gid` with `groups` on this thread (the daemon must run as root).
    pub fn begin(uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<ActingAs> {
        // SAFETY: getgroups with a zero size only counts.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut own_groups = vec![0 as libc::gid_t; n.max(0) as usize];
        // SAFETY: a buffer of the size just asked for.
        let n =
            unsafe { libc::getgroups(own_groups.len() as libc::c_int, own_groups.as_mut_ptr()) };
        own_groups.truncate(n.max(0) as usize);
        set_thread_groups(groups)?;
        // SAFETY: setfsgid/setfsuid have no preconditions; they return the previous id.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        // Both calls report no error: check that they took.
        // SAFETY: as above; an invalid id (-1) only queries.
        let (now_uid, now_gid) = unsafe { (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)) };
        let acting = ActingAs { own_groups };
        if now_uid as u32 != uid || now_gid as u32 != gid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(acting)
    }
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        // SAFETY: as in `begin`; back to the daemon's own ids.
        unsafe {
            libc::setfsuid(libc::geteuid());
            libc::setfsgid(libc::getegid());
        }
        let _ = set_thread_groups(&self.own_groups);
    }
}
