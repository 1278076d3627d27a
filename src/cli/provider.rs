//! From "which key does this host trust" to a live `KeyProvider`.

use std::path::Path;
use std::sync::Arc;

use super::KeyArgs;
use crate::keys::KeyProvider;
use crate::keys::aws::{AwsKmsProvider, AwsOptions};
use crate::keys::local::LocalProvider;
use crate::vault::{self, TrustedKey, VaultConfig, VaultError};

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

/// The trusted key for a vault: the command line, else this host's record from `init`.
pub fn trusted_key(args: &KeyArgs, cfg: &VaultConfig, vault: &Path) -> Result<TrustedKey, String> {
    if let Some(k) = from_args(args) {
        return Ok(k);
    }
    vault::load_trusted_key(&cfg.volume_id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| VaultError::NoTrustedKey(vault.display().to_string()).to_string())
}

/// A live provider for `key` (for AWS this starts the KMS client's runtime: call it only after
/// daemonizing).
pub fn open(key: &TrustedKey) -> Result<Arc<dyn KeyProvider>, String> {
    match key {
        TrustedKey::Local { key_file } => Ok(Arc::new(
            LocalProvider::open(key_file).map_err(|e| e.to_string())?,
        )),
        TrustedKey::AwsKms { kms_key_id } => Ok(Arc::new(
            AwsKmsProvider::new(kms_key_id, AwsOptions::default()).map_err(|e| e.to_string())?,
        )),
    }
}

/// Refuse a vault whose config names another key than the trusted one.
pub fn check_hint(
    cfg: &VaultConfig,
    vault: &Path,
    provider: &dyn KeyProvider,
) -> Result<(), String> {
    let kind = vault::provider_name(provider.provider_id());
    if cfg.provider != kind || cfg.key_id != provider.key_id() {
        return Err(VaultError::KeyMismatch {
            vault: vault.display().to_string(),
            hint: format!("{} key {}", cfg.provider, cfg.key_id),
            trusted: format!("{kind} key {}", provider.key_id()),
        }
        .to_string());
    }
    Ok(())
}
