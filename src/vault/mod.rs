//! A vault on disk and what this host trusts about it.
//!
//! - [`config`]: `VAULT/.kmsfs/config.json`, authenticated by a config key that the trusted
//!   key wraps, so whoever can write the backing directory cannot change how data or names are
//!   protected.
//! - [`trust`]: this host's records (`~/.config/kmsfs/`): which key protects a volume, the
//!   config it last verified, and which volume each vault path holds, so a vault cannot be
//!   swapped for another one protected by the same key.
//! - [`lock`]: the per-host mount lock in `.kmsfs/`, named by a keyed hash of the host id.
//! - [`MetaDir`]: the `.kmsfs/` directory itself, opened without following a symlink; every
//!   file in it is opened as a checked regular file (`sys::open_regular`).

pub mod config;
pub mod lock;
pub mod open;
pub mod trust;

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use config::VaultConfig;
pub use lock::{MountLock, default_host_id};
pub use trust::{Trust, TrustedKey};

use crate::format::header::ProviderId;
use crate::sys;

/// Name of the vault's config directory inside the backing directory (hidden by the mount).
pub const META_DIR: &str = ".kmsfs";

/// Errors about vaults and host-side configuration; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The directory has no `.kmsfs/config.json`.
    #[error("{0} is not a kmsfs vault (no .kmsfs/config.json): run kmsfs init {0}")]
    NotInitialised(String),
    /// `init` on a vault that already exists.
    #[error("{0} is already a kmsfs vault: mount it, or init another directory")]
    AlreadyInitialised(String),
    /// The config is unreadable or malformed.
    #[error("vault config {path}: {why}")]
    BadConfig {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The config does not verify under the trusted key: changed outside kmsfs.
    #[error(
        "vault config {path} does not verify under the trusted key ({why}): it was changed outside kmsfs{changes}; refusing to use it (restore .kmsfs/config.json from a backup)"
    )]
    Tampered {
        /// The file.
        path: String,
        /// Which check failed.
        why: String,
        /// ": FIELD a -> b, ..." against what this host last trusted, or empty.
        changes: String,
    },
    /// The config verifies, but differs from the one this host last trusted.
    #[error(
        "vault {vault}: its config changed since this host last used it ({changes}); it verifies under the trusted key, so if the change is yours (kmsfs rewrap on another host), accept it with --volume-id {volume}"
    )]
    ConfigChanged {
        /// The vault path.
        vault: String,
        /// What changed.
        changes: String,
        /// The volume id to confirm.
        volume: String,
    },
    /// The vault path held another volume when this host last used it.
    #[error(
        "vault {vault} held volume {was} when this host last used it, but its config now names volume {now}: the vault was swapped or its .kmsfs/config.json replaced; refusing (if you replaced the vault yourself, pass --volume-id {now})"
    )]
    VolumeSwapped {
        /// The vault path.
        vault: String,
        /// The volume this host recorded for the path.
        was: String,
        /// The volume the config names now.
        now: String,
    },
    /// `--volume-id` names another volume than the vault's config.
    #[error(
        "vault {vault} is volume {found}, not the volume {expected} you passed with --volume-id"
    )]
    VolumeMismatch {
        /// The vault path.
        vault: String,
        /// What `--volume-id` said.
        expected: String,
        /// What the config says.
        found: String,
    },
    /// A key was passed for a volume this host has never trusted.
    #[error(
        "this host has never used volume {volume} (vault {vault}): to trust it, pass --volume-id {volume} together with the key, after checking that id on a host that uses the vault (kmsfs init printed it; kmsfs status shows it)"
    )]
    UnknownVolume {
        /// The vault path.
        vault: String,
        /// The volume the config names.
        volume: String,
    },
    /// An on-disk format this build does not read.
    #[error(
        "vault {vault} uses on-disk format {found}; this kmsfs reads format {supported} only{why}"
    )]
    UnsupportedFormat {
        /// The vault path.
        vault: String,
        /// The format found.
        found: u64,
        /// The format this build reads.
        supported: u16,
        /// Advice for this case.
        why: String,
    },
    /// Another mount of this vault holds the lock on this host.
    #[error(
        "vault {0} is already mounted on this host (pid {1}): run kmsfs unmount on that mount first"
    )]
    Locked(String, String),
    /// No trusted key known for this vault on this host.
    #[error("this host has no trusted key for vault {0}: pass --key-file PATH or --kms-key-id ID")]
    NoTrustedKey(String),
    /// The vault names a different key than the trusted one.
    #[error(
        "vault {vault} says it is protected by {hint}, but the trusted key is {trusted}: refusing to mount (pass the right --key-file/--kms-key-id)"
    )]
    KeyMismatch {
        /// The vault path.
        vault: String,
        /// What `.kmsfs/config.json` names.
        hint: String,
        /// What this host trusts.
        trusted: String,
    },
    /// The key service failed while verifying the config.
    #[error("cannot verify vault config {path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// The key service's error.
        why: String,
    },
    /// I/O on the config files.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The provider name written in the vault config.
pub fn provider_name(p: ProviderId) -> &'static str {
    match p {
        ProviderId::Local => "local",
        ProviderId::AwsKms => "aws-kms",
        ProviderId::BucketKey => "aws-kms-bucket-key",
    }
}

/// Where this host keeps its trust records and default keys: `$XDG_CONFIG_HOME/kmsfs`; for
/// root `/etc/kmsfs` (system mounts; `/root/.config/kmsfs` still, while only it holds records);
/// else `~/.config/kmsfs`, home from $HOME or the user's passwd entry (never another's).
pub fn config_home() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("kmsfs");
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(crate::sys::process::passwd_home);
    let user = home.map(|h| h.join(".config").join("kmsfs"));
    if crate::sys::process::euid() == 0 {
        let system = PathBuf::from(SYSTEM_CONFIG);
        // The records themselves decide: /etc/kmsfs may exist only for unit env files.
        let has_records = |d: &Path| d.join("vaults").is_dir();
        return match user {
            Some(legacy) if !has_records(&system) && has_records(&legacy) => legacy,
            _ => system,
        };
    }
    // No home at all: a path that cannot be created, so the error names the problem.
    user.unwrap_or_else(|| PathBuf::from("/nonexistent-home-of-this-user/.config/kmsfs"))
}

/// Root's configuration directory.
pub const SYSTEM_CONFIG: &str = "/etc/kmsfs";

/// Where the local key of a vault lives by default.
pub fn default_key_file(volume_id: &str) -> PathBuf {
    config_home().join("keys").join(format!("{volume_id}.key"))
}

/// A vault's `.kmsfs/` directory, opened (read-only, for fsync) without following a symlink:
/// the vault path is the user's choice, but what lies inside it is the backing store's.
#[derive(Debug)]
pub struct MetaDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl MetaDir {
    /// Open `VAULT/.kmsfs`; `create` makes it (mode 0755) when missing.
    pub fn open(vault: &Path, create: bool) -> Result<Self, VaultError> {
        let path = vault.join(META_DIR);
        let io = |e| VaultError::Io(path.display().to_string(), e);
        let root = std::fs::File::open(vault)
            .map_err(|e| VaultError::Io(vault.display().to_string(), e))?;
        if create {
            match sys::mkdirat(root.as_fd(), OsStr::new(META_DIR), 0o755) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(io(e)),
            }
        }
        let fd = sys::openat(
            root.as_fd(),
            OsStr::new(META_DIR),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => VaultError::NotInitialised(vault.display().to_string()),
            Some(libc::ELOOP | libc::ENOTDIR) => io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a directory (a symbolic link?): refusing to use it",
            )),
            _ => io(e),
        })?;
        Ok(MetaDir { fd, path })
    }

    /// The directory's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `VAULT/.kmsfs/name`, for messages.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// Name of the directory of files' hole maps inside `.kmsfs`.
pub const HOLES_DIR: &str = "holes";

/// The directory of the vault's hole maps, `.kmsfs/holes`, opened without following links
/// (made, mode 0700, when `create`); None when it is missing and not made.
pub fn hole_dir(vault: &Path, create: bool) -> Result<Option<OwnedFd>, VaultError> {
    let meta = match MetaDir::open(vault, false) {
        // No `.kmsfs/` at all (fsck of a vault whose metadata was lost): no hole maps either.
        Err(VaultError::NotInitialised(_)) if !create => return Ok(None),
        other => other?,
    };
    let io = |e| VaultError::Io(meta.path_of(HOLES_DIR).display().to_string(), e);
    if create {
        match sys::mkdirat(meta.fd(), OsStr::new(HOLES_DIR), 0o700) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(io(e)),
            _ => {}
        }
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    match sys::openat(meta.fd(), OsStr::new(HOLES_DIR), flags, 0) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(io(e)),
    }
}
