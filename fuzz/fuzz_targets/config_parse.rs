//! Fuzz `VaultConfig::parse` on arbitrary bytes (a `.kmsfs/config.json` an attacker wrote): it
//! must never panic; what it accepts must encode to canonical bytes, a fingerprint and a field
//! comparison without panicking, and survive a JSON round trip unchanged.

#![no_main]

use std::path::Path;

use kmsfs::vault::VaultConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = VaultConfig::parse(data, "fuzz", Path::new("/fuzz")) else {
        return;
    };
    let canonical = cfg.canonical_bytes();
    assert!(canonical.starts_with(b"KMSFS-CFG2"));
    let _ = cfg.fingerprint();
    assert!(cfg.changes_from(&cfg).is_empty(), "a config differs from itself");
    let json = cfg.to_json().expect("an accepted config serializes");
    let again = VaultConfig::parse(json.as_bytes(), "fuzz", Path::new("/fuzz"))
        .expect("a serialized config parses");
    assert_eq!(again, cfg);
    assert_eq!(again.canonical_bytes(), canonical);
});
