//! Process-wide calls: identity, limits, daemonizing, signals, umask, syslog, mounts, memory
//! locking.

use std::ffi::CString;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::cvt;

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The host name (`None` when it cannot be read or is not UTF-8).
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..end]).ok().map(str::to_string)
}

/// Raise the soft open-file limit to the hard one; returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    // SAFETY: zeroed rlimit is a valid out buffer.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid resource and out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid resource and rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
        tracing::warn!(
            "cannot raise the open file limit: {}",
            io::Error::last_os_error()
        );
    }
    lim.rlim_cur
}

/// Make the process not dumpable (no ptrace by other users, no /proc/PID/mem) and allow no
/// core files. Each failure is returned, the other step still taken.
pub fn harden() -> [io::Result<()>; 2] {
    // SAFETY: plain prctl with valid arguments.
    let dumpable = cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map(drop);
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid resource and rlimit.
    let core = cvt(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) }).map(drop);
    [dumpable, core]
}

/// A pipe (both ends close-on-exec): (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Which side of a `fork` this is.
pub enum Forked {
    /// The new process.
    Child,
    /// The caller, with the child's pid.
    Parent(i32),
}

/// fork(2). Only safe to continue with arbitrary code in the child while the process has a
/// single thread: call it before any thread (or runtime) is started.
pub fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller guarantees no other thread exists, so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// In a freshly forked daemon: a new session, stdin/stdout/stderr on /dev/null.
pub fn detach_from_terminal() {
    // SAFETY: plain syscalls on valid arguments; the fds are the process's standard ones.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// The signals a daemon stops on.
pub const TERMINATION_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A set of signals blocked for this thread and every thread spawned from it later.
pub struct BlockedSignals(libc::sigset_t);

/// Block `signals` in this thread (and every thread spawned later), so one thread can wait for
/// them with [`BlockedSignals::wait`].
pub fn block_signals(signals: &[i32]) -> BlockedSignals {
    // SAFETY: sigset operations on a zeroed, then initialised, set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        BlockedSignals(set)
    }
}

impl BlockedSignals {
    /// Wait for one of the blocked signals; returns its number.
    pub fn wait(&self) -> i32 {
        let mut sig = 0;
        // SAFETY: valid set and out pointer.
        unsafe { libc::sigwait(&self.0, &mut sig) };
        sig
    }
}

/// Set the process umask; returns the old one. The umask is process-wide.
pub fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(mask) }
}

/// Run `f` with the process umask set to `mask`, then restore it. The umask is process-wide:
/// use it only where no other thread creates files meanwhile, or where they pass modes that
/// `mask` leaves alone.
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    let old = set_umask(mask);
    let r = f();
    set_umask(old);
    r
}

/// The home directory in this user's passwd entry.
pub fn passwd_home() -> Option<PathBuf> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter for getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buffers are valid for their lengths; `out` is set to &pw or null.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() || pw.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir points into `buf`, NUL-terminated by getpwuid_r.
    let dir = unsafe { std::ffi::CStr::from_ptr(pw.pw_dir) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
        .filter(|p| !p.as_os_str().is_empty())
}

/// Open the connection to syslog, as "kmsfs" with the pid, facility daemon.
pub fn syslog_open() {
    // SAFETY: a static C string; openlog keeps the pointer, which lives forever.
    unsafe { libc::openlog(c"kmsfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
}

/// Send one line to syslog at `priority` (LOG_ERR, LOG_INFO, ...).
pub fn syslog(priority: libc::c_int, line: &str) {
    let Ok(c) = CString::new(line.replace('\0', " ")) else {
        return;
    };
    // SAFETY: a "%s" format with one valid C string argument.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), c.as_ptr()) };
}

/// umount2(2) of `path` (no flags).
pub fn umount(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::umount2(c.as_ptr(), 0) }).map(drop)
}

/// umount2(2) of `path` with MNT_DETACH (gone from the tree now, released when unused) and
/// UMOUNT_NOFOLLOW (a symlink at `path` is not followed to another mount).
pub fn umount_lazy(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) }).map(drop)
}

/// mount(2) with MS_REMOUNT and `flags` (MS_RDONLY, MS_NOSUID, ...) on mount point `path`;
/// with `bind` (MS_BIND) only the mount point's own flags change, not the file system's.
pub fn remount(path: &Path, flags: libc::c_ulong, bind: bool) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = flags | libc::MS_REMOUNT | if bind { libc::MS_BIND } else { 0 };
    // SAFETY: valid C string; null source, type and data are allowed for a remount.
    cvt(unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// syncfs(2) of the file system holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&fd)) }).map(drop)
}

/// The statfs type (magic number) of the file system holding `path`.
pub fn fs_type(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statfs is a valid out buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// Lock the pages holding `value` into RAM (mlock).
pub fn lock_in_memory<T>(value: &T) -> io::Result<()> {
    let ptr = (value as *const T).cast::<libc::c_void>();
    // SAFETY: the range is a live object of the caller's; mlock only changes residency.
    cvt(unsafe { libc::mlock(ptr, std::mem::size_of::<T>()) }).map(drop)
}
