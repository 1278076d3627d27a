//! Holes in encrypted files: granting and withdrawing them in the file's hole map, punching
//! them (fallocate), and finding them (SEEK_DATA / SEEK_HOLE).

use super::holes::MapCtx;
use super::*;

/// How many candidate blocks SEEK_HOLE examines before it settles for "data up to the end of
/// file" (always a correct answer): only a backing file punched where no hole was made has
/// long runs of such candidates.
const SEEK_HOLE_PROBES: u32 = 4096;

impl CryptFile {
    fn map_ctx<'a>(&'a self, keyed: &'a Keyed, cipher: &'a BlockCipher) -> MapCtx<'a> {
        MapCtx {
            store: self.vault.holes.as_ref(),
            cipher,
            file_id: &keyed.header.file_id,
            geometry: self.vault.hole_geometry(),
        }
    }

    /// Whether block `index` may read as a hole.
    pub(super) fn hole_granted(
        &self,
        keyed: &Keyed,
        cipher: &BlockCipher,
        index: u64,
    ) -> Result<bool, CryptError> {
        Ok(keyed
            .holes
            .lock()
            .may_be_hole(&self.map_ctx(keyed, cipher), index)?)
    }

    /// Grant blocks `blocks` as holes; false when this vault keeps no hole maps (the caller
    /// then stores zeros).
    pub(super) fn allow_holes(
        &self,
        keyed: &Keyed,
        cipher: &BlockCipher,
        blocks: std::ops::Range<u64>,
    ) -> Result<bool, CryptError> {
        if self.vault.holes.is_none() {
            return Ok(false);
        }
        keyed
            .holes
            .lock()
            .allow(&self.map_ctx(keyed, cipher), blocks)?;
        Ok(true)
    }

    /// Withdraw hole grants of blocks `blocks`, which now hold data.
    pub(super) fn revoke_holes(
        &self,
        keyed: &Keyed,
        cipher: &BlockCipher,
        blocks: std::ops::Range<u64>,
    ) -> Result<(), CryptError> {
        keyed
            .holes
            .lock()
            .revoke(&self.map_ctx(keyed, cipher), blocks)?;
        Ok(())
    }

    /// Remove the hole map of the file id `loaded` (or, when no header was loaded, the one the
    /// backing header names): the file is being emptied or deleted. Best effort: a map left
    /// behind only grants holes to a file id that no file has any more.
    pub(super) fn remove_hole_map(&self, loaded: Option<Id>) {
        if let (Some(store), Some(id)) = (&self.vault.holes, loaded) {
            if let Err(e) = store.remove(&id) {
                tracing::warn!("cannot remove the hole map of {}: {e}", self.backing_path());
            }
        }
    }

    /// The id of this file's hole map if its last name is gone (the map is to go when the
    /// file is no longer reachable: the caller decides when that is).
    pub fn unlinked_map(&self) -> Option<Id> {
        self.vault.holes.as_ref()?;
        let unlinked = self
            .file
            .metadata()
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) == 0 && m.len() > 0);
        if unlinked {
            self.stored_file_id()
        } else {
            None
        }
    }

    /// Zero the plain range `offset .. offset + len`, keeping the size (punch hole and zero
    /// range): whole blocks become holes — granted in the map, then punched out of the backing
    /// file, so the space is freed — and the partial blocks at the edges are re-sealed with
    /// zeros. The final block always stays stored.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<(), CryptError> {
        let layout = self.vault.layout;
        let bs = layout.block_size() as u64;
        let size = self.size()?;
        let end = size.min(offset.saturating_add(len));
        if offset >= end {
            return Ok(());
        }
        let whole_first = offset.div_ceil(bs);
        let whole_end = (end / bs).min(layout.block_count(size) - 1);
        let mut edges = vec![(offset, end)];
        if whole_first < whole_end && self.punch_blocks(whole_first..whole_end)? {
            edges = vec![
                (offset, layout.plain_offset(whole_first)),
                (layout.plain_offset(whole_end), end),
            ];
        }
        for (from, to) in edges {
            self.write_zeros(from, to)?;
        }
        Ok(())
    }

    /// fallocate without punching (mode 0, or KEEP_SIZE): give `offset .. offset + len` real
    /// space. The backing range is reserved first, so a full store fails with ENOSPC before
    /// anything changes; holes inside the file are filled with encrypted zeros; past its end,
    /// the file grows with encrypted zeros, or with `keep_size` only the reservation remains
    /// (a later growth over it makes granted holes there, which read as zeros).
    pub fn allocate(&self, offset: u64, len: u64, keep_size: bool) -> Result<(), CryptError> {
        let layout = self.vault.layout;
        let end = offset.saturating_add(len);
        let size = self.size()?;
        if len == 0 {
            return Ok(());
        }
        let from = layout.backing_offset(layout.block_of(offset));
        let to = layout.backing_size(end.max(1));
        let mode = libc::FALLOC_FL_KEEP_SIZE;
        let fd = std::os::fd::AsFd::as_fd(&self.file);
        match crate::sys::fallocate(fd, mode, from, to.saturating_sub(from)) {
            Err(e) if e.raw_os_error() != Some(libc::EOPNOTSUPP) => return Err(e.into()),
            _ => {}
        }
        let inside_end = end.min(size);
        let mut at = offset;
        while at < inside_end {
            let Some(hole) = self.seek(at, false)?.filter(|&h| h < inside_end) else {
                break;
            };
            let data = self.seek(hole, true)?.unwrap_or(size).min(inside_end);
            self.write_zeros(hole, data)?;
            at = data;
        }
        if !keep_size && end > size {
            self.write_zeros(size, end)?;
        }
        Ok(())
    }

    /// Write encrypted zeros over `from .. to`, a batch at a time.
    fn write_zeros(&self, from: u64, to: u64) -> Result<(), CryptError> {
        let chunk = BATCH_BLOCKS * self.vault.layout.block_size() as u64;
        let mut at = from;
        while at < to {
            let n = chunk.min(to - at);
            self.write(at, &vec![0u8; n as usize])?;
            at += n;
        }
        Ok(())
    }

    /// Make blocks `blocks` holes; false when this vault keeps no hole maps or the backing file
    /// system cannot punch (the caller writes zeros instead).
    fn punch_blocks(&self, blocks: std::ops::Range<u64>) -> Result<bool, CryptError> {
        let layout = self.vault.layout;
        let mut state = self.state.write();
        let _lock = self.lock_for_change(&mut state)?;
        let keyed = self.keyed(&mut state)?;
        let cipher = self.cipher(keyed)?;
        if !self.allow_holes(keyed, &cipher, blocks.clone())? {
            return Ok(false);
        }
        let from = layout.backing_offset(blocks.start);
        let to = layout.backing_offset(blocks.end);
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match crate::sys::fallocate(std::os::fd::AsFd::as_fd(&self.file), mode, from, to - from) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// SEEK_DATA (`data`) or SEEK_HOLE from plain offset `offset`: the next offset in data or
    /// in a hole, None past the end (ENXIO). A hole is reported only where the backing file
    /// holds nothing for a whole block and the map grants it, so a block punched out by
    /// someone else counts as data (reading it fails) and `cp --sparse` cannot skip it.
    pub fn seek(&self, offset: u64, data: bool) -> Result<Option<u64>, CryptError> {
        let layout = self.vault.layout;
        let size = self.size()?;
        if offset >= size {
            return Ok(None);
        }
        self.ensure_loaded()?;
        let state = self.state.read();
        let keyed = state
            .as_ref()
            .ok_or_else(|| self.integrity(None, "header vanished"))?;
        let cipher = self.cipher(keyed)?;
        let last = layout.block_count(size) - 1;
        let mut map = keyed.holes.lock();
        let ctx = self.map_ctx(keyed, &cipher);
        let fd = std::os::fd::AsFd::as_fd(&self.file);
        let seek = |b: u64, whence| {
            crate::sys::seek_data_or_hole(fd, layout.backing_offset(b), whence)
                .map(|p| p.unwrap_or(u64::MAX))
        };
        // The block holding backing offset `p`.
        let block_at = |p: u64| p.saturating_sub(layout.header_size()) / layout.stored_block_size();
        let at = |b: u64| offset.max(layout.plain_offset(b));
        let mut b = layout.block_of(offset);
        if data {
            loop {
                if b >= last {
                    // The final block holds data unless it is empty (the size a multiple of
                    // the block size): then there is none before the end of file.
                    return Ok(Some(at(b)).filter(|&o| o < size));
                }
                let Some(granted_end) = map.granted_until(&ctx, b)? else {
                    return Ok(Some(at(b)));
                };
                if !self.stored_zero(b)? {
                    return Ok(Some(at(b)));
                }
                // Blocks with nothing stored up to the next backing data are holes too, as far
                // as the grant reaches.
                let next_data = block_at(seek(b + 1, libc::SEEK_DATA)?);
                b = (b + 1).max(next_data.min(granted_end));
            }
        }
        for _ in 0..SEEK_HOLE_PROBES {
            if b >= last {
                break;
            }
            if map.may_be_hole(&ctx, b)? && self.stored_zero(b)? {
                return Ok(Some(at(b)));
            }
            b = (b + 1).max(block_at(seek(b + 1, libc::SEEK_HOLE)?));
        }
        Ok(Some(size))
    }

    /// Whether the stored bytes of block `index` (not the final block) are all zero.
    fn stored_zero(&self, index: u64) -> Result<bool, CryptError> {
        let layout = self.vault.layout;
        let mut buf = vec![0u8; layout.stored_block_size() as usize];
        let n = read_full(&self.file, &mut buf, layout.backing_offset(index))?;
        Ok(is_zero(&buf[..n]))
    }
}
