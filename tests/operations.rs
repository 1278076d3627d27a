//! The offline operations commands through the binary (issue 9): `kmsfs cat` and `kmsfs fsck`,
//! on vaults filled through real mounts (rewrap: tests/rewrap.rs).
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::ffi::OsStr;
use std::fs;

use common::mount::{Rng, Vault, stderr};
use common::ops::*;
use kmsfs::keys::local::LocalProvider;

#[test]
fn cat_prints_what_the_mount_shows() {
    let mut rng = Rng::from_env("cat_prints_what_the_mount_shows");
    let v = Vault::new();
    v.init(&[]);
    let files = sample_files(&mut rng);
    write_files(&v, &files, &[]);
    // What the mount shows is the reference.
    let m = v.mount(&[]);
    let mounted: Files = files
        .keys()
        .map(|k| (k.clone(), fs::read(m.join(k)).expect("read mount")))
        .collect();
    m.unmount();
    assert_eq!(mounted, files);

    for (rel, data) in &mounted {
        let o = run(
            &v,
            [OsStr::new("cat"), v.backing.as_os_str(), OsStr::new(rel)],
        );
        assert!(o.status.success(), "cat {rel}: {}", stderr(&o));
        assert!(
            o.stdout == *data,
            "cat {rel}: {} bytes differ from the mounted file",
            o.stdout.len()
        );
    }
    // One argument: a backing file (names are encrypted, so every backing name differs) ...
    let mut seen: Vec<Vec<u8>> = data_files(&v)
        .iter()
        .map(|p| {
            let o = run(&v, [OsStr::new("cat"), p.as_os_str()]);
            assert!(o.status.success(), "cat {}: {}", p.display(), stderr(&o));
            o.stdout
        })
        .collect();
    let mut want: Vec<Vec<u8>> = mounted.values().cloned().collect();
    seen.sort();
    want.sort();
    assert_eq!(
        seen, want,
        "cat of every backing file gives every plain file once"
    );
    // ... or VAULT/PLAIN/PATH, which does not exist in the backing dir.
    let o = run(
        &v,
        [
            OsStr::new("cat"),
            v.backing.join("dir/sub/big.bin").as_os_str(),
        ],
    );
    assert!(
        o.status.success() && o.stdout == files["dir/sub/big.bin"],
        "cat VAULT/plain: {}",
        stderr(&o)
    );

    // Errors: one line, exit 1.
    fails(
        run(
            &v,
            [OsStr::new("cat"), v.backing.as_os_str(), OsStr::new("nope")],
        ),
        "cat of a missing file",
    );
    fails(
        run(
            &v,
            [OsStr::new("cat"), v.backing.as_os_str(), OsStr::new("dir")],
        ),
        "cat of a directory",
    );
    fails(
        run(
            &v,
            [
                OsStr::new("cat"),
                v.backing.as_os_str(),
                OsStr::new(".kmsfs/config.json"),
            ],
        ),
        "cat of the config",
    );
    let big = largest_backing(&v);
    flip_byte(&big, 5000);
    let o = run(
        &v,
        [
            OsStr::new("cat"),
            v.backing.as_os_str(),
            OsStr::new("dir/sub/big.bin"),
        ],
    );
    let (_, err) = fails(o, "cat of a tampered file");
    assert!(
        err.contains("block") && !err.contains('\n'),
        "names the bad block, on one line: {err}"
    );
}

/// stdout of `kmsfs cat VAULT rel` (bytes).
fn run_raw(v: &Vault, rel: &str) -> Vec<u8> {
    run(
        v,
        [OsStr::new("cat"), v.backing.as_os_str(), OsStr::new(rel)],
    )
    .stdout
}

#[test]
fn cat_in_a_plaintext_names_vault_and_with_an_explicit_key() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let mut files = Files::new();
    files.insert("a/b.txt".into(), b"hello".to_vec());
    write_files(&v, &files, &[]);
    assert_eq!(run_raw(&v, "a/b.txt"), b"hello");
    let o = run(
        &v,
        [OsStr::new("cat"), v.backing.join("a/b.txt").as_os_str()],
    );
    assert_eq!(ok(o, "cat BACKING"), "hello");
    // Another key is refused (the vault names the trusted one), with a one-line reason.
    let other = v.root().join("other.key");
    LocalProvider::create(&other).expect("other key");
    let o = run(
        &v,
        [
            OsStr::new("cat"),
            v.backing.as_os_str(),
            OsStr::new("a/b.txt"),
            OsStr::new("--key-file"),
            other.as_os_str(),
        ],
    );
    fails(o, "cat with a foreign key");
}

#[test]
fn fsck_finds_tampered_and_headerless_files_and_nothing_in_a_clean_vault() {
    let mut rng = Rng::from_env("fsck_finds_tampered_and_headerless_files");
    let v = Vault::new();
    v.init(&[]);
    let mut files = sample_files(&mut rng);
    for i in 0..12 {
        files.insert(format!("many/f{i:02}"), rng.bytes(1000 * (i + 1)));
    }
    write_files(&v, &files, &[]);
    let out = ok(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck of a clean vault",
    );
    assert!(
        out.contains(" 0 damaged") && !out.contains("DAMAGED"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} files", files.len())),
        "counts every file: {out}"
    );

    // One flipped byte near the end of the largest file.
    let big = largest_backing(&v);
    flip_byte(&big, 10);
    let (out, _) = fails(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck of a tampered vault",
    );
    let bad: Vec<&str> = out.lines().filter(|l| l.starts_with("DAMAGED")).collect();
    assert_eq!(bad.len(), 1, "exactly the tampered file: {out}");
    assert!(
        bad[0].contains("dir/sub/big.bin") && bad[0].contains(&big.display().to_string()),
        "plain and backing path: {out}"
    );
    assert!(
        bad[0].contains("block 366"),
        "the last block of 1.5 MB at 4 KiB: {out}"
    );
    flip_byte(&big, 10);
    ok(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck after undoing the tamper",
    );

    // A header without blocks (a crash during a first write, or a cut).
    let victim = data_files(&v)
        .into_iter()
        .find(|p| fs::metadata(p).expect("stat").len() == 1024 + 28 + 3000)
        .expect("backing file of many/f02");
    fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .expect("open")
        .set_len(1024)
        .expect("cut");
    let (out, _) = fails(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck of a header-only file",
    );
    assert!(
        out.contains("many/f02") && out.contains("header without blocks"),
        "{out}"
    );
    let out = ok(
        run(
            &v,
            [
                OsStr::new("fsck"),
                v.backing.as_os_str(),
                OsStr::new("--repair-headerless"),
            ],
        ),
        "fsck --repair-headerless",
    );
    assert!(out.contains("REPAIRED many/f02"), "{out}");
    assert_eq!(fs::metadata(&victim).expect("stat").len(), 0, "emptied");
    files.insert("many/f02".into(), Vec::new());
    check_files(&v, &files, &[]);

    // A name that no longer decrypts (moved in from another directory).
    let moved = v.backing.join(victim.file_name().expect("name"));
    assert_ne!(moved, victim, "many/f02 is in a sub directory");
    fs::rename(&victim, &moved).expect("move into the root");
    let (out, _) = fails(
        run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]),
        "fsck of a moved entry",
    );
    assert!(
        out.contains(&moved.display().to_string()) && out.contains("does not decrypt"),
        "{out}"
    );
    fs::rename(&moved, &victim).expect("move back");

    // Without .kmsfs/ contents are still checked, with a warning.
    let meta = v.root().join("meta-away");
    fs::rename(v.backing.join(".kmsfs"), &meta).expect("move .kmsfs away");
    let o = run(&v, [OsStr::new("fsck"), v.backing.as_os_str()]);
    let err = stderr(&o);
    assert!(err.contains(".kmsfs/ is missing"), "warns: {err}");
    assert!(
        o.status.success(),
        "contents are clean: {err} {}",
        stdout(&o)
    );
    fs::rename(&meta, v.backing.join(".kmsfs")).expect("restore .kmsfs");
}
