//! The local key provider: a 256-bit master key in a file outside the vault.
//!
//! Wrapped key = 0x01 ‖ nonce (12) ‖ AES-256-GCM-SIV(master, nonce, data key,
//! AAD "KMSFS-W1" ‖ key fingerprint (16) ‖ canonical encryption context) ‖ tag (16): 61 bytes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{EncryptionContext, GeneratedKey, KeyError, KeyProvider};
use crate::crypto::{DataKey, KEY_LEN, random_nonce};
use crate::format::header::ProviderId;
use crate::format::layout::NONCE_LEN;

const WRAP_VERSION: u8 = 1;
const WRAP_AAD_PREFIX: &[u8; 8] = b"KMSFS-W1";
/// Length of a wrapped key made by the local provider.
pub const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + 16;

/// A master key loaded from a key file.
pub struct LocalProvider {
    master: DataKey,
    fingerprint: [u8; 16],
    key_id: String,
    path: PathBuf,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("key_id", &self.key_id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LocalProvider {
    /// Create a new key file at `path` (mode 0600, never overwriting), and load it.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| KeyError::Config(format!("cannot create {}: {e}", dir.display())))?;
        }
        let master = DataKey::generate().map_err(|e| KeyError::Config(e.to_string()))?;
        let mut text = Zeroizing::new(hex::encode(master.expose()));
        text.push('\n');
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                KeyError::Config(format!("cannot create key file {}: {e}", path.display()))
            })?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| {
                KeyError::Config(format!("cannot write key file {}: {e}", path.display()))
            })?;
        Ok(Self::from_master(master, path))
    }

    /// Load the key file at `path`; refused when group or others may read or write it.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let f = File::open(path).map_err(|e| {
            KeyError::Config(format!(
                "cannot open key file {}: {e} (pass --key-file PATH, or run kmsfs init first)",
                path.display()
            ))
        })?;
        let meta = f.metadata().map_err(|e| {
            KeyError::Config(format!("cannot stat key file {}: {e}", path.display()))
        })?;
        if meta.mode() & 0o077 != 0 {
            return Err(KeyError::Config(format!(
                "key file {} has mode {:o}, readable by others: run chmod 600 {}",
                path.display(),
                meta.mode() & 0o777,
                path.display()
            )));
        }
        let mut text = Zeroizing::new(String::new());
        f.take(256).read_to_string(&mut text).map_err(|e| {
            KeyError::Config(format!("cannot read key file {}: {e}", path.display()))
        })?;
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text.trim(), &mut raw[..]).map_err(|_| {
            KeyError::Config(format!(
                "key file {} is not a kmsfs key (64 hex digits)",
                path.display()
            ))
        })?;
        let master = DataKey::from_slice(&raw[..]).map_err(|e| KeyError::Config(e.to_string()))?;
        Ok(Self::from_master(master, path))
    }

    /// A provider over a key held in memory (bucket-key mode: the KMS-wrapped volume key).
    /// `origin` only names where the key came from, for messages.
    pub fn from_key(master: DataKey, origin: &Path) -> Self {
        Self::from_master(master, origin)
    }

    fn from_master(master: DataKey, path: &Path) -> Self {
        let mut out = Vec::new();
        master.seal_detached(&[0; NONCE_LEN], b"KMSFS-KEYID", &[], &mut out);
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&out[..16]);
        LocalProvider {
            key_id: format!("local:{}", hex::encode(&fingerprint[..8])),
            master,
            fingerprint,
            path: path.to_path_buf(),
        }
    }

    /// The key file this provider was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn aad(&self, ctx: &EncryptionContext) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64);
        aad.extend_from_slice(WRAP_AAD_PREFIX);
        aad.extend_from_slice(&self.fingerprint);
        aad.extend_from_slice(&ctx.canonical_bytes());
        aad
    }
}

impl KeyProvider for LocalProvider {
    fn provider_id(&self) -> ProviderId {
        ProviderId::Local
    }

    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<GeneratedKey, KeyError> {
        let key = DataKey::generate().map_err(|e| KeyError::Config(e.to_string()))?;
        let wrapped = self.wrap(&key, ctx)?;
        Ok(GeneratedKey { key, wrapped })
    }

    fn decrypt(&self, wrapped: &[u8], ctx: &EncryptionContext) -> Result<DataKey, KeyError> {
        let refused = || {
            KeyError::BadWrappedKey("wrapped key does not open under the local master key".into())
        };
        if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_VERSION {
            return Err(refused());
        }
        let nonce: [u8; NONCE_LEN] = wrapped[1..1 + NONCE_LEN]
            .try_into()
            .map_err(|_| refused())?;
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        self.master
            .open_detached(
                &nonce,
                &self.aad(ctx),
                &wrapped[1 + NONCE_LEN..],
                &mut raw[..],
            )
            .map_err(|_| refused())?;
        DataKey::from_slice(&raw[..]).map_err(|_| refused())
    }

    fn wrap(&self, key: &DataKey, ctx: &EncryptionContext) -> Result<Vec<u8>, KeyError> {
        let nonce = random_nonce().map_err(|e| KeyError::Config(e.to_string()))?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(WRAP_VERSION);
        out.extend_from_slice(&nonce);
        self.master
            .seal_detached(&nonce, &self.aad(ctx), key.expose(), &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_open_wrap_unwrap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let p = LocalProvider::create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(LocalProvider::create(&path).is_err(), "never overwrites");
        let ctx = EncryptionContext::for_file(&[1; 16], &[2; 16]);
        let g = p.generate_data_key(&ctx).expect("generate");
        assert_eq!(g.wrapped.len(), WRAPPED_LEN);
        let again = LocalProvider::open(&path).expect("open");
        assert_eq!(again.key_id(), p.key_id());
        let k = again.decrypt(&g.wrapped, &ctx).expect("decrypt");
        assert_eq!(k.expose(), g.key.expose());
        let other = EncryptionContext::for_file(&[1; 16], &[3; 16]);
        assert!(matches!(
            again.decrypt(&g.wrapped, &other),
            Err(KeyError::BadWrappedKey(_))
        ));
    }

    #[test]
    fn world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        LocalProvider::create(&path).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = LocalProvider::open(&path).expect_err("must refuse");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn another_master_key_cannot_unwrap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = LocalProvider::create(&dir.path().join("a")).expect("a");
        let b = LocalProvider::create(&dir.path().join("b")).expect("b");
        let ctx = EncryptionContext::for_file(&[1; 16], &[2; 16]);
        let g = a.generate_data_key(&ctx).expect("generate");
        assert!(b.decrypt(&g.wrapped, &ctx).is_err());
        let moved = a.reencrypt(&g.wrapped, &ctx, &b).expect("reencrypt");
        assert_eq!(
            b.decrypt(&moved, &ctx).expect("b opens").expose(),
            g.key.expose()
        );
    }
}
