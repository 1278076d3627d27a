//! Seal and open one block with AES-256-GCM-SIV; the header's key commitment; HMAC; zeroizing
//! key types.
//!
//! Errors say only "authentication failed": which byte or why is not something to tell an
//! attacker (the caller logs which file and block).

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use zeroize::Zeroizing;

use crate::format::header::{COMMITMENT_LEN, FileHeader};
use crate::format::holes::Chunk;
use crate::format::layout::{NONCE_LEN, TAG_LEN};
use crate::format::{ID_LEN, Id};

/// Length of every key kmsfs handles (AES-256).
pub const KEY_LEN: usize = 32;
/// Domain separator in front of every block's AAD.
pub const BLOCK_AAD_PREFIX: &[u8; 8] = b"KMSFS-B1";
/// Domain separator in front of the header bytes the key commitment covers.
pub const COMMITMENT_PREFIX: &[u8; 8] = b"KMSFS-C2";
/// Length of a block's AAD: prefix ‖ volume id ‖ file id ‖ block index (u64 LE).
pub const BLOCK_AAD_LEN: usize = 8 + 2 * ID_LEN + 8;

/// Errors of the crypto layer; deliberately uninformative.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The ciphertext, tag, nonce or AAD does not match: tampered or misplaced data.
    #[error("authentication failed")]
    Authentication,
    /// A stored block is shorter than its nonce and tag, or longer than a block.
    #[error("malformed block")]
    Malformed,
    /// Key material of the wrong length.
    #[error("invalid key length")]
    KeyLength,
    /// The operating system's random source failed.
    #[error("random source failed")]
    Random,
}

/// A 256-bit key and its AES-256-GCM-SIV context. The key bytes live on the heap in an
/// `mlock`ed page and are zeroized on drop; the context (key schedule) is aws-lc's, on its
/// heap, which aws-lc wipes when it frees it. aws-lc's AES-GCM-SIV (AES-NI, CLMUL assembly)
/// opens 4 KiB blocks about twice as fast as the `aes-gcm-siv` crate here; that crate stays
/// as the independent implementation the tests check this one against.
pub struct DataKey {
    bytes: Box<Zeroizing<[u8; KEY_LEN]>>,
    cipher: LessSafeKey,
}

/// Lock the pages holding `value` into RAM; warns once when RLIMIT_MEMLOCK forbids it. Pages
/// stay locked after the key is freed: other keys may share them, and locking is per page.
fn lock_in_memory<T>(value: &T) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = crate::sys::process::lock_in_memory(value) {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "cannot lock key memory ({e}): keys may be swapped out; raise RLIMIT_MEMLOCK"
            );
        }
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// A key from raw bytes (copied; wipe the source yourself).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: &[u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::KeyLength)?;
        DataKey::from_array(array)
    }

    fn from_array(array: &[u8; KEY_LEN]) -> Result<Self, CryptoError> {
        let key = Self::build(array);
        // The key schedule was computed in `build`'s frame and its callees', below this one.
        scrub_stack();
        key
    }

    #[inline(never)]
    fn build(array: &[u8; KEY_LEN]) -> Result<Self, CryptoError> {
        let mut bytes = Box::new(Zeroizing::new([0u8; KEY_LEN]));
        lock_in_memory(&*bytes);
        bytes.copy_from_slice(array);
        let unbound =
            UnboundKey::new(&AES_256_GCM_SIV, &bytes[..]).map_err(|_| CryptoError::KeyLength)?;
        Ok(DataKey {
            bytes,
            cipher: LessSafeKey::new(unbound),
        })
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut bytes[..]).map_err(|_| CryptoError::Random)?;
        DataKey::from_array(&bytes)
    }

    /// The raw key bytes, for wrapping by a key provider only.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Seal `plain` with `aad` under `nonce`, appending ciphertext ‖ tag to `out`.
    pub fn seal_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.resize(start + plain.len() + TAG_LEN, 0);
        self.seal_into(nonce, aad, plain, &mut out[start..]);
    }

    /// Seal `plain` with `aad` under `nonce` into `out` (exactly `plain.len() + 16` bytes):
    /// ciphertext ‖ tag, with no allocation.
    pub fn seal_into(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plain: &[u8], out: &mut [u8]) {
        let (body, tag_out) = out.split_at_mut(plain.len());
        body.copy_from_slice(plain);
        let sealed = self.cipher.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            body,
        );
        match sealed {
            Ok(tag) => tag_out.copy_from_slice(tag.as_ref()),
            // Only for inputs far above any block or key; were it to fail, zeros with a zero
            // tag (which never authenticate) go out, never the plaintext.
            Err(_) => {
                body.fill(0);
                tag_out.fill(0);
            }
        }
    }

    /// Open ciphertext ‖ tag (`sealed`) into `out`, which must be `sealed.len() - 16` long.
    pub fn open_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        let body = sealed
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&n| n == out.len())
            .ok_or(CryptoError::Malformed)?;
        // Decrypt from `sealed` straight into `out`: no copy first.
        self.cipher
            .open_separate_gather(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &sealed[..body],
                &sealed[body..],
                out,
            )
            .map_err(|_| {
                // Essential: on a bad tag `out` may hold unauthenticated plaintext.
                out.fill(0);
                CryptoError::Authentication
            })
    }
}

/// Overwrite the stack below the caller's frame, where finished callees (key schedules, SDK
/// decoders) may have left key material: called after every key is made or unwrapped.
#[inline(never)]
pub fn scrub_stack() {
    let mut buf = [0u8; 32 * 1024];
    zeroize::Zeroize::zeroize(&mut buf[..]);
    std::hint::black_box(&buf);
}

/// A block's AAD: "KMSFS-B1" ‖ volume id ‖ file id ‖ block index (u64 LE).
pub fn block_aad(volume_id: &Id, file_id: &Id, index: u64) -> [u8; BLOCK_AAD_LEN] {
    let mut aad = [0u8; BLOCK_AAD_LEN];
    aad[..8].copy_from_slice(BLOCK_AAD_PREFIX);
    aad[8..24].copy_from_slice(volume_id);
    aad[24..40].copy_from_slice(file_id);
    aad[40..48].copy_from_slice(&index.to_le_bytes());
    aad
}

/// A fresh random nonce.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    random_array()
}

/// `N` random bytes from the operating system.
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| CryptoError::Random)?;
    Ok(b)
}

/// The keys and ids one file's blocks are sealed with.
#[derive(Debug, Clone)]
pub struct BlockCipher {
    key: std::sync::Arc<DataKey>,
    volume_id: Id,
    file_id: Id,
}

impl BlockCipher {
    /// Blocks of file `file_id` in volume `volume_id` under `key`.
    pub fn new(key: std::sync::Arc<DataKey>, volume_id: Id, file_id: Id) -> Self {
        BlockCipher {
            key,
            volume_id,
            file_id,
        }
    }

    /// Seal block `index` with a fresh random nonce, appending nonce ‖ ciphertext ‖ tag to `out`.
    pub fn seal(&self, index: u64, plain: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let nonce = random_nonce()?;
        self.seal_with_nonce(index, &nonce, plain, out);
        Ok(())
    }

    /// Seal consecutive blocks `first, first + 1, …` (plaintexts `plains`) into `out`, which
    /// holds exactly their stored sizes, with fresh random nonces drawn in one call.
    pub fn seal_run<P: AsRef<[u8]>>(
        &self,
        first: u64,
        plains: &[P],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        let mut nonces = vec![0u8; plains.len() * NONCE_LEN];
        getrandom::fill(&mut nonces).map_err(|_| CryptoError::Random)?;
        let mut at = 0;
        for ((i, plain), nonce) in (first..).zip(plains).zip(nonces.chunks_exact(NONCE_LEN)) {
            let plain = plain.as_ref();
            let len = NONCE_LEN + plain.len() + TAG_LEN;
            let stored = out.get_mut(at..at + len).ok_or(CryptoError::Malformed)?;
            let (n, sealed) = stored.split_at_mut(NONCE_LEN);
            n.copy_from_slice(nonce);
            let aad = block_aad(&self.volume_id, &self.file_id, i);
            self.key.seal_into(
                &n.try_into().map_err(|_| CryptoError::Malformed)?,
                &aad,
                plain,
                sealed,
            );
            at += len;
        }
        if at == out.len() {
            Ok(())
        } else {
            Err(CryptoError::Malformed)
        }
    }

    /// Seal with a given nonce: for test vectors only; real writes use `seal`.
    pub fn seal_with_nonce(
        &self,
        index: u64,
        nonce: &[u8; NONCE_LEN],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(nonce);
        let aad = block_aad(&self.volume_id, &self.file_id, index);
        self.key.seal_detached(nonce, &aad, plain, out);
    }

    /// Open stored block `index` (nonce ‖ ciphertext ‖ tag) into `out` (exactly its plain length).
    pub fn open(&self, index: u64, stored: &[u8], out: &mut [u8]) -> Result<(), CryptoError> {
        if stored.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = stored.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
        let aad = block_aad(&self.volume_id, &self.file_id, index);
        self.key.open_detached(&nonce, &aad, sealed, out)
    }
}

impl BlockCipher {
    /// Seal hole-map chunk `chunk` (its bitmap `plain`) with a fresh nonce into `out`:
    /// nonce ‖ ciphertext ‖ tag, under the chunk's own AAD (so no chunk passes for a block).
    pub fn seal_chunk(
        &self,
        chunk: Chunk,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let nonce = random_nonce()?;
        self.seal_chunk_with_nonce(chunk, &nonce, plain, out);
        Ok(())
    }

    /// `seal_chunk` with a given nonce: for test vectors.
    pub fn seal_chunk_with_nonce(
        &self,
        chunk: Chunk,
        nonce: &[u8; NONCE_LEN],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(nonce);
        let aad = chunk_aad(&self.volume_id, &self.file_id, chunk);
        self.key.seal_detached(nonce, &aad, plain, out);
    }

    /// Open stored hole-map chunk `chunk` into `out` (exactly its bitmap length).
    pub fn open_chunk(
        &self,
        chunk: Chunk,
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        if stored.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = stored.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
        let aad = chunk_aad(&self.volume_id, &self.file_id, chunk);
        self.key.open_detached(&nonce, &aad, sealed, out)
    }
}

/// A hole-map chunk's AAD: "KMSFS-H" ‖ level digit ‖ volume id ‖ file id ‖
/// chunk index (u64 LE): the block AAD's shape with its own prefixes.
pub fn chunk_aad(volume_id: &Id, file_id: &Id, chunk: Chunk) -> [u8; BLOCK_AAD_LEN] {
    let mut aad = block_aad(volume_id, file_id, chunk.index);
    aad[..8].copy_from_slice(&chunk.aad_prefix());
    aad
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Whether `a` and `b` are equal, in time independent of where they differ.
pub fn equal_ct(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// The header's key commitment: HMAC-SHA256(data key, "KMSFS-C2" ‖ header bytes 0..96).
/// HMAC-SHA256 is collision resistant in its key, so no header commits to two keys (which
/// AES-GCM-SIV alone would allow), and it authenticates every field before the slots.
pub fn key_commitment(key: &DataKey, header: &FileHeader) -> [u8; COMMITMENT_LEN] {
    hmac_sha256(
        key.expose(),
        &[COMMITMENT_PREFIX, &header.committed_bytes()],
    )
}

/// Check a decoded header's key commitment against the unwrapped data key (constant time).
pub fn verify_header(key: &DataKey, header: &FileHeader) -> Result<(), CryptoError> {
    if equal_ct(&key_commitment(key, header), &header.commitment) {
        Ok(())
    } else {
        Err(CryptoError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cipher(file: u8) -> BlockCipher {
        let key = DataKey::from_slice(&[5; 32]).expect("key");
        BlockCipher::new(Arc::new(key), [1; 16], [file; 16])
    }

    /// aws-lc's AES-256-GCM-SIV against the independent RustCrypto `aes-gcm-siv`: the same
    /// bytes for every length around the block and AES boundaries, each opens the other's,
    /// and any flipped bit fails with the output zeroed.
    #[test]
    fn matches_the_independent_aes_gcm_siv_implementation() {
        use aes_gcm_siv::aead::{AeadInOut, KeyInit};
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut bytes = |n: usize| -> Vec<u8> { (0..n).map(|_| next() as u8).collect() };
        for len in [
            0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 1000, 4095, 4096,
        ] {
            for aad_len in [0, 1, 16, 48, 67] {
                let key_bytes = bytes(32);
                let nonce: [u8; NONCE_LEN] = bytes(NONCE_LEN).try_into().expect("nonce");
                let (aad, plain) = (bytes(aad_len), bytes(len));
                let key = DataKey::from_slice(&key_bytes).expect("key");
                let mut ours = Vec::new();
                key.seal_detached(&nonce, &aad, &plain, &mut ours);

                let reference = aes_gcm_siv::Aes256GcmSiv::new_from_slice(&key_bytes).expect("key");
                let mut theirs = plain.clone();
                let tag = reference
                    .encrypt_inout_detached(&nonce.into(), &aad, (&mut theirs[..]).into())
                    .expect("seal");
                theirs.extend_from_slice(&tag);
                assert_eq!(ours, theirs, "len {len}, aad {aad_len}");

                let mut out = vec![0u8; len];
                key.open_detached(&nonce, &aad, &theirs, &mut out)
                    .expect("open");
                assert_eq!(out, plain);
                for bit in [0, 8 * len / 2, 8 * (len + TAG_LEN) - 1] {
                    let mut bad = ours.clone();
                    bad[bit / 8] ^= 1 << (bit % 8);
                    let mut out = vec![0xAA; len];
                    assert_eq!(
                        key.open_detached(&nonce, &aad, &bad, &mut out),
                        Err(CryptoError::Authentication)
                    );
                    assert!(
                        out.iter().all(|&b| b == 0),
                        "output left after a failed open"
                    );
                }
            }
        }
    }

    #[test]
    fn seal_open_round_trip() {
        let c = cipher(2);
        for len in [0, 1, 4095, 4096] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut stored = Vec::new();
            c.seal(3, &plain, &mut stored).expect("seal");
            assert_eq!(stored.len(), len + 28);
            let mut out = vec![0; len];
            c.open(3, &stored, &mut out).expect("open");
            assert_eq!(out, plain);
        }
    }

    #[test]
    fn a_sealed_run_opens_block_by_block() {
        let c = cipher(2);
        let plains: Vec<Vec<u8>> = [4096, 4096, 17].iter().map(|&n| vec![n as u8; n]).collect();
        let mut out = vec![0u8; plains.iter().map(|p| p.len() + 28).sum()];
        c.seal_run(5, &plains, &mut out).expect("seal");
        let mut at = 0;
        for (i, p) in (5..).zip(&plains) {
            let mut back = vec![0u8; p.len()];
            c.open(i, &out[at..at + p.len() + 28], &mut back)
                .expect("open");
            assert_eq!(&back, p);
            at += p.len() + 28;
        }
        let mut short = vec![0u8; out.len() - 1];
        assert_eq!(
            c.seal_run(5, &plains, &mut short),
            Err(CryptoError::Malformed)
        );
    }

    #[test]
    fn wrong_index_or_file_is_rejected() {
        let mut stored = Vec::new();
        cipher(2).seal(3, b"hello", &mut stored).expect("seal");
        let mut out = [0; 5];
        assert_eq!(
            cipher(2).open(4, &stored, &mut out),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            cipher(9).open(3, &stored, &mut out),
            Err(CryptoError::Authentication)
        );
        assert_eq!(out, [0; 5], "no plaintext left behind on failure");
    }

    #[test]
    fn debug_hides_key() {
        let k = DataKey::from_slice(&[0xAB; 32]).expect("key");
        assert_eq!(format!("{k:?}"), "DataKey(<redacted>)");
    }
}
