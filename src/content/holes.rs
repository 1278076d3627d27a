//! Hole maps on disk: `.kmsfs/holes/FILEID`, one sparse file of sealed permission chunks per
//! file that has holes (geometry in `format::holes`, bytes in docs/FORMAT.md §4.1).
//!
//! A block of a file reads as zeros only if its stored bytes are all zero *and* its map grants
//! it; written data that an attacker zeroes or punches out of the backing file has no grant and
//! reads `EIO`. Grants are written before a hole is made (extension, punch) and withdrawn after
//! data lands in one, so a crash leaves at worst a grant over data, which reads as the data.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::crypto::BlockCipher;
use crate::format::Id;
use crate::format::holes::{Chunk, HoleGeometry, bit, set_bits};
use crate::sys;

/// The directory of a vault's hole maps.
#[derive(Debug)]
pub struct HoleStore {
    dir: OwnedFd,
    /// Whether any map may exist (false: deletes need not look for one).
    any: AtomicBool,
    /// Other hosts write maps too (`set_shared`).
    shared: AtomicBool,
}

impl HoleStore {
    /// The maps in directory `dir` (`.kmsfs/holes`, opened without following links).
    pub fn new(dir: OwnedFd) -> Self {
        let any = sys::read_dir(dir.as_fd()).map_or(true, |mut d| d.next().is_some());
        HoleStore {
            dir,
            any: any.into(),
            shared: AtomicBool::new(false),
        }
    }

    /// Whether any file may have a map: set when one existed at start or was made since
    /// (on a shared store another host may make them: `set_shared`).
    pub fn may_have_maps(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// The store is shared with other hosts, which make maps of their own.
    pub fn set_shared(&self) {
        self.any.store(true, Ordering::Relaxed);
        self.shared.store(true, Ordering::Relaxed);
    }

    /// Whether other hosts write maps too.
    fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    fn name(id: &Id) -> OsString {
        hex::encode(id).into()
    }

    /// Open the map of file `id` (made when `create`); None when it has none.
    pub fn open(&self, id: &Id, create: bool) -> io::Result<Option<File>> {
        let name = Self::name(id);
        if create {
            self.any.store(true, Ordering::Relaxed);
        }
        let flags = libc::O_RDWR | if create { libc::O_CREAT } else { 0 };
        let opened = match sys::open_regular(self.dir.as_fd(), &name, flags, 0o600) {
            // A read-only store (an offline `cat` of a vault it may not write) still reads.
            Err(e) if !create && matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS)) => {
                sys::open_regular(self.dir.as_fd(), &name, libc::O_RDONLY, 0)
            }
            r => r,
        };
        match opened {
            Ok((fd, _)) => Ok(Some(File::from(fd))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove the map of file `id` (none is fine).
    pub fn remove(&self, id: &Id) -> io::Result<()> {
        match sys::unlinkat(self.dir.as_fd(), &Self::name(id), 0) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// The file ids that have maps (names that are not 32 hex digits are skipped).
    pub fn ids(&self) -> io::Result<Vec<Id>> {
        let mut ids = Vec::new();
        for entry in sys::read_dir(self.dir.as_fd())? {
            let mut id = [0u8; 16];
            if hex::decode_to_slice(entry?.file_name().as_encoded_bytes(), &mut id).is_ok() {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// What a map operation needs besides the map: the store, the file's cipher and geometry.
pub(super) struct MapCtx<'a> {
    pub store: Option<&'a HoleStore>,
    pub cipher: &'a BlockCipher,
    pub file_id: &'a Id,
    pub geometry: HoleGeometry,
}

/// The hole map of one open file: its map file (opened on first need) and the chunks read so
/// far, kept in step with what is written.
#[derive(Debug, Default)]
pub(super) struct HoleMap {
    file: Option<File>,
    probed: bool,
    chunks: HashMap<Chunk, Vec<u8>>,
}

impl HoleMap {
    /// Forget what was read (another host may have changed the map).
    pub fn forget(&mut self) {
        *self = HoleMap::default();
    }

    /// Whether the file has a map (looked up once).
    pub fn exists(&mut self, ctx: &MapCtx<'_>) -> io::Result<bool> {
        if !self.probed {
            self.file = match ctx.store {
                Some(store) => store.open(ctx.file_id, false)?,
                None => None,
            };
            if let Some(f) = &self.file {
                // On a shared store another host may have written it since it was cached.
                sys::drop_page_cache(f.as_fd());
            }
            self.probed = true;
        }
        Ok(self.file.is_some())
    }

    /// The bitmap of `chunk` (all zero when absent, cut or damaged: no grant).
    fn chunk(&mut self, ctx: &MapCtx<'_>, chunk: Chunk) -> io::Result<&mut Vec<u8>> {
        if !self.chunks.contains_key(&chunk) {
            let bitmap = self.read_chunk(ctx, chunk)?;
            self.chunks.insert(chunk, bitmap);
        }
        self.chunks
            .get_mut(&chunk)
            .ok_or_else(|| io::Error::other("hole map chunk vanished"))
    }

    fn read_chunk(&mut self, ctx: &MapCtx<'_>, chunk: Chunk) -> io::Result<Vec<u8>> {
        let g = ctx.geometry;
        let mut bitmap = vec![0u8; g.chunk_len()];
        let (Some(file), Some(at)) = (&self.file, g.offset(chunk)) else {
            return Ok(bitmap);
        };
        let mut stored = vec![0u8; g.stored_chunk_len() as usize];
        let n = super::read_full(file, &mut stored, at)?;
        if n == 0 || stored.iter().all(|&b| b == 0) {
            return Ok(bitmap);
        }
        if n < stored.len() || ctx.cipher.open_chunk(chunk, &stored, &mut bitmap).is_err() {
            let map = sys::describe(file.as_fd());
            let (level, index) = (chunk.level, chunk.index);
            if ctx.store.is_some_and(HoleStore::is_shared) {
                // Read without the lock, it may be mid-rewrite by another host; a block read
                // that fails on it is tried again under the lock, and logged (file and block)
                // if it still fails there.
                tracing::debug!(%map, level, chunk = index, "hole map chunk does not verify (another host may be rewriting it)");
            } else {
                tracing::warn!(%map, level, chunk = index, "hole map chunk is damaged: the holes it granted read as EIO");
            }
            bitmap.fill(0);
        }
        Ok(bitmap)
    }

    /// Whether block `block` may read as a hole (some level grants it).
    pub fn may_be_hole(&mut self, ctx: &MapCtx<'_>, block: u64) -> io::Result<bool> {
        Ok(self.granted_until(ctx, block)?.is_some())
    }

    /// If block `block` is granted: the end of the largest granted unit holding it.
    pub fn granted_until(&mut self, ctx: &MapCtx<'_>, block: u64) -> io::Result<Option<u64>> {
        if !self.exists(ctx)? {
            return Ok(None);
        }
        for level in (0..ctx.geometry.levels()).rev() {
            let (chunk, b) = ctx.geometry.bit_of(level, block);
            if bit(self.chunk(ctx, chunk)?, b) {
                let unit = ctx.geometry.unit_of(level, block);
                return Ok(Some(ctx.geometry.unit_blocks(level, unit).end));
            }
        }
        Ok(None)
    }

    /// Grant blocks `blocks` (making the map file when the file has none).
    pub fn allow(&mut self, ctx: &MapCtx<'_>, blocks: Range<u64>) -> io::Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        if !self.exists(ctx)? {
            let store = ctx
                .store
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EOPNOTSUPP))?;
            self.file = store.open(ctx.file_id, true)?;
        }
        let mut changed = Vec::new();
        for run in ctx.geometry.cover(blocks) {
            if set_bits(self.chunk(ctx, run.chunk)?, run.bits, true) {
                changed.push(run.chunk);
            }
        }
        self.write_chunks(ctx, &changed)
    }

    /// Withdraw the grants of blocks `blocks` (data was written there): a grant at an upper
    /// level is pushed down to the units around them first, children written before parents.
    pub fn revoke(&mut self, ctx: &MapCtx<'_>, blocks: Range<u64>) -> io::Result<()> {
        if blocks.is_empty() || !self.exists(ctx)? {
            return Ok(());
        }
        let g = ctx.geometry;
        let mut changed: Vec<Chunk> = Vec::new();
        for level in (1..g.levels()).rev() {
            for unit in g.unit_of(level, blocks.start)..=g.unit_of(level, blocks.end - 1) {
                let (chunk, b) = g.bit_of(level, g.unit_blocks(level, unit).start);
                if !bit(self.chunk(ctx, chunk)?, b) {
                    continue;
                }
                // Unit `unit` of this level is chunk `unit` of the level below, whole.
                let child = Chunk {
                    level: level - 1,
                    index: unit,
                };
                set_bits(self.chunk(ctx, child)?, 0..g.bits(), true);
                self.write_chunks(ctx, &[child])?;
                set_bits(self.chunk(ctx, chunk)?, b..b + 1, false);
                changed.push(chunk);
            }
            // Parents after their children: write this level before going down.
            self.write_chunks(ctx, &changed)?;
            changed.clear();
        }
        let mut b = blocks.start;
        while b < blocks.end {
            let (chunk, first) = g.bit_of(0, b);
            let n = (g.bits() - first).min(blocks.end - b);
            if set_bits(self.chunk(ctx, chunk)?, first..first + n, false) {
                changed.push(chunk);
            }
            b += n;
        }
        self.write_chunks(ctx, &changed)
    }

    fn write_chunks(&mut self, ctx: &MapCtx<'_>, chunks: &[Chunk]) -> io::Result<()> {
        let mut out = Vec::with_capacity(ctx.geometry.stored_chunk_len() as usize);
        for &chunk in chunks {
            let bitmap = self.chunk(ctx, chunk)?.clone();
            let at = ctx
                .geometry
                .offset(chunk)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
            out.clear();
            ctx.cipher
                .seal_chunk(chunk, &bitmap, &mut out)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let file = self
                .file
                .as_ref()
                .ok_or_else(|| io::Error::other("hole map not open"))?;
            file.write_all_at(&out, at)?;
        }
        Ok(())
    }

    /// Flush the map file (with its data file's fsync).
    pub fn sync(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }
}
