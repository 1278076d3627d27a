//! Fuzz the decoders of names an attacker controls: backing file names, symlink targets, xattr
//! names and values, directory IV files and their bindings, under the vector name key. None may
//! panic; a name that decrypts is a valid name and encrypts back to the same backing name.

#![no_main]

use std::sync::LazyLock;

use kmsfs::crypto::DataKey;
use kmsfs::names::NameCipher;
use kmsfs::names::cipher::{DIRIV_LEN, is_valid_name};
use kmsfs::names::diriv::parse_diriv_file;
use libfuzzer_sys::fuzz_target;

/// The name key of the format vectors (00 01 … 1f).
static CIPHER: LazyLock<NameCipher> = LazyLock::new(|| {
    let raw: Vec<u8> = (0u8..32).collect();
    NameCipher::new(DataKey::from_slice(&raw).expect("32-byte key"))
});

fuzz_target!(|data: &[u8]| {
    let c = &*CIPHER;
    let iv: [u8; DIRIV_LEN] = std::array::from_fn(|i| 0xa0 + i as u8);
    if let Ok(plain) = c.decrypt_name(&iv, data) {
        if is_valid_name(&plain) {
            assert_eq!(c.encrypt_name(&iv, &plain).as_bytes(), data, "not canonical");
        }
    }
    let _ = c.decrypt_link(data);
    if let Some(Ok(plain)) = c.decrypt_xattr_name(data) {
        assert!(!plain.is_empty() || data.len() > 11);
    }
    let _ = c.open_xattr_value(b"user.kmsfs.x", data);
    if let Ok((div, bindings)) = parse_diriv_file(data) {
        assert!(!bindings.is_empty() && bindings.len() <= 2);
        for b in &bindings {
            let _ = c.verify_dir_binding(&div, None, b);
            let _ = c.verify_dir_binding(&div, Some((&iv, data)), b);
        }
    }
});
