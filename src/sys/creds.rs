//! Credentials: acting as another user on one thread (a root daemon creating files for the
//! FUSE caller), and who is at the other end of a Unix socket.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

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
