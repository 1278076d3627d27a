//! Fuzz `FileHeader::decode` on arbitrary bytes: it must never panic, and whatever it accepts
//! must encode back to the same header (and, outside an ignored damaged inactive slot, to the
//! same bytes). Checking the tag of an accepted header must not panic either.

#![no_main]

use std::sync::LazyLock;

use kmsfs::crypto::{self, DataKey};
use kmsfs::format::FileHeader;
use kmsfs::format::header::SLOT_CAPACITY;
use libfuzzer_sys::fuzz_target;

/// The data key of the format test vectors (00 01 … 1f), so the seed header verifies.
static KEY: LazyLock<DataKey> = LazyLock::new(|| {
    let raw: Vec<u8> = (0u8..32).collect();
    DataKey::from_slice(&raw).expect("32-byte key")
});

/// Offset of slot 0's length field; each slot is a u16 length and SLOT_CAPACITY bytes.
const SLOT0: usize = kmsfs::format::header::offset::SLOTS[0];

fuzz_target!(|data: &[u8]| {
    let Ok(header) = FileHeader::decode(data) else {
        return;
    };
    let bytes = header.encode();
    let again = FileHeader::decode(&bytes).expect("an encoded header decodes");
    assert_eq!(again, header, "decode(encode(h)) != h");
    assert_eq!(again.encode(), bytes, "encoding is not stable");

    // Everything but the inactive slot is reproduced byte for byte.
    assert_eq!(
        bytes[..SLOT0],
        data[..SLOT0],
        "tagged area, tag or active byte changed"
    );
    let active = SLOT0 + header.active * (2 + SLOT_CAPACITY);
    let slot = active..active + 2 + SLOT_CAPACITY;
    assert_eq!(bytes[slot.clone()], data[slot], "active slot changed");

    assert!(header.active <= 1);
    assert!(!header.wrapped_key().is_empty());
    assert!(
        header.layout().is_ok(),
        "accepted a block size the layout refuses"
    );
    let _ = crypto::verify_header(&KEY, &header);
});
