//! Where a running mount records itself on this host, so `kmsfs unmount MOUNTPOINT` can find
//! the daemon: `$XDG_RUNTIME_DIR/kmsfs/` or `/run/kmsfs/` (root), one file per mount point.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The runtime directory (created 0700 on demand).
pub fn dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        Some(x) => PathBuf::from(x).join("kmsfs"),
        // SAFETY: geteuid has no preconditions.
        None if unsafe { libc::geteuid() } == 0 => PathBuf::from("/run/kmsfs"),
        None => std::env::temp_dir().join(format!("kmsfs-{}", unsafe { libc::geteuid() })),
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

/// Create the runtime directory (0700) if it is missing, e.g. on a fresh /run after boot.
pub fn ensure_dir() -> std::io::Result<PathBuf> {
    let d = dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)?;
    Ok(d)
}

/// The control socket of the mount at `mountpoint`.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    dir().join(name_of(mountpoint).replace(".pid", ".sock"))
}

/// Record that daemon `pid` serves `mountpoint`.
pub fn record(mountpoint: &Path, pid: u32) -> std::io::Result<PathBuf> {
    let path = ensure_dir()?.join(name_of(mountpoint));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(f, "{pid}\n{}", mountpoint.display())?;
    Ok(path)
}

/// The daemon pid recorded for `mountpoint`, if any.
pub fn lookup(mountpoint: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir().join(name_of(mountpoint))).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    (lines.next()? == mountpoint.display().to_string()).then_some(pid)
}

/// Forget the record of `mountpoint`.
pub fn remove(mountpoint: &Path) {
    let _ = std::fs::remove_file(dir().join(name_of(mountpoint)));
    let _ = std::fs::remove_file(socket_path(mountpoint));
}
