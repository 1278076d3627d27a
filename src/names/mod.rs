//! Plain names ↔ backing names, symlink targets and extended attributes (DESIGN.md §2).
//!
//! Two modes, chosen at `init` and recorded in the vault config (`plaintext_names`):
//!
//! - **Encrypted** (the default). A volume name key, wrapped by the vault's trusted key under
//!   the encryption context {volume id, purpose "names"}, is unwrapped once at mount and held
//!   here until unmount (zeroized on drop). Every backing directory holds `.kmsfs.diriv`, a
//!   random 16-byte IV (mode 0444), made with the directory and removed by `rmdir`; names in it
//!   are encrypted deterministically under that IV (so a lookup needs no directory scan), and
//!   identical names in different directories differ. Encoded names longer than
//!   [`cipher::LONG_NAME_THRESHOLD`] become a hash-named entry plus a sidecar file holding the
//!   full encoded name. Symlink targets and `user.*` extended attributes (names and values)
//!   are encrypted too. Backing entries that do not decrypt are hidden, with one log line each.
//! - **Plaintext** (`init --plaintext-names`): names, link targets and xattrs pass through.
//!
//! In both modes `.kmsfs` in the vault root is reserved for the vault's config and hidden.
//! The byte formats are in [`cipher`] and docs/FORMAT.md ("File names"). `fs` calls only the
//! methods here and never sees a cipher; these methods do the name-related system calls on the
//! backing directory (through O_PATH directory fds) so that sidecars and IV files stay in step.

pub mod cipher;
pub mod diriv;
mod error;
pub mod key;
mod setup;
mod unsynced;

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::Arc;

use crate::crypto::DataKey;

use crate::sys::{self, mkdirat, renameat2, stat_fd as stat, unlinkat};
use crate::vault::META_DIR;
pub use cipher::{DIRIV_NAME, DirIv, NameCipher};
use diriv::{DirIvs, write_new};
pub use error::NamesError;
pub use key::{NameKeyHandle, NameKeySource};
use sys::describe;
pub use unsynced::{FLUSH_EVERY, Unsynced};

/// Purpose of the volume name key in its KMS encryption context.
pub const NAME_KEY_PURPOSE: &str = "names";

/// Translates names between the mount and the backing directory.
pub struct Names {
    enc: Option<Encrypted>,
}

struct Encrypted {
    key: NameKeyHandle,
    dirivs: DirIvs,
    /// New IV files and sidecars not yet synced.
    unsynced: Arc<Unsynced>,
}

impl Encrypted {
    /// The name cipher (EACCES once the KMS has refused the name key).
    fn cipher(&self) -> io::Result<Arc<NameCipher>> {
        self.key.cipher()
    }

    /// The verified IV of backing directory `dir`.
    fn diriv(&self, dir: BorrowedFd<'_>) -> io::Result<DirIv> {
        self.dirivs.get(&*self.cipher()?, dir)
    }
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("encrypted", &self.is_encrypted())
            .finish()
    }
}

impl Default for Names {
    fn default() -> Self {
        Names::plaintext()
    }
}

/// The backing name of one plain name in one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingName {
    name: OsString,
    /// For a long name: the full encoded name, kept in the sidecar.
    long: Option<String>,
}

impl Deref for BackingName {
    type Target = OsStr;
    fn deref(&self) -> &OsStr {
        &self.name
    }
}

impl BackingName {
    /// Whether this is a long name (hash-named entry plus sidecar).
    pub fn is_long(&self) -> bool {
        self.long.is_some()
    }

    fn sidecar(&self) -> Option<OsString> {
        self.long.as_ref()?;
        let mut s = self.name.clone();
        s.push(cipher::SIDECAR_SUFFIX);
        Some(s)
    }
}

impl Names {
    /// Names of a plaintext-names vault: everything passes through.
    pub fn plaintext() -> Self {
        Names { enc: None }
    }

    /// Encrypted names under the volume name key `key` for the vault whose root is `root`;
    /// after `forget` the key is unwrapped again from `source`.
    pub fn encrypted(key: DataKey, source: Option<NameKeySource>, root: &Path) -> io::Result<Self> {
        Ok(Names {
            enc: Some(Encrypted {
                key: NameKeyHandle::new(key, source),
                dirivs: DirIvs::new(root)?,
                unsynced: Arc::default(),
            }),
        })
    }

    /// Drop the unwrapped name key (`forget`); the next name operation unwraps it again.
    pub fn forget_key(&self) {
        if let Some(enc) = &self.enc {
            enc.key.forget();
        }
    }

    /// The name key's slot, for the background re-unwrap (None for plaintext names).
    pub fn key_handle(&self) -> Option<NameKeyHandle> {
        self.enc.as_ref().map(|e| e.key.clone())
    }

    /// New IV files and sidecars to sync before any fsync through the mount returns (None for
    /// plaintext names, which write none).
    pub fn unsynced(&self) -> Option<Arc<Unsynced>> {
        self.enc.as_ref().map(|e| e.unsynced.clone())
    }

    /// Put every new IV file and sidecar on disk (before an fsync, and at unmount).
    pub fn sync_new(&self) -> io::Result<()> {
        self.enc.as_ref().map_or(Ok(()), |e| e.unsynced.flush())
    }

    /// Whether names are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.enc.is_some()
    }

    /// Whether `plain` in the root directory is reserved for the vault itself.
    pub fn is_reserved(&self, in_root: bool, plain: &OsStr) -> bool {
        in_root && plain == OsStr::new(META_DIR)
    }

    /// The backing name of plain name `plain` in the backing directory `dir`.
    /// ENAMETOOLONG over 255 bytes; EIO (logged) when the directory's IV is missing or damaged.
    pub fn backing(&self, dir: BorrowedFd<'_>, plain: &OsStr) -> io::Result<BackingName> {
        if plain.len() > cipher::NAME_MAX {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let Some(enc) = &self.enc else {
            return Ok(BackingName {
                name: plain.to_os_string(),
                long: None,
            });
        };
        let iv = enc.diriv(dir)?;
        let encoded = enc.cipher()?.encrypt_name(&iv, plain.as_bytes());
        if cipher::needs_long_name(&encoded) {
            Ok(BackingName {
                name: cipher::long_name(&encoded).into(),
                long: Some(encoded),
            })
        } else {
            Ok(BackingName {
                name: encoded.into(),
                long: None,
            })
        }
    }

    /// Write the sidecar of long name `name` in `dir`; whether a new file was written.
    fn write_sidecar(&self, dir: BorrowedFd<'_>, name: &BackingName) -> io::Result<bool> {
        let (Some(side), Some(enc)) = (name.sidecar(), &name.long) else {
            return Ok(false);
        };
        let later = self.enc.as_ref().map(|e| &*e.unsynced);
        match write_new(dir, &side, enc.as_bytes(), later) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if read_small(dir, &side, enc.len()).is_ok_and(|b| b == enc.as_bytes()) {
                    return Ok(false);
                }
                // Damaged or stale: replace it.
                unlinkat(dir, &side, 0)?;
                write_new(dir, &side, enc.as_bytes(), later).map(|()| true)
            }
            Err(e) => Err(e),
        }
    }

    /// Make entry `name` in `dir` with `make` (given the backing name): a long name's sidecar is
    /// written first and removed again if `make` fails.
    pub fn create<T>(
        &self,
        dir: BorrowedFd<'_>,
        name: &BackingName,
        make: impl FnOnce(&OsStr) -> io::Result<T>,
    ) -> io::Result<T> {
        let wrote = self.write_sidecar(dir, name)?;
        make(&name.name).inspect_err(|_| {
            if wrote && !sys::exists_at(dir, &name.name) {
                remove_sidecar(dir, name);
            }
        })
    }

    /// mkdir `name` in `dir` with `mode`, and (encrypted) its IV file. The directory is made
    /// owner-writable until the IV is in, then gets exactly `mode`.
    pub fn mkdir(&self, dir: BorrowedFd<'_>, name: &BackingName, mode: u32) -> io::Result<()> {
        let Some(enc) = &self.enc else {
            return mkdirat(dir, &name.name, mode);
        };
        self.create(dir, name, |b| {
            mkdirat(dir, b, mode | 0o700)?;
            enc.init_dir(dir, b, mode).inspect_err(|_| {
                if let Ok(d) = openat(dir, b, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW) {
                    let _ = unlinkat(d.as_fd(), OsStr::new(DIRIV_NAME), 0);
                }
                let _ = unlinkat(dir, b, libc::AT_REMOVEDIR);
            })
        })
    }

    /// unlink `name` in `dir` (and its sidecar).
    pub fn unlink(&self, dir: BorrowedFd<'_>, name: &BackingName) -> io::Result<()> {
        unlinkat(dir, &name.name, 0)?;
        remove_sidecar(dir, name);
        Ok(())
    }

    /// rmdir `name` in `dir`: (encrypted) its IV file goes first and comes back if the rmdir
    /// fails; a directory holding anything else is ENOTEMPTY.
    pub fn rmdir(&self, dir: BorrowedFd<'_>, name: &BackingName) -> io::Result<()> {
        let Some(enc) = &self.enc else {
            return unlinkat(dir, &name.name, libc::AT_REMOVEDIR);
        };
        let victim = openat(
            dir,
            &name.name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )?;
        if holds_more_than_diriv(victim.as_fd())? {
            return Err(errno(libc::ENOTEMPTY));
        }
        let raw = enc.dirivs.raw(victim.as_fd());
        let div = OsStr::new(DIRIV_NAME);
        let mut old_mode = None;
        let removed = match unlinkat(victim.as_fd(), div, 0) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                // A read-only directory: rmdir needs only the parent writable, so let us in.
                let mode = stat(victim.as_fd())?.st_mode & 0o7777;
                sys::chmod_fd(victim.as_fd(), mode | 0o300)?;
                old_mode = Some(mode);
                if let Err(e) = unlinkat(victim.as_fd(), div, 0) {
                    let _ = sys::chmod_fd(victim.as_fd(), mode);
                    return Err(e);
                }
                true
            }
            Err(e) => return Err(e),
        };
        match unlinkat(dir, &name.name, libc::AT_REMOVEDIR) {
            Ok(()) => {
                enc.dirivs.removed(victim.as_fd());
                remove_sidecar(dir, name);
                Ok(())
            }
            Err(e) => {
                if let (true, Some(raw)) = (removed, raw) {
                    if let Err(w) = enc.dirivs.restore(victim.as_fd(), &raw) {
                        tracing::error!(dir = %describe(victim.as_fd()), "cannot restore {DIRIV_NAME} after a failed rmdir: {w}");
                    }
                }
                if let Some(mode) = old_mode {
                    let _ = sys::chmod_fd(victim.as_fd(), mode);
                }
                Err(e)
            }
        }
    }

    /// renameat2 `from` in `from_dir` to `to` in `to_dir` with `flags`, keeping sidecars in
    /// step. (Encrypted) an empty target directory (holding only its IV) is replaced as POSIX
    /// allows, and a directory that moves is bound to its new place (`diriv`).
    pub fn rename(
        &self,
        from_dir: BorrowedFd<'_>,
        from: &BackingName,
        to_dir: BorrowedFd<'_>,
        to: &BackingName,
        flags: u32,
    ) -> io::Result<()> {
        let rebinds = match &self.enc {
            Some(enc) => enc.rebind_moving_dirs(from_dir, from, to_dir, to, flags)?,
            None => Vec::new(),
        };
        let r = self.rename_entries(from_dir, from, to_dir, to, flags);
        if let Some(enc) = &self.enc {
            for rb in rebinds {
                match &r {
                    Ok(()) => enc.dirivs.rebind_finish(rb),
                    Err(_) => enc.dirivs.rebind_undo(rb),
                }
            }
        }
        r
    }

    fn rename_entries(
        &self,
        from_dir: BorrowedFd<'_>,
        from: &BackingName,
        to_dir: BorrowedFd<'_>,
        to: &BackingName,
        flags: u32,
    ) -> io::Result<()> {
        let wrote = self.write_sidecar(to_dir, to)?;
        let mut r = renameat2(from_dir, &from.name, to_dir, &to.name, flags);
        let plain_replace = flags & (libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) == 0;
        if self.enc.is_some()
            && plain_replace
            && matches!(
                r.as_ref().map_err(io::Error::raw_os_error),
                Err(Some(libc::ENOTEMPTY | libc::EEXIST))
            )
            && self.rmdir(to_dir, to).is_ok()
        {
            self.write_sidecar(to_dir, to)?;
            r = renameat2(from_dir, &from.name, to_dir, &to.name, flags);
        }
        match r {
            Err(e) => {
                if wrote && !sys::exists_at(to_dir, &to.name) {
                    remove_sidecar(to_dir, to);
                }
                Err(e)
            }
            // Renaming onto itself or onto another link of the same file leaves `from` in place.
            Ok(()) => {
                if from.is_long() && !sys::exists_at(from_dir, &from.name) {
                    remove_sidecar(from_dir, from);
                }
                Ok(())
            }
        }
    }

    /// A decoder for the entries of backing directory `dir` (the vault root if `in_root`).
    pub fn lister<'a>(&'a self, dir: BorrowedFd<'a>, in_root: bool) -> io::Result<Lister<'a>> {
        let iv = match &self.enc {
            Some(enc) => Some((enc.cipher()?, enc.diriv(dir)?)),
            None => None,
        };
        Ok(Lister { dir, in_root, iv })
    }

    /// The backing target of a new symlink to `target` (ENAMETOOLONG when it would not fit).
    pub fn link_target(&self, target: &OsStr) -> io::Result<OsString> {
        let Some(enc) = &self.enc else {
            return Ok(target.to_os_string());
        };
        let t = enc
            .cipher()?
            .encrypt_link(target.as_bytes())
            .map_err(|_| errno(libc::EIO))?;
        if t.len() > cipher::LINK_MAX {
            return Err(errno(libc::ENAMETOOLONG));
        }
        Ok(t.into())
    }

    /// The plain target of the symlink behind O_PATH fd `link` (EIO, logged, when it does not
    /// decrypt).
    pub fn read_link(&self, link: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
        let buf = sys::readlink_fd(link)?;
        let Some(enc) = &self.enc else { return Ok(buf) };
        enc.cipher()?.decrypt_link(&buf).map_err(|_| {
            tracing::warn!(link = %describe(link), "symlink target does not decrypt (tampered or foreign)");
            errno(libc::EIO)
        })
    }

    /// The plain size of a symlink whose backing target is `backing_size` bytes.
    pub fn link_size(&self, backing_size: u64) -> u64 {
        if self.enc.is_some() {
            cipher::link_plain_len(backing_size)
        } else {
            backing_size
        }
    }

    /// The backing name of xattr `plain`. Encrypted: only `user.*` names (else EOPNOTSUPP) of
    /// at most [`cipher::XATTR_PLAIN_NAME_MAX`] bytes (else ERANGE).
    pub fn xattr_name(&self, plain: &OsStr) -> io::Result<CString> {
        let b = match &self.enc {
            None => plain.as_bytes().to_vec(),
            Some(enc) => {
                if !cipher::XATTR_NAMESPACES
                    .iter()
                    .any(|ns| plain.as_bytes().starts_with(ns.as_bytes()))
                {
                    return Err(errno(libc::EOPNOTSUPP));
                }
                if plain.len() > cipher::XATTR_PLAIN_NAME_MAX {
                    return Err(errno(libc::ERANGE));
                }
                enc.cipher()?
                    .encrypt_xattr_name(plain.as_bytes())
                    .into_bytes()
            }
        };
        CString::new(b).map_err(|_| errno(libc::EINVAL))
    }

    /// The stored form of value `value` of backing xattr `backing`.
    pub fn seal_xattr(&self, backing: &CString, value: &[u8]) -> io::Result<Vec<u8>> {
        match &self.enc {
            None => Ok(value.to_vec()),
            Some(enc) => enc
                .cipher()?
                .seal_xattr_value(backing.as_bytes(), value)
                .map_err(|_| errno(libc::EIO)),
        }
    }

    /// The plain value of backing xattr `backing` stored as `stored` (EIO, logged, when it does
    /// not decrypt).
    pub fn open_xattr(&self, backing: &CString, stored: Vec<u8>) -> io::Result<Vec<u8>> {
        let Some(enc) = &self.enc else {
            return Ok(stored);
        };
        enc.cipher()?.open_xattr_value(backing.as_bytes(), &stored).map_err(|_| {
            tracing::warn!(xattr = %backing.to_string_lossy(), "xattr value does not decrypt (tampered or moved)");
            errno(libc::EIO)
        })
    }

    /// The plain xattr list (NUL-terminated names) of backing list `list`. Encrypted: names
    /// kmsfs did not make are left out; names that do not decrypt too, with a log line.
    pub fn plain_xattr_list(&self, list: Vec<u8>) -> Vec<u8> {
        let Some(enc) = &self.enc else { return list };
        let Ok(cipher) = enc.cipher() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            match cipher.decrypt_xattr_name(name) {
                None => {}
                Some(Ok(plain)) if !plain.contains(&0) => {
                    out.extend_from_slice(&plain);
                    out.push(0);
                }
                Some(_) => {
                    tracing::warn!(xattr = %String::from_utf8_lossy(name), "xattr name does not decrypt (tampered or foreign); hidden");
                }
            }
        }
        out
    }
}

impl Encrypted {
    /// Give the new directory `name` in `parent` its IV (bound to that place), then its mode
    /// `mode`.
    fn init_dir(&self, parent: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
        let d = openat(
            parent,
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )?;
        self.dirivs
            .create(&*self.cipher()?, parent, name, d.as_fd(), &self.unsynced)?;
        if mode & 0o700 != 0o700 {
            let now = stat(d.as_fd())?.st_mode & 0o7777;
            sys::chmod_fd(d.as_fd(), (now & !0o700) | (mode & 0o700))?;
        }
        Ok(())
    }

    /// Step 1 of a rename: bind every directory that moves (`from`, and `to` for an exchange)
    /// to its new place as well; the caller finishes or undoes each.
    fn rebind_moving_dirs(
        &self,
        from_dir: BorrowedFd<'_>,
        from: &BackingName,
        to_dir: BorrowedFd<'_>,
        to: &BackingName,
        flags: u32,
    ) -> io::Result<Vec<diriv::Rebind>> {
        let mut moves = vec![(from_dir, from, to_dir, to)];
        if flags & libc::RENAME_EXCHANGE != 0 {
            moves.push((to_dir, to, from_dir, from));
        }
        let cipher = self.cipher()?;
        let mut out = Vec::new();
        for (src_dir, src, dst_dir, dst) in moves {
            // Not a directory (or not there): nothing to rebind; the rename decides.
            let Ok(d) = openat(
                src_dir,
                &src.name,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            ) else {
                continue;
            };
            match self.dirivs.rebind_begin(&cipher, d, dst_dir, &dst.name) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => {
                    for r in out {
                        self.dirivs.rebind_undo(r);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

/// Decodes the entries of one backing directory.
pub struct Lister<'a> {
    dir: BorrowedFd<'a>,
    in_root: bool,
    iv: Option<(Arc<NameCipher>, DirIv)>,
}

impl Lister<'_> {
    /// The plain name of backing entry `backing`; `None` hides it (kmsfs's own files, and
    /// entries that do not decrypt, which are logged).
    pub fn plain(&self, backing: &OsStr) -> Option<OsString> {
        let b = backing.as_bytes();
        if self.in_root && backing == OsStr::new(META_DIR) {
            return None;
        }
        let Some((cipher, iv)) = &self.iv else {
            return Some(backing.to_os_string());
        };
        if backing == OsStr::new(DIRIV_NAME) || cipher::is_sidecar(b) {
            return None;
        }
        let plain = if cipher::is_long_name(b) {
            self.long_encoded(backing)
                .and_then(|enc| cipher.decrypt_name(iv, enc.as_bytes()).ok())
        } else {
            cipher.decrypt_name(iv, b).ok()
        };
        match plain {
            Some(p) if cipher::is_valid_name(&p) && !(self.in_root && p == META_DIR.as_bytes()) => {
                Some(OsString::from_vec(p))
            }
            _ => {
                tracing::warn!(
                    dir = %describe(self.dir),
                    entry = %backing.to_string_lossy(),
                    "backing entry is not a kmsfs name of this directory (tampered or foreign); hidden"
                );
                None
            }
        }
    }

    /// The encoded name in the sidecar of long-name entry `entry`, if it matches the entry.
    fn long_encoded(&self, entry: &OsStr) -> Option<String> {
        let mut side = entry.to_os_string();
        side.push(cipher::SIDECAR_SUFFIX);
        let bytes = read_small(self.dir, &side, 4 * cipher::NAME_MAX).ok()?;
        let enc = String::from_utf8(bytes).ok()?;
        (cipher::long_name(&enc).as_bytes() == entry.as_bytes()).then_some(enc)
    }
}

// ---- backing-directory helpers (the *at calls on O_PATH directory fds) ----

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// openat(2) with no creation mode.
fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    sys::openat(dir, name, flags, 0)
}

/// Read kmsfs's own file `name` in `dir` (a checked regular file: no symlink followed, no
/// FIFO blocked on), refusing more than `max` bytes.
fn read_small(dir: BorrowedFd<'_>, name: &OsStr, max: usize) -> io::Result<Vec<u8>> {
    sys::read_regular(dir, name, max)
}

/// Remove the sidecar of `name` in `dir`, if it is a long name (logged when that fails).
fn remove_sidecar(dir: BorrowedFd<'_>, name: &BackingName) {
    let Some(side) = name.sidecar() else { return };
    match unlinkat(dir, &side, 0) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
            tracing::warn!(dir = %describe(dir), sidecar = %side.to_string_lossy(), "cannot remove long-name sidecar: {e}");
        }
        _ => {}
    }
}

/// Whether directory `dir` holds an entry other than its IV file. A directory the daemon
/// cannot read is taken as empty: the rmdir itself then decides.
fn holds_more_than_diriv(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let entries = match sys::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => return Ok(false),
        Err(e) => return Err(e),
    };
    for e in entries {
        if e?.file_name() != OsStr::new(DIRIV_NAME) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests;
