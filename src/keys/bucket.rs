//! Bucket-key mode (the idea of S3 Bucket Keys): one volume-level intermediate key, generated
//! and wrapped by the KMS, wraps every file's own data key locally. KMS calls then scale with
//! mounts × TTLs instead of with files.
//!
//! Trade-offs (documented in kmsfs.5): the KMS audit log names the volume, not each file; a
//! refused KMS key takes effect within one TTL (when the bucket key is next unwrapped).
//! Files still get one data key each, wrapped exactly as by the local provider, with the bucket
//! key as master key; headers say `ProviderId::BucketKey`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::local::LocalProvider;
use super::{EncryptionContext, GeneratedKey, KeyError, KeyProvider};
use crate::crypto::DataKey;
use crate::format::Id;
use crate::format::header::ProviderId;

/// Purpose of the bucket key in its KMS encryption context.
pub const BUCKET_KEY_PURPOSE: &str = "bucket";

/// A bucket key unwrapped at `since`, as a provider that wraps file keys with it.
struct Unwrapped {
    wrapper: Arc<LocalProvider>,
    since: Instant,
}

/// The bucket-key provider: file keys wrapped locally by a KMS-wrapped volume key.
pub struct BucketKeyProvider {
    kms: Arc<dyn KeyProvider>,
    wrapped: Vec<u8>,
    ctx: EncryptionContext,
    ttl: Duration,
    current: Mutex<Option<Unwrapped>>,
}

impl std::fmt::Debug for BucketKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketKeyProvider")
            .field("kms", &self.kms)
            .finish_non_exhaustive()
    }
}

impl BucketKeyProvider {
    /// A new bucket key for volume `volume_id` from the KMS (at `init`): returns its wrapped form.
    pub fn generate(kms: &dyn KeyProvider, volume_id: &Id) -> Result<Vec<u8>, KeyError> {
        let ctx = EncryptionContext::for_volume(volume_id, BUCKET_KEY_PURPOSE);
        Ok(kms.generate_data_key(&ctx)?.wrapped)
    }

    /// The provider over bucket key `wrapped` of volume `volume_id`, unwrapped by `kms` now and
    /// again once per `ttl` (0: at every use, kept in memory only for that use).
    pub fn new(
        kms: Arc<dyn KeyProvider>,
        wrapped: Vec<u8>,
        volume_id: &Id,
        ttl: Duration,
    ) -> Result<Self, KeyError> {
        let p = BucketKeyProvider {
            kms,
            wrapped,
            ctx: EncryptionContext::for_volume(volume_id, BUCKET_KEY_PURPOSE),
            ttl,
            current: Mutex::new(None),
        };
        p.wrapper()?;
        Ok(p)
    }

    /// The unwrapped bucket key, re-unwrapped after its TTL. An unreachable KMS keeps the old
    /// key for one more TTL (the grace period); a refusal drops it at once. Callers queue on the
    /// mutex, so concurrent expiries make one Decrypt. TTL 0: unwrapped for each use, never kept.
    fn wrapper(&self) -> Result<Arc<LocalProvider>, KeyError> {
        if self.ttl.is_zero() {
            let key = self.kms.decrypt(&self.wrapped, &self.ctx)?;
            crate::crypto::scrub_stack();
            return Ok(Arc::new(LocalProvider::from_key(
                key,
                Path::new("<bucket key>"),
            )));
        }
        let mut current = self.current.lock();
        let now = Instant::now();
        if let Some(u) = current.as_ref() {
            if now.duration_since(u.since) < self.ttl {
                return Ok(u.wrapper.clone());
            }
        }
        match self.kms.decrypt(&self.wrapped, &self.ctx) {
            Ok(key) => {
                crate::crypto::scrub_stack();
                let wrapper = Arc::new(LocalProvider::from_key(key, Path::new("<bucket key>")));
                *current = Some(Unwrapped {
                    wrapper: wrapper.clone(),
                    since: now,
                });
                Ok(wrapper)
            }
            Err(KeyError::Unreachable(why)) => match current.as_ref() {
                Some(u) if now.duration_since(u.since) < self.ttl * 2 => {
                    tracing::warn!(
                        "KMS unreachable, serving the bucket key within its grace period: {why}"
                    );
                    Ok(u.wrapper.clone())
                }
                _ => {
                    *current = None;
                    Err(KeyError::Unreachable(why))
                }
            },
            Err(e) => {
                *current = None;
                Err(e)
            }
        }
    }
}

impl KeyProvider for BucketKeyProvider {
    fn provider_id(&self) -> ProviderId {
        ProviderId::BucketKey
    }

    fn key_id(&self) -> &str {
        self.kms.key_id()
    }

    fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<GeneratedKey, KeyError> {
        self.wrapper()?.generate_data_key(ctx)
    }

    fn decrypt(&self, wrapped: &[u8], ctx: &EncryptionContext) -> Result<DataKey, KeyError> {
        self.wrapper()?.decrypt(wrapped, ctx)
    }

    fn wrap(&self, key: &DataKey, ctx: &EncryptionContext) -> Result<Vec<u8>, KeyError> {
        self.wrapper()?.wrap(key, ctx)
    }

    fn forget(&self) {
        *self.current.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A KMS stand-in: a local provider that counts Decrypts and can be told to refuse.
    #[derive(Debug)]
    struct CountingKms {
        inner: LocalProvider,
        decrypts: AtomicUsize,
        refuse: Mutex<bool>,
    }

    impl KeyProvider for CountingKms {
        fn provider_id(&self) -> ProviderId {
            ProviderId::AwsKms
        }
        fn key_id(&self) -> &str {
            "arn:test"
        }
        fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<GeneratedKey, KeyError> {
            self.inner.generate_data_key(ctx)
        }
        fn decrypt(&self, wrapped: &[u8], ctx: &EncryptionContext) -> Result<DataKey, KeyError> {
            self.decrypts.fetch_add(1, Ordering::SeqCst);
            if *self.refuse.lock() {
                return Err(KeyError::Refused("DisabledException".into()));
            }
            self.inner.decrypt(wrapped, ctx)
        }
        fn wrap(&self, key: &DataKey, ctx: &EncryptionContext) -> Result<Vec<u8>, KeyError> {
            self.inner.wrap(key, ctx)
        }
    }

    fn counting_kms(dir: &Path) -> Arc<CountingKms> {
        Arc::new(CountingKms {
            inner: LocalProvider::create(&dir.join("k")).expect("key"),
            decrypts: AtomicUsize::new(0),
            refuse: Mutex::new(false),
        })
    }

    #[test]
    fn many_files_one_kms_decrypt_and_refusal_within_a_ttl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kms = counting_kms(dir.path());
        let wrapped = BucketKeyProvider::generate(kms.as_ref(), &[1; 16]).expect("bucket key");
        let p = BucketKeyProvider::new(kms.clone(), wrapped, &[1; 16], Duration::from_millis(50))
            .expect("provider");
        for i in 0..100u8 {
            let ctx = EncryptionContext::for_file(&[1; 16], &[i; 16]);
            let g = p.generate_data_key(&ctx).expect("generate");
            assert_eq!(
                p.decrypt(&g.wrapped, &ctx).expect("decrypt").expose(),
                g.key.expose()
            );
        }
        assert_eq!(
            kms.decrypts.load(Ordering::SeqCst),
            1,
            "one KMS call for 200 key operations"
        );
        *kms.refuse.lock() = true;
        std::thread::sleep(Duration::from_millis(60));
        let ctx = EncryptionContext::for_file(&[1; 16], &[0; 16]);
        assert!(matches!(
            p.generate_data_key(&ctx),
            Err(KeyError::Refused(_))
        ));
    }

    /// Item 9 of the hostile-store issue: `--key-ttl 0` bounds the bucket key too: it is
    /// unwrapped for every use (so a refusal takes effect at the next open), never kept.
    #[test]
    fn a_zero_ttl_unwraps_the_bucket_key_at_every_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kms = counting_kms(dir.path());
        let wrapped = BucketKeyProvider::generate(kms.as_ref(), &[1; 16]).expect("bucket key");
        let p = BucketKeyProvider::new(kms.clone(), wrapped, &[1; 16], Duration::ZERO)
            .expect("provider");
        let ctx = EncryptionContext::for_file(&[1; 16], &[5; 16]);
        let g = p.generate_data_key(&ctx).expect("generate");
        p.decrypt(&g.wrapped, &ctx).expect("decrypt");
        assert_eq!(
            kms.decrypts.load(Ordering::SeqCst),
            3,
            "new + generate + decrypt"
        );
        assert!(p.current.lock().is_none(), "kept in memory");
        *kms.refuse.lock() = true;
        assert!(matches!(
            p.decrypt(&g.wrapped, &ctx),
            Err(KeyError::Refused(_))
        ));
    }
}
