//! The write path: read-modify-write of partial blocks, extension with zero blocks, the header
//! of a file's first byte, and sealing runs of blocks (on two cores when large and idle).

use super::*;

impl CryptFile {
    pub(super) fn write_uncounted(&self, offset: u64, data: &[u8]) -> Result<usize, CryptError> {
        if data.is_empty() {
            return Ok(0);
        }
        let _busy = InFlight::enter();
        let mut state = self.state.write();
        let _lock = self.lock_for_change(&mut state)?;
        let size = self.size()?;
        let new_size = size.max(offset.saturating_add(data.len() as u64));
        self.rewrite(&mut state, size, new_size, offset, data)?;
        Ok(data.len())
    }

    pub(super) fn truncate_uncounted(&self, new_size: u64) -> Result<(), CryptError> {
        let mut state = self.state.write();
        if new_size == 0 && self.backing_len()? == 0 {
            *state = None;
            return Ok(());
        }
        let _lock = self.lock_for_change(&mut state)?;
        if new_size == 0 {
            // An empty file has no header; its next write makes a new file id and key. This
            // also works on a damaged file: O_TRUNC replaces it. The old id's holes go too.
            let old_id = match state.as_ref() {
                Some(k) => Some(k.header.file_id),
                None => header_file_id(&self.file),
            };
            self.file.set_len(0)?;
            *state = None;
            self.remove_hole_map(old_id);
            return Ok(());
        }
        let size = self.size()?;
        if new_size == size {
            return Ok(());
        }
        if new_size > size {
            return self.rewrite(&mut state, size, new_size, new_size, &[]);
        }
        let layout = self.vault.layout;
        let keyed = self.keyed(&mut state)?;
        let cipher = self.cipher(keyed)?;
        let last = layout.block_of(new_size);
        let mut plain = self.read_block(keyed, &cipher, last, size)?;
        plain.truncate(layout.block_len(last, new_size));
        let mut out = Vec::with_capacity(plain.len() + BLOCK_OVERHEAD as usize);
        cipher
            .seal(last, &plain, &mut out)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        plain.fill(0);
        self.file.write_all_at(&out, layout.backing_offset(last))?;
        self.file.set_len(layout.backing_size(new_size))?;
        // The new final block holds data now, even where a hole was.
        self.revoke_holes(keyed, &cipher, last..last + 1)?;
        Ok(())
    }

    /// A new header and data key (from the pool when it has one) for a file with no content.
    pub(super) fn create_header(&self) -> Result<(Keyed, BlockCipher), CryptError> {
        let (file_id, key, wrapped) = self
            .vault
            .keys
            .new_file_key(&self.vault.volume_id)
            .map_err(|err| CryptError::Key {
                path: self.backing_path(),
                err,
            })?;
        let block_size = self.vault.layout.block_size() as u32;
        let mut header = FileHeader::new(
            block_size,
            self.vault.volume_id,
            file_id,
            self.vault.provider,
            wrapped,
        )
        .map_err(|e: FormatError| std::io::Error::other(e.to_string()))?;
        header.version = self.vault.header_version;
        if header.version >= KEY_MADE_VERSION {
            header.key_made = Some(crate::sys::unix_now());
        }
        header.commitment = crypto::key_commitment(&key, &header);
        let cipher = BlockCipher::new(key, self.vault.volume_id, file_id);
        Ok((Keyed::new(header), cipher))
    }

    /// Re-seal the blocks a write of `data` at `offset` changes, growing the file from `size`
    /// to `new_size`. Blocks before the old final block are never rewritten unless written to;
    /// whole blocks a growth skips over become holes (granted in the file's hole map first),
    /// or encrypted zeros where the vault keeps no maps.
    pub(super) fn rewrite(
        &self,
        state: &mut Option<Keyed>,
        size: u64,
        new_size: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), CryptError> {
        let layout = self.vault.layout;
        let mut new_header = None;
        let cipher = if size == 0 {
            let (keyed, cipher) = self.create_header()?;
            new_header = Some(keyed.header.encode());
            *state = Some(keyed);
            cipher
        } else {
            self.cipher(self.keyed(state)?)?
        };
        let keyed = state
            .as_ref()
            .ok_or_else(|| self.integrity(None, "header vanished"))?;
        let data_end = offset + data.len() as u64;
        // The old final block changes whenever the file grows; written blocks change anyway.
        let first = if new_size > size {
            layout.block_of(offset.min(size))
        } else {
            layout.block_of(offset)
        };
        let last = if new_size > size {
            layout.block_count(new_size) - 1
        } else {
            layout.block_of(data_end - 1)
        };
        let old_count = layout.block_count(size);
        // New blocks before the first one written (or before the new final block): a gap. An
        // old final block that held nothing belongs to it.
        let mut gap = 0..0;
        if new_size > size {
            let empty_end = size > 0 && size % layout.block_size() as u64 == 0;
            let gap_start = old_count - u64::from(empty_end);
            let gap_end = if data.is_empty() {
                last
            } else {
                layout.block_of(offset)
            };
            if gap_end > gap_start && self.allow_holes(keyed, &cipher, gap_start..gap_end)? {
                gap = gap_start..gap_end;
                if empty_end {
                    // Its nonce and tag go: a hole's stored bytes are all zero.
                    let at = layout.backing_offset(gap_start);
                    self.file
                        .write_all_at(&[0u8; BLOCK_OVERHEAD as usize], at)?;
                }
            }
        }
        if let Some(h) = new_header.take() {
            if first != 0 || !gap.is_empty() {
                self.file.write_all_at(&h, 0)?;
            } else {
                new_header = Some(h);
            }
        }
        let written = [first..gap.start.max(first), gap.end.max(first)..last + 1];
        for run in written.iter().filter(|r| !r.is_empty()) {
            let mut index = run.start;
            while index < run.end {
                let batch_end = (run.end - 1).min(index + BATCH_BLOCKS - 1);
                // Each block's new plaintext: borrowed from `data` or the zero page when the
                // write or a gap covers it whole; only the (at most two) partly written blocks
                // that hold old data are decrypted and merged.
                let mut plains: Vec<Cow<'_, [u8]>> =
                    Vec::with_capacity((batch_end - index + 1) as usize);
                for i in index..=batch_end {
                    let blen = layout.block_len(i, new_size);
                    let bstart = layout.plain_offset(i);
                    let from = offset.max(bstart).min(bstart + blen as u64);
                    let to = data_end.min(bstart + blen as u64).max(from);
                    let src = if to > from {
                        &data[(from - offset) as usize..(to - offset) as usize]
                    } else {
                        &[]
                    };
                    plains.push(if src.len() == blen {
                        Cow::Borrowed(src)
                    } else if i >= old_count && src.is_empty() {
                        Cow::Borrowed(&ZEROS[..blen])
                    } else {
                        let mut plain = self.read_block(keyed, &cipher, i, size)?;
                        plain.resize(blen, 0);
                        plain[(from - bstart) as usize..(to - bstart) as usize]
                            .copy_from_slice(src);
                        Cow::Owned(plain)
                    });
                }
                let header = new_header.take();
                let head_len = header.as_ref().map_or(0, |h| h.len());
                let sealed_len: usize = plains
                    .iter()
                    .map(|p| p.len() + BLOCK_OVERHEAD as usize)
                    .sum();
                let mut out = vec![0u8; head_len + sealed_len];
                let sealed = self.seal_blocks(&cipher, index, &plains, &mut out[head_len..], true);
                for p in &mut plains {
                    if let Cow::Owned(merged) = p {
                        merged.fill(0);
                    }
                }
                sealed?;
                // The first write of a file puts header and blocks down in one call.
                let at = match header {
                    Some(h) => {
                        out[..head_len].copy_from_slice(&h);
                        0
                    }
                    None => layout.backing_offset(index),
                };
                self.file.write_all_at(&out, at)?;
                if new_size > size && out.len() >= STREAM_WRITEBACK_MIN {
                    start_writeback(&self.file, at, out.len());
                }
                index = batch_end + 1;
            }
            // Data is down: the blocks are no holes any more.
            self.revoke_holes(keyed, &cipher, run.clone())?;
        }
        Ok(())
    }

    /// Seal blocks `first..` from `plains` into `out` (exactly their stored sizes). Large runs
    /// are split in two and sealed on two cores at once.
    pub(super) fn seal_blocks(
        &self,
        cipher: &BlockCipher,
        first: u64,
        plains: &[Cow<'_, [u8]>],
        out: &mut [u8],
        may_split: bool,
    ) -> Result<(), CryptError> {
        let sealing_failed = |e: crypto::CryptoError| std::io::Error::other(e.to_string());
        if may_split && split_worthwhile(plains.len() as u64) {
            let mid = plains.len() / 2;
            let at: usize = plains[..mid]
                .iter()
                .map(|p| p.len() + BLOCK_OVERHEAD as usize)
                .sum();
            let (p1, p2) = plains.split_at(mid);
            let (o1, o2) = out.split_at_mut(at);
            return std::thread::scope(|scope| {
                let second = std::thread::Builder::new().spawn_scoped(scope, || {
                    self.seal_blocks(cipher, first + mid as u64, p2, o2, false)
                })?;
                let r1 = self.seal_blocks(cipher, first, p1, o1, false);
                let r2 = second.join().unwrap_or_else(|_| {
                    Err(std::io::Error::other("encryption thread failed").into())
                });
                r1.and(r2)
            });
        }
        cipher
            .seal_run(first, plains, out)
            .map_err(sealing_failed)?;
        Ok(())
    }
}
