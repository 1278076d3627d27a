//! `kmsfs init VAULT`: a new volume id, the vault config, and this host's trust record.

use std::path::{Path, PathBuf};

use super::{CliError, CliResult, InitArgs, provider, targets};
use crate::format::Layout;
use crate::format::header::HEADER_SIZE;
use crate::keys::bucket::BucketKeyProvider;
use crate::keys::local::LocalProvider;
use crate::keys::{KeyProvider, arn};
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
    let existed = targets::check_init_dir(&args.vault, args.force)?;
    // Whatever this init creates is removed again if it fails.
    let mut undo = Undo::default();
    if !existed {
        undo.dirs = created_dirs(&args.vault);
        std::fs::create_dir_all(&args.vault).map_err(|e| {
            CliError::target(format!("cannot create {}: {e}", args.vault.display()))
        })?;
    }
    let vault_dir = args
        .vault
        .canonicalize()
        .map_err(|e| CliError::target(format!("{}: {e}", args.vault.display())))?;
    if VaultConfig::path(&vault_dir).exists() {
        return Err(vault::VaultError::AlreadyInitialised(vault_dir.display().to_string()).into());
    }
    let meta = vault_dir.join(vault::META_DIR);
    if !meta.exists() {
        undo.meta = Some(meta);
    }
    let root_iv = vault_dir.join(crate::names::DIRIV_NAME);
    if root_iv.exists() {
        return Err(CliError::target(format!(
            "{} holds a directory IV of a vault ({}) but no vault config: restore .kmsfs/ from a backup rather than init over it",
            vault_dir.display(),
            crate::names::DIRIV_NAME
        )));
    }
    undo.root_iv = Some(root_iv);
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
                let p = LocalProvider::create(key_file)?;
                undo.key_file = Some(key_file.clone());
                std::sync::Arc::new(p)
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
    undo.disarm();
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
    if args.replicated {
        match replication_note(&trusted, &cfg.volume_id) {
            Ok(note) => println!("{note}"),
            Err(warning) => eprintln!("kmsfs: warning: {warning}"),
        }
    }
    println!(
        "mount it with: kmsfs mount {} MOUNTPOINT",
        vault_dir.display()
    );
    Ok(())
}

/// `--replicated`: what a copy of the vault in another region needs (`Ok`), or why it will
/// not open there (`Err`: a single-Region KMS key answers only in its own region).
fn replication_note(trusted: &TrustedKey, volume_id: &str) -> Result<String, String> {
    match trusted {
        TrustedKey::Local { key_file } => Ok(format!(
            "replicated vault: the DR host needs a copy of the key file {} and --volume-id {volume_id}",
            key_file.display()
        )),
        TrustedKey::AwsKms { kms_key_id } if arn::is_multi_region(kms_key_id) => Ok(format!(
            "replicated vault: multi-Region key; replicate it to the DR region (aws kms replicate-key --key-id {kms_key_id} --replica-region REGION) and mount the copy there with the replica's ARN and --volume-id {volume_id}"
        )),
        TrustedKey::AwsKms { kms_key_id } => Err(format!(
            "--replicated: KMS key {kms_key_id} is a single-Region key, so a DR copy of this vault could not be opened in another region with it (keys never leave their region); use a multi-Region key (aws kms create-key --multi-region, then kmsfs rewrap --to-kms-key-id) before relying on the copy"
        )),
    }
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

/// What a failed `init` removes again: the key file, `.kmsfs/` and the directories it made.
#[derive(Default)]
struct Undo {
    /// A key file this init created.
    key_file: Option<PathBuf>,
    /// The vault's `.kmsfs/`, when this init created it.
    meta: Option<PathBuf>,
    /// The root directory's IV file, which this init creates.
    root_iv: Option<PathBuf>,
    /// Directories this init created, outermost first.
    dirs: Vec<PathBuf>,
}

impl Undo {
    /// Keep everything: the init succeeded.
    fn disarm(&mut self) {
        self.key_file = None;
        self.meta = None;
        self.root_iv = None;
        self.dirs.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(k) = &self.key_file {
            let _ = std::fs::remove_file(k);
        }
        if let Some(m) = &self.meta {
            let _ = std::fs::remove_dir_all(m);
        }
        if let Some(iv) = &self.root_iv {
            let _ = std::fs::remove_file(iv);
        }
        // Innermost first; each only if empty (it held nothing but what init put there).
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The directories `create_dir_all(dir)` would create, outermost first.
fn created_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicated_warns_for_a_single_region_key_only() {
        let kms = |id: &str| TrustedKey::AwsKms {
            kms_key_id: id.to_string(),
        };
        let single = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let err = replication_note(&kms(single), "ab").expect_err("single-Region");
        assert!(
            err.contains(single) && err.contains("single-Region"),
            "{err}"
        );
        let mrk = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let note = replication_note(&kms(mrk), "ab").expect("multi-Region");
        assert!(
            note.contains("replicate-key") && note.contains("--volume-id ab"),
            "{note}"
        );
        let local = TrustedKey::Local {
            key_file: PathBuf::from("/k.key"),
        };
        assert!(replication_note(&local, "ab").is_ok_and(|n| n.contains("/k.key")));
    }
}
