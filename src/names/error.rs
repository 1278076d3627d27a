//! Why the names of a vault cannot be opened (mount, offline tools) or set up (`init`).

use std::io;
use std::path::PathBuf;

use super::cipher::DIRIV_NAME;
use crate::keys::KeyError;
use crate::vault::VaultError;

/// Why a vault's names cannot be opened or created; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// The config of an encrypted-names vault has no usable wrapped name key.
    #[error("vault {}: the config has no valid wrapped_name_key", .vault.display())]
    NoNameKey {
        /// The vault directory.
        vault: PathBuf,
    },
    /// The key service would not unwrap the name key.
    #[error("cannot unwrap the file-name key of vault {}: {source}", .vault.display())]
    Unwrap {
        /// The vault directory.
        vault: PathBuf,
        /// What the key service said.
        source: KeyError,
    },
    /// The key service would not make a name key (`init`).
    #[error("cannot make the file-name key: {0}")]
    Generate(#[source] KeyError),
    /// The root directory's IV file is missing, unreadable or not this vault's.
    #[error(
        "vault {}: {} is unreadable or not this vault's ({source}): without it no name in the vault root can be read; restore it from a backup",
        .vault.display(), DIRIV_NAME
    )]
    RootIv {
        /// The vault directory.
        vault: PathBuf,
        /// Why it could not be read or verified.
        source: io::Error,
    },
    /// The root directory's IV file could not be written (`init`).
    #[error("cannot write {}/{}: {source}", .vault.display(), DIRIV_NAME)]
    WriteRootIv {
        /// The vault directory.
        vault: PathBuf,
        /// The write's error.
        source: io::Error,
    },
    /// The vault directory could not be opened.
    #[error("{}: {source}", .vault.display())]
    Io {
        /// The vault directory.
        vault: PathBuf,
        /// The open's error.
        source: io::Error,
    },
    /// The config is not valid.
    #[error(transparent)]
    Config(#[from] VaultError),
}
