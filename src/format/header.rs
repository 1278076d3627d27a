//! The per-file header: fixed size (1024 bytes) for every file of a vault, so a file's plain size
//! follows from its backing size alone.
//!
//! ```text
//! offset size  field                                   covered by the key commitment
//! 0      8     magic "KMSFSENC"                        yes
//! 8      2     format version, u16 LE (2 or 3)         yes
//! 10     2     header size, u16 LE (= 1024)            yes
//! 12     4     block size, u32 LE                      yes
//! 16     16    volume id                               yes
//! 32     16    file id (random, 128 bit)               yes
//! 48     1     provider id (1 local, 2 aws-kms, 3 bucket key)  yes
//! 49     1     reserved, zero                          yes
//! 50     2     slot capacity, u16 LE (= 442)           yes
//! 52     8     key made, u64 LE Unix seconds (v3; zero in v2, or unknown)  yes
//! 60     36    zero padding                            yes
//! 96     32    key commitment                          -
//! 128    1     active slot (0 or 1)                    no: rewrap flips it
//! 129    7     reserved, zero                          no (checked to be zero)
//! 136    2     slot 0: wrapped key length, u16 LE      no: the KMS authenticates the blob
//! 138    442   slot 0: wrapped key, zero padded
//! 580    2     slot 1: wrapped key length, u16 LE
//! 582    442   slot 1: wrapped key, zero padded
//! 1024         end
//! ```
//! The key commitment is HMAC-SHA256(data key, "KMSFS-C2" ‖ bytes 0..96) (computed by
//! `crypto::key_commitment`): it authenticates the fields and commits the header to exactly one
//! data key, so whichever slot is active, only that key opens the file.

use super::{FormatError, ID_LEN, Id};
use crate::format::layout::{Layout, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

/// Total header size in bytes.
pub const HEADER_SIZE: usize = 1024;
/// The magic bytes every kmsfs file starts with.
pub const MAGIC: [u8; 8] = *b"KMSFSENC";
/// The format version this build gives new vaults (and their files' headers).
pub const FORMAT_VERSION: u16 = 3;
/// The oldest format version this build reads (and keeps writing into vaults made with it).
pub const OLDEST_VERSION: u16 = 2;
/// The first format version whose headers record when their data key was made.
pub const KEY_MADE_VERSION: u16 = 3;
/// Largest wrapped key a slot holds (an AWS KMS CiphertextBlob is ~184 bytes).
pub const SLOT_CAPACITY: usize = 442;
/// Bytes at the start of the header covered by the key commitment.
pub const COMMITTED_LEN: usize = 96;
/// Length of the key commitment (HMAC-SHA256).
pub const COMMITMENT_LEN: usize = 32;

/// Byte offsets of the header's fields (the table above), for code that reads or writes one
/// field in place: rewrap, fsck, the coherence check of shared stores, tests, fuzz targets.
pub mod offset {
    /// The magic.
    pub const MAGIC: usize = 0;
    /// The format version (u16 LE).
    pub const VERSION: usize = 8;
    /// The block size (u32 LE).
    pub const BLOCK_SIZE: usize = 12;
    /// The volume id (16 bytes).
    pub const VOLUME_ID: usize = 16;
    /// The file id (16 bytes).
    pub const FILE_ID: usize = 32;
    /// The provider id (1 byte).
    pub const PROVIDER: usize = 48;
    /// When the data key was made (u64 LE Unix seconds; format 3).
    pub const KEY_MADE: usize = 52;
    /// The key commitment (32 bytes).
    pub const COMMITMENT: usize = 96;
    /// The active-slot byte: the first byte outside the commitment.
    pub const ACTIVE: usize = 128;
    /// Each slot: its u16 LE length, then its wrapped key and zero padding.
    pub const SLOTS: [usize; 2] = [136, 580];
}

const COMMITMENT_OFFSET: usize = offset::COMMITMENT;
const ACTIVE_OFFSET: usize = offset::ACTIVE;
const SLOT_OFFSETS: [usize; 2] = offset::SLOTS;

/// One in-place write of a header: `bytes` at `offset`, then (if `sync`) fdatasync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderWrite {
    /// Where in the file.
    pub offset: u64,
    /// What.
    pub bytes: Vec<u8>,
    /// Whether the step must reach the disk before the next one.
    pub sync: bool,
}

/// The crash-safe in-place move of a header from `old` to `new`, which differ only in the
/// inactive slot `inactive` (the new wrapped key) and possibly the provider id and commitment:
/// (1) the new slot, synced, while the active byte still names the old one; (2) the flip —
/// the active byte alone, or bytes 48..=128 (provider, commitment, active byte, in the first
/// 512-byte sector) when the provider changes — synced; (3) the old slot erased (no sync needed:
/// a damaged inactive slot is ignored).
pub fn slot_rewrite_plan(old: &FileHeader, new: &FileHeader, inactive: usize) -> [HeaderWrite; 3] {
    let slots_from = ACTIVE_OFFSET + 1;
    let mut staged = new.clone();
    staged.active = old.active;
    let step1 = HeaderWrite {
        offset: slots_from as u64,
        bytes: staged.encode()[slots_from..].to_vec(),
        sync: true,
    };
    let mut flipped = new.clone();
    flipped.active = inactive;
    let flip_from = if flipped.provider == old.provider {
        ACTIVE_OFFSET
    } else {
        offset::PROVIDER
    };
    let step2 = HeaderWrite {
        offset: flip_from as u64,
        bytes: flipped.encode()[flip_from..=ACTIVE_OFFSET].to_vec(),
        sync: true,
    };
    let mut erased = flipped;
    erased.slots[old.active] = Vec::new();
    let step3 = HeaderWrite {
        offset: slots_from as u64,
        bytes: erased.encode()[slots_from..].to_vec(),
        sync: false,
    };
    [step1, step2, step3]
}

/// Which key provider wrapped a file's data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderId {
    /// A master key in a local file.
    Local = 1,
    /// AWS KMS (or a KMS speaking its API).
    AwsKms = 2,
    /// Bucket-key mode: wrapped locally by a volume key that the KMS wraps.
    BucketKey = 3,
}

impl ProviderId {
    /// The provider for a header byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(ProviderId::Local),
            2 => Some(ProviderId::AwsKms),
            3 => Some(ProviderId::BucketKey),
            _ => None,
        }
    }
}

/// A decoded per-file header.
#[derive(Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// The header's format version (the vault's: 2 or 3).
    pub version: u16,
    /// When the data key was made, in Unix seconds (format 3; `None` in format 2: unknown).
    pub key_made: Option<u64>,
    /// Plaintext block size of the file.
    pub block_size: u32,
    /// The vault this file belongs to.
    pub volume_id: Id,
    /// This file's random id, bound into every block's AAD and the KMS encryption context.
    pub file_id: Id,
    /// Which provider wrapped the data key.
    pub provider: ProviderId,
    /// Which slot holds the wrapped key in use.
    pub active: usize,
    /// The two wrapped-key slots (an empty vector is an empty slot).
    pub slots: [Vec<u8>; 2],
    /// Key commitment over bytes 0..96, keyed by the data key.
    pub commitment: [u8; COMMITMENT_LEN],
}

impl std::fmt::Debug for FileHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHeader")
            .field("file_id", &hex::encode(self.file_id))
            .field("volume_id", &hex::encode(self.volume_id))
            .field("version", &self.version)
            .field("key_made", &self.key_made)
            .field("block_size", &self.block_size)
            .field("provider", &self.provider)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl FileHeader {
    /// A new header of the current format with `wrapped` in slot 0, no key time and a zero
    /// commitment (set `version`/`key_made` as the vault needs, then fill the commitment with
    /// `crypto::key_commitment`).
    pub fn new(
        block_size: u32,
        volume_id: Id,
        file_id: Id,
        provider: ProviderId,
        wrapped: Vec<u8>,
    ) -> Result<Self, FormatError> {
        if wrapped.is_empty() || wrapped.len() > SLOT_CAPACITY {
            return Err(FormatError::InvalidField("wrapped key length"));
        }
        Ok(FileHeader {
            version: FORMAT_VERSION,
            key_made: None,
            block_size,
            volume_id,
            file_id,
            provider,
            active: 0,
            slots: [wrapped, Vec::new()],
            commitment: [0; COMMITMENT_LEN],
        })
    }

    /// The wrapped data key in the active slot.
    pub fn wrapped_key(&self) -> &[u8] {
        &self.slots[self.active]
    }

    /// The layout (header size + block size) this header describes.
    pub fn layout(&self) -> Result<Layout, FormatError> {
        Layout::new(HEADER_SIZE as u64, self.block_size)
    }

    /// Bytes 0..96: the fields the key commitment covers.
    pub fn committed_bytes(&self) -> [u8; COMMITTED_LEN] {
        let mut b = [0u8; COMMITTED_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_SIZE as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..32].copy_from_slice(&self.volume_id);
        b[32..48].copy_from_slice(&self.file_id);
        b[48] = self.provider as u8;
        b[50..52].copy_from_slice(&(SLOT_CAPACITY as u16).to_le_bytes());
        if self.version >= KEY_MADE_VERSION {
            let made = self.key_made.unwrap_or(0);
            b[offset::KEY_MADE..offset::KEY_MADE + 8].copy_from_slice(&made.to_le_bytes());
        }
        b
    }

    /// The slot area (bytes 128..1024): active slot byte and both slots.
    pub fn slot_bytes(&self) -> [u8; HEADER_SIZE - ACTIVE_OFFSET] {
        let mut b = [0u8; HEADER_SIZE - ACTIVE_OFFSET];
        b[0] = self.active as u8;
        for (slot, &off) in self.slots.iter().zip(&SLOT_OFFSETS) {
            let at = off - ACTIVE_OFFSET;
            let len = slot.len().min(SLOT_CAPACITY);
            b[at..at + 2].copy_from_slice(&(len as u16).to_le_bytes());
            b[at + 2..at + 2 + len].copy_from_slice(&slot[..len]);
        }
        b
    }

    /// Offset of the slot area within the header (rewrap rewrites only this part).
    pub const SLOT_AREA_OFFSET: u64 = ACTIVE_OFFSET as u64;

    /// The full 1024 header bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..COMMITTED_LEN].copy_from_slice(&self.committed_bytes());
        b[COMMITMENT_OFFSET..COMMITMENT_OFFSET + COMMITMENT_LEN].copy_from_slice(&self.commitment);
        b[ACTIVE_OFFSET..].copy_from_slice(&self.slot_bytes());
        b
    }

    /// Decode a header from untrusted bytes. Checks structure only; the key commitment is
    /// checked by `crypto::verify_header` once the data key is known. Formats 2 and 3 are
    /// read; format 1 (before key commitment) or a newer one is `UnsupportedVersion`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < HEADER_SIZE {
            if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
                return Err(FormatError::BadMagic);
            }
            return Err(FormatError::Truncated {
                need: HEADER_SIZE,
                have: bytes.len(),
            });
        }
        let b = &bytes[..HEADER_SIZE];
        if b[0..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16_at(b, 8);
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion(version));
        }
        if usize::from(u16_at(b, 10)) != HEADER_SIZE {
            return Err(FormatError::InvalidField("header size"));
        }
        let block_size = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two()
        {
            return Err(FormatError::InvalidField("block size"));
        }
        let provider = ProviderId::from_byte(b[48]).ok_or(FormatError::InvalidField("provider"))?;
        if usize::from(u16_at(b, 50)) != SLOT_CAPACITY {
            return Err(FormatError::InvalidField("slot capacity"));
        }
        // Format 2 has zeros where format 3 records the key's time.
        let padding_from = if version >= KEY_MADE_VERSION {
            offset::KEY_MADE + 8
        } else {
            offset::KEY_MADE
        };
        if b[49] != 0 || b[padding_from..COMMITMENT_OFFSET].iter().any(|&x| x != 0) {
            return Err(FormatError::InvalidField("padding"));
        }
        let key_made = (version >= KEY_MADE_VERSION)
            .then(|| u64_at(b, offset::KEY_MADE))
            .filter(|&t| t != 0);
        let active = usize::from(b[ACTIVE_OFFSET]);
        if active > 1
            || b[ACTIVE_OFFSET + 1..SLOT_OFFSETS[0]]
                .iter()
                .any(|&x| x != 0)
        {
            return Err(FormatError::InvalidField("active slot"));
        }
        let mut slots = [Vec::new(), Vec::new()];
        for (i, &off) in SLOT_OFFSETS.iter().enumerate() {
            let len = usize::from(u16_at(b, off));
            let area = &b[off + 2..off + 2 + SLOT_CAPACITY];
            let valid =
                len <= SLOT_CAPACITY && area[len.min(SLOT_CAPACITY)..].iter().all(|&x| x == 0);
            if i == active {
                if len == 0 || !valid {
                    return Err(FormatError::InvalidField("wrapped key slot"));
                }
            } else if !valid {
                // A damaged inactive slot is ignored: only the active slot is ever used.
                continue;
            }
            slots[i] = area[..len].to_vec();
        }
        let mut commitment = [0u8; COMMITMENT_LEN];
        commitment.copy_from_slice(&b[COMMITMENT_OFFSET..COMMITMENT_OFFSET + COMMITMENT_LEN]);
        let mut volume_id = [0u8; ID_LEN];
        volume_id.copy_from_slice(&b[16..32]);
        let mut file_id = [0u8; ID_LEN];
        file_id.copy_from_slice(&b[32..48]);
        Ok(FileHeader {
            version,
            key_made,
            block_size,
            volume_id,
            file_id,
            provider,
            active,
            slots,
            commitment,
        })
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FileHeader {
        let mut h = FileHeader::new(4096, [1; 16], [2; 16], ProviderId::Local, vec![9; 61])
            .expect("valid header");
        h.commitment = [7; 32];
        h
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(FileHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn key_time_round_trips_in_format_3_and_is_unknown_in_format_2() {
        let mut h = sample();
        h.key_made = Some(1_790_000_000);
        let b = h.encode();
        assert_eq!(&b[52..60], &1_790_000_000u64.to_le_bytes());
        assert_eq!(FileHeader::decode(&b), Ok(h.clone()));

        let mut old = h;
        old.version = 2;
        let b = old.encode();
        assert_eq!(&b[8..10], &2u16.to_le_bytes());
        assert!(
            b[52..96].iter().all(|&x| x == 0),
            "format 2 has no key time"
        );
        let back = FileHeader::decode(&b).expect("format 2 still reads");
        assert_eq!((back.version, back.key_made), (2, None));
        // In format 2 those bytes are padding: a time there is damage, not a time.
        let mut bad = b;
        bad[52] = 1;
        assert!(FileHeader::decode(&bad).is_err());
        for v in [1u16, 4] {
            let mut b = sample().encode();
            b[8..10].copy_from_slice(&v.to_le_bytes());
            assert_eq!(
                FileHeader::decode(&b),
                Err(FormatError::UnsupportedVersion(v))
            );
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(FileHeader::decode(b"abc"), Err(FormatError::BadMagic));
        assert_eq!(FileHeader::decode(&[0u8; 2000]), Err(FormatError::BadMagic));
        assert!(matches!(
            FileHeader::decode(&sample().encode()[..500]),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn structural_fields_are_checked() {
        let good = sample().encode();
        for (at, what) in [
            (8, "version"),
            (10, "size"),
            (14, "bs"),
            (48, "provider"),
            (50, "cap"),
            (60, "pad"),
            (128, "active"),
            (130, "reserved"),
            (137, "slot len"),
            (300, "slot tail"),
        ] {
            let mut b = good;
            b[at] ^= 0x40;
            assert!(FileHeader::decode(&b).is_err(), "{what} change accepted");
        }
    }

    /// Applying the plan step by step gives, after each step, a header that decodes and names a
    /// slot holding a key: the old one until the flip, the new one after.
    #[test]
    fn the_slot_rewrite_plan_is_safe_at_every_step() {
        let old = sample();
        let mut new = old.clone();
        new.slots[1] = vec![5; 200];
        new.provider = ProviderId::AwsKms;
        new.commitment = [9; 32];
        let mut bytes = old.encode().to_vec();
        let plan = slot_rewrite_plan(&old, &new, 1);
        let want_active = [0, 1, 1];
        for (step, w) in plan.iter().enumerate() {
            let at = w.offset as usize;
            bytes[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
            let h = FileHeader::decode(&bytes).expect("decodes after every step");
            assert_eq!(h.active, want_active[step], "step {step}");
        }
        let done = FileHeader::decode(&bytes).expect("final");
        assert_eq!(done.wrapped_key(), &[5; 200][..]);
        assert_eq!(done.provider, ProviderId::AwsKms);
        assert!(done.slots[0].is_empty(), "old slot erased");
        assert!(plan[1].offset == offset::PROVIDER as u64 && plan[1].bytes.len() == 81);
    }

    #[test]
    fn oversized_wrapped_key_is_refused() {
        assert!(FileHeader::new(4096, [0; 16], [0; 16], ProviderId::AwsKms, vec![1; 443]).is_err());
    }
}
