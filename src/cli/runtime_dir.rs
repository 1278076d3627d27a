//! Where a running mount records itself on this host, so `kmsfs unmount MOUNTPOINT` can find
//! the daemon: `$XDG_RUNTIME_DIR/kmsfs/`, `/run/kmsfs/` (root) or `/tmp/kmsfs-UID/`, one pid
//! file and one control socket per mount point.
//!
//! `/tmp` is shared with every local user, who could have made `/tmp/kmsfs-UID` first (as a
//! symlink, or a directory they can write). So the directory must be a real directory owned
//! by this user with mode 0700, else it is refused; its files are opened relative to it,
//! without following symlinks, and replaced through `O_EXCL` temporary names.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

/// The runtime directory.
pub fn dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        Some(x) => PathBuf::from(x).join("kmsfs"),
        None if sys::euid() == 0 => PathBuf::from("/run/kmsfs"),
        None => std::env::temp_dir().join(format!("kmsfs-{}", sys::euid())),
    }
}

/// FNV-1a of the mount point: a short, stable file name.
fn name_of(mountpoint: &Path) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in mountpoint.as_os_str().as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("mount-{h:016x}.pid")
}

/// `d` is a directory (not a symlink) owned by this user that nobody else may enter.
fn check_ours(d: &Path) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(d)?;
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "runtime directory {} {why}: remove it, or set XDG_RUNTIME_DIR to a directory of yours",
                d.display()
            ),
        ))
    };
    if !m.file_type().is_dir() {
        return refuse("is not a directory (a symbolic link?)".into());
    }
    if m.uid() != sys::euid() {
        return refuse(format!("belongs to uid {}, not to you", m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        return refuse(format!(
            "has mode {:o}: others may enter it",
            m.mode() & 0o777
        ));
    }
    Ok(())
}

/// Create the runtime directory (0700) if it is missing, e.g. on a fresh /run after boot, and
/// check that it is ours and private.
pub fn ensure_dir() -> std::io::Result<PathBuf> {
    ensure(&dir())
}

fn ensure(d: &Path) -> std::io::Result<PathBuf> {
    if let Some(parent) = d.parent() {
        // The parent (XDG_RUNTIME_DIR, /run, /tmp) normally exists; make it privately if not.
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_ours(d)?;
    Ok(d.to_path_buf())
}

/// The runtime directory, opened after checking it (`None` when it does not exist).
fn open_dir(create: bool) -> std::io::Result<Option<File>> {
    let d = dir();
    if create {
        ensure(&d)?;
    } else if let Err(e) = check_ours(&d) {
        return if e.kind() == std::io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(e)
        };
    }
    File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&d)
        .map(Some)
}

/// Where the daemon of the mount at `mountpoint` logs when there is no system log (the
/// runtime directory is made, private, if needed).
pub fn log_path(mountpoint: &Path) -> std::io::Result<PathBuf> {
    Ok(ensure_dir()?.join(name_of(mountpoint).replace(".pid", ".log")))
}

/// The control socket of the mount at `mountpoint`.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    dir().join(name_of(mountpoint).replace(".pid", ".sock"))
}

/// Record that daemon `pid` serves `mountpoint`.
pub fn record(mountpoint: &Path, pid: u32) -> std::io::Result<PathBuf> {
    let d = open_dir(true)?.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
    let name = name_of(mountpoint);
    let text = format!("{pid}\n{}\n", mountpoint.display());
    sys::replace_file(d.as_fd(), OsStr::new(&name), text.as_bytes(), 0o600, false)?;
    Ok(dir().join(name))
}

/// The daemon pid recorded for `mountpoint`, if any.
pub fn lookup(mountpoint: &Path) -> Option<u32> {
    let d = open_dir(false).ok()??;
    let bytes = sys::read_regular(d.as_fd(), OsStr::new(&name_of(mountpoint)), 8192).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    (lines.next()? == mountpoint.display().to_string()).then_some(pid)
}

/// Forget the record of `mountpoint`.
pub fn remove(mountpoint: &Path) {
    let Ok(Some(d)) = open_dir(false) else { return };
    let pid = name_of(mountpoint);
    let sock = pid.replace(".pid", ".sock");
    for n in [pid, sock] {
        let _ = sys::unlinkat(d.as_fd(), OsStr::new(&n), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Attack 6 of the hostile-store issue: a runtime directory someone else made first — a
    /// symlink, another user's, or one others may enter — is refused.
    #[test]
    fn a_runtime_dir_that_is_not_ours_and_private_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let ok = t.path().join("ok");
        ensure(&ok).expect("fresh");
        ensure(&ok).expect("again");
        let open = t.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = ensure(&open).expect_err("0777");
        assert!(e.to_string().contains("mode 777"), "{e}");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).expect("symlink");
        let e = ensure(&link).expect_err("symlink");
        assert!(e.to_string().contains("not a directory"), "{e}");
        if sys::euid() == 0 {
            let theirs = t.path().join("theirs");
            ensure(&theirs).expect("mkdir");
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
            let e = ensure(&theirs).expect_err("another user's");
            assert!(e.to_string().contains("uid 65534"), "{e}");
        }
    }
}
