//! All offset arithmetic of the format lives here: plain offsets and sizes, block indices,
//! backing offsets and sizes. Nothing else in the crate computes a backing offset.
//!
//! A file of plain size `P` (P > 0) is stored as the header followed by exactly
//! `P / bs + 1` blocks. Every block but the last holds `bs` plaintext bytes; the last holds
//! `P % bs` bytes (0 … bs−1), so a size that is a multiple of `bs` ends with an empty,
//! tag-only block. A backing file that ends on a full block is therefore invalid, which
//! authenticates the end of file without re-sealing earlier blocks. An empty file (P = 0) has
//! an empty backing file: no header, no key.

use super::FormatError;

/// Bytes of per-block overhead: the 96-bit nonce in front, the 128-bit tag behind.
pub const BLOCK_OVERHEAD: u64 = (NONCE_LEN + TAG_LEN) as u64;
/// AES-GCM-SIV nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM-SIV tag length.
pub const TAG_LEN: usize = 16;
/// Smallest block size a vault may choose.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size a vault may choose.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Default plaintext block size (see docs/FORMAT.md for why).
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// The geometry of one vault: header size and plaintext block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    header_size: u64,
    block_size: u64,
}

/// One block touched by a plaintext range: which block, and which bytes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    /// Block index within the file.
    pub index: u64,
    /// First plaintext byte of the range inside this block.
    pub start: usize,
    /// One past the last plaintext byte of the range inside this block.
    pub end: usize,
}

impl Layout {
    /// A layout with the given header size and block size, validated.
    pub fn new(header_size: u64, block_size: u32) -> Result<Self, FormatError> {
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two()
        {
            return Err(FormatError::InvalidField("block size"));
        }
        Ok(Layout {
            header_size,
            block_size: u64::from(block_size),
        })
    }

    /// Plaintext bytes per block.
    pub fn block_size(&self) -> usize {
        self.block_size as usize
    }

    /// Bytes of the per-file header.
    pub fn header_size(&self) -> u64 {
        self.header_size
    }

    /// Backing bytes one full block occupies.
    pub fn stored_block_size(&self) -> u64 {
        self.block_size + BLOCK_OVERHEAD
    }

    /// Index of the block holding plaintext offset `offset`.
    pub fn block_of(&self, offset: u64) -> u64 {
        offset / self.block_size
    }

    /// Plaintext offset where block `index` starts.
    pub fn plain_offset(&self, index: u64) -> u64 {
        index.saturating_mul(self.block_size)
    }

    /// Backing offset where block `index` starts.
    pub fn backing_offset(&self, index: u64) -> u64 {
        self.header_size
            .saturating_add(index.saturating_mul(self.stored_block_size()))
    }

    /// Number of blocks a file of plain size `size` has (0 for the empty file).
    pub fn block_count(&self, size: u64) -> u64 {
        if size == 0 {
            0
        } else {
            size / self.block_size + 1
        }
    }

    /// Plaintext bytes held by block `index` of a file of plain size `size`.
    pub fn block_len(&self, index: u64, size: u64) -> usize {
        let count = self.block_count(size);
        if index.saturating_add(1) < count {
            self.block_size as usize
        } else if index.saturating_add(1) == count {
            (size % self.block_size) as usize
        } else {
            0
        }
    }

    /// Backing size of a file of plain size `size`.
    pub fn backing_size(&self, size: u64) -> u64 {
        if size == 0 {
            return 0;
        }
        let full = size / self.block_size;
        self.backing_offset(full)
            .saturating_add(BLOCK_OVERHEAD + size % self.block_size)
    }

    /// Plain size of a file whose backing file has `backing` bytes; an error if no plain size
    /// produces that backing size (a cut, extended or foreign file).
    pub fn plain_size(&self, backing: u64) -> Result<u64, FormatError> {
        if backing == 0 {
            return Ok(0);
        }
        let body = backing
            .checked_sub(self.header_size)
            .ok_or(FormatError::InvalidBackingSize(backing))?;
        let full = body / self.stored_block_size();
        let rest = body % self.stored_block_size();
        // A header with only an empty block 0 is no file's form: the empty file has no header.
        if rest < BLOCK_OVERHEAD || (full == 0 && rest == BLOCK_OVERHEAD) {
            return Err(FormatError::InvalidBackingSize(backing));
        }
        Ok(full * self.block_size + (rest - BLOCK_OVERHEAD))
    }

    /// Plain size to report for a backing size, even an invalid one: the largest size whose
    /// blocks fit, and at least 1 so that readers try and learn of the damage. `stat` must not
    /// fail on a damaged file; reading its damaged end reports it.
    pub fn plain_size_lossy(&self, backing: u64) -> u64 {
        self.plain_size(backing).unwrap_or_else(|_| {
            let body = backing.saturating_sub(self.header_size);
            let full = body / self.stored_block_size();
            let rest = (body % self.stored_block_size()).saturating_sub(BLOCK_OVERHEAD);
            (full * self.block_size + rest).max(1)
        })
    }

    /// The blocks touched by the plaintext range `offset .. offset + len`, in order.
    pub fn spans(&self, offset: u64, len: u64) -> impl Iterator<Item = BlockSpan> + '_ {
        let end = offset.saturating_add(len);
        let first = self.block_of(offset);
        let last = if len == 0 {
            first
        } else {
            self.block_of(end - 1).saturating_add(1)
        };
        let bs = self.block_size;
        (first..last).map(move |index| {
            let block_start = index * bs;
            BlockSpan {
                index,
                start: (offset.max(block_start) - block_start) as usize,
                end: (end.min(block_start.saturating_add(bs)) - block_start) as usize,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(bs: u32) -> Layout {
        Layout::new(1024, bs).expect("valid layout")
    }

    #[test]
    fn sizes_at_edges() {
        let l = layout(4096);
        assert_eq!(l.backing_size(0), 0);
        assert_eq!(l.backing_size(1), 1024 + 28 + 1);
        assert_eq!(l.backing_size(4095), 1024 + 28 + 4095);
        // a multiple of the block size ends with an empty, tag-only block
        assert_eq!(l.backing_size(4096), 1024 + 4124 + 28);
        assert_eq!(l.backing_size(4097), 1024 + 4124 + 29);
        assert_eq!(l.block_count(4096), 2);
        assert_eq!(l.block_len(1, 4096), 0);
    }

    #[test]
    fn invalid_backing_sizes() {
        let l = layout(4096);
        // header only, header plus partial overhead, ending on a full block
        for bad in [
            1,
            1023,
            1024,
            1024 + 27,
            1024 + 28,
            1024 + 4124,
            1024 + 2 * 4124,
        ] {
            assert!(l.plain_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn block_size_must_be_power_of_two_in_range() {
        assert!(Layout::new(1024, 4096).is_ok());
        assert!(Layout::new(1024, 4095).is_err());
        assert!(Layout::new(1024, 256).is_err());
        assert!(Layout::new(1024, 1 << 21).is_err());
    }

    proptest! {
        #[test]
        fn plain_backing_round_trip(size in 0u64..(1 << 40), shift in 9u32..=20) {
            let l = layout(1 << shift);
            prop_assert_eq!(l.plain_size(l.backing_size(size)), Ok(size));
        }

        #[test]
        fn backing_sizes_are_monotonic(size in 0u64..(1 << 40), shift in 9u32..=20) {
            let l = layout(1 << shift);
            prop_assert!(l.backing_size(size + 1) > l.backing_size(size));
        }

        #[test]
        fn spans_cover_range_exactly(offset in 0u64..(1 << 30), len in 0u64..300_000, shift in 9u32..=16) {
            let l = layout(1 << shift);
            let spans: Vec<_> = l.spans(offset, len).collect();
            let covered: u64 = spans.iter().map(|s| (s.end - s.start) as u64).sum();
            prop_assert_eq!(covered, len);
            let mut pos = offset;
            for s in &spans {
                prop_assert_eq!(l.plain_offset(s.index) + s.start as u64, pos);
                prop_assert!(s.end <= l.block_size() && s.start <= s.end);
                pos += (s.end - s.start) as u64;
            }
        }

        #[test]
        fn block_lengths_sum_to_size(size in 0u64..(1 << 24), shift in 9u32..=16) {
            let l = layout(1 << shift);
            let total: u64 = (0..l.block_count(size)).map(|i| l.block_len(i, size) as u64).sum();
            prop_assert_eq!(total, size);
            if size > 0 {
                prop_assert!(l.block_len(l.block_count(size) - 1, size) < l.block_size());
            }
        }
    }
}
