//! `kmsfs rekey` through the binary: every selected file gets a new data key and file id while
//! its content, holes, owner, mode, times and xattrs stay; a kill at any moment leaves each file
//! old or new (never a mix) and a rerun resumes; a mounted vault is refused; with AWS KMS it
//! makes one GenerateDataKey per file.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::kmskit::{FILE_CTX, GENERATE, Kms};
use common::mount::{Rng, Vault};
use common::ops::*;
use kmsfs::format::Id;
use kmsfs::keys::local::LocalProvider;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Backing path → file id of every file with data.
fn ids(v: &Vault) -> BTreeMap<PathBuf, Id> {
    headers(v)
        .into_iter()
        .map(|(p, h)| (p, h.file_id))
        .collect()
}

/// The file ids that have hole maps.
fn hole_maps(v: &Vault) -> BTreeSet<String> {
    fs::read_dir(v.backing.join(".kmsfs/holes"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn rekey(v: &Vault, extra: &[&str]) -> std::process::Output {
    let mut args = vec![OsStr::new("rekey"), v.backing.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    run(v, args)
}

#[test]
fn rekey_gives_new_keys_and_ids_and_keeps_content_holes_and_metadata() {
    let mut rng = Rng::from_env("rekey_keeps_everything_else");
    let v = Vault::new();
    v.init(&[]);
    let mut files = sample_files(&mut rng);
    write_files(&v, &files, &[]);
    let middle = rng.bytes(5000);
    {
        let m = v.mount(&[]);
        // A sparse file: 64 MiB with 5,000 bytes in the middle.
        let f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(m.join("sparse"))
            .expect("create");
        f.set_len(64 << 20).expect("truncate");
        std::os::unix::fs::FileExt::write_all_at(&f, &middle, 32 << 20).expect("write");
        drop(f);
        let p = m.join("dir/sub/big.bin");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).expect("chmod");
        xattr_set(&p, "user.note", b"keep me");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(t))
            .expect("set mtime");
        fs::hard_link(m.join("one-byte"), m.join("one-byte-link")).expect("link");
        m.unmount();
    }
    let mut sparse = vec![0u8; 64 << 20];
    sparse[32 << 20..(32 << 20) + middle.len()].copy_from_slice(&middle);
    files.insert("sparse".into(), sparse);
    files.insert("one-byte-link".into(), vec![b'K']);
    let before = ids(&v);
    let maps_before = hole_maps(&v);
    assert!(!maps_before.is_empty(), "the sparse file has a hole map");
    let raw_before: Vec<Vec<u8>> = data_files(&v)
        .iter()
        .map(|p| fs::read(p).expect("read"))
        .collect();

    // A dry run lists and changes nothing.
    let out = ok(rekey(&v, &["--dry-run"]), "rekey --dry-run");
    assert!(out.contains("would rekey sparse"), "{out}");
    let raw_now: Vec<Vec<u8>> = data_files(&v)
        .iter()
        .map(|p| fs::read(p).expect("read"))
        .collect();
    assert!(raw_now == raw_before, "a dry run writes nothing");

    // Keys all younger than a day: --older-than 1 selects nothing.
    let out = ok(rekey(&v, &["--older-than", "1"]), "rekey --older-than 1");
    assert!(out.contains("rekeyed 0 files"), "{out}");
    assert_eq!(ids(&v), before);

    // Only under dir/.
    let out = ok(rekey(&v, &["--path", "dir"]), "rekey --path dir");
    let after_dir = ids(&v);
    let changed: Vec<&PathBuf> = before
        .iter()
        .filter(|(p, id)| after_dir.get(*p) != Some(id))
        .map(|(p, _)| p)
        .collect();
    // dir/ holds block-multiple.bin, sub/almost-a-block, sub/big.bin, ünïcødé name.txt.
    assert_eq!(changed.len(), 4, "{out}\nchanged: {changed:?}");

    // Everything: the hard-linked file is left as it was, with a message and exit 1.
    let started = now();
    let o = rekey(&v, &[]);
    let (out, err) = fails(o, "rekey with a hard-linked file");
    assert!(
        out.contains("SKIPPED") && out.contains("hard links"),
        "{out}"
    );
    assert!(err.contains("hard-linked"), "{err}");
    let after = ids(&v);
    let linked: Vec<&PathBuf> = after
        .keys()
        .filter(|p| fs::metadata(p).expect("stat").nlink() > 1)
        .collect();
    assert_eq!(linked.len(), 2, "two names of one inode");
    for (p, id) in &after {
        let h = header(p).expect("header");
        if fs::metadata(p).expect("stat").nlink() > 1 {
            assert_eq!(before.get(p), Some(id), "the hard-linked file is untouched");
            continue;
        }
        assert!(
            !before.values().any(|old| old == id) && after_dir.get(p) != Some(id),
            "{}: a new file id",
            p.display()
        );
        let made = h.key_made.expect("format 3 records the key time");
        assert!(made >= started && made <= now() + 1, "key made {made}");
    }
    // The new sparse file has a map of its own; the old maps are gone.
    let maps_after = hole_maps(&v);
    assert!(maps_after.is_disjoint(&maps_before), "{maps_after:?}");
    assert_eq!(maps_after.len(), maps_before.len());
    let sparse_backing = largest_backing(&v);
    let allocated = fs::metadata(&sparse_backing).expect("stat").blocks() * 512;
    assert!(
        allocated < 1 << 20,
        "the 64 MiB sparse file stays sparse: {allocated} bytes allocated"
    );
    assert!(
        !v.backing.join(".kmsfs/rekey/journal").exists(),
        "a finished rekey leaves no journal"
    );

    ok(run(&v, ["fsck", v.backing.to_str().expect("utf8")]), "fsck");
    check_files(&v, &files, &[]);
    let m = v.mount(&[]);
    let p = m.join("dir/sub/big.bin");
    let meta = fs::metadata(&p).expect("stat");
    assert_eq!(meta.mode() & 0o7777, 0o640, "mode kept");
    assert_eq!(meta.mtime(), 1_600_000_000, "mtime kept");
    assert_eq!(
        xattr_get(&p, "user.note"),
        b"keep me".to_vec(),
        "xattr kept"
    );
    m.unmount();
}

#[test]
fn rekey_refuses_a_mounted_vault() {
    let v = Vault::new();
    v.init(&[]);
    let mut files = Files::new();
    files.insert("a".into(), b"alpha".to_vec());
    write_files(&v, &files, &[]);
    let before = ids(&v);
    let m = v.mount(&[]);
    let o = rekey(&v, &[]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "a mounted vault is a target error"
    );
    let (_, err) = fails(o, "rekey of a mounted vault");
    assert!(err.contains("mounted"), "{err}");
    m.unmount();
    assert_eq!(ids(&v), before, "nothing changed");
}

#[test]
fn rekey_killed_at_any_moment_leaves_old_or_new_files_and_resumes() {
    let mut rng = Rng::from_env("rekey_killed");
    let v = Vault::new();
    v.init(&[]);
    let mut files = Files::new();
    for i in 0..200 {
        let n = rng.below(40_000) as usize + 1;
        files.insert(format!("d{}/f{i}", i % 5), rng.bytes(n));
    }
    write_files(&v, &files, &[]);
    let original = ids(&v);
    let key = LocalProvider::open(&v.key_file).expect("key");
    let vol = volume_id(&v);
    let mut kills = 0;
    for round in 0..4 {
        let mut child = v
            .command([
                OsStr::new("rekey"),
                v.backing.as_os_str(),
                OsStr::new("--jobs"),
                OsStr::new("2"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rekey");
        // Kill -9 after a few more files than last round are done (or a random short time).
        let target = 10 + round * 40 + rng.below(20) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            let done = ids(&v)
                .values()
                .filter(|id| !original.values().any(|o| o == *id))
                .count();
            if done >= target {
                child.kill().expect("kill -9");
                kills += 1;
                break;
            }
            assert!(Instant::now() < deadline, "rekey made no progress");
            std::thread::sleep(Duration::from_millis(rng.below(5)));
        }
        child.wait().expect("reap");
        // Every backing file is a whole file under one key: old or new.
        assert_eq!(data_files(&v).len(), files.len(), "no file lost or doubled");
        for (p, h) in headers(&v) {
            assert!(
                opens_under(&key, &vol, &h),
                "{}: its header verifies",
                p.display()
            );
        }
        ok(
            run(&v, ["fsck", v.backing.to_str().expect("utf8")]),
            "fsck after a kill",
        );
    }
    check_files(&v, &files, &[]);
    let out = ok(rekey(&v, &[]), "rekey to the end");
    if kills > 0 {
        assert!(out.contains("resuming"), "{out}");
    }
    let last = ids(&v);
    assert!(
        last.values().all(|id| !original.values().any(|o| o == id)),
        "every file has a new id once the rekey finished"
    );
    let leftovers: Vec<_> = fs::read_dir(v.backing.join(".kmsfs/rekey"))
        .expect("rekey dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    check_files(&v, &files, &[]);
    println!("{kills} kills");
}

#[test]
fn rekey_with_aws_kms_makes_one_data_key_per_file() {
    let mut rng = Rng::from_env("rekey_with_aws_kms");
    let kms = Kms::start();
    let v = kms.vault();
    let mut files = Files::new();
    for i in 0..12 {
        files.insert(format!("f{i}"), rng.bytes(1000 + i * 5000));
    }
    write_files(&v, &files, &[]);
    kms.proxy.reset();
    let before = ids(&v);
    ok(rekey(&v, &[]), "rekey");
    let generated = kms.proxy.count_with(GENERATE, FILE_CTX);
    assert_eq!(generated, files.len(), "one new data key per file");
    assert_eq!(
        kms.file_decrypts(),
        files.len(),
        "one unwrap per old file key"
    );
    let after = ids(&v);
    assert!(after.iter().all(|(p, id)| before.get(p) != Some(id)));
    check_files(&v, &files, &[]);
}

fn xattr_set(p: &std::path::Path, name: &str, value: &[u8]) {
    let st = std::process::Command::new("setfattr")
        .args(["-n", name, "-v"])
        .arg(String::from_utf8_lossy(value).as_ref())
        .arg(p)
        .status()
        .expect("setfattr");
    assert!(st.success(), "setfattr");
}

fn xattr_get(p: &std::path::Path, name: &str) -> Vec<u8> {
    let o = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(p)
        .output()
        .expect("getfattr");
    assert!(o.status.success(), "getfattr");
    o.stdout
}
