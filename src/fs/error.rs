//! The one place errors become errno values: every filesystem method returns [`FsError`], and
//! the FUSE adapter hands its code to the kernel.

use crate::content::CryptError;
use crate::keys::KeyError;

/// An errno for the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsError(pub i32);

/// The result of a filesystem method.
pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// No such entry.
    pub const ENOENT: FsError = FsError(libc::ENOENT);
    /// The inode or handle is no longer known.
    pub const ESTALE: FsError = FsError(libc::ESTALE);
    /// Operation not permitted (a reserved name).
    pub const EPERM: FsError = FsError(libc::EPERM);
    /// The mount is read-only.
    pub const EROFS: FsError = FsError(libc::EROFS);
    /// Bad file handle.
    pub const EBADF: FsError = FsError(libc::EBADF);
    /// I/O error, damaged data.
    pub const EIO: FsError = FsError(libc::EIO);
    /// Not supported.
    pub const EOPNOTSUPP: FsError = FsError(libc::EOPNOTSUPP);
    /// An invalid argument.
    pub const EINVAL: FsError = FsError(libc::EINVAL);
    /// No data or hole past the end of file.
    pub const ENXIO: FsError = FsError(libc::ENXIO);

    /// The errno value.
    pub fn code(self) -> i32 {
        self.0
    }

    /// errno for an I/O error (EIO when it carries no OS code).
    pub fn io(e: &std::io::Error) -> FsError {
        FsError(e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// errno for an encrypted-file error, logging integrity and key failures (one line each).
    pub fn crypt(e: &CryptError) -> FsError {
        if !matches!(e, CryptError::Io(_)) {
            tracing::error!("{e}");
        }
        FsError::of_crypt(e)
    }

    /// errno for an encrypted-file error, without logging it.
    pub fn of_crypt(e: &CryptError) -> FsError {
        match e {
            CryptError::Io(e) => FsError::io(e),
            CryptError::Integrity { .. } => FsError::EIO,
            CryptError::Key { err, .. } => match err {
                KeyError::Refused(_) => FsError(libc::EACCES),
                KeyError::BadWrappedKey(_) | KeyError::Unreachable(_) | KeyError::Config(_) => {
                    FsError::EIO
                }
            },
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError::io(&e)
    }
}

impl From<CryptError> for FsError {
    fn from(e: CryptError) -> Self {
        FsError::crypt(&e)
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for FsError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_errno() {
        assert_eq!(
            FsError::from(std::io::Error::from_raw_os_error(libc::ENOSPC)).code(),
            libc::ENOSPC
        );
        assert_eq!(
            FsError::from(std::io::Error::other("no code")),
            FsError::EIO
        );
        let refused = CryptError::Key {
            path: "f".into(),
            err: KeyError::Refused("disabled".into()),
        };
        assert_eq!(FsError::from(refused).code(), libc::EACCES);
        let hung = CryptError::Key {
            path: "f".into(),
            err: KeyError::Unreachable("timeout".into()),
        };
        assert_eq!(FsError::from(hung), FsError::EIO);
    }
}
