//! Directory IVs and their binding to their place in the tree.
//!
//! Every backing directory of an encrypted-names vault holds `.kmsfs.diriv` (mode 0444):
//!
//! ```text
//! offset size
//! 0      16   IV: random, made with the directory; names in it are encrypted under it
//! 16     16   binding: GCM-SIV tag under the name key over (IV, parent's IV, the directory's
//!             backing entry name in the parent), or over (IV) for the vault root
//! 32     16   optional second binding: only between the two steps of a directory rename
//! ```
//!
//! The IV itself is not secret; the binding is what makes it trustworthy: an IV (with the
//! entries encrypted under it) copied into another directory does not verify there, so those
//! entries cannot appear under that directory (docs/FORMAT.md §7). A rename of a directory
//! keeps its IV (so its entries keep their names) and rewrites its binding: first the new
//! binding is added beside the old one (fsynced), then the directory is renamed, then the old
//! binding is dropped. A crash between leaves both, one of which matches where it is.
//!
//! Verifying a directory's binding needs its parent's IV and its own entry name, found from the
//! path the kernel gives its fd (`/proc/self/fd`), and checked to still be that directory.
//! Verified IVs are cached by (device, inode).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use lru::LruCache;
use parking_lot::Mutex;

use super::cipher::{BINDING_LEN, DIRIV_LEN, DIRIV_NAME, DirIv, NameCipher};
use super::unsynced::Unsynced;
use crate::sys::{self, describe};

/// Size of a `.kmsfs.diriv`: the IV and one binding.
pub const DIRIV_FILE_LEN: usize = DIRIV_LEN + BINDING_LEN;
/// Largest `.kmsfs.diriv`: the IV and two bindings (mid-rename).
const DIRIV_FILE_MAX: usize = DIRIV_LEN + 2 * BINDING_LEN;
/// How many directory IVs are cached.
const CACHE: usize = 4096;
/// Deepest directory chain verified (a bound, not a limit real trees reach).
const MAX_DEPTH: usize = 4096;

type DirKey = (u64, u64);

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

fn dir_key(dir: BorrowedFd<'_>) -> io::Result<DirKey> {
    let st = sys::stat_fd(dir)?;
    Ok((st.st_dev, st.st_ino))
}

/// A decoded `.kmsfs.diriv`.
struct DirIvFile {
    iv: DirIv,
    bindings: Vec<[u8; BINDING_LEN]>,
}

impl DirIvFile {
    fn parse(raw: &[u8]) -> io::Result<Self> {
        if raw.len() < DIRIV_FILE_LEN
            || raw.len() > DIRIV_FILE_MAX
            || (raw.len() - DIRIV_LEN) % BINDING_LEN != 0
        {
            return Err(invalid("not an IV followed by one or two bindings"));
        }
        let mut iv = [0u8; DIRIV_LEN];
        iv.copy_from_slice(&raw[..DIRIV_LEN]);
        let bindings = raw[DIRIV_LEN..]
            .chunks_exact(BINDING_LEN)
            .map(|c| {
                let mut b = [0u8; BINDING_LEN];
                b.copy_from_slice(c);
                b
            })
            .collect();
        Ok(DirIvFile { iv, bindings })
    }

    fn encode(iv: &DirIv, bindings: &[[u8; BINDING_LEN]]) -> Vec<u8> {
        let mut out = iv.to_vec();
        for b in bindings {
            out.extend_from_slice(b);
        }
        out
    }

    fn read(dir: BorrowedFd<'_>) -> io::Result<Self> {
        Self::parse(&sys::read_regular(
            dir,
            OsStr::new(DIRIV_NAME),
            DIRIV_FILE_MAX,
        )?)
    }
}

/// Decode the bytes of a `.kmsfs.diriv`: the IV and its one or two bindings (EINVAL-like
/// `InvalidData` for anything else). For the fuzz target; kmsfs reads IV files through `DirIvs`.
pub fn parse_diriv_file(raw: &[u8]) -> io::Result<(DirIv, Vec<[u8; BINDING_LEN]>)> {
    DirIvFile::parse(raw).map(|f| (f.iv, f.bindings))
}

/// A directory rename in progress: the moving directory and its IV file before the move.
pub struct Rebind {
    dir: OwnedFd,
    iv: DirIv,
    old: Vec<[u8; BINDING_LEN]>,
    new: [u8; BINDING_LEN],
}

/// The verified IVs of one vault's directories.
pub struct DirIvs {
    cache: Mutex<LruCache<DirKey, DirIv>>,
    root: OwnedFd,
    root_key: DirKey,
}

impl DirIvs {
    /// The IVs of the vault whose root is `root`.
    pub fn new(root: &Path) -> io::Result<Self> {
        let root = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(root)?;
        let root: OwnedFd = root.into();
        let root_key = dir_key(root.as_fd())?;
        Ok(DirIvs {
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            root,
            root_key,
        })
    }

    /// The IV of directory `dir`, verified to belong where `dir` is. A missing, malformed or
    /// misplaced IV file is EIO, logged with the directory.
    pub fn get(&self, cipher: &NameCipher, dir: BorrowedFd<'_>) -> io::Result<DirIv> {
        self.get_at_depth(cipher, dir, 0).map_err(|e| {
            if e.raw_os_error() == Some(libc::EACCES) {
                return e;
            }
            tracing::error!(dir = %describe(dir), "{DIRIV_NAME} is missing, damaged or not this directory's ({e}): names in this directory cannot be read");
            errno(libc::EIO)
        })
    }

    fn get_at_depth(
        &self,
        cipher: &NameCipher,
        dir: BorrowedFd<'_>,
        depth: usize,
    ) -> io::Result<DirIv> {
        let key = dir_key(dir)?;
        if let Some(iv) = self.cache.lock().get(&key) {
            return Ok(*iv);
        }
        if depth > MAX_DEPTH {
            return Err(invalid("directory chain too deep"));
        }
        let file = DirIvFile::read(dir)?;
        let ok = if key == self.root_key {
            file.bindings
                .iter()
                .any(|b| cipher.verify_dir_binding(&file.iv, None, b))
        } else {
            let (parent, entry) = self.parent_of(dir, key)?;
            let piv = self.get_at_depth(cipher, parent.as_fd(), depth + 1)?;
            file.bindings
                .iter()
                .any(|b| cipher.verify_dir_binding(&file.iv, Some((&piv, entry.as_bytes())), b))
        };
        if !ok {
            return Err(invalid(
                "its binding does not match this place (copied from another directory?)",
            ));
        }
        self.cache.lock().put(key, file.iv);
        Ok(file.iv)
    }

    /// The parent directory of `dir` and `dir`'s entry name in it, checked to be `dir` now.
    fn parent_of(&self, dir: BorrowedFd<'_>, key: DirKey) -> io::Result<(OwnedFd, OsString)> {
        let root = sys::fd_path(self.root.as_fd())?;
        let path = sys::fd_path(dir)?;
        let outside = || invalid("not inside the vault");
        let rel = path.strip_prefix(&root).map_err(|_| outside())?;
        let name = rel.file_name().ok_or_else(outside)?.to_os_string();
        let parent_path = path.parent().ok_or_else(outside)?;
        let parent: OwnedFd = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(parent_path)?
            .into();
        let st = sys::stat_at(parent.as_fd(), &name)?;
        if (st.st_dev, st.st_ino) != key {
            return Err(invalid("moved while being looked at"));
        }
        Ok((parent, name))
    }

    /// Give the vault root its IV file (at `init`).
    pub fn init_root(&self, cipher: &NameCipher) -> io::Result<()> {
        let iv = random_iv()?;
        let binding = cipher.dir_binding(&iv, None);
        write_new(
            self.root.as_fd(),
            OsStr::new(DIRIV_NAME),
            &DirIvFile::encode(&iv, &[binding]),
            None,
        )
    }

    /// Give the new directory `entry` of `parent` its IV file, bound to that place (synced
    /// through `later`).
    pub fn create(
        &self,
        cipher: &NameCipher,
        parent: BorrowedFd<'_>,
        entry: &OsStr,
        dir: BorrowedFd<'_>,
        later: &Unsynced,
    ) -> io::Result<()> {
        let piv = self.get(cipher, parent)?;
        let iv = random_iv()?;
        let binding = cipher.dir_binding(&iv, Some((&piv, entry.as_bytes())));
        write_new(
            dir,
            OsStr::new(DIRIV_NAME),
            &DirIvFile::encode(&iv, &[binding]),
            Some(later),
        )?;
        self.cache.lock().put(dir_key(dir)?, iv);
        Ok(())
    }

    /// The raw IV file of `dir`, to put back if its rmdir fails.
    pub fn raw(&self, dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
        sys::read_regular(dir, OsStr::new(DIRIV_NAME), DIRIV_FILE_MAX).ok()
    }

    /// Put back an IV file removed for an rmdir that then failed.
    pub fn restore(&self, dir: BorrowedFd<'_>, raw: &[u8]) -> io::Result<()> {
        write_new(dir, OsStr::new(DIRIV_NAME), raw, None)
    }

    /// Forget the cached IV of a removed directory.
    pub fn removed(&self, dir: BorrowedFd<'_>) {
        if let Ok(key) = dir_key(dir) {
            self.cache.lock().pop(&key);
        }
    }

    /// Step 1 of renaming directory `dir` to entry `entry` of the directory `new_parent`: add
    /// the binding to the new place beside the old one, on disk before the rename. `None` when
    /// it is already bound there (renamed onto itself).
    pub fn rebind_begin(
        &self,
        cipher: &NameCipher,
        dir: OwnedFd,
        new_parent: BorrowedFd<'_>,
        entry: &OsStr,
    ) -> io::Result<Option<Rebind>> {
        let iv = self.get(cipher, dir.as_fd())?;
        let piv = self.get(cipher, new_parent)?;
        let file = DirIvFile::read(dir.as_fd())?;
        let new = cipher.dir_binding(&iv, Some((&piv, entry.as_bytes())));
        if file.bindings.contains(&new) {
            return Ok(None);
        }
        let old: Vec<_> = file
            .bindings
            .into_iter()
            .filter(|b| *b != new)
            .take(1)
            .collect();
        let both: Vec<_> = [new].into_iter().chain(old.iter().copied()).collect();
        rewrite(dir.as_fd(), &DirIvFile::encode(&iv, &both), true)?;
        Ok(Some(Rebind { dir, iv, old, new }))
    }

    /// Step 3: the rename happened; keep only the new binding (no fsync: a crash keeps both,
    /// which still verifies).
    pub fn rebind_finish(&self, r: Rebind) {
        if let Err(e) = rewrite(r.dir.as_fd(), &DirIvFile::encode(&r.iv, &[r.new]), false) {
            tracing::warn!(dir = %describe(r.dir.as_fd()), "cannot drop the old binding of a renamed directory: {e}");
        }
    }

    /// The rename failed: back to the old binding.
    pub fn rebind_undo(&self, r: Rebind) {
        if let Err(e) = rewrite(r.dir.as_fd(), &DirIvFile::encode(&r.iv, &r.old), true) {
            tracing::warn!(dir = %describe(r.dir.as_fd()), "cannot drop the new binding after a failed directory rename: {e}");
        }
    }
}

fn random_iv() -> io::Result<DirIv> {
    crate::crypto::random_array().map_err(io::Error::other)
}

/// Create `name` in `dir` (mode 0444, must not exist) holding `data`, on disk before returning
/// or, given `later`, before the next fsync through the mount returns: a lost IV or sidecar
/// would lose names.
pub fn write_new(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    data: &[u8],
    later: Option<&Unsynced>,
) -> io::Result<()> {
    let fd = sys::openat(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o444,
    )?;
    let mut f = File::from(fd);
    let r = f.write_all(data).and_then(|()| match later {
        Some(later) => later.defer(f),
        None => f.sync_data(),
    });
    if r.is_err() {
        let _ = sys::unlinkat(dir, name, 0);
    }
    r
}

/// Replace the IV file of `dir` with `data`, keeping the directory's mtime (a rename does not
/// change it) and letting the daemon in to a directory it may not write (as rmdir does).
fn keeping_mtime(
    dir: BorrowedFd<'_>,
    f: impl Fn(BorrowedFd<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let st = sys::stat_fd(dir)?;
    let rd = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let r = match f(rd.as_fd()) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            let mode = st.st_mode & 0o7777;
            sys::chmod_fd(dir, mode | 0o300)?;
            let r = f(rd.as_fd());
            let _ = sys::chmod_fd(dir, mode);
            r
        }
        r => r,
    };
    let _ = sys::set_mtime(dir, st.st_mtime, st.st_mtime_nsec);
    r
}

fn rewrite(dir: BorrowedFd<'_>, data: &[u8], sync: bool) -> io::Result<()> {
    keeping_mtime(dir, |rd| {
        sys::replace_file(rd, OsStr::new(DIRIV_NAME), data, 0o444, sync)
    })
}
