//! The per-host mount lock of a vault: `.kmsfs/mount-HOST.lock`, held (flock) for the life of
//! the mount and naming the daemon's pid, so one host mounts a vault once.
//!
//! HOST is not the host id itself: `/etc/machine-id` must not be exposed on untrusted storage
//! (machine-id(5)), so it is a keyed hash, HMAC-SHA256(host id, "kmsfs-host" ‖ volume id),
//! 16 hex digits — stable for one host and vault, unlinkable across vaults. The lock file is
//! opened as a checked regular file: a symlink or FIFO planted in its place is refused, never
//! followed or blocked on.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::path::Path;

use super::{MetaDir, VaultError};
use crate::sys;

/// Largest lock file content read (a pid and a newline).
const MAX_LOCK: usize = 64;

/// This host's id: `/etc/machine-id`, else the hostname.
pub fn default_host_id() -> String {
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_string();
        }
    }
    sys::process::hostname().unwrap_or_else(|| "localhost".to_string())
}

/// The name part this host uses for its files in `.kmsfs/` of volume `volume_id` (the mount
/// lock, the spares directory): a keyed hash of `host_id`, never the id itself.
pub fn host_tag(host_id: &str, volume_id: &str) -> String {
    let mac =
        crate::crypto::hmac_sha256(host_id.as_bytes(), &[b"kmsfs-host", volume_id.as_bytes()]);
    hex::encode(&mac[..8])
}

/// The per-host mount lock of a vault.
#[derive(Debug)]
pub struct MountLock {
    file: File,
    path: String,
    host: String,
}

fn lock_name(host: &str) -> String {
    format!("mount-{host}.lock")
}

/// How long a mount waits for another daemon of this host to release the vault.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl MountLock {
    /// This host's tag (see [`host_tag`]), for its other files in `.kmsfs/`.
    pub fn host_part(&self) -> &str {
        &self.host
    }

    /// Take the lock of `vault` (volume `volume_id`) for `host_id`, or say who holds it (after
    /// waiting up to `LOCK_WAIT` for a holder to let go).
    pub fn acquire(vault: &Path, host_id: &str, volume_id: &str) -> Result<Self, VaultError> {
        let meta = MetaDir::open(vault, false)?;
        let host = host_tag(host_id, volume_id);
        let name = lock_name(&host);
        let path = meta.path_of(&name).display().to_string();
        let io = |e| VaultError::Io(path.clone(), e);
        let (fd, _) = sys::open_regular(
            meta.fd(),
            OsStr::new(&name),
            libc::O_RDWR | libc::O_CREAT,
            0o644,
        )
        .map_err(io)?;
        let mut file = File::from(fd);
        // A daemon whose mount was just unmounted holds the lock for the few milliseconds it
        // takes to drop its keys and exit: a mount right after an unmount waits for that.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        while !sys::flock(file.as_fd(), libc::LOCK_EX | libc::LOCK_NB)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !sys::flock(file.as_fd(), libc::LOCK_EX | libc::LOCK_NB) {
            let mut holder = String::new();
            let _ = (&mut file)
                .take(MAX_LOCK as u64)
                .read_to_string(&mut holder);
            return Err(VaultError::Locked(
                vault.display().to_string(),
                holder.trim().to_string(),
            ));
        }
        Ok(MountLock { file, path, host })
    }

    /// Record the daemon's pid in the lock file (after daemonizing).
    pub fn write_pid(&mut self, pid: u32) -> Result<(), VaultError> {
        let io = |e| VaultError::Io(self.path.clone(), e);
        self.file.set_len(0).map_err(io)?;
        self.file.rewind().map_err(io)?;
        self.file
            .write_all(format!("{pid}\n").as_bytes())
            .map_err(io)
    }

    /// The pid recorded in the lock file of `vault`, if a mount holds the lock now.
    pub fn holder(vault: &Path, host_id: &str, volume_id: &str) -> Option<u32> {
        let meta = MetaDir::open(vault, false).ok()?;
        let name = lock_name(&host_tag(host_id, volume_id));
        let (fd, _) = sys::open_regular(meta.fd(), OsStr::new(&name), libc::O_RDONLY, 0).ok()?;
        let file = File::from(fd);
        // A shared non-blocking probe, released at once.
        if sys::flock(file.as_fd(), libc::LOCK_SH | libc::LOCK_NB) {
            sys::flock(file.as_fd(), libc::LOCK_UN);
            return None;
        }
        let mut text = String::new();
        (&file)
            .take(MAX_LOCK as u64)
            .read_to_string(&mut text)
            .ok()?;
        text.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(super::super::META_DIR)).expect("mkdir");
        dir
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = vault();
        let mut a = MountLock::acquire(dir.path(), "h1", "v").expect("first");
        a.write_pid(42).expect("pid");
        assert!(
            matches!(MountLock::acquire(dir.path(), "h1", "v"), Err(VaultError::Locked(_, p)) if p == "42")
        );
        assert_eq!(MountLock::holder(dir.path(), "h1", "v"), Some(42));
        assert!(
            MountLock::acquire(dir.path(), "h2", "v").is_ok(),
            "another host id may mount"
        );
        drop(a);
        assert_eq!(MountLock::holder(dir.path(), "h1", "v"), None);
    }

    /// Attack 3 of the hostile-store issue, in-process: a symlink planted as the lock file is
    /// neither followed nor truncated, and the host id never appears in a file name.
    #[test]
    fn a_symlinked_lock_is_refused_and_the_host_id_is_hashed() {
        let dir = vault();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let host = "0123456789abcdef0123456789abcdef";
        let name = lock_name(&host_tag(host, "v"));
        assert!(!name.contains(host) && name.len() == "mount-.lock".len() + 16);
        assert_ne!(
            host_tag(host, "v"),
            host_tag(host, "w"),
            "unlinkable across vaults"
        );
        std::os::unix::fs::symlink(&victim, dir.path().join(".kmsfs").join(&name))
            .expect("symlink");
        let err = MountLock::acquire(dir.path(), host, "v").expect_err("symlink refused");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
    }
}
