//! The geometry of a file's hole map (docs/FORMAT.md §4.1): which chunk and bit grant a block
//! of a file the right to read as a hole, and where each chunk is stored. Pure arithmetic.
//!
//! A hole map is a sparse file of sealed chunks, each `bs` bytes of bitmap (`K = 8·bs` bits).
//! A bit of a level-ℓ chunk stands for a *unit* of `K^ℓ` blocks: level 0 has a bit per block,
//! level 1 a bit per `K` blocks, and so on up to the level whose units cover every block index
//! a u64 can hold. Chunk `c` of level ℓ holds the bits of units `c·K … c·K + K − 1`, so it
//! covers exactly unit `c` of level ℓ + 1. A set bit is a *permission*: the blocks of that unit
//! may read as zeros when their stored bytes are all zero. An absent chunk grants nothing, so
//! deleting or zeroing any part of a map only turns holes into `EIO`, never written data into
//! zeros. Chunk `c` of level ℓ is stored at position `c·L + ℓ` (`L` levels), so the few
//! upper-level chunks sit at the start of the map and a map is as sparse as its file.

use std::ops::Range;

/// One chunk: its level and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Chunk {
    /// 0 for one bit per block; ℓ for one bit per `K^ℓ` blocks.
    pub level: u8,
    /// Index among the chunks of its level.
    pub index: u64,
}

impl Chunk {
    /// The AAD prefix of the chunk's level: "KMSFS-H" and the level as one ASCII digit.
    pub fn aad_prefix(&self) -> [u8; 8] {
        let mut p = *b"KMSFS-H0";
        p[7] = b'0' + self.level;
        p
    }
}

/// Bits `bits` of chunk `chunk`, one run of units at one level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The chunk holding the bits.
    pub chunk: Chunk,
    /// Its bits.
    pub bits: Range<u64>,
}

/// Hole-map geometry for one block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoleGeometry {
    block_size: u64,
    /// log2(K).
    shift: u32,
    levels: u8,
}

impl HoleGeometry {
    /// The geometry of a vault whose blocks hold `block_size` bytes (a power of two).
    pub fn new(block_size: usize) -> Self {
        let shift = (block_size as u64 * 8).trailing_zeros();
        // Enough levels that one top-level unit... all of them together cover 2^64 blocks.
        let levels = 64u32.div_ceil(shift) as u8;
        HoleGeometry {
            block_size: block_size as u64,
            shift,
            levels,
        }
    }

    /// Bits per chunk, `K = 8·bs`.
    pub fn bits(&self) -> u64 {
        1 << self.shift
    }

    /// Number of levels `L`.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// Bytes of bitmap in a chunk (`bs`).
    pub fn chunk_len(&self) -> usize {
        self.block_size as usize
    }

    /// Stored bytes of a chunk: nonce ‖ sealed bitmap ‖ tag.
    pub fn stored_chunk_len(&self) -> u64 {
        self.block_size + super::layout::BLOCK_OVERHEAD
    }

    /// Blocks per unit of level `level`, `K^level` (saturating).
    fn unit(&self, level: u8) -> u128 {
        1u128
            .checked_shl(self.shift * u32::from(level))
            .unwrap_or(u128::MAX)
    }

    /// The unit of level `level` that holds block `block`.
    pub fn unit_of(&self, level: u8, block: u64) -> u64 {
        (u128::from(block) / self.unit(level)) as u64
    }

    /// The chunk and bit of level `level` whose unit holds block `block`.
    pub fn bit_of(&self, level: u8, block: u64) -> (Chunk, u64) {
        let unit = self.unit_of(level, block);
        (
            Chunk {
                level,
                index: unit >> self.shift,
            },
            unit & (self.bits() - 1),
        )
    }

    /// The blocks unit `unit` of level `level` covers, clipped to u64.
    pub fn unit_blocks(&self, level: u8, unit: u64) -> Range<u64> {
        let size = self.unit(level);
        let start = u128::from(unit).saturating_mul(size);
        let end = start.saturating_add(size);
        clip(start)..clip(end)
    }

    /// The fewest runs of bits that grant exactly the blocks `blocks`: every unit inside the
    /// range at the highest level it fits, each run inside one chunk.
    pub fn cover(&self, blocks: Range<u64>) -> Vec<Run> {
        let (mut at, end) = (u128::from(blocks.start), u128::from(blocks.end));
        let mut runs = Vec::new();
        while at < end {
            let mut level = 0u8;
            while level + 1 < self.levels {
                let up = self.unit(level + 1);
                if at % up != 0 || at + up > end {
                    break;
                }
                level += 1;
            }
            let unit = self.unit(level);
            let first = at / unit;
            // Up to the end of the range, and not past this chunk (the next level's unit).
            let chunk_end = (first | u128::from(self.bits() - 1)) + 1;
            let last = ((end - at) / unit + first).min(chunk_end);
            let chunk = Chunk {
                level,
                index: (first >> self.shift) as u64,
            };
            let mask = u128::from(self.bits() - 1);
            let lo = (first & mask) as u64;
            runs.push(Run {
                chunk,
                bits: lo..lo + (last - first) as u64,
            });
            at = last * unit;
        }
        runs
    }

    /// Byte offset of `chunk` in the map file (None past any file size).
    pub fn offset(&self, chunk: Chunk) -> Option<u64> {
        chunk
            .index
            .checked_mul(u64::from(self.levels))?
            .checked_add(u64::from(chunk.level))?
            .checked_mul(self.stored_chunk_len())
    }
}

fn clip(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Whether bit `bit` of `bitmap` is set (LSB first in each byte).
pub fn bit(bitmap: &[u8], bit: u64) -> bool {
    bitmap
        .get((bit / 8) as usize)
        .is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

/// Set or clear bits `range` of `bitmap`; returns whether any bit changed.
pub fn set_bits(bitmap: &mut [u8], range: Range<u64>, on: bool) -> bool {
    let mut changed = false;
    let mut i = range.start;
    while i < range.end {
        let Some(b) = bitmap.get_mut((i / 8) as usize) else {
            break;
        };
        // Whole bytes at once in the middle of a range.
        let (mask, step) = if i % 8 == 0 && range.end - i >= 8 {
            (0xffu8, 8)
        } else {
            (1u8 << (i % 8), 1)
        };
        let old = *b;
        *b = if on { old | mask } else { old & !mask };
        changed |= *b != old;
        i += step;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(level: u8, index: u64) -> Chunk {
        Chunk { level, index }
    }

    #[test]
    fn levels_cover_every_block_index_and_chunks_interleave() {
        let g = HoleGeometry::new(4096);
        assert_eq!((g.bits(), g.levels()), (32768, 5));
        assert_eq!(HoleGeometry::new(512).levels(), 6);
        assert_eq!(HoleGeometry::new(1 << 20).levels(), 3);
        assert_eq!(g.offset(chunk(0, 0)), Some(0));
        assert_eq!(g.offset(chunk(1, 0)), Some(4124));
        assert_eq!(g.offset(chunk(0, 1)), Some(5 * 4124));
        assert_eq!(g.offset(chunk(0, u64::MAX)), None);
        // The block at 1 GiB: level 0 chunk 8 bit 0; level 1 chunk 0 bit 8.
        let b = (1u64 << 30) / 4096;
        assert_eq!(g.bit_of(0, b), (chunk(0, 8), 0));
        assert_eq!(g.bit_of(1, b), (chunk(1, 0), 8));
        assert_eq!(g.bit_of(4, u64::MAX), (chunk(4, 0), 15));
        assert_eq!(g.unit_blocks(1, 8), 8 * 32768..9 * 32768);
        assert_eq!(g.unit_blocks(4, 15).end, u64::MAX);
    }

    #[test]
    fn a_range_is_covered_by_the_fewest_runs() {
        let g = HoleGeometry::new(4096);
        let k = g.bits();
        assert_eq!(
            g.cover(5..9),
            vec![Run {
                chunk: chunk(0, 0),
                bits: 5..9
            }]
        );
        // 100 GiB from block 1: the rest of leaf 0, 799 level-1 units, nothing left over.
        let end = 100 * (1u64 << 30) / 4096;
        assert_eq!(
            g.cover(1..end),
            vec![
                Run {
                    chunk: chunk(0, 0),
                    bits: 1..k
                },
                Run {
                    chunk: chunk(1, 0),
                    bits: 1..800
                },
            ]
        );
        // Every block a u64 can name, bar the last: few runs, each within one chunk.
        let runs = g.cover(1..u64::MAX);
        assert!(runs.len() <= 2 * g.levels() as usize, "{runs:?}");
        let mut total = 0u128;
        for r in &runs {
            assert!(r.bits.end <= k && r.bits.start < r.bits.end, "{r:?}");
            total += u128::from(r.bits.end - r.bits.start) * g.unit(r.chunk.level);
        }
        assert_eq!(total, u128::from(u64::MAX - 1));
    }

    #[test]
    fn bits_set_and_clear_in_ranges() {
        let mut m = vec![0u8; 4];
        assert!(set_bits(&mut m, 3..21, true));
        assert_eq!(m, [0b1111_1000, 0xff, 0b0001_1111, 0]);
        assert!(!set_bits(&mut m, 4..20, true));
        assert!(bit(&m, 3) && bit(&m, 20) && !bit(&m, 21) && !bit(&m, 2));
        assert!(set_bits(&mut m, 8..16, false));
        assert_eq!(m, [0b1111_1000, 0, 0b0001_1111, 0]);
        assert!(!bit(&m, 1000));
        assert!(!set_bits(&mut m, 30..1000, false));
    }
}
