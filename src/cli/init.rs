//! `kmsfs init VAULT`: a new volume id, the vault config, and this host's trust record.

use std::path::Path;

use super::{CliResult, InitArgs, provider};
use crate::format::Layout;
use crate::format::header::HEADER_SIZE;
use crate::keys::KeyProvider;
use crate::keys::bucket::BucketKeyProvider;
use crate::keys::local::LocalProvider;
use crate::names::Names;
use crate::vault::{self, TrustedKey, VaultConfig};

/// Run `kmsfs init`.
pub fn run(args: &InitArgs) -> CliResult {
    Layout::new(HEADER_SIZE as u64, args.block_size).map_err(|_| {
        format!(
            "--block-size {} must be a power of two from 512 to 1048576",
            args.block_size
        )
    })?;
    std::fs::create_dir_all(&args.vault)
        .map_err(|e| format!("cannot create {}: {e}", args.vault.display()))?;
    let vault_dir = args
        .vault
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.vault.display()))?;
    if VaultConfig::path(&vault_dir).exists() {
        return Err(vault::VaultError::AlreadyInitialised(vault_dir.display().to_string()).into());
    }
    // The volume id comes first: the default key file is named after it.
    let mut cfg = VaultConfig::new(
        args.block_size,
        crate::format::header::ProviderId::Local,
        "",
        args.plaintext_names,
    )?;
    let trusted = provider::from_args(&args.key).unwrap_or_else(|| TrustedKey::Local {
        key_file: vault::default_key_file(&cfg.volume_id),
    });
    let key_provider: std::sync::Arc<dyn KeyProvider> = match &trusted {
        TrustedKey::Local { key_file } => {
            refuse_inside(key_file, &vault_dir)?;
            if key_file.exists() {
                // An existing key (of this or another vault) is reused, never overwritten.
                std::sync::Arc::new(LocalProvider::open(key_file)?)
            } else {
                std::sync::Arc::new(LocalProvider::create(key_file)?)
            }
        }
        TrustedKey::AwsKms { .. } => provider::open(&trusted)?,
    };
    cfg.provider = vault::provider_name(key_provider.provider_id()).to_string();
    cfg.key_id = key_provider.key_id().to_string();
    // Record the resolved key (the ARN for KMS) so later mounts trust exactly this key.
    let trusted = match trusted {
        TrustedKey::AwsKms { .. } => TrustedKey::AwsKms {
            kms_key_id: key_provider.key_id().to_string(),
        },
        local => local,
    };
    Names::init_vault(&vault_dir, &mut cfg, key_provider.as_ref())?;
    if args.bucket_key {
        let volume_id = cfg.volume_id_bytes()?;
        let wrapped = BucketKeyProvider::generate(key_provider.as_ref(), &volume_id)
            .map_err(|e| format!("cannot make the bucket key: {e}"))?;
        cfg.wrapped_bucket_key = Some(hex::encode(wrapped));
    }
    cfg.seal_new(key_provider.as_ref())
        .map_err(|e| format!("cannot make the config key: {e}"))?;
    cfg.create(&vault_dir)?;
    vault::hole_dir(&vault_dir, true)?;
    vault::trust::record(&vault::config_home(), &vault_dir, &cfg, &trusted)?;
    println!(
        "initialised kmsfs vault {} (volume {})",
        vault_dir.display(),
        cfg.volume_id
    );
    match &trusted {
        TrustedKey::Local { key_file } => println!(
            "master key: {} -- back it up: without it the data is lost; keep it out of the vault",
            key_file.display()
        ),
        TrustedKey::AwsKms { kms_key_id } if args.bucket_key => {
            println!(
                "bucket-key mode: file keys wrapped by a volume key that KMS key {kms_key_id} wraps"
            )
        }
        TrustedKey::AwsKms { kms_key_id } => println!("data keys wrapped by KMS key {kms_key_id}"),
    }
    if args.plaintext_names {
        println!(
            "file names, symlink targets and xattrs are stored in plain text (--plaintext-names); contents are encrypted"
        );
    } else {
        println!("file names, symlink targets and xattrs are encrypted with the volume's name key");
    }
    println!(
        "mount it with: kmsfs mount {} MOUNTPOINT",
        vault_dir.display()
    );
    Ok(())
}

/// A key file inside the vault would let whoever writes the vault read it.
fn refuse_inside(key_file: &Path, vault_dir: &Path) -> CliResult {
    let parent = key_file.parent().and_then(|p| p.canonicalize().ok());
    if parent.is_some_and(|p| p.starts_with(vault_dir)) {
        return Err(format!(
            "the key file {} is inside the vault: keep it outside (e.g. under ~/.config/kmsfs)",
            key_file.display()
        )
        .into());
    }
    Ok(())
}
