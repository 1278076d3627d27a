//! `kmsfs unmount MOUNTPOINT`: unmount, then wait until the daemon has exited (keys gone,
//! vault lock released).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CliResult, UnmountCmd, provider, runtime_dir};

const DAEMON_EXIT_WAIT: Duration = Duration::from_secs(30);
/// How long an exited daemon may stay a zombie before we stop waiting for its reaping.
const ZOMBIE_REAP_WAIT: Duration = Duration::from_secs(10);

/// Run `kmsfs unmount`.
pub fn run(args: &UnmountCmd) -> CliResult {
    // Not canonicalize: a dead daemon's mount point cannot be stat'ed (ENOTCONN).
    let mnt = normalize(&provider::absolute(&args.mountpoint));
    let mnt = mnt.canonicalize().unwrap_or(mnt);
    let mounted = mounted_at(&mnt);
    let pid = runtime_dir::lookup(&mnt);
    match &mounted {
        None if pid.is_none() => return Err(format!("{} is not mounted", mnt.display()).into()),
        // fuser mounts with type "fuse" as root and "fuse.kmsfs" through fusermount3.
        Some((fstype, source)) if !is_kmsfs(fstype, source, pid.is_some()) => {
            return Err(format!(
                "{} is a {fstype} mount, not kmsfs: use umount",
                mnt.display()
            )
            .into());
        }
        _ => {}
    }
    if mounted.is_some() {
        detach_when_idle(&mnt, Duration::from_secs(args.wait))?;
    }
    if let Some(pid) = pid {
        let start = Instant::now();
        let mut zombie_since = None;
        loop {
            match state(pid) {
                None => break,
                // Exited; wait a little for init to reap it so the pid is really gone.
                Some('Z' | 'X') => {
                    let since = *zombie_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > ZOMBIE_REAP_WAIT {
                        break;
                    }
                }
                Some(_) if start.elapsed() > DAEMON_EXIT_WAIT => {
                    return Err(format!(
                        "unmounted, but daemon {pid} has not exited after 30 s: check it with ps"
                    )
                    .into());
                }
                Some(_) => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    runtime_dir::remove(&mnt);
    Ok(())
}

/// Unmount; while the mount is busy, retry until `wait` has passed, naming (once) the
/// processes that use it.
fn detach_when_idle(mnt: &Path, wait: Duration) -> CliResult {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match detach(mnt) {
            Err(Busy) if Instant::now() < deadline => {
                if !told {
                    told = true;
                    eprintln!(
                        "kmsfs: {} is in use{}: waiting up to {} s for it to be free",
                        mnt.display(),
                        users_of(mnt),
                        wait.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(Busy) => {
                return Err(format!(
                    "{} is busy{}: close the files and shells using it, then retry",
                    mnt.display(),
                    users_of(mnt)
                )
                .into());
            }
            Err(Failed(msg)) => return Err(msg.into()),
            Ok(()) => return Ok(()),
        }
    }
}

/// Why an unmount did not happen.
enum DetachError {
    /// Programs still use the mount.
    Busy,
    /// Anything else, with the message for the user.
    Failed(String),
}
use DetachError::{Busy, Failed};

/// " (by git 1234, bash 99)": the processes whose working directory or open files are under
/// `mnt`, as far as /proc shows them (empty when none is found).
fn users_of(mnt: &Path) -> String {
    let mut users = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return String::new();
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = p.path();
        let inside = |l: std::io::Result<PathBuf>| l.is_ok_and(|t| t.starts_with(mnt));
        let uses = inside(std::fs::read_link(dir.join("cwd")))
            || std::fs::read_dir(dir.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| inside(std::fs::read_link(fd.path())));
        if uses {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            users.push(format!("{} {pid}", comm.trim()));
        }
        if users.len() >= 5 {
            users.push("...".into());
            break;
        }
    }
    if users.is_empty() {
        String::new()
    } else {
        format!(" (by {})", users.join(", "))
    }
}

/// Unmount through fusermount3 (works unprivileged), else umount2 as root.
fn detach(mnt: &Path) -> Result<(), DetachError> {
    let fusermount = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .stderr(std::process::Stdio::piped())
        .output();
    if let Ok(out) = &fusermount {
        if out.status.success() {
            return Ok(());
        }
    }
    let err = match crate::sys::process::umount(mnt) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let stderr = fusermount
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .filter(|s| !s.is_empty());
    if err.raw_os_error() == Some(libc::EBUSY)
        || stderr.as_deref().is_some_and(|s| s.contains("busy"))
    {
        return Err(Busy);
    }
    let detail = stderr.unwrap_or_else(|| err.to_string());
    Err(Failed(format!(
        "cannot unmount {}: {detail}",
        mnt.display()
    )))
}

/// Whether a mount of `fstype` from `source` is ours: a FUSE mount that this host recorded,
/// or whose source is a kmsfs vault.
pub(super) fn is_kmsfs(fstype: &str, source: &str, recorded: bool) -> bool {
    fstype == "fuse.kmsfs"
        || (fstype == "fuse"
            && (recorded || crate::vault::VaultConfig::path(Path::new(source)).exists()))
}

/// The (file system type, source) mounted at `mnt`, from /proc/self/mountinfo.
pub(super) fn mounted_at(mnt: &Path) -> Option<(String, String)> {
    let want = mnt.to_str()?;
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.0 == want)
        .map(|(_, fstype, source)| (fstype, source))
}

/// This host's mounts, oldest first: (mount point, file system type, source).
pub(super) fn mounts() -> Vec<(String, String, String)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let point = unescape(pre.split(' ').nth(4)?);
            let mut fields = post.split(' ');
            let fstype = fields.next()?.to_string();
            let source = unescape(fields.next()?);
            Some((point, fstype, source))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The state letter of process `pid` (R, S, Z, ...), or `None` when it is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

/// `a/./b/../c` → `a/c`, without touching the file system.
pub(super) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}
