//! The CLI's one error type: the typed errors of the layers below, or a message the CLI itself
//! composed. It becomes text only at the edge (`cli::main` prints it, a daemon reports it to
//! the waiting parent), so code below can still match on what went wrong.

use crate::content::CryptError;
use crate::format::FormatError;
use crate::keys::KeyError;
use crate::names::NamesError;
use crate::vault::VaultError;
use crate::vault::open::OpenError;

/// Why a subcommand failed; `Display` is the one line the user reads.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The vault or the host's records of it.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Opening the vault (keys, pool, names).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The vault's names.
    #[error(transparent)]
    Names(#[from] NamesError),
    /// The key provider.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Bytes on disk that are not a kmsfs structure.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// An encrypted file's content.
    #[error(transparent)]
    Crypt(#[from] CryptError),
    /// A message the CLI composed (usage, a file it could not open, a daemon's answer).
    #[error("{0}")]
    Message(String),
}

impl From<String> for CliError {
    fn from(msg: String) -> Self {
        CliError::Message(msg)
    }
}

impl From<&str> for CliError {
    fn from(msg: &str) -> Self {
        CliError::Message(msg.to_string())
    }
}
