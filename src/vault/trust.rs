//! What this host trusts about its vaults, kept outside every vault in the config home
//! (`$XDG_CONFIG_HOME/kmsfs`, default `~/.config/kmsfs`, directories 0700, files 0600):
//!
//! - `vaults/VOLUME_ID.json`: the key that protects the volume (key file or KMS key) and a copy
//!   of the config this host last verified (no secret: its keys are wrapped);
//! - `paths/HASH.json` (HASH = SHA-256 of the canonical vault path, 32 hex digits): which
//!   volume that vault path held.
//!
//! The vault's own config is authenticated (`config`), but a whole config copied from another
//! vault under the same key verifies too. So a vault path is pinned to its volume at `init` or
//! at its first use on this host; a path whose config now names another volume is refused
//! (volume swap), and a key passed on the command line for a volume this host has never used
//! must come with `--volume-id` to say which volume is meant. A config that verifies but
//! differs from the copy kept here (a rollback, or a rewrap done elsewhere) is refused with
//! what changed, until confirmed with `--volume-id`.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{CONFIG_FILE, ConfigKey};
use super::{VaultConfig, VaultError, provider_name};
use crate::format::header::ProviderId;
use crate::keys::{KeyProvider, arn};
use crate::sys;

/// Largest host-side record read.
const MAX_RECORD: usize = 64 * 1024;

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

/// This host's record of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// The key that protects the volume.
    key: TrustedKey,
    /// The volume id (also the file name).
    volume_id: String,
    /// The config this host last verified.
    config: VaultConfig,
}

/// A vault path and the volume it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathPin {
    vault: PathBuf,
    volume_id: String,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> VaultError + '_ {
    move |e| VaultError::Io(path.display().to_string(), e)
}

/// `home/sub` (home: the config home), opened (created 0700 when `create`).
fn host_dir(home: &Path, sub: &str, create: bool) -> Result<Option<(File, PathBuf)>, VaultError> {
    let path = home.join(sub);
    if create {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(io_err(&path))?;
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => Ok(Some((f, path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Read host file `name` of `sub`: a regular file owned by this user, else an error.
fn read_host_file<T: for<'de> Deserialize<'de>>(
    home: &Path,
    sub: &str,
    name: &str,
) -> Result<Option<T>, VaultError> {
    let Some((dir, dir_path)) = host_dir(home, sub, false)? else {
        return Ok(None);
    };
    let path = dir_path.join(name);
    let (fd, st) =
        match sys::open_regular(dir.as_fd(), std::ffi::OsStr::new(name), libc::O_RDONLY, 0) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
    if st.st_uid != sys::euid() {
        return Err(VaultError::BadConfig {
            path: path.display().to_string(),
            why: format!(
                "owned by uid {}, not by you (uid {}): refusing to trust it",
                st.st_uid,
                sys::euid()
            ),
        });
    }
    let mut text = Vec::new();
    File::from(fd)
        .take(MAX_RECORD as u64)
        .read_to_end(&mut text)
        .map_err(io_err(&path))?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| VaultError::BadConfig {
            path: path.display().to_string(),
            why: format!("{e} (a record of an older kmsfs? remove it)"),
        })
}

fn write_host_file<T: Serialize>(
    home: &Path,
    sub: &str,
    name: &str,
    value: &T,
) -> Result<(), VaultError> {
    let (dir, dir_path) = host_dir(home, sub, true)?.ok_or_else(|| {
        VaultError::Io(
            sub.to_string(),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })?;
    let path = dir_path.join(name);
    let text =
        serde_json::to_string_pretty(value).map_err(|e| io_err(&path)(std::io::Error::other(e)))?;
    sys::replace_file(
        dir.as_fd(),
        std::ffi::OsStr::new(name),
        text.as_bytes(),
        0o600,
        true,
    )
    .map_err(io_err(&path))
}

fn record_name(volume_id: &str) -> String {
    format!("{volume_id}.json")
}

fn pin_name(vault: &Path) -> String {
    let digest = Sha256::digest(vault.as_os_str().as_bytes());
    format!("{}.json", &hex::encode(digest)[..32])
}

fn load_record(home: &Path, volume_id: &str) -> Result<Option<Record>, VaultError> {
    let rec: Option<Record> = read_host_file(home, "vaults", &record_name(volume_id))?;
    Ok(rec.filter(|r| r.volume_id == volume_id))
}

fn pinned_volume(home: &Path, vault: &Path) -> Result<Option<String>, VaultError> {
    let pin: Option<PathPin> = read_host_file(home, "paths", &pin_name(vault))?;
    Ok(pin.filter(|p| p.vault == vault).map(|p| p.volume_id))
}

/// The key this host (config home `home`) trusts for `volume_id`, if it has a record of it.
pub fn trusted_key_of(home: &Path, volume_id: &str) -> Result<Option<TrustedKey>, VaultError> {
    Ok(load_record(home, volume_id)?.map(|r| r.key))
}

/// Record in config home `home` that this host trusts `key` for the vault at `vault`
/// (canonical) with verified config `cfg` (init, rewrap, a first mount): the volume record and
/// the path pin.
pub fn record(
    home: &Path,
    vault: &Path,
    cfg: &VaultConfig,
    key: &TrustedKey,
) -> Result<(), VaultError> {
    let rec = Record {
        key: key.clone(),
        volume_id: cfg.volume_id.clone(),
        config: cfg.clone(),
    };
    if load_record(home, &cfg.volume_id).ok().flatten().as_ref() != Some(&rec) {
        write_host_file(home, "vaults", &record_name(&cfg.volume_id), &rec)?;
    }
    if pinned_volume(home, vault).ok().flatten().as_deref() != Some(cfg.volume_id.as_str()) {
        write_host_file(
            home,
            "paths",
            &pin_name(vault),
            &PathPin {
                vault: vault.to_path_buf(),
                volume_id: cfg.volume_id.clone(),
            },
        )?;
    }
    Ok(())
}

/// What this host trusts for one vault: the key to use and what the config must match. Made
/// by [`Trust::resolve`] without a key service call (before a mount daemonizes); the config is
/// checked by [`Trust::verify`] once the key provider runs.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The key that protects the vault.
    pub key: TrustedKey,
    home: PathBuf,
    vault: PathBuf,
    cfg: VaultConfig,
    /// The config this host last verified for the volume.
    known: Option<VaultConfig>,
    /// `--volume-id` was given (and matches): a changed config or a new path is accepted.
    confirmed: bool,
}

impl Trust {
    /// Decide what to trust for the vault at `vault` (canonical) whose config is `cfg`: the
    /// key from the command line (`key`) or this host's record (in config home `home`); the
    /// volume pinned to the path, or confirmed by `volume_id` (`--volume-id`).
    pub fn resolve(
        home: &Path,
        vault: &Path,
        cfg: &VaultConfig,
        key: Option<TrustedKey>,
        volume_id: Option<&str>,
    ) -> Result<Trust, VaultError> {
        let shown = vault.display().to_string();
        let confirmed = match volume_id.map(str::to_ascii_lowercase) {
            Some(v) if v != cfg.volume_id => {
                return Err(VaultError::VolumeMismatch {
                    vault: shown,
                    expected: v,
                    found: cfg.volume_id.clone(),
                });
            }
            Some(_) => true,
            None => false,
        };
        if let Some(was) = pinned_volume(home, vault)? {
            if was != cfg.volume_id && !confirmed {
                return Err(VaultError::VolumeSwapped {
                    vault: shown,
                    was,
                    now: cfg.volume_id.clone(),
                });
            }
        }
        let record = load_record(home, &cfg.volume_id)?;
        if record.is_none() && !confirmed {
            return Err(match key {
                Some(_) => VaultError::UnknownVolume {
                    vault: shown,
                    volume: cfg.volume_id.clone(),
                },
                None => VaultError::NoTrustedKey(shown),
            });
        }
        let key = match (key, &record) {
            (Some(k), _) => k,
            (None, Some(r)) => r.key.clone(),
            (None, None) => return Err(VaultError::NoTrustedKey(shown)),
        };
        Ok(Trust {
            key,
            home: home.to_path_buf(),
            vault: vault.to_path_buf(),
            cfg: cfg.clone(),
            known: record.map(|r| r.config),
            confirmed,
        })
    }

    /// Check the config with the live provider of the trusted key: it names that key, its tag
    /// verifies, and it is the config this host last trusted (unless confirmed). Then record it
    /// (and the path) as trusted. Returns the config key.
    pub fn verify(&self, provider: &dyn KeyProvider) -> Result<ConfigKey, VaultError> {
        let path = self
            .vault
            .join(super::META_DIR)
            .join(CONFIG_FILE)
            .display()
            .to_string();
        let kind = provider_name(provider.provider_id());
        // The key in use may be another region's replica of the recorded multi-Region key
        // (same key material), never anything else (`keys::arn`).
        if self.cfg.provider != kind || !arn::same_key(&self.cfg.key_id, provider.key_id()) {
            let why = arn::why_not_same(&self.cfg.key_id, provider.key_id())
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            return Err(VaultError::KeyMismatch {
                vault: self.vault.display().to_string(),
                hint: format!("{} key {}", self.cfg.provider, self.cfg.key_id),
                trusted: format!("{kind} key {}{why}", provider.key_id()),
            });
        }
        let changes = self
            .known
            .as_ref()
            .map(|old| self.cfg.changes_from(old))
            .unwrap_or_default();
        let key = self.cfg.verify(provider, &path).map_err(|e| match e {
            VaultError::Tampered { path, why, .. } if !changes.is_empty() => VaultError::Tampered {
                path,
                why,
                changes: format!(" (since this host last used it: {})", changes.join(", ")),
            },
            e => e,
        })?;
        if !changes.is_empty() && !self.confirmed {
            return Err(VaultError::ConfigChanged {
                vault: self.vault.display().to_string(),
                changes: changes.join(", "),
                volume: self.cfg.volume_id.clone(),
            });
        }
        record(&self.home, &self.vault, &self.cfg, &self.key)?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::local::LocalProvider;

    /// Runs `f` with a fresh temp dir as the config home.
    fn with_config_home(f: impl FnOnce(&Path)) {
        let dir = tempfile::tempdir().expect("tempdir");
        f(dir.path());
    }

    /// A new key file in `home` and the trust in it.
    fn key_in(home: &Path) -> (LocalProvider, TrustedKey) {
        let kf = home.join("k.key");
        let p = LocalProvider::create(&kf).expect("key");
        (p, TrustedKey::Local { key_file: kf })
    }

    fn vault(dir: &Path, name: &str, p: &LocalProvider) -> (PathBuf, VaultConfig) {
        let v = dir.join(name);
        std::fs::create_dir(&v).expect("mkdir");
        let mut cfg = VaultConfig::new(4096, ProviderId::Local, p.key_id(), true).expect("cfg");
        cfg.seal_new(p).expect("seal");
        cfg.create(&v).expect("create");
        (v, cfg)
    }

    /// Attack 2 of the hostile-store issue, in-process: two vaults under one key; W's config
    /// copied over V's is refused for V's path, with and without the key on the command line.
    #[test]
    fn a_swapped_volume_is_refused() {
        with_config_home(|home| {
            let (p, key) = key_in(home);
            let (v, vcfg) = vault(home, "v", &p);
            let (w, wcfg) = vault(home, "w", &p);
            record(home, &v, &vcfg, &key).expect("record v");
            record(home, &w, &wcfg, &key).expect("record w");
            wcfg.replace(&v).expect("copy W's config over V's");
            let cfg = VaultConfig::load(&v).expect("load");
            for k in [None, Some(key.clone())] {
                let err = Trust::resolve(home, &v, &cfg, k, None).expect_err("swap");
                assert!(matches!(err, VaultError::VolumeSwapped { .. }), "{err}");
            }
            // The same vault under a path never used here (a second mount of a shared store)
            // is trusted by its volume record.
            let t =
                Trust::resolve(home, &home.join("w"), &wcfg, Some(key.clone()), None).expect("w");
            t.verify(&p).expect("verifies");
        });
    }

    #[test]
    fn a_key_for_an_unknown_volume_needs_the_volume_id() {
        with_config_home(|home| {
            let (p, key) = key_in(home);
            let (v, cfg) = vault(home, "v", &p);
            let err = Trust::resolve(home, &v, &cfg, Some(key.clone()), None).expect_err("unknown");
            assert!(err.to_string().contains("--volume-id"), "{err}");
            let err = Trust::resolve(home, &v, &cfg, Some(key.clone()), Some(&"0".repeat(32)))
                .expect_err("wrong id");
            assert!(matches!(err, VaultError::VolumeMismatch { .. }), "{err}");
            let t =
                Trust::resolve(home, &v, &cfg, Some(key), Some(&cfg.volume_id)).expect("confirmed");
            t.verify(&p).expect("verify");
            // Now recorded: no key, no volume id needed.
            let t = Trust::resolve(home, &v, &cfg, None, None).expect("recorded");
            t.verify(&p).expect("verify");
        });
    }

    #[test]
    fn a_changed_config_shows_what_changed() {
        with_config_home(|home| {
            let (p, key) = key_in(home);
            let (v, cfg) = vault(home, "v", &p);
            record(home, &v, &cfg, &key).expect("record");
            // Tampered: names "on" without a valid tag.
            let mut bad = cfg.clone();
            bad.block_size = 8192;
            let err = Trust::resolve(home, &v, &bad, None, None)
                .expect("resolves")
                .verify(&p)
                .expect_err("tampered");
            assert!(
                err.to_string().contains("block_size: 4096 -> 8192"),
                "{err}"
            );
            // Authentic but different from what this host trusted (re-sealed): needs --volume-id.
            let mut other = cfg.clone();
            other.seal_new(&p).expect("reseal");
            let err = Trust::resolve(home, &v, &other, None, None)
                .expect("resolves")
                .verify(&p)
                .expect_err("changed");
            assert!(matches!(err, VaultError::ConfigChanged { .. }), "{err}");
            Trust::resolve(home, &v, &other, None, Some(&cfg.volume_id))
                .expect("resolves")
                .verify(&p)
                .expect("confirmed");
        });
    }

    /// Issue 20: a vault sealed under a multi-Region key's primary (us-east-1) opens on a new
    /// host with the replica (us-west-2); the trust record then names the replica. A key of
    /// the same id that is not `mrk-`, or another account's, is refused naming both keys.
    #[test]
    fn a_multi_region_replica_is_the_vaults_key_and_nothing_else_is() {
        use crate::keys::testing::FaultyProvider;
        const EAST: &str =
            "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        const WEST: &str =
            "arn:aws:kms:us-west-2:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        with_config_home(|home| {
            let primary = FaultyProvider::new(home).expect("key").naming(EAST);
            let same_material = || FaultyProvider::open(&home.join("faulty.key")).expect("open");
            let v = home.join("v");
            std::fs::create_dir(&v).expect("mkdir");
            let mut cfg = VaultConfig::new(4096, ProviderId::AwsKms, EAST, true).expect("cfg");
            cfg.seal_new(&primary).expect("seal");
            cfg.create(&v).expect("create");
            let dr = home.join("dr-host");
            let kms = |id: &str| TrustedKey::AwsKms {
                kms_key_id: id.to_string(),
            };
            let resolve = |id: &str| {
                Trust::resolve(&dr, &v, &cfg, Some(kms(id)), Some(&cfg.volume_id)).expect("resolve")
            };
            for foreign in [
                "arn:aws:kms:us-west-2:444455556666:key/mrk-1234abcd12ab34cd56ef1234567890ab",
                "arn:aws:kms:us-west-2:111122223333:key/mrk-ffffabcd12ab34cd56ef1234567890ab",
            ] {
                let err = resolve(foreign)
                    .verify(&same_material().naming(foreign))
                    .expect_err("foreign key");
                assert!(matches!(err, VaultError::KeyMismatch { .. }), "{err}");
                let text = err.to_string();
                assert!(text.contains(EAST) && text.contains(foreign), "{text}");
            }
            assert_eq!(trusted_key_of(&dr, &cfg.volume_id).expect("read"), None);
            resolve(WEST)
                .verify(&same_material().naming(WEST))
                .expect("the replica serves");
            assert_eq!(
                trusted_key_of(&dr, &cfg.volume_id).expect("read"),
                Some(kms(WEST))
            );
            // Later mounts there need neither the key nor the volume id.
            Trust::resolve(&dr, &v, &cfg, None, None)
                .expect("recorded")
                .verify(&same_material().naming(WEST))
                .expect("verifies");
        });
        // A single-Region key: the same UUID in another region is another key.
        with_config_home(|home| {
            let east =
                "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
            let west =
                "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
            let primary = FaultyProvider::new(home).expect("key").naming(east);
            let v = home.join("v");
            std::fs::create_dir(&v).expect("mkdir");
            let mut cfg = VaultConfig::new(4096, ProviderId::AwsKms, east, true).expect("cfg");
            cfg.seal_new(&primary).expect("seal");
            let key = TrustedKey::AwsKms {
                kms_key_id: west.to_string(),
            };
            let err = Trust::resolve(home, &v, &cfg, Some(key), Some(&cfg.volume_id))
                .expect("resolve")
                .verify(&primary.naming(west))
                .expect_err("single-Region");
            assert!(err.to_string().contains("not a multi-Region"), "{err}");
        });
    }
}
