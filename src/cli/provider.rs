//! From "which key does this host trust" to a live `KeyProvider`.

use std::path::Path;
use std::sync::Arc;

use super::{CliError, KeyArgs, TrustArgs};
use crate::keys::KeyProvider;
use crate::keys::aws::{AwsKmsProvider, AwsOptions};
use crate::keys::local::LocalProvider;
use crate::vault::{Trust, TrustedKey, VaultConfig};

/// The key named on the command line, if any.
pub fn from_args(args: &KeyArgs) -> Option<TrustedKey> {
    if let Some(id) = &args.kms_key_id {
        return Some(TrustedKey::AwsKms {
            kms_key_id: id.clone(),
        });
    }
    args.key_file.as_ref().map(|p| TrustedKey::Local {
        key_file: absolute(p),
    })
}

/// `p` made absolute (without requiring it to exist), so host config survives a `cd`.
pub fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// What to trust for the vault at `vault` (canonical) with config `cfg`: the command line's
/// key and volume id, else this host's records (no key service call yet).
pub fn resolve(args: &TrustArgs, cfg: &VaultConfig, vault: &Path) -> Result<Trust, CliError> {
    Trust::resolve(
        &crate::vault::config_home(),
        vault,
        cfg,
        from_args(&args.key),
        args.volume_id.as_deref(),
    )
    .map_err(CliError::from)
}

/// A live provider for `key` (for AWS this starts the KMS client's runtime: call it only after
/// daemonizing).
pub fn open(key: &TrustedKey) -> Result<Arc<dyn KeyProvider>, CliError> {
    match key {
        TrustedKey::Local { key_file } => Ok(Arc::new(LocalProvider::open(key_file)?)),
        TrustedKey::AwsKms { kms_key_id } => Ok(Arc::new(AwsKmsProvider::new(
            kms_key_id,
            AwsOptions::default(),
        )?)),
    }
}

/// Open the trusted key's provider and verify the vault config with it (and record the trust).
pub fn open_verified(trust: &Trust) -> Result<Arc<dyn KeyProvider>, CliError> {
    let p = open(&trust.key)?;
    trust.verify(p.as_ref())?;
    Ok(p)
}
