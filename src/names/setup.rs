//! Opening a vault's names (mount, the offline tools) and creating them (`init`).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use super::diriv::DirIvs;
use super::{DIRIV_NAME, NAME_KEY_PURPOSE, NameCipher, NameKeySource, Names, NamesError};
use crate::keys::{EncryptionContext, KeyProvider};
use crate::sys::unlinkat;
use crate::vault::VaultConfig;

impl Names {
    /// The names of the vault in `vault_dir` with (verified) config `cfg`: plaintext, or
    /// encrypted with the name key unwrapped by `provider` (one Decrypt), after checking the
    /// root's IV file.
    pub fn for_vault(
        vault_dir: &Path,
        cfg: &VaultConfig,
        provider: Arc<dyn KeyProvider>,
    ) -> Result<Self, NamesError> {
        if cfg.plaintext_names {
            return Ok(Names::plaintext());
        }
        let vault = || vault_dir.to_path_buf();
        let wrapped = cfg
            .wrapped_name_key
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| NamesError::NoNameKey { vault: vault() })?;
        let volume_id = cfg.volume_id_bytes()?;
        let ctx = EncryptionContext::for_volume(&volume_id, NAME_KEY_PURPOSE);
        let key = provider
            .decrypt(&wrapped, &ctx)
            .map_err(|source| NamesError::Unwrap {
                vault: vault(),
                source,
            })?;
        crate::crypto::scrub_stack();
        let source = NameKeySource::new(provider, wrapped, ctx);
        let io = |source| NamesError::Io {
            vault: vault(),
            source,
        };
        let names = Names::encrypted(key, Some(source), vault_dir).map_err(io)?;
        let root = File::open(vault_dir).map_err(io)?;
        if let Some(enc) = &names.enc {
            enc.diriv(root.as_fd())
                .map_err(|source| NamesError::RootIv {
                    vault: vault(),
                    source,
                })?;
        }
        Ok(names)
    }

    /// At `init`: for an encrypted-names vault, a new name key wrapped by `provider` (recorded
    /// in `cfg`) and the root directory's IV file. Nothing for a plaintext-names vault.
    pub fn init_vault(
        vault_dir: &Path,
        cfg: &mut VaultConfig,
        provider: &dyn KeyProvider,
    ) -> Result<(), NamesError> {
        if cfg.plaintext_names {
            return Ok(());
        }
        let volume_id = cfg.volume_id_bytes()?;
        let generated = provider
            .generate_data_key(&EncryptionContext::for_volume(&volume_id, NAME_KEY_PURPOSE))
            .map_err(NamesError::Generate)?;
        cfg.wrapped_name_key = Some(hex::encode(&generated.wrapped));
        let cipher = NameCipher::new(generated.key);
        let dirivs = DirIvs::new(vault_dir).map_err(|source| NamesError::Io {
            vault: vault_dir.to_path_buf(),
            source,
        })?;
        // A root IV left by an interrupted init belongs to a name key now lost: replace it.
        if let Ok(root) = File::open(vault_dir) {
            let _ = unlinkat(root.as_fd(), OsStr::new(DIRIV_NAME), 0);
        }
        dirivs
            .init_root(&cipher)
            .map_err(|source| NamesError::WriteRootIv {
                vault: vault_dir.to_path_buf(),
                source,
            })
    }
}
