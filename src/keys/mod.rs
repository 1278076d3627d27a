//! Key providers (who wraps data keys) and the key cache (how long unwrapped keys live).
//!
//! `KeyProvider` is the one seam to the outside world: `local` wraps with a master key file,
//! `aws` calls AWS KMS. Everything above talks to providers only through `KeyCache`.

pub mod arn;
pub mod aws;
pub mod bucket;
pub mod cache;
pub mod local;
pub mod pool;
pub mod testing;

use std::collections::BTreeMap;

use crate::crypto::DataKey;
use crate::format::Id;
use crate::format::header::ProviderId;

pub use cache::{KeyCache, KeyStats};

/// The KMS encryption context: string pairs bound to a wrapped key (sorted, so encodings are
/// canonical).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncryptionContext(pub BTreeMap<String, String>);

/// Context key naming the volume.
pub const CTX_VOLUME: &str = "kmsfs:volume-id";
/// Context key naming the file.
pub const CTX_FILE: &str = "kmsfs:file-id";
/// Context key naming the purpose of a volume-level key.
pub const CTX_PURPOSE: &str = "kmsfs:purpose";

impl EncryptionContext {
    /// The context of one file's data key: {volume id, file id}.
    pub fn for_file(volume_id: &Id, file_id: &Id) -> Self {
        let mut m = BTreeMap::new();
        m.insert(CTX_VOLUME.to_string(), hex::encode(volume_id));
        m.insert(CTX_FILE.to_string(), hex::encode(file_id));
        EncryptionContext(m)
    }

    /// The context of a volume-level key with a purpose (e.g. "names").
    pub fn for_volume(volume_id: &Id, purpose: &str) -> Self {
        let mut m = BTreeMap::new();
        m.insert(CTX_VOLUME.to_string(), hex::encode(volume_id));
        m.insert(CTX_PURPOSE.to_string(), purpose.to_string());
        EncryptionContext(m)
    }

    /// Canonical bytes: for each pair in key order, u16 LE length ‖ key ‖ u16 LE length ‖ value.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            for s in [k, v] {
                let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
            }
        }
        out
    }
}

/// Why a key operation failed. The split decides the cache policy (DESIGN.md §4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The KMS could not be reached or answered with a transient error (network, timeout,
    /// throttling, 5xx): an expired key may be served for a grace period.
    #[error("key service unreachable: {0}")]
    Unreachable(String),
    /// The KMS refused (access denied, disabled or unknown key, invalid ciphertext, wrong key
    /// id): drop the key at once.
    #[error("key service refused: {0}")]
    Refused(String),
    /// The wrapped key does not open under the trusted key and its context (damaged, or
    /// copied from another file): the header is bad, the key service is fine.
    #[error("wrapped key rejected: {0}")]
    BadWrappedKey(String),
    /// Local configuration is wrong (key file missing, unreadable or too open).
    #[error("{0}")]
    Config(String),
}

/// A freshly generated data key and its wrapped form.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The plaintext key (zeroized on drop).
    pub key: DataKey,
    /// The key wrapped by the provider, as stored in a header slot.
    pub wrapped: Vec<u8>,
}

/// Something that wraps and unwraps data keys: a local master key or a KMS.
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// Which provider this is (recorded in every header).
    fn provider_id(&self) -> ProviderId;

    /// The trusted wrapping key's id (local: "local:FINGERPRINT", AWS: the key ARN).
    fn key_id(&self) -> &str;

    /// A new random data key, plaintext and wrapped under `ctx` (KMS GenerateDataKey).
    fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<GeneratedKey, KeyError>;

    /// Unwrap `wrapped` under `ctx` with the trusted key (KMS Decrypt).
    fn decrypt(&self, wrapped: &[u8], ctx: &EncryptionContext) -> Result<DataKey, KeyError>;

    /// Wrap an existing plaintext key under `ctx` (KMS Encrypt).
    fn wrap(&self, key: &DataKey, ctx: &EncryptionContext) -> Result<Vec<u8>, KeyError>;

    /// Drop any key the provider itself holds unwrapped (bucket key); the next use unwraps it
    /// again. Called by `forget` and at unmount.
    fn forget(&self) {}

    /// Move `wrapped` from this provider's key to `to`'s key (KMS ReEncrypt when both are the
    /// same KMS; otherwise unwrap here and wrap there).
    fn reencrypt(
        &self,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        to: &dyn KeyProvider,
    ) -> Result<Vec<u8>, KeyError> {
        let key = self.decrypt(wrapped, ctx)?;
        to.wrap(&key, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_context_is_sorted_and_length_prefixed() {
        let c = EncryptionContext::for_file(&[0xAA; 16], &[0xBB; 16]);
        let b = c.canonical_bytes();
        // "kmsfs:file-id" sorts before "kmsfs:volume-id"
        assert_eq!(&b[..2], &13u16.to_le_bytes());
        assert_eq!(&b[2..15], b"kmsfs:file-id");
        assert_eq!(b.len(), 2 + 13 + 2 + 32 + 2 + 15 + 2 + 32);
    }
}
