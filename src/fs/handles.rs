//! Open file and directory handles. Handles of one inode share one `CryptFile`, so they share
//! its lock and loaded header.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::attr::Kind;
use parking_lot::Mutex;

use crate::content::CryptFile;

/// A snapshot of a directory's entries, taken at the first readdir and again at every
/// rewind (a listing from offset 0), so it holds the entries made since opendir.
#[derive(Debug)]
pub struct DirHandle {
    /// "." and ".." first, then one entry per listed file.
    pub entries: Vec<DirEntry>,
    /// Whether the entries were read (an opened handle is empty until its first readdir).
    pub listed: std::sync::atomic::AtomicBool,
}

/// One entry of a directory snapshot.
#[derive(Debug)]
pub struct DirEntry {
    /// The backing inode number (what plain `readdir` reports).
    pub ino: u64,
    /// The entry's type.
    pub kind: Kind,
    /// The name the user sees.
    pub name: OsString,
    /// The name in the backing directory (`readdirplus` looks it up).
    pub backing: OsString,
}

/// All open handles.
#[derive(Debug, Default)]
pub struct Handles {
    next: AtomicU64,
    files: Mutex<HashMap<u64, Arc<CryptFile>>>,
    /// Per inode: its shared file and how many handles have it open (counted, not inferred
    /// from the `Arc`: a request still answering holds a reference after a close).
    by_inode: Mutex<HashMap<u64, (Arc<CryptFile>, usize)>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
}

impl Handles {
    fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The open `CryptFile` of inode `ino`, or one made by `make` (shared by later opens).
    pub fn open_file<E>(
        &self,
        ino: u64,
        make: impl FnOnce() -> Result<CryptFile, E>,
    ) -> Result<(u64, Arc<CryptFile>), E> {
        let mut by_inode = self.by_inode.lock();
        let file = match by_inode.get_mut(&ino) {
            Some((f, handles)) => {
                *handles += 1;
                f.clone()
            }
            None => {
                let f = Arc::new(make()?);
                by_inode.insert(ino, (f.clone(), 1));
                f
            }
        };
        let fh = self.next_fh();
        self.files.lock().insert(fh, file.clone());
        Ok((fh, file))
    }

    /// The open file of inode `ino`, if any handle has it open.
    pub fn file_of_inode(&self, ino: u64) -> Option<Arc<CryptFile>> {
        self.by_inode.lock().get(&ino).map(|(f, _)| f.clone())
    }

    /// The file behind handle `fh`.
    pub fn file(&self, fh: u64) -> Option<Arc<CryptFile>> {
        self.files.lock().get(&fh).cloned()
    }

    /// Close handle `fh`; returns the file if this was its last handle.
    pub fn release_file(&self, ino: u64, fh: u64) -> Option<Arc<CryptFile>> {
        let file = self.files.lock().remove(&fh)?;
        let mut by_inode = self.by_inode.lock();
        let Some((_, handles)) = by_inode.get_mut(&ino) else {
            return Some(file);
        };
        *handles = handles.saturating_sub(1);
        if *handles == 0 {
            by_inode.remove(&ino);
            return Some(file);
        }
        None
    }

    /// Register a directory snapshot; returns its handle.
    pub fn open_dir(&self, dir: DirHandle) -> u64 {
        let fh = self.next_fh();
        self.dirs.lock().insert(fh, Arc::new(dir));
        fh
    }

    /// The directory snapshot of handle `fh`.
    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.lock().get(&fh).cloned()
    }

    /// Replace the snapshot of directory handle `fh` (a rewind).
    pub fn replace_dir(&self, fh: u64, dir: Arc<DirHandle>) {
        if let Some(d) = self.dirs.lock().get_mut(&fh) {
            *d = dir;
        }
    }

    /// Close directory handle `fh`.
    pub fn release_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// The open files, by inode.
    pub fn open_files_by_inode(&self) -> Vec<(u64, Arc<CryptFile>)> {
        self.by_inode
            .lock()
            .iter()
            .map(|(ino, (f, _))| (*ino, f.clone()))
            .collect()
    }

    /// The inodes with open handles.
    pub fn open_inodes(&self) -> Vec<u64> {
        self.by_inode.lock().keys().copied().collect()
    }

    /// Number of open file handles.
    pub fn open_files(&self) -> usize {
        self.files.lock().len()
    }
}
