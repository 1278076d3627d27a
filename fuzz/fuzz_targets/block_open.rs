//! Fuzz block opening and the size arithmetic on arbitrary bytes.
//!
//! Input: u64 LE `x` ‖ one byte `s` ‖ `stored`. `stored` is opened as block `x` of the format
//! test vectors' file (same key, volume id and file id, so the seed blocks open); it must never
//! panic, and must fail unless it is a genuine block. `x` is also fed to the layout of block size
//! 2^(9 + s mod 12): `plain_size` must not panic on any u64, and `plain_size(backing_size(p)) == p`
//! for every p < 2^50.

#![no_main]

use std::sync::{Arc, LazyLock};

use kmsfs::crypto::{BlockCipher, CryptoError, DataKey};
use kmsfs::format::layout::BLOCK_OVERHEAD;
use kmsfs::format::{HEADER_SIZE, Layout};
use libfuzzer_sys::fuzz_target;

/// The block cipher of the format test vectors: key 00 … 1f, volume 40 … 4f, file 50 … 5f.
static CIPHER: LazyLock<BlockCipher> = LazyLock::new(|| {
    let seq = |start: u8, n: u8| (start..start + n).collect::<Vec<u8>>();
    let key = DataKey::from_slice(&seq(0x00, 32)).expect("32-byte key");
    let volume = seq(0x40, 16).try_into().expect("16 bytes");
    let file = seq(0x50, 16).try_into().expect("16 bytes");
    BlockCipher::new(Arc::new(key), volume, file)
});

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let x = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let shift = 9 + u32::from(data[8] % 12);
    let stored = &data[9..];

    check_layout(x, shift);

    let overhead = BLOCK_OVERHEAD as usize;
    let mut out = vec![0u8; stored.len().saturating_sub(overhead)];
    match CIPHER.open(x, stored, &mut out) {
        Ok(()) => {
            // Only a genuine block opens: sealing its plaintext again with its nonce must give
            // back the same bytes.
            let nonce: [u8; 12] = stored[..12].try_into().expect("nonce");
            let mut again = Vec::new();
            CIPHER.seal_with_nonce(x, &nonce, &out, &mut again);
            assert_eq!(again, stored, "a block opened that the cipher did not make");
        }
        Err(CryptoError::Malformed) => assert!(stored.len() < overhead),
        Err(_) => assert!(
            out.iter().all(|&b| b == 0),
            "plaintext left behind on failure"
        ),
    }
    // A wrong output length is refused, never a panic or a partial write.
    let mut wrong = vec![0u8; out.len() + 1];
    assert!(CIPHER.open(x, stored, &mut wrong).is_err());
});

fn check_layout(x: u64, shift: u32) {
    let layout = Layout::new(HEADER_SIZE as u64, 1 << shift).expect("valid block size");
    let lossy = layout.plain_size_lossy(x);
    assert!(lossy <= x);
    match layout.plain_size(x) {
        Ok(p) => {
            assert_eq!(
                layout.backing_size(p),
                x,
                "plain_size is not backing_size's inverse"
            );
            assert_eq!(lossy, p);
        }
        Err(_) => assert!(x != 0),
    }

    let p = x & ((1 << 50) - 1);
    let backing = layout.backing_size(p);
    assert_eq!(
        layout.plain_size(backing),
        Ok(p),
        "round trip of plain size {p}"
    );
    assert!(p == 0 || backing > p, "backing smaller than plain");

    // Block arithmetic in the range FUSE offsets can take (i64): lengths sum to the size and
    // the final block is never full.
    let count = layout.block_count(p);
    if count > 0 {
        let bs = layout.block_size();
        assert!(layout.block_len(count - 1, p) < bs);
        assert_eq!(layout.block_len(count, p), 0);
        assert_eq!(
            layout.plain_offset(count - 1) + layout.block_len(count - 1, p) as u64,
            p
        );
        assert_eq!(
            layout.backing_offset(count - 1)
                + (layout.block_len(count - 1, p) + BLOCK_OVERHEAD as usize) as u64,
            backing
        );
    }
    // A span walk over a bounded range starting anywhere below 2^62.
    let offset = x >> 2;
    let len = u64::from(x as u16) << (shift % 5);
    let mut pos = offset;
    for span in layout.spans(offset, len) {
        assert_eq!(layout.plain_offset(span.index) + span.start as u64, pos);
        assert!(span.start <= span.end && span.end <= layout.block_size());
        pos += (span.end - span.start) as u64;
    }
    assert_eq!(pos, offset + len);
}
