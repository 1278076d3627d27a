//! Directories and names: lookup, listings, renames, links, removal, and what is asked of
//! the tree as a whole (statfs, access).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::DirEntryExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::handles::{DirEntry, DirHandle};
use super::{Entry, FsError, FsResult, KmsFs, e_io, inodes};
use crate::sys;

/// Where `readdirplus` puts its entries (the adapter's reply buffer).
pub trait DirSink {
    /// Add `name` with `entry`, the listing to go on at offset `next`; `true` when full (the
    /// entry was not taken).
    fn add(&mut self, name: &OsStr, next: u64, entry: &Entry) -> bool;
}

/// What `statfs` reports.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    /// Blocks in all, free, free for unprivileged users (in `frsize` units).
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes in all.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Preferred block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

impl KmsFs {
    /// Look `name` up in directory `parent`: one more kernel reference to the inode found.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let p = self.inode(parent)?;
        let bname = self.existing_name(&p, name)?;
        self.lookup_backing(&p, &bname)
    }

    /// The kernel dropped `n` references to `ino`; a hole map kept for it goes with it.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
        if self.inodes.get(ino).is_some() {
            return;
        }
        let doomed = self.doomed_maps.lock().remove(&ino);
        if let Some(id) = doomed {
            if self.handles.file_of_inode(ino).is_none() {
                self.remove_map(&id);
            }
        }
    }

    /// Unmount: the maps of files removed meanwhile go now (the kernel sends no forgets).
    pub fn remove_doomed_maps(&self) {
        for (_, id) in self.doomed_maps.lock().drain() {
            self.remove_map(&id);
        }
    }

    /// Remove hole map `id` (a failure is logged: the map is then an orphan for fsck).
    fn remove_map(&self, id: &crate::format::Id) {
        if let Some(store) = self.vault.holes.as_ref() {
            if let Err(e) = store.remove(id) {
                tracing::warn!("cannot remove a hole map: {e}");
            }
        }
    }

    /// The plain target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let i = self.inode(ino)?;
        self.names.read_link(self.fd(&i)?.as_fd()).map_err(e_io)
    }

    /// Open directory `ino`; returns the handle (its entries are read at the first readdir).
    /// What decides whether names can be read at all (the name key, the directory's IV) is
    /// checked now, so such an error comes from opendir.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let inode = self.inode(ino)?;
        let fd = self.fd(&inode)?;
        self.names.lister(fd.as_fd(), inode.is_root).map_err(e_io)?;
        Ok(self.handles.open_dir(DirHandle {
            entries: Vec::new(),
            listed: false.into(),
        }))
    }

    /// The snapshot of directory handle `fh` of `ino` to list from `offset`: the first listing,
    /// and every listing from 0 (rewinddir), takes a new snapshot, so it shows the entries
    /// made since opendir; later offsets continue the snapshot they came from.
    fn snapshot(&self, ino: u64, fh: u64, offset: u64) -> FsResult<Arc<DirHandle>> {
        let dir = self.handles.dir(fh).ok_or(FsError::EBADF)?;
        if offset != 0 && dir.listed.load(Ordering::Relaxed) {
            return Ok(dir);
        }
        let fresh = Arc::new(self.read_dir(&*self.inode(ino)?)?);
        fresh.listed.store(true, Ordering::Relaxed);
        self.handles.replace_dir(fh, fresh.clone());
        Ok(fresh)
    }

    /// Entries of handle `fh` of directory `ino` from `offset` on: `add(ino, next offset,
    /// kind, name)` until it says it is full.
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, super::Kind, &OsStr) -> bool,
    ) -> FsResult<()> {
        let dir = self.snapshot(ino, fh, offset)?;
        for (i, e) in dir.entries.iter().enumerate().skip(offset as usize) {
            if add(e.ino, i as u64 + 1, e.kind, &e.name) {
                break;
            }
        }
        Ok(())
    }

    /// Entries with their attributes, sparing `ls -l`, `find`, `stat` and openers of every
    /// file one LOOKUP each. Every entry but "." and ".." that `sink` takes counts as a lookup
    /// of its inode.
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        sink: &mut dyn DirSink,
    ) -> FsResult<()> {
        let dir = self.snapshot(ino, fh, offset)?;
        let parent = self.inode(ino).map_err(|_| FsError::EBADF)?;
        let mut added = 0;
        for (i, e) in dir.entries.iter().enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            if i < 2 {
                // The kernel takes nothing from "." and ".." but their names and numbers (as
                // d_ino: the same as plain readdir's, the parent's for "..").
                let Ok(mut attr) = self
                    .fd(&parent)
                    .and_then(|fd| self.attr_of(ino, fd.as_fd()))
                else {
                    continue;
                };
                attr.ino = e.ino;
                if sink.add(&e.name, next, &self.entry(attr)) {
                    break;
                }
                added += 1;
                continue;
            }
            let entry = match self.lookup_backing(&parent, &e.backing) {
                Ok(entry) => entry,
                // Removed since opendir: left out.
                Err(err) if err == FsError::ENOENT || err == FsError::ESTALE => continue,
                // Anything else (e.g. out of descriptors) must not shorten the listing
                // silently: end this batch (the kernel asks again from here) or fail it.
                Err(err) if added == 0 => return Err(err),
                Err(_) => break,
            };
            if sink.add(&e.name, next, &entry) {
                // Not sent: the kernel will not count this lookup.
                self.inodes.forget(entry.attr.ino, 1);
                break;
            }
            added += 1;
        }
        Ok(())
    }

    /// Close directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.handles.release_dir(fh);
    }

    /// fsync of directory `ino` (new IV files and sidecars first).
    pub fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        self.names.sync_new().map_err(e_io)?;
        let i = self.inode(ino)?;
        let fd =
            sys::reopen(self.fd(&i)?.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(e_io)?;
        sys::fsync(fd.as_fd()).map_err(e_io)
    }

    /// The backing file system's figures.
    pub fn statfs(&self) -> FsResult<StatFs> {
        let root = self.inode(inodes::ROOT)?;
        let s = sys::statvfs(self.fd(&root)?.as_fd()).map_err(e_io)?;
        Ok(StatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    /// access(2): the kernel checks modes (default_permissions); here only existence matters.
    pub fn access(&self, ino: u64) -> FsResult<()> {
        self.inode(ino).map(drop)
    }

    /// Remove file `name` from directory `parent`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let p = self.inode(parent)?;
        self.writable()?;
        let bname = self.existing_name(&p, name)?;
        let pfd = self.fd(&p)?;
        let gone = self.before_removal(pfd.as_fd(), &bname);
        let map = self.hole_map_going(pfd.as_fd(), &bname);
        self.names.unlink(pfd.as_fd(), &bname).map_err(e_io)?;
        if let Some((key, nlink)) = gone {
            self.inodes
                .removed(key, p.ino, &bname, nlink.saturating_sub(1));
            self.drop_hole_map(key, map);
        }
        Ok(())
    }

    /// Remove empty directory `name` from directory `parent`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let p = self.inode(parent)?;
        self.writable()?;
        let bname = self.existing_name(&p, name)?;
        let pfd = self.fd(&p)?;
        let gone = self.before_removal(pfd.as_fd(), &bname);
        self.names.rmdir(pfd.as_fd(), &bname).map_err(e_io)?;
        if let Some((key, _)) = gone {
            self.inodes.removed(key, p.ino, &bname, 0);
        }
        Ok(())
    }

    /// Rename `name` in `parent` to `newname` in `newparent` (`flags`: renameat2's
    /// RENAME_NOREPLACE, RENAME_EXCHANGE). New IV files and sidecars are synced first: the
    /// entry moved may be one made durable before, which a crash must not leave in a
    /// directory whose IV never reached the disk.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.names.sync_new().map_err(e_io)?;
        let p = self.inode(parent)?;
        let np = self.inode(newparent)?;
        let from = self.existing_name(&p, name)?;
        let to = self.new_name(&np, newname)?;
        let (pfd, npfd) = (self.fd(&p)?, self.fd(&np)?);
        let moving = sys::stat_at(pfd.as_fd(), &from)
            .ok()
            .map(|st| inodes::key_of(&st));
        let replaced = self.before_removal(npfd.as_fd(), &to);
        let map = match flags & libc::RENAME_EXCHANGE {
            0 => self.hole_map_going(npfd.as_fd(), &to),
            _ => None,
        };
        self.names
            .rename(pfd.as_fd(), &from, npfd.as_fd(), &to, flags)
            .map_err(e_io)?;
        // The inode table follows: the moved object's place, and the one replaced or
        // exchanged with it.
        if let Some(key) = moving {
            self.inodes.renamed(key, np.ino, &to);
        }
        match replaced {
            Some((key, _)) if Some(key) == moving => {}
            Some((key, _)) if flags & libc::RENAME_EXCHANGE != 0 => {
                self.inodes.renamed(key, p.ino, &from);
            }
            Some((key, nlink)) => {
                let dir = self
                    .inodes
                    .get(self.inodes.ino_of(key))
                    .and_then(|i| self.fd(&i).ok())
                    .and_then(|fd| sys::stat_fd(fd.as_fd()).ok())
                    .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
                let left = if dir { 0 } else { nlink.saturating_sub(1) };
                self.inodes.removed(key, np.ino, &to, left);
                self.drop_hole_map(key, map);
            }
            None => {}
        }
        Ok(())
    }

    /// A new hard link `newname` in `newparent` to inode `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<Entry> {
        // As for rename: the file linked may be a durable one.
        self.names.sync_new().map_err(e_io)?;
        let inode = self.inode(ino)?;
        let np = self.inode(newparent)?;
        let bname = self.new_name(&np, newname)?;
        let (fd, npfd) = (self.fd(&inode)?, self.fd(&np)?);
        self.names
            .create(npfd.as_fd(), &bname, |b| {
                sys::link_fd(fd.as_fd(), npfd.as_fd(), b)
            })
            .map_err(e_io)?;
        self.lookup_backing(&np, &bname)
    }

    /// The file id of the hole map that goes when `name` in `dir` goes: a regular file with
    /// content, a last link, and a vault that may hold maps (else None, without reading).
    /// The file stays open, so that after the removal its link count tells whether it really
    /// lost its last name (another host may have linked it meanwhile).
    fn hole_map_going(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Option<(crate::format::Id, std::fs::File)> {
        let store = self.vault.holes.as_ref()?;
        let st = sys::stat_at(dir, name).ok()?;
        let last_file = st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 1;
        if !last_file || st.st_size == 0 || !store.may_have_maps() {
            return None;
        }
        let (fd, _) = sys::open_regular(dir, name, libc::O_RDONLY, 0).ok()?;
        let file = std::fs::File::from(fd);
        crate::content::header_file_id(&file).map(|id| (id, file))
    }

    /// After the last name of object `key` went: drop its hole map `map`, unless the file is
    /// still open (its last close does it) or the kernel still knows it (an open of it may
    /// be on its way: its forget does it).
    fn drop_hole_map(&self, key: (u64, u64), map: Option<(crate::format::Id, std::fs::File)>) {
        let Some((id, file)) = map else {
            return;
        };
        // Linked again elsewhere between the check and the removal: the map stays.
        if file
            .metadata()
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) > 0)
        {
            return;
        }
        let ino = self.inodes.ino_of(key);
        if self.handles.file_of_inode(ino).is_some() {
            return;
        }
        self.doom_map(ino, id);
    }

    /// The map `id` of inode `ino`, whose last name is gone, goes when the kernel forgets
    /// `ino` — at once if it has already.
    pub(super) fn doom_map(&self, ino: u64, id: crate::format::Id) {
        if self.vault.holes.is_none() {
            return;
        }
        if self.inodes.get(ino).is_none() {
            self.remove_map(&id);
            return;
        }
        // A number reused by another object: the one it displaces is dead already.
        if let Some(old) = self.doomed_maps.lock().insert(ino, id) {
            if old != id {
                self.remove_map(&old);
            }
        }
    }

    /// Before `name` in `dir` is removed or replaced: its backing object and link count, with
    /// its descriptor held if the kernel knows it (its remembered place may be this name).
    fn before_removal(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Option<((u64, u64), u64)> {
        let st = sys::stat_at(dir, name).ok()?;
        let key = inodes::key_of(&st);
        if let Some(inode) = self.inodes.get(self.inodes.ino_of(key)) {
            let _ = self.inodes.fd(&inode);
        }
        Some((key, st.st_nlink))
    }

    fn read_dir(&self, inode: &inodes::Inode) -> FsResult<DirHandle> {
        let fd = self.fd(inode)?;
        let dir = self
            .inodes
            .retrying(|| sys::read_dir(fd.as_fd()))
            .map_err(e_io)?;
        let lister = self.names.lister(fd.as_fd(), inode.is_root).map_err(e_io)?;
        let dot = |name: &str, ino: u64| DirEntry {
            ino,
            kind: super::Kind::Directory,
            name: name.into(),
            backing: name.into(),
        };
        let mut entries = vec![dot(".", inode.ino), dot("..", inode.parent())];
        let dev = inode.key().0;
        for entry in dir {
            let entry = entry.map_err(e_io)?;
            let Some(name) = lister.plain(&entry.file_name()) else {
                continue;
            };
            let kind = entry
                .file_type()
                .map_or(super::Kind::RegularFile, |t| super::attr::kind_of(&t));
            entries.push(DirEntry {
                // The number `stat` gives (d_ino of a mount point inside the vault excepted).
                ino: self.inodes.ino_of((dev, entry.ino())),
                kind,
                name,
                backing: entry.file_name(),
            });
        }
        Ok(DirHandle {
            entries,
            listed: false.into(),
        })
    }
}
