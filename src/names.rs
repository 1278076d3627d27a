//! Plain names ↔ backing names. This build passes names through unchanged (a vault made with
//! `--plaintext-names`); the mount only reserves `.kmsfs` at the root for the vault's config.

use std::ffi::{OsStr, OsString};

use crate::vault::META_DIR;

/// Translates names between the mount and the backing directory.
#[derive(Debug, Clone, Default)]
pub struct Names;

impl Names {
    /// Names of a plaintext-names vault.
    pub fn plaintext() -> Self {
        Names
    }

    /// Whether `plain` in the root directory is reserved for the vault itself.
    pub fn is_reserved(&self, in_root: bool, plain: &OsStr) -> bool {
        in_root && plain == OsStr::new(META_DIR)
    }

    /// The backing name of plain name `plain`.
    pub fn to_backing(&self, plain: &OsStr) -> OsString {
        plain.to_os_string()
    }

    /// The plain name of backing entry `backing`; `None` hides the entry.
    pub fn to_plain(&self, in_root: bool, backing: &OsStr) -> Option<OsString> {
        if self.is_reserved(in_root, backing) { None } else { Some(backing.to_os_string()) }
    }
}
