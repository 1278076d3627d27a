//! The on-disk format: per-file header and block layout. Pure functions, no I/O.
//!
//! `docs/FORMAT.md` specifies every byte; `layout` owns all offset arithmetic.

pub mod header;
pub mod holes;
pub mod layout;

pub use header::{FileHeader, HEADER_SIZE};
pub use layout::Layout;

/// Length of a volume id and of a file id, in bytes.
pub const ID_LEN: usize = 16;

/// A 128-bit random identifier (volume or file).
pub type Id = [u8; ID_LEN];

/// Why bytes read from disk are not a valid kmsfs structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes required.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The magic bytes do not say "kmsfs file".
    #[error("not a kmsfs file (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// A field holds a value the format does not allow.
    #[error("invalid header field: {0}")]
    InvalidField(&'static str),
    /// The backing size cannot be produced by any plaintext size (cut or extended file).
    #[error("backing size {0} is not a valid kmsfs file size")]
    InvalidBackingSize(u64),
}
