//! The one place errors become errno values for the kernel.

use fuser::Errno;

use crate::cryptfile::CryptError;
use crate::keys::KeyError;

/// errno for an I/O error (EIO when it carries no OS code).
pub fn io(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_i32).unwrap_or(Errno::EIO)
}

/// errno for an encrypted-file error, logging integrity and key failures (one line each).
pub fn crypt(e: &CryptError) -> Errno {
    match e {
        CryptError::Io(e) => io(e),
        CryptError::Integrity { .. } => {
            tracing::error!("{e}");
            Errno::EIO
        }
        CryptError::Key { err, .. } => {
            tracing::error!("{e}");
            match err {
                KeyError::Refused(_) => Errno::EACCES,
                KeyError::BadWrappedKey(_) => Errno::EIO,
                KeyError::Unreachable(_) | KeyError::Config(_) => Errno::EIO,
            }
        }
    }
}
