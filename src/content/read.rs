//! The read path: the stored blocks a read needs, opened (on two cores when large and idle)
//! straight into the reply.

use super::*;

impl CryptFile {
    /// `read` without the retry.
    pub(super) fn read_once(&self, offset: u64, len: usize) -> Result<Vec<u8>, CryptError> {
        loop {
            // Size and header under one read lock: a write or truncate cannot change the size
            // between computing it and opening the final block.
            let state = self.state.read();
            if state.is_none() && len > 0 && self.backing_len()? > 0 {
                drop(state);
                self.ensure_loaded()?;
                continue;
            }
            return self.read_locked(&state, offset, len);
        }
    }

    /// `read` with the state lock held.
    pub(super) fn read_locked(
        &self,
        state: &Option<Keyed>,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, CryptError> {
        let backing = self.backing_len()?;
        let layout = &self.vault.layout;
        let (size, damaged_end) = match layout.plain_size(backing) {
            Ok(size) => (size, false),
            Err(_) => (layout.plain_size_lossy(backing), true),
        };
        if len == 0 || (offset >= size && !damaged_end) {
            return Ok(Vec::new());
        }
        let end = size.min(offset.saturating_add(len as u64));
        if damaged_end && (offset >= size || layout.block_of(end - 1) >= layout.block_of(size - 1))
        {
            let what = format!(
                "backing size {backing} is not a valid kmsfs size: the end of the file is missing or damaged"
            );
            return Err(self.integrity(Some(layout.block_of(size - 1)), what));
        }
        let keyed = state
            .as_ref()
            .ok_or_else(|| self.integrity(None, "header vanished"))?;
        let cipher = self.cipher(keyed)?;
        let mut out = vec![0u8; (end - offset) as usize];
        let first = layout.block_of(offset);
        let last = layout.block_of(end - 1);
        let mut index = first;
        while index <= last {
            let batch_end = last.min(index + BATCH_BLOCKS - 1);
            let stored = self.read_stored(index, batch_end, size)?;
            let lo = (offset.max(layout.plain_offset(index)) - offset) as usize;
            let hi = (end.min(layout.plain_offset(batch_end + 1)) - offset) as usize;
            let span = Span {
                first: index,
                last: batch_end,
                size,
                offset,
                end,
            };
            self.open_blocks(keyed, &cipher, &span, &stored, &mut out[lo..hi], true)?;
            index = batch_end + 1;
        }
        Ok(out)
    }

    /// Open blocks `span.first..=span.last` from `stored` into `out` (the part of the read range
    /// they cover). Large spans are split in two and opened on two cores at once.
    pub(super) fn open_blocks(
        &self,
        keyed: &Keyed,
        cipher: &BlockCipher,
        span: &Span,
        stored: &[u8],
        out: &mut [u8],
        may_split: bool,
    ) -> Result<(), CryptError> {
        let layout = &self.vault.layout;
        let count = span.last - span.first + 1;
        if may_split && split_worthwhile(count) {
            // Every block before the last is full, so the split points are plain arithmetic.
            let mid = span.first + count / 2;
            let at_stored = ((mid - span.first) * layout.stored_block_size()) as usize;
            let at_out = (layout.plain_offset(mid)
                - span.offset.max(layout.plain_offset(span.first)))
                as usize;
            let (s1, s2) = stored.split_at(at_stored.min(stored.len()));
            let (o1, o2) = out.split_at_mut(at_out.min(out.len()));
            let (left, right) = (
                Span {
                    last: mid - 1,
                    ..*span
                },
                Span {
                    first: mid,
                    ..*span
                },
            );
            return std::thread::scope(|scope| {
                // No thread to be had (out of resources): the request fails, the daemon stays.
                let second = std::thread::Builder::new().spawn_scoped(scope, || {
                    self.open_blocks(keyed, cipher, &right, s2, o2, false)
                })?;
                let r1 = self.open_blocks(keyed, cipher, &left, s1, o1, false);
                let r2 = second
                    .join()
                    .unwrap_or_else(|_| Err(self.integrity(Some(mid), "decryption thread failed")));
                r1.and(r2)
            });
        }
        let mut plain = vec![0u8; layout.block_size()];
        let (mut at, mut put) = (0usize, 0usize);
        for i in span.first..=span.last {
            let blen = layout.block_len(i, span.size);
            let slen = blen + BLOCK_OVERHEAD as usize;
            let block = stored
                .get(at..at + slen)
                .ok_or_else(|| self.integrity(Some(i), "block cut short"))?;
            let bstart = layout.plain_offset(i);
            let from = (span.offset.max(bstart) - bstart) as usize;
            let to = (span.end.min(bstart + blen as u64) - bstart) as usize;
            // A block the read covers whole is opened straight into the reply.
            let whole = from == 0 && to == blen;
            let target = if whole {
                &mut out[put..put + blen]
            } else {
                &mut plain[..blen]
            };
            self.open_block(keyed, cipher, i, block, target)?;
            if !whole {
                out[put..put + (to - from)].copy_from_slice(&plain[from..to]);
            }
            put += to - from;
            at += slen;
        }
        plain.fill(0);
        Ok(())
    }

    /// The stored bytes of blocks `first..=last` of a file of plain size `size`, in one read
    /// (large cold reads straight from the disk, see `direct`).
    pub(super) fn read_stored(
        &self,
        first: u64,
        last: u64,
        size: u64,
    ) -> Result<StoredBytes, CryptError> {
        let layout = &self.vault.layout;
        let start = layout.backing_offset(first);
        let end =
            layout.backing_offset(last) + BLOCK_OVERHEAD + layout.block_len(last, size) as u64;
        let len = (end - start) as usize;
        // Shared stores drop their page cache on their own terms; keep them buffered.
        let direct = len >= direct::MIN_DIRECT_LEN
            && !self
                .vault
                .shared_store
                .load(std::sync::atomic::Ordering::Relaxed);
        let bytes = match direct
            .then(|| self.direct.read(&self.file, start, len))
            .flatten()
        {
            Some(stored) => StoredBytes::Direct(stored),
            None => {
                let mut buf = vec![0u8; len];
                let n = read_full(&self.file, &mut buf, start)?;
                buf.truncate(n);
                StoredBytes::Buffered(buf)
            }
        };
        if bytes.len() < len {
            return Err(self.integrity(
                Some(layout.block_of(layout.plain_offset(first) + bytes.len() as u64)),
                "block cut short",
            ));
        }
        Ok(bytes)
    }

    /// Open stored block `index` into `out`: decrypt it, or zeros for a hole its map grants.
    pub(super) fn open_block(
        &self,
        keyed: &Keyed,
        cipher: &BlockCipher,
        index: u64,
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptError> {
        if is_zero(stored) {
            if self.hole_granted(keyed, cipher, index)? {
                out.fill(0);
                return Ok(());
            }
            return Err(self.integrity(
                Some(index),
                "block is all zeros and no hole was made there: its data was removed from the backing file",
            ));
        }
        cipher
            .open(index, stored, out)
            .map_err(|e| self.integrity(Some(index), e.to_string()))
    }

    /// Decrypt block `index` of a file of plain size `size` (empty if it does not exist).
    pub(super) fn read_block(
        &self,
        keyed: &Keyed,
        cipher: &BlockCipher,
        index: u64,
        size: u64,
    ) -> Result<Vec<u8>, CryptError> {
        let layout = &self.vault.layout;
        if index >= layout.block_count(size) {
            return Ok(Vec::new());
        }
        let stored = self.read_stored(index, index, size)?;
        let mut plain = vec![0u8; layout.block_len(index, size)];
        self.open_block(keyed, cipher, index, &stored, &mut plain)?;
        Ok(plain)
    }
}
