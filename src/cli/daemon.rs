//! Daemonizing: fork before any thread or runtime exists, and let the parent return only once
//! the child reports the mount usable (or its one-line error) over a pipe.

use std::fs::File;
use std::io::{Read, Write};

use crate::sys::process::{self as sys, Forked};

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

    /// Tell the parent why the mount failed; it prints `msg` and exits with `code`.
    pub fn fail(&mut self, code: i32, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(format!("{code} {msg}").as_bytes());
        }
    }
}

/// Fork. In the parent, wait for the child's report and return `Err(exit code)`; in the child
/// (a new session, stdio on /dev/null) return its `Ready`.
pub fn daemonize() -> Result<Ready, i32> {
    let (rd, wr) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kmsfs: cannot create a pipe: {e}");
            return Err(1);
        }
    };
    // No other thread exists yet: mount forks before starting any.
    match sys::fork_single_threaded() {
        Err(e) => {
            eprintln!("kmsfs: cannot fork: {e}");
            Err(1)
        }
        Ok(Forked::Child) => {
            drop(rd);
            sys::detach_from_terminal();
            Ok(Ready(Some(File::from(wr))))
        }
        Ok(Forked::Parent(_)) => {
            drop(wr);
            let mut msg = String::new();
            let _ = File::from(rd).read_to_string(&mut msg);
            if msg == "OK" {
                return Err(0);
            }
            // "CODE message", as `Ready::fail` writes it.
            let (code, msg) = match msg.split_once(' ') {
                Some((code, text)) if code.parse::<i32>().is_ok() => {
                    (code.parse().unwrap_or(1), text.to_string())
                }
                _ if msg.is_empty() => (
                    1,
                    "the mount daemon exited before the mount was ready".to_string(),
                ),
                _ => (1, msg),
            };
            eprintln!("kmsfs: {msg}");
            Err(code)
        }
    }
}

/// Allow as many open files as the hard limit (applications' open files each need one; the
/// cache of inode descriptors is bounded separately); returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    sys::raise_open_file_limit()
}

/// Keep keys out of core dumps and ptrace: not dumpable, no core files.
pub fn harden() {
    let [dumpable, core] = sys::harden();
    if let Err(e) = dumpable {
        tracing::warn!("cannot mark the daemon non-dumpable: {e}");
    }
    if let Err(e) = core {
        tracing::warn!("cannot disable core dumps: {e}");
    }
}

/// Block the termination signals in this thread (and every thread spawned later), so one
/// dedicated thread can wait for them with `wait_for_signal`.
pub fn block_signals() -> sys::BlockedSignals {
    sys::block_signals(&sys::TERMINATION_SIGNALS)
}

/// Wait for one of the blocked signals; returns its number.
pub fn wait_for_signal(set: &sys::BlockedSignals) -> i32 {
    set.wait()
}
