//! KMS economy (DESIGN.md §4, issue 5) through real mounts: the AWS provider against moto, every
//! KMS HTTP request passing a fault-injecting proxy (`common::moto::Proxy`) that counts requests
//! per operation and can delay, fail (503), refuse (DisabledException) or swallow them.
//!
//! Assertions count requests at the proxy; wall time is asserted only where the design names a
//! bound (a cached file reads within 1 s while the KMS hangs). Each test owns its moto, proxy,
//! vault and mount; guards stop and unmount them on every path (the mount is declared last, so
//! it goes first, while the proxy still answers).
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::kmskit::*;
use common::mount::{Rng, Vault, assert_contents, is_mounted};

/// `r` failed with one of `errnos`.
fn assert_fails_with<T: std::fmt::Debug>(r: io::Result<T>, errnos: &[i32], what: &str) -> i32 {
    match r {
        Err(e) => {
            let code = e.raw_os_error().unwrap_or(0);
            assert!(
                errnos.contains(&code),
                "{what}: {e} (errno {code}), expected one of {errnos:?}"
            );
            code
        }
        Ok(v) => panic!("{what}: expected errno {errnos:?}, got Ok({v:?})"),
    }
}

/// The mount answers metadata and directory listings.
fn assert_mount_up(mnt: &Path, what: &str) {
    assert!(
        is_mounted(mnt),
        "{what}: {} is no longer mounted",
        mnt.display()
    );
    fs::metadata(mnt).unwrap_or_else(|e| panic!("{what}: stat of the mount root: {e}"));
    fs::read_dir(mnt)
        .unwrap_or_else(|e| panic!("{what}: readdir of the mount root: {e}"))
        .for_each(|e| drop(e.expect("dir entry")));
}

/// Log lines at WARN or ERROR level.
fn bad_log_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect()
}

/// Recursively read every directory and stat every entry (`ls -lR`); returns the regular files.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        let p = e.path();
        let lmeta = fs::symlink_metadata(&p).expect("lstat");
        let meta = fs::metadata(&p).expect("stat");
        assert_eq!(lmeta.len(), meta.len());
        if meta.is_dir() {
            files.extend(walk(&p));
        } else if meta.is_file() {
            files.push(p);
        }
    }
    files
}

/// `kmsfs status MNT --json` of a mount of `v`.
fn status_json(v: &Vault, mnt: &Path) -> serde_json::Value {
    v.status_json(mnt)
}

/// Every regular file under the backing dir `dir`, recursively, but not the vault's own
/// `.kmsfs` directory.
fn backing_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        let t = e.file_type().expect("file type");
        if t.is_dir() && e.file_name() != ".kmsfs" {
            out.extend(backing_files(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn read_loops_and_tree_walks_make_no_kms_calls() {
    let kms = Kms::start();
    let v = kms.vault();
    let mut rng = Rng::new(1);
    let hot = rng.bytes(10_000);
    let mut tree = Vec::new();
    {
        let m = v.mount(&[]);
        fs::write(m.join("hot"), &hot).expect("write hot");
        for d in 0..10 {
            fs::create_dir(m.join(format!("d{d}"))).expect("mkdir");
            for f in 0..30 {
                let rel = format!("d{d}/f{f}");
                let data = rng.bytes(1 + (d * 30 + f) % 200);
                fs::write(m.join(&rel), &data).expect("write tree file");
                tree.push((rel, data));
            }
        }
        m.unmount();
    }

    // A fresh mount: no key is cached, so the first read is cold.
    let m = v.mount(&[]);
    kms.quiet_and_reset();
    for i in 0..1000 {
        let got = read_file(&m.join("hot")).expect("read hot");
        assert!(got == hot, "read {i} of hot returned other bytes");
    }
    let decrypts = kms.file_decrypts();
    assert!(
        decrypts <= 1,
        "1000 reopen+reads within the TTL made {decrypts} Decrypts"
    );
    assert_eq!(
        kms.proxy.requests(),
        decrypts,
        "reads made other KMS calls: {:?}",
        kms.proxy.counts()
    );

    // ls -lR of the tree: metadata only, no keys.
    kms.proxy.reset();
    let mut seen = walk(m.path());
    seen.sort();
    assert_eq!(seen.len(), tree.len() + 1, "files found by the walk");
    assert_eq!(
        kms.proxy.requests(),
        0,
        "a tree walk made KMS calls: {:?}",
        kms.proxy.counts()
    );
    // Sizes are the plain sizes (from the backing size alone).
    for (rel, data) in tree.iter().step_by(37) {
        assert_eq!(
            fs::metadata(m.join(rel)).expect("stat").len(),
            data.len() as u64
        );
    }
    m.unmount();
}

#[test]
fn concurrent_opens_of_an_uncached_file_make_one_decrypt() {
    let kms = Kms::start();
    let v = kms.vault();
    let data = Rng::new(2).bytes(300_000);
    {
        let m = v.mount(&[]);
        fs::write(m.join("shared"), &data).expect("write");
        m.unmount();
    }
    let m = v.mount(&["--threads", "8"]);
    kms.quiet_and_reset();
    kms.proxy.set_delay(Duration::from_millis(200));

    let path = m.join("shared");
    let data = Arc::new(data);
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (path, data, barrier) = (path.clone(), data.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let got = read_file(&path);
                matches!(&got, Ok(g) if g[..] == data[..])
            })
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().expect("reader thread"))
        .filter(|ok| *ok)
        .count();
    kms.proxy.set_delay(Duration::ZERO);
    assert_eq!(ok, 16, "every concurrent reader got the file");
    assert_eq!(
        kms.file_decrypts(),
        1,
        "16 concurrent opens of one file: {:?}",
        kms.proxy.counts()
    );
    m.unmount();
}

#[test]
fn touching_empty_files_generates_no_keys() {
    let kms = Kms::start();
    let v = kms.vault();
    let m = v.mount(&[]);
    kms.quiet_and_reset();
    for i in 0..100 {
        File::create(m.join(format!("empty{i}"))).expect("create");
    }
    for i in 0..100 {
        assert_eq!(
            fs::metadata(m.join(format!("empty{i}")))
                .expect("stat")
                .len(),
            0
        );
    }
    assert_eq!(
        kms.proxy.count(GENERATE),
        0,
        "touch made GenerateDataKey calls"
    );
    assert_eq!(
        kms.proxy.requests(),
        0,
        "touch made KMS calls: {:?}",
        kms.proxy.counts()
    );
    // An empty file reads as empty without a key.
    assert!(read_file(&m.join("empty0")).expect("read empty").is_empty());
    assert_eq!(
        kms.proxy.requests(),
        0,
        "reading an empty file made KMS calls"
    );
    m.unmount();
}

#[test]
fn writing_new_files_takes_keys_from_the_pool() {
    let kms = Kms::start();
    let v = kms.vault();
    kms.proxy.set_delay(Duration::from_millis(50));
    kms.proxy.reset();
    let m = v.mount(&[]);
    // The mount's own start-up calls (DescribeKey, the file-name key's Decrypt) are done once
    // it is mounted; the pool fill goes on in the background and counts below.
    // The pool is full before the first write.
    kms.settle(Duration::from_millis(700));
    let mut rng = Rng::new(4);
    let files: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("new{i}"), rng.bytes(1 + (i * 97) % 5000)))
        .collect();
    for (name, data) in &files {
        fs::write(m.join(name), data).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
    // Let the pool refill to its target before counting.
    kms.settle(Duration::from_millis(1500));
    let generated = kms.proxy.count(GENERATE);
    println!(
        "GenerateDataKey: {generated}; all: {:?}",
        kms.proxy.counts()
    );
    assert!(
        generated >= 200,
        "200 new files but only {generated} GenerateDataKey calls"
    );
    assert!(
        generated <= 200 + POOL + POOL_WORKERS,
        "200 new files made {generated} GenerateDataKey calls (pool {POOL})"
    );
    assert_eq!(kms.file_decrypts(), 0, "writing new files needed an unwrap");
    assert_eq!(
        kms.proxy.errors(),
        0,
        "KMS errors: {:?}",
        kms.proxy.error_replies()
    );
    let status = status_json(&v, m.path());
    let (hits, misses) = (&status["pool_hits"], &status["pool_misses"]);
    println!("pool hits {hits}, misses {misses}");
    let (hits, misses) = (
        hits.as_u64().expect("pool_hits"),
        misses.as_u64().expect("pool_misses"),
    );
    assert_eq!(hits + misses, 200, "every new file took one key");
    assert!(
        hits >= POOL as u64,
        "only {hits} of 200 new files took a pooled key (pool {POOL}, full before the writes)"
    );
    // The proxy relays keep-alive: the SDK reuses its connections.
    let (conns, reqs) = (kms.proxy.connections(), kms.proxy.requests());
    println!("{reqs} requests on {conns} connections");
    assert!(
        conns * 4 <= reqs,
        "{reqs} requests took {conns} connections: keep-alive broken"
    );
    for (name, data) in &files {
        assert_contents(&m.join(name), data);
    }
    kms.proxy.set_delay(Duration::ZERO);
    m.unmount();
    let log = v.log();
    let bad = bad_log_lines(&log);
    assert!(
        bad.is_empty(),
        "the log shows failures:\n{}",
        bad.join("\n")
    );
}

#[test]
fn ttl_expiry_unwraps_again_and_a_refused_key_fails_reads() {
    let kms = Kms::start();
    let v = kms.vault();
    let data = Rng::new(5).bytes(20_000);
    {
        let m = v.mount(&[]);
        fs::write(m.join("f"), &data).expect("write");
        m.unmount();
    }
    let m = v.mount(&["--key-ttl", "2"]);
    kms.quiet_and_reset();
    let ttl = Duration::from_secs(2);
    let past_ttl = ttl + Duration::from_millis(800);

    assert!(read_file(&m.join("f")).expect("first read") == data);
    let unwrapped = Instant::now();
    assert_eq!(kms.file_decrypts(), 1, "cold read");
    assert!(read_file(&m.join("f")).expect("read within TTL") == data);
    assert_eq!(
        kms.file_decrypts(),
        1,
        "a read within the TTL hit the cache"
    );

    // Past the TTL the key is unwrapped again (the mount keeps no page cache across opens).
    while unwrapped.elapsed() < past_ttl {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(read_file(&m.join("f")).expect("read after TTL") == data);
    let unwrapped = Instant::now();
    assert_eq!(kms.file_decrypts(), 2, "a read past the TTL unwraps again");

    // The KMS refuses the key. A handle opened before (no pages cached: nothing read through
    // it) fails past the TTL too: the TTL counts for open handles.
    let held = File::open(m.join("f")).expect("open before the refusal");
    kms.proxy.set_deny(true);
    while unwrapped.elapsed() < past_ttl {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut buf = vec![0u8; 4096];
    let errno = assert_fails_with(
        held.read_at(&mut buf, 0),
        &[libc::EACCES, libc::EIO],
        "read through an open handle with the key refused",
    );
    println!("refused read: errno {errno}");
    let refused: Vec<_> = kms
        .proxy
        .error_replies()
        .into_iter()
        .filter(|e| e.op == DECRYPT && e.request.contains(FILE_CTX))
        .collect();
    assert!(
        refused.iter().any(|e| e.error_type == "DisabledException"),
        "the file key's refusal reached the mount: {:?}",
        kms.proxy.error_replies()
    );
    // No plaintext outlives the refusal: reading again, by handle or by path, fails too (by
    // path the file-name key may be what is refused first).
    assert_fails_with(
        held.read_at(&mut buf, 0),
        &[libc::EACCES, libc::EIO],
        "second read through the handle with the key refused",
    );
    assert_fails_with(
        read_file(&m.join("f")),
        &[libc::EACCES, libc::EIO],
        "read by path with the key refused",
    );
    assert!(
        is_mounted(m.path()),
        "the mount is still up after a refusal"
    );
    fs::metadata(m.path()).expect("stat of the mount root after a refusal");

    // Allowed again: reads work again, within a TTL (the file-name key is re-unwrapped once
    // per TTL in the background).
    kms.proxy.set_deny(false);
    let allowed = Instant::now();
    let again = loop {
        match read_file(&m.join("f")) {
            Ok(got) => break got,
            Err(e) => {
                assert!(
                    allowed.elapsed() < ttl * 2 + Duration::from_secs(3),
                    "reads still fail {:?} after the key is allowed again: {e}",
                    allowed.elapsed()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    println!(
        "reads work again {:?} after the key is allowed",
        allowed.elapsed()
    );
    assert!(again == data);
    let n = held
        .read_at(&mut buf, 0)
        .expect("the held handle reads again");
    assert!(buf[..n] == data[..n]);
    // A new name needs the file-name key, back within the same bound (the read above may be
    // served by the kernel's cached entry of "f", without the name key).
    while let Err(e) = fs::write(m.join("g"), b"after") {
        assert!(
            allowed.elapsed() < ttl * 2 + Duration::from_secs(3),
            "writes still fail {:?} after the key is allowed again: {e}",
            allowed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_contents(&m.join("g"), b"after");
    drop(held);
    m.unmount();
    assert!(
        v.log().contains("DisabledException"),
        "the refusal is logged:\n{}",
        v.log()
    );
}

#[test]
fn kms_outage_keeps_cached_files_readable_and_the_mount_up() {
    let kms = Kms::start();
    let v = kms.vault();
    let mut rng = Rng::new(6);
    let (cached, cold) = (rng.bytes(50_000), rng.bytes(7_000));
    {
        let m = v.mount(&[]);
        fs::write(m.join("cached"), &cached).expect("write cached");
        fs::write(m.join("cold"), &cold).expect("write cold");
        m.unmount();
    }
    let m = v.mount(&[]);
    kms.quiet_and_reset();
    assert!(read_file(&m.join("cached")).expect("warm the cache") == cached);
    assert_eq!(kms.file_decrypts(), 1);

    kms.proxy.set_down(true);
    kms.proxy.reset();
    for _ in 0..20 {
        assert!(read_file(&m.join("cached")).expect("cached file during the outage") == cached);
    }
    assert_eq!(
        kms.proxy.requests(),
        0,
        "cached reads reached the KMS: {:?}",
        kms.proxy.counts()
    );

    // A file whose key is not cached cannot be read, cleanly.
    assert_fails_with(
        read_file(&m.join("cold")),
        &[libc::EIO],
        "uncached file during the outage",
    );
    assert!(kms.file_decrypts() >= 1, "the cold read asked the KMS");
    assert!(kms.proxy.errors_for(DECRYPT) >= 1);

    // A new file's first write: from the pool, or EIO.
    let new_data = rng.bytes(3000);
    let wrote = match fs::write(m.join("new"), &new_data) {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EIO),
                "new file during the outage: {e}"
            );
            false
        }
    };
    println!(
        "new file during the outage: {}",
        if wrote { "written (pool)" } else { "EIO" }
    );
    if wrote {
        assert_contents(&m.join("new"), &new_data);
    }
    assert_mount_up(m.path(), "during the outage");

    // The outage ends: everything works.
    kms.proxy.set_down(false);
    assert!(read_file(&m.join("cold")).expect("cold file after the outage") == cold);
    assert!(read_file(&m.join("cached")).expect("cached file after the outage") == cached);
    let after = rng.bytes(4000);
    fs::write(m.join("after"), &after).expect("new file after the outage");
    assert_contents(&m.join("after"), &after);
    if wrote {
        assert_contents(&m.join("new"), &new_data);
    }
    m.unmount();
}

#[test]
fn hanging_kms_does_not_hang_cached_files() {
    let kms = Kms::start();
    let v = kms.vault();
    let mut rng = Rng::new(7);
    let (cached, cold) = (rng.bytes(40_000), rng.bytes(9_000));
    {
        let m = v.mount(&[]);
        fs::write(m.join("cached"), &cached).expect("write cached");
        fs::write(m.join("cold"), &cold).expect("write cold");
        m.unmount();
    }
    let m = v.mount(&[]);
    kms.quiet_and_reset();
    assert!(read_file(&m.join("cached")).expect("warm the cache") == cached);

    kms.proxy.set_hang(true);
    let decrypts = kms.file_decrypts();
    let stuck = {
        let path = m.join("cold");
        std::thread::spawn(move || {
            let started = Instant::now();
            (read_file(&path), started.elapsed())
        })
    };
    // The cold read is waiting on the KMS.
    let deadline = Instant::now() + Duration::from_secs(20);
    while kms.file_decrypts() == decrypts {
        assert!(
            Instant::now() < deadline,
            "the cold read never reached the KMS"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Throughout the hang, the cached file and metadata answer within a second.
    let mut rounds = 0;
    let hang_started = Instant::now();
    while !stuck.is_finished() || rounds < 5 {
        let t = Instant::now();
        let got = read_file(&m.join("cached")).expect("cached file while the KMS hangs");
        assert!(got == cached);
        fs::metadata(m.join("cold")).expect("stat while the KMS hangs");
        assert_mount_up(m.path(), "while the KMS hangs");
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "a cached read took {took:?} while the KMS hangs"
        );
        rounds += 1;
        assert!(
            hang_started.elapsed() < Duration::from_secs(40),
            "the read waiting on a hung KMS did not fail within the operation timeout"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (result, took) = stuck.join().expect("stuck reader");
    println!(
        "read of an uncached file against a hung KMS: {result:?} after {took:?}, {} file-key \
         Decrypt requests swallowed ({rounds} cached reads meanwhile)",
        kms.file_decrypts() - decrypts
    );
    assert_fails_with(result, &[libc::EIO], "uncached file while the KMS hangs");
    // One operation timeout (15 s), not one per kernel retry of the failed read.
    assert!(
        took < Duration::from_secs(25),
        "the failed read took {took:?}: the kernel's retries waited on the KMS again"
    );

    kms.proxy.set_hang(false);
    // The hang's failure is answered from memory for 100 ms (the kernel's retries), no longer.
    std::thread::sleep(Duration::from_millis(200));
    assert!(read_file(&m.join("cold")).expect("cold file after the hang") == cold);
    let after = rng.bytes(5000);
    fs::write(m.join("after"), &after).expect("new file after the hang");
    assert_contents(&m.join("after"), &after);
    m.unmount();
}

#[test]
fn a_wrapped_key_spliced_from_another_file_is_an_integrity_error() {
    let kms = Kms::start();
    let v = kms.vault();
    let mut rng = Rng::new(8);
    let (a, b) = (rng.bytes(6000), rng.bytes(6000));
    // The backing files, found as what each write adds (names may be encrypted).
    let (pa, pb) = {
        let m = v.mount(&[]);
        let before = backing_files(&v.backing);
        fs::write(m.join("a"), &a).expect("write a");
        let with_a = backing_files(&v.backing);
        fs::write(m.join("b"), &b).expect("write b");
        let with_b = backing_files(&v.backing);
        m.unmount();
        let added = |old: &[PathBuf], new: &[PathBuf]| -> PathBuf {
            let fresh: Vec<_> = new.iter().filter(|p| !old.contains(p)).cloned().collect();
            assert_eq!(
                fresh.len(),
                1,
                "one write added these backing files: {fresh:?}"
            );
            fresh[0].clone()
        };
        (added(&before, &with_a), added(&with_a, &with_b))
    };
    // B's key slots (bytes 128..1024: active slot, both wrapped keys) into A's header.
    let mut backing_a = fs::read(&pa).expect("backing a");
    let backing_b = fs::read(&pb).expect("backing b");
    backing_a[128..1024].copy_from_slice(&backing_b[128..1024]);
    fs::write(&pa, &backing_a).expect("splice");

    let m = v.mount(&[]);
    kms.quiet_and_reset();
    assert_fails_with(
        read_file(&m.join("a")),
        &[libc::EIO],
        "read of the spliced file",
    );
    let errors = kms.proxy.error_replies();
    println!("KMS error replies: {errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.op == DECRYPT && e.status >= 400 && e.request.contains(FILE_CTX)),
        "the proxy saw no failed Decrypt: {errors:?} {:?}",
        kms.proxy.counts()
    );
    assert!(
        errors
            .iter()
            .any(|e| e.error_type == "InvalidCiphertextException"),
        "KMS did not answer InvalidCiphertextException: {errors:?}"
    );
    assert!(read_file(&m.join("b")).expect("b still reads") == b);
    assert_mount_up(m.path(), "after the integrity error");
    m.unmount();
    let log = v.log();
    assert!(
        log.lines()
            .any(|l| l.contains("integrity") && l.contains("InvalidCiphertext")),
        "the spliced key is logged as an integrity error:\n{log}"
    );
}
