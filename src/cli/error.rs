//! The CLI's one error type: the typed errors of the layers below, or a message the CLI itself
//! composed. It becomes text and an exit status only at the edge (`cli::main` prints it, a
//! daemon reports it to the waiting parent), so code below can still match on what went wrong.

use crate::content::CryptError;
use crate::format::FormatError;
use crate::keys::KeyError;
use crate::names::NamesError;
use crate::vault::VaultError;
use crate::vault::open::OpenError;

/// Exit statuses, as kmsfs.1 (EXIT STATUS) documents them.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any other failure.
    pub const FAILURE: i32 = 1;
    /// The command line is wrong (clap uses 2 too).
    pub const USAGE: i32 = 2;
    /// The vault or the mount point: missing, not a vault, not empty, already mounted, its
    /// config changed or swapped.
    pub const TARGET: i32 = 3;
    /// The key: key file missing or wrong, KMS refused, unreachable or no credentials.
    pub const KEY: i32 = 4;
    /// `fsck` checked the vault and found damage.
    pub const DAMAGE: i32 = 5;
}

/// The kind of failure a composed message reports, which decides the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anything else (exit 1).
    Failure,
    /// A wrong command line (exit 2).
    Usage,
    /// The vault or the mount point (exit 3).
    Target,
    /// The key or the key service (exit 4).
    Key,
    /// Damage found by a check (exit 5).
    Damage,
}

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
    /// A message the CLI composed (a file it could not open, a daemon's answer), and its kind.
    #[error("{1}")]
    Message(Kind, String),
}

impl CliError {
    /// A wrong command line.
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError::Message(Kind::Usage, msg.into())
    }

    /// A problem with the vault or the mount point.
    pub fn target(msg: impl Into<String>) -> Self {
        CliError::Message(Kind::Target, msg.into())
    }

    /// A problem with the key or the key service.
    pub fn key(msg: impl Into<String>) -> Self {
        CliError::Message(Kind::Key, msg.into())
    }

    /// Damage a check found.
    pub fn damage(msg: impl Into<String>) -> Self {
        CliError::Message(Kind::Damage, msg.into())
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> Kind {
        match self {
            CliError::Vault(e) => vault_kind(e),
            CliError::Open(e) => match e {
                OpenError::Config(v) => vault_kind(v),
                OpenError::BucketKey(_) => Kind::Key,
                OpenError::Names(n) => names_kind(n),
                OpenError::Layout(_) | OpenError::BucketKeyNotHex => Kind::Target,
                _ => Kind::Failure,
            },
            CliError::Names(n) => names_kind(n),
            CliError::Key(_) => Kind::Key,
            CliError::Format(_) => Kind::Target,
            CliError::Crypt(CryptError::Key { .. }) => Kind::Key,
            CliError::Crypt(_) => Kind::Failure,
            CliError::Message(kind, _) => *kind,
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self.kind() {
            Kind::Failure => exit::FAILURE,
            Kind::Usage => exit::USAGE,
            Kind::Target => exit::TARGET,
            Kind::Key => exit::KEY,
            Kind::Damage => exit::DAMAGE,
        }
    }
}

/// Vault errors are about the vault, except a key the host cannot use.
fn vault_kind(e: &VaultError) -> Kind {
    match e {
        VaultError::Key { .. } | VaultError::KeyMismatch { .. } | VaultError::NoTrustedKey(_) => {
            Kind::Key
        }
        VaultError::Io(..) => Kind::Failure,
        _ => Kind::Target,
    }
}

/// Name errors are key errors when the name key could not be had.
fn names_kind(e: &NamesError) -> Kind {
    match e {
        NamesError::Unwrap { .. } | NamesError::Generate(_) => Kind::Key,
        _ => Kind::Target,
    }
}

impl From<String> for CliError {
    fn from(msg: String) -> Self {
        CliError::Message(Kind::Failure, msg)
    }
}

impl From<&str> for CliError {
    fn from(msg: &str) -> Self {
        CliError::Message(Kind::Failure, msg.to_string())
    }
}
