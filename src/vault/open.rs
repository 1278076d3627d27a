//! The one composition root: from a vault's verified config and the live provider of its
//! trusted key to everything an open vault needs — the file-key provider (the trusted key, or
//! the bucket key it wraps), the key cache (and, for a remote KMS, the pool of fresh keys), the
//! per-volume state every file shares, and the names. `mount`, the offline commands (`cat`,
//! `fsck`, `rewrap`) and the tests open vaults through it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::VaultConfig;
use crate::content::{HoleStore, Volume};
use crate::format::FormatError;
use crate::format::header::ProviderId;
use crate::keys::KeyError;
use crate::keys::bucket::BucketKeyProvider;
use crate::keys::pool::KeyPool;
use crate::keys::{KeyCache, KeyProvider};
use crate::names::{Names, NamesError};

/// How long keys live and how many there are.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// Data keys' TTL from their unwrap (0: only while their file is open).
    pub ttl: Duration,
    /// Expired keys served while the KMS is unreachable.
    pub grace: Duration,
    /// The bucket key's TTL (bucket-key mode; 0: unwrapped for each use).
    pub bucket_ttl: Duration,
    /// Most data keys cached.
    pub cache_size: usize,
    /// Most callers waiting on the KMS at once.
    pub max_waiters: usize,
    /// Fresh data keys kept ready (remote KMS only, never with a zero TTL) and their refill
    /// threads.
    pub pool: (usize, usize),
}

impl KeyPolicy {
    /// The offline commands: a key lives until its file is done, the bucket key for the run.
    pub fn offline(cache_size: usize) -> Self {
        KeyPolicy {
            ttl: Duration::ZERO,
            grace: Duration::ZERO,
            bucket_ttl: crate::keys::cache::DEFAULT_TTL,
            cache_size,
            max_waiters: usize::MAX,
            pool: (0, 0),
        }
    }
}

/// Why a vault cannot be opened; each message says what failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The config is not valid.
    #[error(transparent)]
    Config(#[from] super::VaultError),
    /// The config's block layout is not one this build supports.
    #[error("vault config: {0}")]
    Layout(#[from] FormatError),
    /// The config's bucket key is not hex.
    #[error("vault config: wrapped_bucket_key is not hex")]
    BucketKeyNotHex,
    /// The key service would not unwrap the bucket key.
    #[error("cannot unwrap the vault's bucket key: {0}")]
    BucketKey(#[source] KeyError),
    /// The pool's refill threads could not start.
    #[error("cannot start the data-key pool: {0}")]
    Pool(#[source] std::io::Error),
    /// The names could not be opened.
    #[error(transparent)]
    Names(#[from] NamesError),
}

/// An open vault.
pub struct OpenVault {
    /// The live provider of the trusted key (it wraps the vault-level keys).
    pub trusted: Arc<dyn KeyProvider>,
    /// What every file shares: ids, layout, the key cache.
    pub volume: Arc<Volume>,
    /// The names (`None`: encrypted names whose key is lost with the config).
    pub names: Option<Names>,
}

/// What wraps the vault's file keys: the trusted key itself, or (bucket-key mode) the vault's
/// bucket key, unwrapped by the trusted key and kept `bucket_ttl`.
pub fn file_key_provider(
    cfg: &VaultConfig,
    trusted: Arc<dyn KeyProvider>,
    bucket_ttl: Duration,
) -> Result<Arc<dyn KeyProvider>, OpenError> {
    let Some(hex_key) = cfg.wrapped_bucket_key.as_deref() else {
        return Ok(trusted);
    };
    let wrapped = hex::decode(hex_key).map_err(|_| OpenError::BucketKeyNotHex)?;
    let volume_id = cfg.volume_id_bytes()?;
    let bucket = BucketKeyProvider::new(trusted, wrapped, &volume_id, bucket_ttl)
        .map_err(OpenError::BucketKey)?;
    Ok(Arc::new(bucket))
}

/// Open the vault in `dir` with (verified) config `cfg` through `trusted`, under `policy`.
/// `with_names`: unwrap the name key (false when it is lost with the config); `writable`:
/// make the hole-map directory if missing (a mount that may write).
pub fn open(
    dir: &Path,
    cfg: &VaultConfig,
    trusted: Arc<dyn KeyProvider>,
    policy: &KeyPolicy,
    with_names: bool,
    writable: bool,
) -> Result<OpenVault, OpenError> {
    let volume_id = cfg.volume_id_bytes()?;
    let files = file_key_provider(cfg, trusted.clone(), policy.bucket_ttl)?;
    let keys = Arc::new(
        KeyCache::new(files.clone(), policy.ttl, policy.grace, policy.cache_size)
            .with_max_waiters(policy.max_waiters),
    );
    let (pool_size, workers) = policy.pool;
    // Local keys cost nothing to make; only a remote KMS is worth a pool of fresh keys. Pooled
    // keys live at most one TTL; with a zero TTL no key waits unused in memory: no pool.
    if files.provider_id() == ProviderId::AwsKms && pool_size > 0 && !policy.ttl.is_zero() {
        let pool = KeyPool::start(files.clone(), volume_id, pool_size, policy.ttl, workers)
            .map_err(OpenError::Pool)?;
        keys.set_pool(pool);
    }
    let holes = super::hole_dir(dir, writable)?.map(HoleStore::new);
    let volume = Arc::new(
        Volume::new(volume_id, cfg.layout()?, files.provider_id(), keys)
            .with_holes(holes)
            .with_header_version(cfg.format_version),
    );
    let names = if with_names {
        Some(Names::for_vault(dir, cfg, trusted.clone())?)
    } else {
        None
    };
    Ok(OpenVault {
        trusted,
        volume,
        names,
    })
}
