//! Daemonizing: fork before any thread or runtime exists, and let the parent return only once
//! the child reports the mount usable (or its one-line error) over a pipe.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

/// The child's end: report readiness or failure to the waiting parent.
pub struct Ready(Option<File>);

impl Ready {
    /// Nobody waits (foreground mode).
    pub fn none() -> Self {
        Ready(None)
    }

    /// Tell the parent the mount is up; it exits 0.
    pub fn ok(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"OK");
        }
    }

    /// Tell the parent why the mount failed; it prints this and exits 1.
    pub fn fail(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(msg.as_bytes());
        }
    }
}

/// Fork. In the parent, wait for the child's report and return `Err(exit code)`; in the child
/// (a new session, stdio on /dev/null) return its `Ready`.
pub fn daemonize() -> Result<Ready, i32> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!(
            "kmsfs: cannot create a pipe: {}",
            std::io::Error::last_os_error()
        );
        return Err(1);
    }
    // SAFETY: both fds were just created and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (mount forks before starting any), so the child
    // may continue running arbitrary code.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("kmsfs: cannot fork: {}", std::io::Error::last_os_error());
            Err(1)
        }
        0 => {
            drop(rd);
            // SAFETY: plain syscalls on valid arguments.
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
            Ok(Ready(Some(File::from(wr))))
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            let _ = File::from(rd).read_to_string(&mut msg);
            if msg == "OK" {
                Err(0)
            } else {
                let msg = if msg.is_empty() {
                    "the mount daemon exited before the mount was ready".into()
                } else {
                    msg
                };
                eprintln!("kmsfs: {msg}");
                Err(1)
            }
        }
    }
}

/// Allow as many open files as the hard limit (applications' open files each need one; the
/// cache of inode descriptors is bounded separately); returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid rlimit buffer.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let mut raised = lim;
            raised.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
            tracing::warn!(
                "cannot raise the open file limit: {}",
                std::io::Error::last_os_error()
            );
        }
        lim.rlim_cur
    }
}

/// Keep keys out of core dumps and ptrace: not dumpable, no core files.
pub fn harden() {
    // SAFETY: plain prctl/setrlimit calls with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            tracing::warn!(
                "cannot mark the daemon non-dumpable: {}",
                std::io::Error::last_os_error()
            );
        }
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            tracing::warn!(
                "cannot disable core dumps: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Block the termination signals in this thread (and every thread spawned later), so one
/// dedicated thread can wait for them with `wait_for_signal`.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a zeroed, then initialised, set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Wait for one of the blocked signals; returns its number.
pub fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: valid set and out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
