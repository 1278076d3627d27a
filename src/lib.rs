//! kmsfs: a transparent encrypting FUSE filesystem whose per-file data keys are wrapped by a KMS.
//!
//! Layers, with dependencies pointing down only (see `docs/FORMAT.md` and `../shared/DESIGN.md`):
//! `cli` (and `vault`, the vault on disk and what a host trusts) → `fuse` (the only code that
//! speaks to the kernel) → `fs` (the filesystem as plain methods) → `names` → `content` (one
//! encrypted file) → `format` / `crypto` → `keys`; `sys` holds every libc call.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[allow(unsafe_code)]
pub mod alloc;
pub mod cli;
pub mod content;
pub mod crypto;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod keys;
pub mod names;
#[allow(unsafe_code)]
pub mod sys;
pub mod vault;
