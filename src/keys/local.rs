//! The local key provider: a 256-bit master key in a file outside the vault.
//!
//! Wrapped key = 0x01 ‖ nonce (12) ‖ AES-256-GCM-SIV(master, nonce, data key,
//! AAD "KMSFS-W1" ‖ key fingerprint (16) ‖ canonical encryption context) ‖ tag (16): 61 bytes.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use parking_lot::RwLock;
use zeroize::Zeroizing;

use super::{EncryptionContext, GeneratedKey, KeyError, KeyProvider};
use crate::crypto::{DataKey, KEY_LEN, random_nonce};
use crate::format::header::ProviderId;
use crate::format::layout::NONCE_LEN;

const WRAP_VERSION: u8 = 1;
const WRAP_AAD_PREFIX: &[u8; 8] = b"KMSFS-W1";
/// Length of a wrapped key made by the local provider.
pub const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + 16;

/// A master key loaded from a key file. `forget` drops it from memory; the next use reads the
/// key file again (and refuses it if it now holds another key).
pub struct LocalProvider {
    master: RwLock<Option<Arc<DataKey>>>,
    fingerprint: [u8; 16],
    key_id: String,
    path: PathBuf,
    /// Whether the key can be read again from `path` (not for a key held only in memory).
    from_file: bool,
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
        Ok(Self::from_master(master, path, true))
    }

    /// Load the key file at `path`: a regular file owned by this user that group and others
    /// may neither read nor write, else refused.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        Ok(Self::from_master(Self::read_key_file(path)?, path, true))
    }

    fn read_key_file(path: &Path) -> Result<DataKey, KeyError> {
        // O_NONBLOCK: a FIFO in its place must not hang the mount (it is refused below).
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| {
                KeyError::Config(format!(
                    "cannot open key file {}: {e} (pass --key-file PATH, or run kmsfs init first)",
                    path.display()
                ))
            })?;
        let st = crate::sys::stat_fd(std::os::fd::AsFd::as_fd(&f)).map_err(|e| {
            KeyError::Config(format!("cannot stat key file {}: {e}", path.display()))
        })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(KeyError::Config(format!(
                "key file {} is not a regular file",
                path.display()
            )));
        }
        if st.st_uid != crate::sys::euid() {
            return Err(KeyError::Config(format!(
                "key file {} is owned by uid {}, not by you (uid {}): whoever owns it can replace the key; chown it or use your own copy",
                path.display(),
                st.st_uid,
                crate::sys::euid()
            )));
        }
        if st.st_mode & 0o077 != 0 {
            return Err(KeyError::Config(format!(
                "key file {} has mode {:o}, readable by others: run chmod 600 {}",
                path.display(),
                st.st_mode & 0o777,
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
        DataKey::from_slice(&raw[..]).map_err(|e| KeyError::Config(e.to_string()))
    }

    /// A provider over a key held in memory (bucket-key mode: the KMS-wrapped volume key).
    /// `origin` only names where the key came from, for messages.
    pub fn from_key(master: DataKey, origin: &Path) -> Self {
        Self::from_master(master, origin, false)
    }

    fn fingerprint_of(master: &DataKey) -> [u8; 16] {
        let mut out = Vec::new();
        master.seal_detached(&[0; NONCE_LEN], b"KMSFS-KEYID", &[], &mut out);
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&out[..16]);
        fingerprint
    }

    fn from_master(master: DataKey, path: &Path, from_file: bool) -> Self {
        let fingerprint = Self::fingerprint_of(&master);
        LocalProvider {
            key_id: format!("local:{}", hex::encode(&fingerprint[..8])),
            master: RwLock::new(Some(Arc::new(master))),
            fingerprint,
            path: path.to_path_buf(),
            from_file,
        }
    }

    /// The master key: in memory, or (after `forget`) read again from the key file, which must
    /// still hold the same key.
    fn master(&self) -> Result<Arc<DataKey>, KeyError> {
        if let Some(m) = self.master.read().as_ref() {
            return Ok(m.clone());
        }
        let mut slot = self.master.write();
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = Self::read_key_file(&self.path)?;
        if !crate::crypto::equal_ct(&Self::fingerprint_of(&m), &self.fingerprint) {
            return Err(KeyError::Config(format!(
                "key file {} now holds another key than the one this mount started with",
                self.path.display()
            )));
        }
        let m = Arc::new(m);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// Whether the master key is in memory now.
    pub fn is_loaded(&self) -> bool {
        self.master.read().is_some()
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
        self.master()?
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
        self.master()?
            .seal_detached(&nonce, &self.aad(ctx), key.expose(), &mut out);
        Ok(out)
    }

    /// Drop the master key from memory (zeroized); the key file is read again on next use.
    fn forget(&self) {
        if self.from_file {
            *self.master.write() = None;
        }
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

    /// Items 9 and 10 of the hostile-store issue: forget drops the master key (the next use
    /// reads the key file again, and refuses another key in it); a key file that is not a
    /// regular file of this user is refused, a FIFO without blocking.
    #[test]
    fn forget_rereads_the_key_file_and_odd_key_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let p = LocalProvider::create(&path).expect("create");
        let ctx = EncryptionContext::for_file(&[1; 16], &[2; 16]);
        let g = p.generate_data_key(&ctx).expect("generate");
        p.forget();
        assert!(!p.is_loaded());
        std::fs::rename(&path, dir.path().join("away")).expect("move the key away");
        assert!(
            p.decrypt(&g.wrapped, &ctx).is_err(),
            "master key was kept after forget"
        );
        std::fs::rename(dir.path().join("away"), &path).expect("put it back");
        p.decrypt(&g.wrapped, &ctx).expect("read again");
        assert!(p.is_loaded());
        p.forget();
        std::fs::remove_file(&path).expect("rm");
        LocalProvider::create(&path).expect("another key in its place");
        let err = p.decrypt(&g.wrapped, &ctx).expect_err("another key");
        assert!(err.to_string().contains("another key"), "{err}");

        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = LocalProvider::open(&fifo).expect_err("fifo");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        if crate::sys::euid() == 0 {
            let theirs = dir.path().join("theirs");
            LocalProvider::create(&theirs).expect("key");
            std::os::unix::fs::chown(&theirs, Some(65534), None).expect("chown");
            let err = LocalProvider::open(&theirs).expect_err("owned by another user");
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        }
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
