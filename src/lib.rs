//! kmsfs: a transparent encrypting FUSE filesystem whose per-file data keys are wrapped by a KMS.
//!
//! Layers, with dependencies pointing down only (see `docs/FORMAT.md` and `../shared/DESIGN.md`):
//! `cli` → `fs` → `names` → `cryptfile` → `format` / `crypto` → `keys`.

pub mod alloc;
pub mod cli;
pub mod cryptfile;
pub mod crypto;
pub mod direct_read;
pub mod format;
pub mod fs;
pub mod keys;
pub mod names;
pub mod sys;
pub mod vault;
