//! A vault on disk (`VAULT/.kmsfs/config.json`) and what this host trusts for it
//! (`~/.config/kmsfs/vaults/VOLUME_ID.json`, beside the local key files).
//!
//! The vault's own config is only a hint: whoever can write the backing directory must not be
//! able to choose the key, so `mount` takes the trusted key from the host side (or the command
//! line) and refuses a vault whose hint names another key.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::format::header::{FORMAT_VERSION, HEADER_SIZE, ProviderId};
use crate::format::{Id, Layout};

/// Name of the vault's config directory inside the backing directory (hidden by the mount).
pub const META_DIR: &str = ".kmsfs";
const CONFIG_FILE: &str = "config.json";

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
    /// I/O on the config files.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The vault's config, stored in `VAULT/.kmsfs/config.json`. Holds no secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VaultConfig {
    /// On-disk format version.
    pub format_version: u16,
    /// The volume id, hex.
    pub volume_id: String,
    /// Plaintext block size.
    pub block_size: u32,
    /// Per-file header size.
    pub header_size: u32,
    /// "local" or "aws-kms" (a hint; the trusted key comes from the host).
    pub provider: String,
    /// The wrapping key's id when the vault was made (a hint, checked against the trusted key).
    pub key_id: String,
    /// Whether file names are stored in plain text.
    pub plaintext_names: bool,
    /// The volume name key (encrypted names), hex, wrapped by the trusted key under the
    /// encryption context {volume id, purpose "names"}. Absent in plaintext-names vaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_name_key: Option<String>,
    /// Bucket-key mode: the volume's intermediate key, hex, wrapped by the trusted KMS key under
    /// {volume id, purpose "bucket"}; per-file keys are wrapped by it. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_bucket_key: Option<String>,
}

/// The key this host trusts for a vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "kebab-case")]
pub enum TrustedKey {
    /// A local master key file.
    Local {
        /// The key file.
        key_file: PathBuf,
    },
    /// An AWS KMS key (ARN, key id or alias).
    AwsKms {
        /// The key.
        kms_key_id: String,
    },
}

impl TrustedKey {
    /// The provider kind.
    pub fn provider_id(&self) -> ProviderId {
        match self {
            TrustedKey::Local { .. } => ProviderId::Local,
            TrustedKey::AwsKms { .. } => ProviderId::AwsKms,
        }
    }
}

/// The provider name written in the vault config.
pub fn provider_name(p: ProviderId) -> &'static str {
    match p {
        ProviderId::Local => "local",
        ProviderId::AwsKms => "aws-kms",
        ProviderId::BucketKey => "aws-kms-bucket-key",
    }
}

impl VaultConfig {
    /// A new config for a fresh vault.
    pub fn new(
        block_size: u32,
        provider: ProviderId,
        key_id: &str,
        plaintext_names: bool,
    ) -> Result<Self, VaultError> {
        let volume_id: Id = crate::crypto::random_array()
            .map_err(|e| VaultError::Io("random".into(), std::io::Error::other(e)))?;
        Ok(VaultConfig {
            format_version: FORMAT_VERSION,
            volume_id: hex::encode(volume_id),
            block_size,
            header_size: HEADER_SIZE as u32,
            provider: provider_name(provider).to_string(),
            key_id: key_id.to_string(),
            plaintext_names,
            wrapped_name_key: None,
            wrapped_bucket_key: None,
        })
    }

    /// Path of the config file of `vault`.
    pub fn path(vault: &Path) -> PathBuf {
        vault.join(META_DIR).join(CONFIG_FILE)
    }

    /// Load and validate the config of `vault`.
    pub fn load(vault: &Path) -> Result<Self, VaultError> {
        let path = Self::path(vault);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VaultError::NotInitialised(vault.display().to_string()));
            }
            Err(e) => return Err(VaultError::Io(path.display().to_string(), e)),
        };
        let bad = |why: String| VaultError::BadConfig {
            path: path.display().to_string(),
            why,
        };
        let cfg: VaultConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if cfg.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} is not supported by this kmsfs",
                cfg.format_version
            )));
        }
        if cfg.header_size as usize != HEADER_SIZE {
            return Err(bad(format!(
                "header size {} is not supported",
                cfg.header_size
            )));
        }
        cfg.volume_id_bytes()
            .map_err(|_| bad("volume id is not 32 hex digits".into()))?;
        cfg.layout().map_err(|e| bad(e.to_string()))?;
        let name_key_ok = cfg
            .wrapped_name_key
            .as_deref()
            .is_some_and(|k| !k.is_empty() && hex::decode(k).is_ok());
        if !cfg.plaintext_names && !name_key_ok {
            return Err(bad(
                "file names are encrypted but wrapped_name_key is missing or not hex".into(),
            ));
        }
        Ok(cfg)
    }

    /// Write the config into a new vault (refusing to overwrite one).
    pub fn create(&self, vault: &Path) -> Result<(), VaultError> {
        let dir = vault.join(META_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| VaultError::Io(dir.display().to_string(), e))?;
        let path = Self::path(vault);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    VaultError::AlreadyInitialised(vault.display().to_string())
                }
                _ => VaultError::Io(path.display().to_string(), e),
            })?;
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| VaultError::Io(path.display().to_string(), std::io::Error::other(e)))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| VaultError::Io(path.display().to_string(), e))
    }

    /// Replace the config of an existing vault (`rewrap`): write a temporary file beside it,
    /// fsync, rename it over the old one, fsync the directory. A crash leaves the old or the
    /// new config, never a mix.
    pub fn replace(&self, vault: &Path) -> Result<(), VaultError> {
        let path = Self::path(vault);
        let tmp = path.with_extension("json.tmp");
        let io = |p: &Path, e| VaultError::Io(p.display().to_string(), e);
        let text =
            serde_json::to_string_pretty(self).map_err(|e| io(&path, std::io::Error::other(e)))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        let dir = vault.join(META_DIR);
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&dir, e))
    }

    /// The volume id as bytes.
    pub fn volume_id_bytes(&self) -> Result<Id, hex::FromHexError> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(&self.volume_id, &mut id)?;
        Ok(id)
    }

    /// The vault's layout.
    pub fn layout(&self) -> Result<Layout, crate::format::FormatError> {
        Layout::new(u64::from(self.header_size), self.block_size)
    }
}

/// `$XDG_CONFIG_HOME/kmsfs`, else `~/.config/kmsfs`.
pub fn config_home() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("kmsfs");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".config").join("kmsfs")
}

/// Where the local key of a vault lives by default.
pub fn default_key_file(volume_id: &str) -> PathBuf {
    config_home().join("keys").join(format!("{volume_id}.key"))
}

fn host_config_path(volume_id: &str) -> PathBuf {
    config_home()
        .join("vaults")
        .join(format!("{volume_id}.json"))
}

/// The key this host trusts for `volume_id`, if `init` (or the operator) recorded one.
pub fn load_trusted_key(volume_id: &str) -> Result<Option<TrustedKey>, VaultError> {
    let path = host_config_path(volume_id);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| VaultError::BadConfig {
                path: path.display().to_string(),
                why: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VaultError::Io(path.display().to_string(), e)),
    }
}

/// Record on this host which key protects `volume_id` (0600, in the config home).
pub fn save_trusted_key(volume_id: &str, key: &TrustedKey) -> Result<(), VaultError> {
    let path = host_config_path(volume_id);
    let io = |e| VaultError::Io(path.display().to_string(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(key).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// This host's id: `/etc/machine-id`, else the hostname.
pub fn default_host_id() -> String {
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_string();
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            return s.to_string();
        }
    }
    "localhost".to_string()
}

/// The per-host mount lock of a vault: held (flock) for the life of the mount, naming the pid.
#[derive(Debug)]
pub struct MountLock {
    file: File,
    path: PathBuf,
    host: String,
}

/// `host_id` made safe for a file name in `.kmsfs` (per-host lock, per-host spares).
fn host_file_part(host_id: &str) -> String {
    host_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl MountLock {
    /// Path of the lock file of `vault` for `host_id`.
    pub fn path(vault: &Path, host_id: &str) -> PathBuf {
        vault
            .join(META_DIR)
            .join(format!("mount-{}.lock", host_file_part(host_id)))
    }

    /// The holder's host id, made safe for a file name.
    pub fn host_part(&self) -> &str {
        &self.host
    }

    /// Take the lock, or say who holds it.
    pub fn acquire(vault: &Path, host_id: &str) -> Result<Self, VaultError> {
        let path = Self::path(vault, host_id);
        let io = |e| VaultError::Io(path.display().to_string(), e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io)?;
        // SAFETY: a valid open fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(VaultError::Locked(
                vault.display().to_string(),
                holder.trim().to_string(),
            ));
        }
        Ok(MountLock {
            file,
            path,
            host: host_file_part(host_id),
        })
    }

    /// Record the daemon's pid in the lock file (after daemonizing).
    pub fn write_pid(&mut self, pid: u32) -> Result<(), VaultError> {
        let io = |e| VaultError::Io(self.path.display().to_string(), e);
        self.file.set_len(0).map_err(io)?;
        std::io::Seek::rewind(&mut self.file).map_err(io)?;
        self.file
            .write_all(format!("{pid}\n").as_bytes())
            .map_err(io)
    }

    /// The pid recorded in the lock file of `vault`, if a mount holds the lock now.
    pub fn holder(vault: &Path, host_id: &str) -> Option<u32> {
        let path = Self::path(vault, host_id);
        let file = File::open(&path).ok()?;
        // SAFETY: a valid open fd; a shared non-blocking probe that we release at once.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        if free {
            // SAFETY: as above.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            return None;
        }
        std::fs::read_to_string(&path).ok()?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = dir.path();
        assert!(matches!(
            VaultConfig::load(v),
            Err(VaultError::NotInitialised(_))
        ));
        let mut cfg = VaultConfig::new(4096, ProviderId::Local, "local:00", false).expect("new");
        cfg.wrapped_name_key = Some("00ff".into());
        cfg.create(v).expect("create");
        assert!(matches!(
            cfg.create(v),
            Err(VaultError::AlreadyInitialised(_))
        ));
        assert_eq!(VaultConfig::load(v).expect("load"), cfg);
        let msg = VaultError::NotInitialised("/x".into()).to_string();
        assert!(msg.contains("run kmsfs init /x"), "{msg}");
    }

    #[test]
    fn encrypted_names_need_a_wrapped_name_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = VaultConfig::new(4096, ProviderId::Local, "local:00", false).expect("new");
        cfg.create(dir.path()).expect("create");
        let err = VaultConfig::load(dir.path()).expect_err("no name key");
        assert!(err.to_string().contains("wrapped_name_key"), "{err}");
        let plain = tempfile::tempdir().expect("tempdir");
        let cfg = VaultConfig::new(4096, ProviderId::Local, "local:00", true).expect("new");
        cfg.create(plain.path()).expect("create");
        let text = std::fs::read_to_string(VaultConfig::path(plain.path())).expect("read");
        assert!(
            !text.contains("wrapped_name_key"),
            "absent in plaintext-names vaults: {text}"
        );
        assert_eq!(VaultConfig::load(plain.path()).expect("load"), cfg);
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(META_DIR)).expect("mkdir");
        let mut a = MountLock::acquire(dir.path(), "h1").expect("first");
        a.write_pid(42).expect("pid");
        assert!(
            matches!(MountLock::acquire(dir.path(), "h1"), Err(VaultError::Locked(_, p)) if p == "42")
        );
        assert_eq!(MountLock::holder(dir.path(), "h1"), Some(42));
        assert!(
            MountLock::acquire(dir.path(), "h2").is_ok(),
            "another host id may mount"
        );
        drop(a);
        assert_eq!(MountLock::holder(dir.path(), "h1"), None);
    }
}
