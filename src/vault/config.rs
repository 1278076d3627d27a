//! `VAULT/.kmsfs/config.json`: how the vault protects data and names, authenticated.
//!
//! Every field is covered by `config_tag`, an HMAC-SHA256 under the vault's *config key*: 32
//! random bytes made at `init` by the trusted key provider under the encryption context
//! {volume id, purpose "config"} and stored wrapped in `wrapped_config_key`. Whoever can only
//! write the backing directory cannot unwrap that key, so cannot change a field (switch name
//! encryption off, drop or replace a wrapped key, change the block size) without the mount
//! refusing the config. The byte encoding the tag covers is in docs/FORMAT.md §1.1 and
//! [`VaultConfig::canonical_bytes`].
//!
//! What the tag cannot tell is *which* vault this is: a whole config copied from another vault
//! protected by the same key verifies too. That is the host's trust record's job (`trust`).

use std::ffi::OsStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{MetaDir, VaultError};
use crate::crypto;
use crate::format::header::{FORMAT_VERSION, HEADER_SIZE, OLDEST_VERSION, ProviderId};
use crate::format::{Id, Layout};
use crate::keys::{EncryptionContext, KeyError, KeyProvider};
use crate::sys;

/// The config file's name in `.kmsfs/`.
pub const CONFIG_FILE: &str = "config.json";
/// Purpose of the config key in its encryption context.
pub const CONFIG_KEY_PURPOSE: &str = "config";
/// Domain separator in front of the bytes the config tag covers.
pub const CONFIG_TAG_PREFIX: &[u8; 10] = b"KMSFS-CFG2";
/// Largest config file read (a config is well under 2 KiB).
const MAX_CONFIG: usize = 64 * 1024;

/// The vault's config. Holds no secret: the keys in it are wrapped by the trusted key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// On-disk format version.
    pub format_version: u16,
    /// The volume id, hex.
    pub volume_id: String,
    /// Plaintext block size.
    pub block_size: u32,
    /// Per-file header size.
    pub header_size: u32,
    /// "local" or "aws-kms" (a hint for messages; the trusted key comes from the host).
    pub provider: String,
    /// The wrapping key's id (a hint, checked against the trusted key).
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
    /// The config key, hex, wrapped by the trusted key under {volume id, purpose "config"}.
    pub wrapped_config_key: String,
    /// HMAC-SHA256 under the config key of [`VaultConfig::canonical_bytes`], hex.
    pub config_tag: String,
}

/// The unwrapped config key (zeroized on drop).
pub struct ConfigKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ConfigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigKey(<redacted>)")
    }
}

impl ConfigKey {
    fn from_key(key: &crypto::DataKey) -> Self {
        ConfigKey(Zeroizing::new(*key.expose()))
    }

    /// A config key from raw bytes (test vectors).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        ConfigKey(Zeroizing::new(*bytes))
    }

    /// The tag of `canonical` under this key.
    fn tag(&self, canonical: &[u8]) -> [u8; 32] {
        crypto::hmac_sha256(&self.0[..], &[canonical])
    }
}

impl VaultConfig {
    /// A new, not yet sealed config for a fresh vault (a random volume id).
    pub fn new(
        block_size: u32,
        provider: ProviderId,
        key_id: &str,
        plaintext_names: bool,
    ) -> Result<Self, VaultError> {
        let volume_id: Id = crypto::random_array()
            .map_err(|e| VaultError::Io("random".into(), std::io::Error::other(e)))?;
        Ok(VaultConfig {
            format_version: FORMAT_VERSION,
            volume_id: hex::encode(volume_id),
            block_size,
            header_size: HEADER_SIZE as u32,
            provider: super::provider_name(provider).to_string(),
            key_id: key_id.to_string(),
            plaintext_names,
            wrapped_name_key: None,
            wrapped_bucket_key: None,
            wrapped_config_key: String::new(),
            config_tag: String::new(),
        })
    }

    /// Path of the config file of `vault` (for messages and existence checks).
    pub fn path(vault: &std::path::Path) -> std::path::PathBuf {
        vault.join(super::META_DIR).join(CONFIG_FILE)
    }

    /// Load `vault`'s config and check its structure (not yet its tag: see `verify`).
    pub fn load(vault: &std::path::Path) -> Result<Self, VaultError> {
        let meta = MetaDir::open(vault, false)?;
        let path = meta.path_of(CONFIG_FILE).display().to_string();
        let bytes = match sys::read_regular(meta.fd(), OsStr::new(CONFIG_FILE), MAX_CONFIG) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VaultError::NotInitialised(vault.display().to_string()));
            }
            Err(e) => return Err(VaultError::Io(path, e)),
        };
        Self::parse(&bytes, &path, vault)
    }

    /// Parse and check the structure of config bytes read from `path` of vault `vault`.
    pub fn parse(bytes: &[u8], path: &str, vault: &std::path::Path) -> Result<Self, VaultError> {
        let bad = |why: String| VaultError::BadConfig {
            path: path.to_string(),
            why,
        };
        // The version first, so an older vault gets a message about its format, not a field.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let version = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad("no format_version".into()))?;
        if !(u64::from(OLDEST_VERSION)..=u64::from(FORMAT_VERSION)).contains(&version) {
            let why = if version < u64::from(OLDEST_VERSION) {
                ": format 1 neither authenticates the vault config nor commits file headers to their keys, so it cannot be read safely; copy the files out with the kmsfs that made it and into a new vault".to_string()
            } else {
                ": it was made by a newer kmsfs; upgrade this one".to_string()
            };
            return Err(VaultError::UnsupportedFormat {
                vault: vault.display().to_string(),
                found: version,
                supported: FORMAT_VERSION,
                why,
            });
        }
        let cfg: VaultConfig = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if cfg.header_size as usize != HEADER_SIZE {
            return Err(bad(format!(
                "header size {} is not supported",
                cfg.header_size
            )));
        }
        cfg.volume_id_bytes()
            .map_err(|_| bad("volume id is not 32 hex digits".into()))?;
        cfg.layout().map_err(|e| bad(e.to_string()))?;
        let hex_key_ok = |k: &Option<String>| {
            k.as_deref()
                .is_some_and(|k| !k.is_empty() && hex::decode(k).is_ok())
        };
        if !cfg.plaintext_names && !hex_key_ok(&cfg.wrapped_name_key) {
            return Err(bad(
                "file names are encrypted but wrapped_name_key is missing or not hex".into(),
            ));
        }
        if cfg.plaintext_names && cfg.wrapped_name_key.is_some() {
            return Err(bad(
                "plaintext_names is set but a wrapped_name_key is present".into(),
            ));
        }
        if cfg.wrapped_bucket_key.is_some() && !hex_key_ok(&cfg.wrapped_bucket_key) {
            return Err(bad("wrapped_bucket_key is not hex".into()));
        }
        if hex::decode(&cfg.wrapped_config_key).map_or(true, |k| k.is_empty()) {
            return Err(bad("wrapped_config_key is missing or not hex".into()));
        }
        if hex::decode(&cfg.config_tag).map_or(true, |t| t.len() != 32) {
            return Err(bad("config_tag is not 64 hex digits".into()));
        }
        Ok(cfg)
    }

    /// The bytes the config tag covers (docs/FORMAT.md §1.1): `"KMSFS-CFG2"`, then for every
    /// field but `config_tag` that is present, in the order of the struct, `u16 LE` length ‖
    /// field name ‖ `u16 LE` length ‖ value, the value as its JSON text without quotes
    /// (decimal numbers, `true`/`false`, hex and key ids as they are).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = CONFIG_TAG_PREFIX.to_vec();
        for (name, value) in self.fields() {
            let Some(value) = value else { continue };
            for s in [name.as_bytes(), value.as_bytes()] {
                let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&s[..usize::from(len)]);
            }
        }
        out
    }

    /// Every field but the tag, in order, as its text (`None`: absent).
    fn fields(&self) -> [(&'static str, Option<String>); 10] {
        [
            ("format_version", Some(self.format_version.to_string())),
            ("volume_id", Some(self.volume_id.clone())),
            ("block_size", Some(self.block_size.to_string())),
            ("header_size", Some(self.header_size.to_string())),
            ("provider", Some(self.provider.clone())),
            ("key_id", Some(self.key_id.clone())),
            ("plaintext_names", Some(self.plaintext_names.to_string())),
            ("wrapped_name_key", self.wrapped_name_key.clone()),
            ("wrapped_bucket_key", self.wrapped_bucket_key.clone()),
            ("wrapped_config_key", Some(self.wrapped_config_key.clone())),
        ]
    }

    fn config_ctx(&self) -> Result<EncryptionContext, VaultError> {
        let volume = self.volume_id_bytes()?;
        Ok(EncryptionContext::for_volume(&volume, CONFIG_KEY_PURPOSE))
    }

    /// At `init`: make the config key with `provider` and seal every field.
    pub fn seal_new(&mut self, provider: &dyn KeyProvider) -> Result<(), KeyError> {
        let ctx = self
            .config_ctx()
            .map_err(|e| KeyError::Config(e.to_string()))?;
        let generated = provider.generate_data_key(&ctx)?;
        self.wrapped_config_key = hex::encode(&generated.wrapped);
        self.seal(&ConfigKey::from_key(&generated.key));
        Ok(())
    }

    /// Recompute the tag under `key` (after changing fields, e.g. in `rewrap`).
    pub fn seal(&mut self, key: &ConfigKey) {
        self.config_tag = hex::encode(key.tag(&self.canonical_bytes()));
    }

    /// Unwrap the config key with the trusted `provider` and check the tag: the config was
    /// made by someone who can use the trusted key for this volume. Returns the config key
    /// (rewrap re-seals with it). `path` names the file in messages.
    pub fn verify(&self, provider: &dyn KeyProvider, path: &str) -> Result<ConfigKey, VaultError> {
        let tampered = |why: &str| VaultError::Tampered {
            path: path.to_string(),
            why: why.to_string(),
            changes: String::new(),
        };
        let wrapped = hex::decode(&self.wrapped_config_key)
            .map_err(|_| tampered("wrapped_config_key is not hex"))?;
        let key = match provider.decrypt(&wrapped, &self.config_ctx()?) {
            Ok(k) => ConfigKey::from_key(&k),
            Err(KeyError::BadWrappedKey(_)) => {
                return Err(tampered(
                    "its config key does not unwrap for this volume under the trusted key",
                ));
            }
            Err(e) => {
                return Err(VaultError::Key {
                    path: path.to_string(),
                    why: e.to_string(),
                });
            }
        };
        crypto::scrub_stack();
        let tag = hex::decode(&self.config_tag).map_err(|_| tampered("config_tag is not hex"))?;
        if !crypto::equal_ct(&key.tag(&self.canonical_bytes()), &tag) {
            return Err(tampered("config_tag does not match its fields"));
        }
        Ok(key)
    }

    /// SHA-256 of the authenticated bytes and the tag, hex: names this exact config.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.canonical_bytes());
        h.update(self.config_tag.as_bytes());
        hex::encode(h.finalize())
    }

    /// The fields that differ from `old`, as "field: old -> new" (long values shortened).
    pub fn changes_from(&self, old: &VaultConfig) -> Vec<String> {
        let show = |v: &Option<String>| match v.as_deref() {
            None => "(absent)".to_string(),
            Some(s) if s.len() > 20 => format!("{}…", &s[..16]),
            Some(s) => s.to_string(),
        };
        let tag = |c: &VaultConfig| ("config_tag", Some(c.config_tag.clone()));
        let olds = old.fields().into_iter().chain([tag(old)]);
        let news = self.fields().into_iter().chain([tag(self)]);
        olds.zip(news)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((name, a), (_, b))| format!("{name}: {} -> {}", show(&a), show(&b)))
            .collect()
    }

    /// The JSON text of the file.
    pub fn to_json(&self) -> Result<String, VaultError> {
        serde_json::to_string_pretty(self)
            .map(|t| t + "\n")
            .map_err(|e| VaultError::Io("config".into(), std::io::Error::other(e)))
    }

    /// Write the config into a new vault (refusing to overwrite one).
    pub fn create(&self, vault: &std::path::Path) -> Result<(), VaultError> {
        let meta = MetaDir::open(vault, true)?;
        let path = meta.path_of(CONFIG_FILE).display().to_string();
        if sys::exists_at(meta.fd(), OsStr::new(CONFIG_FILE)) {
            return Err(VaultError::AlreadyInitialised(vault.display().to_string()));
        }
        sys::replace_file(
            meta.fd(),
            OsStr::new(CONFIG_FILE),
            self.to_json()?.as_bytes(),
            0o644,
            true,
        )
        .map_err(|e| VaultError::Io(path, e))
    }

    /// Replace the config of an existing vault (`rewrap`): a fresh temporary file (O_EXCL, so
    /// nothing planted in `.kmsfs/` is followed), fsynced, renamed over the old one. A crash
    /// leaves the old or the new config, never a mix.
    pub fn replace(&self, vault: &std::path::Path) -> Result<(), VaultError> {
        let meta = MetaDir::open(vault, false)?;
        let path = meta.path_of(CONFIG_FILE).display().to_string();
        sys::replace_file(
            meta.fd(),
            OsStr::new(CONFIG_FILE),
            self.to_json()?.as_bytes(),
            0o644,
            true,
        )
        .map_err(|e| VaultError::Io(path, e))
    }

    /// The volume id as bytes.
    pub fn volume_id_bytes(&self) -> Result<Id, VaultError> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(&self.volume_id, &mut id).map_err(|_| VaultError::BadConfig {
            path: format!("{}/{}", super::META_DIR, CONFIG_FILE),
            why: "volume id is not 32 hex digits".into(),
        })?;
        Ok(id)
    }

    /// The vault's layout.
    pub fn layout(&self) -> Result<Layout, crate::format::FormatError> {
        Layout::new(u64::from(self.header_size), self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::local::LocalProvider;

    fn sealed(dir: &std::path::Path, plaintext_names: bool) -> (VaultConfig, LocalProvider) {
        let p = LocalProvider::create(&dir.join("k")).expect("key");
        let mut cfg =
            VaultConfig::new(4096, ProviderId::Local, p.key_id(), plaintext_names).expect("new");
        if !plaintext_names {
            cfg.wrapped_name_key = Some("00ff".into());
        }
        cfg.seal_new(&p).expect("seal");
        (cfg, p)
    }

    #[test]
    fn config_round_trip_and_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = dir.path().join("v");
        std::fs::create_dir(&v).expect("mkdir");
        assert!(matches!(
            VaultConfig::load(&v),
            Err(VaultError::NotInitialised(_))
        ));
        let (cfg, p) = sealed(dir.path(), false);
        cfg.create(&v).expect("create");
        assert!(matches!(
            cfg.create(&v),
            Err(VaultError::AlreadyInitialised(_))
        ));
        let back = VaultConfig::load(&v).expect("load");
        assert_eq!(back, cfg);
        back.verify(&p, "cfg").expect("verifies");
        let msg = VaultError::NotInitialised("/x".into()).to_string();
        assert!(msg.contains("run kmsfs init /x"), "{msg}");
    }

    /// Attack 1 of the hostile-store issue, in-process: every field change is caught by the tag,
    /// and a structurally impossible combination before it.
    #[test]
    fn every_changed_field_fails_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cfg, p) = sealed(dir.path(), false);
        type Edit = Box<dyn Fn(&mut VaultConfig)>;
        let mut edits: Vec<(&str, Edit)> = vec![
            (
                "names off",
                Box::new(|c| {
                    c.plaintext_names = true;
                    c.wrapped_name_key = None;
                }),
            ),
            ("block size", Box::new(|c| c.block_size = 8192)),
            (
                "name key",
                Box::new(|c| c.wrapped_name_key = Some("11".into())),
            ),
            (
                "bucket key added",
                Box::new(|c| c.wrapped_bucket_key = Some("22".into())),
            ),
            ("key id", Box::new(|c| c.key_id.push('x'))),
            ("volume", Box::new(|c| c.volume_id = "00".repeat(16))),
        ];
        for (what, edit) in edits.drain(..) {
            let mut c = cfg.clone();
            edit(&mut c);
            assert!(
                matches!(c.verify(&p, "cfg"), Err(VaultError::Tampered { .. })),
                "{what}: accepted"
            );
            assert!(!c.changes_from(&cfg).is_empty(), "{what}: no change shown");
        }
        // Names off without the tag: refused by structure already when a name key stays.
        let mut c = cfg.clone();
        c.plaintext_names = true;
        let text = serde_json::to_vec(&c).expect("json");
        assert!(VaultConfig::parse(&text, "cfg", std::path::Path::new("/v")).is_err());
        // Unknown fields are refused, so no later field can be slipped in unauthenticated.
        let mut v: serde_json::Value = serde_json::to_value(&cfg).expect("json");
        v["extra"] = serde_json::json!(true);
        let text = serde_json::to_vec(&v).expect("json");
        assert!(VaultConfig::parse(&text, "cfg", std::path::Path::new("/v")).is_err());
    }

    #[test]
    fn another_key_cannot_verify_and_format_1_is_refused_with_advice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cfg, _) = sealed(dir.path(), true);
        let other = LocalProvider::create(&dir.path().join("other")).expect("key");
        assert!(matches!(
            cfg.verify(&other, "cfg"),
            Err(VaultError::Tampered { .. })
        ));
        let mut v: serde_json::Value = serde_json::to_value(&cfg).expect("json");
        v["format_version"] = serde_json::json!(1);
        let text = serde_json::to_vec(&v).expect("json");
        let err = VaultConfig::parse(&text, "cfg", std::path::Path::new("/v")).expect_err("v1");
        assert!(err.to_string().contains("format 1"), "{err}");
    }

    #[test]
    fn a_symlinked_or_fifo_config_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = dir.path();
        std::fs::create_dir(v.join(super::super::META_DIR)).expect("mkdir");
        let path = VaultConfig::path(v);
        std::os::unix::fs::symlink("/etc/passwd", &path).expect("symlink");
        let err = VaultConfig::load(v).expect_err("symlink");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::fs::remove_file(&path).expect("rm");
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let err = VaultConfig::load(v).expect_err("fifo");
        assert!(err.to_string().contains("FIFO"), "{err}");
    }
}
