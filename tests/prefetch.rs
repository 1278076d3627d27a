//! Key prefetch through a real mount with the KMS 20 ms away (moto behind a delaying proxy):
//! a cold reader of a directory, a tree walk, bucket-key mode, after forget, with TTL 0.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::fs;
use std::time::Duration;

use common::kmskit::*;
use common::mount::{MountGuard, Rng, Vault};

/// Write `n` files of a few KiB into directory `dir` of a fresh mount; returns their contents.
fn fill_dir(v: &Vault, dir: &str, n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    let files: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (format!("{dir}/f{i:04}"), rng.bytes(2000 + i)))
        .collect();
    let m = v.mount(&[]);
    fs::create_dir(m.join(dir)).expect("mkdir");
    for (name, data) in &files {
        fs::write(m.join(name), data).expect("write");
    }
    m.unmount();
    files
}

/// Read `files` through `m` with the KMS 20 ms away, checking every byte; the most Decrypts
/// that were in flight at once (only a prefetch keeps more than one in flight for one reader).
fn read_at_20ms(kms: &Kms, m: &MountGuard, files: &[(String, Vec<u8>)]) -> usize {
    kms.quiet_and_reset();
    kms.proxy.set_delay(Duration::from_millis(20));
    for (name, data) in files {
        assert!(
            read_file(&m.join(name)).expect("cold read") == *data,
            "{name} differs"
        );
    }
    kms.proxy.set_delay(Duration::ZERO);
    kms.proxy.max_in_flight_for(DECRYPT)
}

#[test]
fn a_sequential_cold_reader_gets_the_directory_keys_prefetched() {
    let kms = Kms::start();
    let v = kms.vault();
    let files = fill_dir(&v, "tree", 300, 9);
    let m = v.mount(&[]);
    let in_flight = read_at_20ms(&kms, &m, &files);
    println!(
        "cold read of 300 files: {} file-key Decrypts, at most {in_flight} in flight",
        kms.file_decrypts()
    );
    assert!(
        in_flight >= 8,
        "prefetch kept only {in_flight} Decrypts in flight"
    );
    assert!(
        kms.file_decrypts() <= 300,
        "keys unwrapped twice: {:?}",
        kms.proxy.counts()
    );
    m.unmount();
}

#[test]
fn a_tree_walk_gets_the_next_sibling_directories_prefetched() {
    let kms = Kms::start();
    let v = kms.vault();
    let mut tree = Vec::new();
    for d in 0..12 {
        tree.extend(fill_dir(&v, &format!("d{d}"), 20, 20 + d));
    }
    let m = v.mount(&[]);
    // Walk in directory order, as find, tar and cp -r do.
    let dirs: Vec<String> = fs::read_dir(m.path())
        .expect("list root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let files_of = |d: &str| -> Vec<(String, Vec<u8>)> {
        let prefix = format!("{d}/");
        tree.iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .cloned()
            .collect()
    };

    kms.quiet_and_reset();
    for d in &dirs[..2] {
        for (name, data) in files_of(d) {
            assert!(
                read_file(&m.join(&name)).expect("cold read") == data,
                "{name} differs"
            );
        }
    }
    // Two walked siblings start a lookahead: two more directories, or (when the reader's cold
    // opens came fast enough to count as a tree walk) 128 files' worth of whole directories.
    // Either way it is bounded: 40 read, at most 128 + one 20-file directory ahead.
    kms.settle(Duration::from_millis(700));
    let fetched = kms.file_decrypts();
    assert!(
        (80..=40 + 128 + 20).contains(&fetched),
        "{fetched} keys fetched: {:?}",
        kms.proxy.counts()
    );
    // Their keys are cached: they read while the KMS hangs.
    kms.proxy.set_hang(true);
    for d in &dirs[2..4] {
        for (name, data) in files_of(d) {
            assert!(
                read_file(&m.join(&name)).expect("prefetched read") == data,
                "{name} differs"
            );
        }
    }
    kms.proxy.set_hang(false);
    m.unmount();
}

/// Every file under `dir` of mount `m`, depth first in listing order, as `grep -r` walks.
fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).expect("list") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            walk(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

#[test]
fn a_tree_of_small_directories_is_prefetched_ahead_of_a_walk() {
    // Shaped like a source tree: crates of one file per directory, two levels deep. No
    // directory has the three cold opens that prefetch a directory on its own.
    let kms = Kms::start();
    let v = kms.vault();
    let m = v.mount(&[]);
    let mut rng = Rng::new(31);
    for c in 0..8 {
        for (dir, file) in [("", "Cargo.toml"), ("/src", "lib.rs"), ("/src/x", "mod.rs")] {
            let d = m.join(format!("c{c}{dir}"));
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join(file), rng.bytes(1500)).expect("write");
        }
    }
    m.unmount();
    let m = v.mount(&[]);
    let crates: Vec<std::path::PathBuf> = fs::read_dir(m.path())
        .expect("list root")
        .map(|e| e.expect("entry").path())
        .collect();
    let files_of = |c: &std::path::Path| {
        let mut files = Vec::new();
        walk(c, &mut files);
        files
    };

    kms.quiet_and_reset();
    kms.proxy.set_delay(Duration::from_millis(20));
    for c in &crates[..4] {
        for f in files_of(c) {
            read_file(&f).expect("cold read");
        }
    }
    kms.proxy.set_delay(Duration::ZERO);
    kms.settle(Duration::from_millis(700));
    // The walk was seen: the next two crates, subdirectories included, are cached, so they
    // read while the KMS hangs.
    kms.proxy.set_hang(true);
    for c in &crates[4..6] {
        for f in files_of(c) {
            read_file(&f).unwrap_or_else(|e| panic!("{} not prefetched: {e}", f.display()));
        }
    }
    kms.proxy.set_hang(false);
    assert!(
        kms.file_decrypts() <= 24,
        "keys unwrapped twice: {:?}",
        kms.proxy.counts()
    );
    m.unmount();
}

#[test]
fn bucket_key_mode_makes_one_decrypt_per_mount_however_many_files() {
    let kms = Kms::start();
    let v = Vault::new().with_kms(&kms.proxy.url());
    v.init(&["--kms-key-id", &kms.key, "--bucket-key"]);
    kms.proxy.reset();
    let files = fill_dir(&v, "tree", 200, 10);
    assert_eq!(
        kms.proxy.count("GenerateDataKey"),
        0,
        "new files' keys are made locally: {:?}",
        kms.proxy.counts()
    );
    kms.proxy.reset();
    let m = v.mount(&[]);
    for (name, data) in &files {
        assert!(
            read_file(&m.join(name)).expect("cold read") == *data,
            "{name} differs"
        );
    }
    assert_eq!(
        kms.proxy.count_with(DECRYPT, "bucket"),
        1,
        "one bucket-key Decrypt: {:?}",
        kms.proxy.counts()
    );
    assert_eq!(
        kms.file_decrypts(),
        0,
        "no per-file Decrypt in bucket-key mode"
    );
    m.unmount();
}

#[test]
fn prefetch_runs_again_after_forget_and_in_a_recreated_directory() {
    let kms = Kms::start();
    let v = kms.vault();
    let files = fill_dir(&v, "tree", 100, 11);
    let m = v.mount(&[]);
    let forget = || v.forget(m.path());
    let read_at_20ms = |files: &[(String, Vec<u8>)]| read_at_20ms(&kms, &m, files);
    let first = read_at_20ms(&files);
    assert!(first >= 8, "first read: {first} in flight");
    forget();
    let again = read_at_20ms(&files);
    assert!(
        again >= 8,
        "after forget the directory is prefetched again: {again} in flight"
    );

    // A new directory in place of a deleted one (ext4 hands out its inode number again).
    fs::remove_dir_all(m.join("tree")).expect("rm -r tree");
    fs::create_dir(m.join("tree")).expect("mkdir tree");
    let mut rng = Rng::new(12);
    let fresh: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("tree/g{i:04}"), rng.bytes(1000 + i)))
        .collect();
    for (name, data) in &fresh {
        fs::write(m.join(name), data).expect("write");
    }
    forget();
    let recreated = read_at_20ms(&fresh);
    assert!(
        recreated >= 8,
        "a recreated directory is prefetched: {recreated} in flight"
    );
    m.unmount();
}

#[test]
fn with_a_zero_key_ttl_nothing_is_prefetched() {
    let kms = Kms::start();
    let v = kms.vault();
    let files = fill_dir(&v, "tree", 30, 13);
    let m = v.mount(&["--key-ttl", "0"]);
    kms.quiet_and_reset();
    for (name, data) in &files {
        assert!(
            read_file(&m.join(name)).expect("read") == *data,
            "{name} differs"
        );
    }
    kms.settle(Duration::from_millis(500));
    assert_eq!(
        kms.file_decrypts(),
        30,
        "one Decrypt per file read and none ahead: {:?}",
        kms.proxy.counts()
    );
    m.unmount();
}
