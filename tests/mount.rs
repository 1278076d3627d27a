//! kmsfs end to end through the real binary: init, mount (daemonized), use, unmount, remount.
//! Every test mounts in its own temp dir and its `MountGuard` unmounts on every path.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use common::moto::MotoServer;
use common::mount::{Rng, Vault, assert_contents, files_under, is_mounted, process_state};
use kmsfs::format::Layout;
use kmsfs::format::header::HEADER_SIZE;

const SIZES: [usize; 6] = [0, 1, 4095, 4096, 4097, (1 << 20) + 3];

/// A vault initialised with the local provider.
fn local_vault() -> Vault {
    let v = Vault::new();
    v.init(&[]);
    v
}

/// Assert that `r` failed with OS error `errno`.
fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, errno: i32, what: &str) {
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(errno), "{what}: {e}"),
        Ok(v) => panic!("{what}: expected errno {errno}, got Ok({v:?})"),
    }
}

/// Write `data` into `path` with positioned writes of random lengths in random order.
fn pwrite_shuffled(path: &Path, data: &[u8], rng: &mut Rng) {
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = (1 + rng.below(9000) as usize).min(data.len() - at);
        chunks.push(at..at + len);
        at += len;
    }
    for i in (1..chunks.len()).rev() {
        chunks.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let f = File::create(path).expect("create");
    for c in chunks {
        f.write_all_at(&data[c.clone()], c.start as u64)
            .expect("pwrite");
    }
    f.sync_all().expect("fsync");
}

#[test]
fn files_of_edge_sizes_round_trip_and_survive_remount() {
    let v = local_vault();
    let mut rng = Rng::from_env("edge sizes");
    let plain = v.dir("plain"); // source files for the cp-like copy, outside the mount
    let contents: Vec<Vec<u8>> = SIZES.iter().map(|&n| rng.bytes(n)).collect();

    let m = v.mount(&[]);
    for (data, n) in contents.iter().zip(SIZES) {
        fs::write(m.join(format!("write-{n}")), data).expect("fs::write");
        let src = plain.join(format!("{n}"));
        fs::write(&src, data).expect("write source");
        let copied = io::copy(
            &mut File::open(&src).expect("open source"),
            &mut File::create(m.join(format!("copy-{n}"))).expect("create copy"),
        )
        .expect("io::copy");
        assert_eq!(copied, n as u64);
        pwrite_shuffled(&m.join(format!("pwrite-{n}")), data, &mut rng);
    }
    let check = |m: &common::mount::MountGuard| {
        for (data, n) in contents.iter().zip(SIZES) {
            for how in ["write", "copy", "pwrite"] {
                let p = m.join(format!("{how}-{n}"));
                assert_eq!(
                    fs::metadata(&p).expect("stat").len(),
                    n as u64,
                    "{}",
                    p.display()
                );
                assert_contents(&p, data);
            }
        }
    };
    check(&m);
    m.unmount();

    let m = v.mount(&[]);
    check(&m);
    m.unmount();
}

#[test]
fn plaintext_never_reaches_the_backing_dir() {
    let v = local_vault(); // default: names are encrypted too
    let marker = b"KMSFS-PLAINTEXT-MARKER-7c1f";
    let m = v.mount(&[]);
    fs::write(m.join("small"), marker).expect("write small");
    let big: Vec<u8> = marker.iter().copied().cycle().take(300_000).collect();
    fs::write(m.join("big"), &big).expect("write big");
    fs::create_dir(m.join("sub-MARKERNAME")).expect("mkdir");
    std::os::unix::fs::symlink("MARKERNAME-target", m.join("link")).expect("symlink");
    fs::write(
        m.join("sub-MARKERNAME/nested"),
        [&b"prefix "[..], marker, b" suffix"].concat(),
    )
    .expect("write nested");
    assert_contents(&m.join("small"), marker);
    m.unmount();

    let files = files_under(&v.backing);
    assert!(
        v.backing_files().len() >= 3,
        "expected the three backing files, found {files:?}"
    );
    for f in files {
        let bytes = fs::read(&f).expect("read backing file");
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "plaintext marker found in backing file {}",
            f.display()
        );
    }
    for e in v.backing_entries() {
        let name = e.strip_prefix(&v.backing).expect("under backing");
        assert!(
            !name.display().to_string().contains("MARKERNAME"),
            "plain name in backing path {name:?}"
        );
        if let Ok(target) = fs::read_link(&e) {
            assert!(
                !target.display().to_string().contains("MARKERNAME"),
                "plain link target in {name:?}"
            );
        }
    }
}

#[test]
fn random_overwrites_holes_and_truncates_match_a_model() {
    let v = local_vault();
    let mut rng = Rng::from_env("random ops");
    let m = v.mount(&[]);
    let path = m.join("model");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create");
    let mut model: Vec<u8> = Vec::new();
    let verify = |f: &mut File, model: &[u8], step: usize| {
        let mut got = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut got).expect("read");
        assert!(
            got == model,
            "step {step}: {} bytes read, model has {}",
            got.len(),
            model.len()
        );
    };
    for step in 0..400 {
        let size = model.len() as u64;
        match rng.below(10) {
            // overwrite inside the file, often mid-block
            0..=3 if size > 0 => {
                let at = rng.below(size);
                let len = 1 + rng.below(6000) as usize;
                let data = rng.bytes(len);
                f.write_all_at(&data, at).expect("overwrite");
                let end = at as usize + data.len();
                model.resize(model.len().max(end), 0);
                model[at as usize..end].copy_from_slice(&data);
            }
            // write past EOF, leaving a hole
            4 | 5 => {
                let at = size + rng.below(3 * 4096);
                let len = 1 + rng.below(3000) as usize;
                let data = rng.bytes(len);
                f.write_all_at(&data, at).expect("write past EOF");
                model.resize(at as usize, 0);
                model.extend_from_slice(&data);
            }
            // truncate down
            6 if size > 0 => {
                let to = rng.below(size);
                f.set_len(to).expect("truncate down");
                model.truncate(to as usize);
            }
            // truncate up
            7 => {
                let to = size + rng.below(2 * 4096);
                f.set_len(to).expect("truncate up");
                model.resize(to as usize, 0);
            }
            // read a random range
            _ => {
                let at = rng.below(size + 1);
                let mut buf = vec![0u8; rng.below(9000) as usize];
                let n = f.read_at(&mut buf, at).expect("read");
                let want = &model[at as usize..(at as usize + buf.len()).min(model.len())];
                assert_eq!(&buf[..n], want, "step {step}: read at {at}");
            }
        }
        // keep the file at a size where each step stays cheap
        if model.len() > 256 * 1024 {
            f.set_len(100_000).expect("truncate");
            model.truncate(100_000);
        }
        if step % 25 == 0 {
            verify(&mut f, &model, step);
            assert_eq!(
                f.metadata().expect("fstat").len(),
                model.len() as u64,
                "step {step}: size"
            );
        }
    }
    verify(&mut f, &model, 400);
    drop(f);
    m.unmount();

    let m = v.mount(&[]);
    assert_contents(&m.join("model"), &model);
    m.unmount();
}

#[test]
fn tampered_block_reads_as_eio_and_the_mount_stays_up() {
    let v = local_vault();
    let mut rng = Rng::new(4);
    let victim = rng.bytes(1 << 20);
    let bystander = rng.bytes(10_000);
    let m = v.mount(&[]);
    fs::write(m.join("victim"), &victim).expect("write victim");
    fs::write(m.join("bystander"), &bystander).expect("write bystander");
    m.unmount();

    // Flip one byte in the middle of the backing file, inside some block's ciphertext.
    // (Names are encrypted: the victim's backing file is the only one over 1 MiB.)
    let big: Vec<_> = v
        .backing_files()
        .into_iter()
        .filter(|p| p.metadata().expect("stat").len() > 1 << 20)
        .collect();
    assert_eq!(big.len(), 1, "one large backing file: {big:?}");
    let backing = &big[0];
    let mut bytes = fs::read(backing).expect("read backing");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(backing, &bytes).expect("write backing");
    let layout = Layout::new(HEADER_SIZE as u64, 4096).expect("default layout");
    let block = (at as u64 - layout.header_size()) / layout.stored_block_size();

    let m = v.mount(&[]);
    assert_errno(
        fs::read(m.join("victim")),
        libc::EIO,
        "read of tampered file",
    );
    let log = v.log();
    let file = backing.display().to_string();
    let named = log
        .lines()
        .any(|l| l.contains(&file) && l.contains(&format!("block {block}")));
    assert!(named, "no log line names {file} and block {block}:\n{log}");
    assert_contents(&m.join("bystander"), &bystander);
    // The blocks before the damage still read (the damage is local).
    let mut head = vec![0u8; 4096];
    File::open(m.join("victim"))
        .expect("open")
        .read_exact_at(&mut head, 0)
        .expect("read block 0");
    assert_eq!(head, victim[..4096]);
    assert!(is_mounted(m.path()));
    fs::write(m.join("after"), b"still writable").expect("write after EIO");
    assert_contents(&m.join("after"), b"still writable");
    m.unmount();
}

/// Flush `path` and drop its pages from the page cache, so the next read comes from the disk.
fn evict(path: &Path) {
    let f = File::open(path).expect("open backing file");
    f.sync_all().expect("fsync backing file");
    // SAFETY: valid fd; advice only.
    let rc = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0, "fadvise");
}

#[test]
fn cold_large_reads_come_from_the_disk_intact_and_tampering_there_is_eio() {
    let v = local_vault();
    let data = Rng::new(11).bytes((8 << 20) + 12_345);
    let m = v.mount(&[]);
    fs::write(m.join("big"), &data).expect("write big");
    m.unmount();
    let backing = v
        .backing_files()
        .into_iter()
        .max_by_key(|p| p.metadata().expect("stat").len())
        .expect("a backing file");
    evict(&backing);
    // Cold, through readahead (large requests, read from the disk) and at odd offsets.
    let m = v.mount(&[]);
    assert_contents(&m.join("big"), &data);
    let f = File::open(m.join("big")).expect("open");
    let mut buf = vec![0u8; 300_001];
    f.read_exact_at(&mut buf, 5_000_017)
        .expect("read at an odd offset");
    assert_eq!(buf, data[5_000_017..5_300_018]);
    drop(f);
    m.unmount();

    // One flipped bit on the disk, six MiB in: EIO naming the block, never other bytes.
    let layout = Layout::new(HEADER_SIZE as u64, 4096).expect("default layout");
    let block = 6 * 256 + 7;
    let at = layout.backing_offset(block) + 100;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&backing)
        .expect("open backing");
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).expect("read byte");
    f.write_all_at(&[byte[0] ^ 1], at).expect("flip byte");
    drop(f);
    evict(&backing);
    let m = v.mount(&[]);
    assert_errno(
        fs::read(m.join("big")),
        libc::EIO,
        "read of a file damaged on disk",
    );
    let named = v
        .log()
        .lines()
        .any(|l| l.contains(&format!("block {block}")));
    assert!(named, "no log line names block {block}:\n{}", v.log());
    let mut head = vec![0u8; 1 << 20];
    File::open(m.join("big"))
        .expect("open")
        .read_exact_at(&mut head, 0)
        .expect("intact head");
    assert_eq!(head, data[..1 << 20]);
    m.unmount();
}

#[test]
fn reopening_an_unchanged_file_keeps_its_pages_while_its_key_is_fresh() {
    let data = Rng::new(12).bytes(300_000);
    // Key cache lookups (hits + misses) made by reading the file once: 0 when the kernel
    // served the read from its page cache.
    let count = |v: &Vault, m: &common::mount::MountGuard| {
        let s = v.status_json(m.path());
        s["hits"].as_u64().unwrap_or(0) + s["misses"].as_u64().unwrap_or(0)
    };
    let reads_reaching_the_daemon = |v: &Vault, m: &common::mount::MountGuard| {
        let before = count(v, m);
        assert_contents(&m.join("f"), &data);
        count(v, m) - before
    };
    let v = local_vault();
    let m = v.mount(&["--key-ttl", "3"]);
    fs::write(m.join("f"), &data).expect("write");
    assert_contents(&m.join("f"), &data);
    assert_eq!(reads_reaching_the_daemon(&v, &m), 0, "unchanged file");
    // A change through the mount keeps the pages in step.
    let f = OpenOptions::new()
        .write(true)
        .open(m.join("f"))
        .expect("open for writing");
    f.write_all_at(&data[..10], 0).expect("rewrite");
    drop(f);
    assert_eq!(
        reads_reaching_the_daemon(&v, &m),
        0,
        "after a write through the mount"
    );
    // Past the key's TTL the pages go, also those of a file held open meanwhile.
    let held = File::open(m.join("f")).expect("hold open");
    let mut buf = vec![0u8; data.len()];
    std::thread::sleep(std::time::Duration::from_millis(3_800));
    let before = count(&v, &m);
    held.read_exact_at(&mut buf, 0)
        .expect("read through the held handle");
    assert!(buf == data, "content through the held handle");
    assert!(count(&v, &m) > before, "pages outlived their key");
    drop(held);
    m.unmount();

    // With --key-ttl 0 no key outlives its last close, and neither do the pages.
    let m = v.mount(&["--key-ttl", "0"]);
    assert_contents(&m.join("f"), &data);
    assert!(
        reads_reaching_the_daemon(&v, &m) > 0,
        "pages kept past the key"
    );
    m.unmount();
}

#[test]
fn foreign_backing_file_reads_as_eio() {
    // Plain names, so a file dropped into the backing dir shows up under its own name.
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let m = v.mount(&[]);
    fs::write(m.join("good"), b"good data").expect("write good");
    fs::write(v.backing.join("foreign"), b"abc").expect("drop foreign file into the vault");
    assert_errno(
        fs::read(m.join("foreign")),
        libc::EIO,
        "read of a non-kmsfs file",
    );
    assert!(
        v.log().contains("foreign"),
        "the log names the file:\n{}",
        v.log()
    );
    assert_contents(&m.join("good"), b"good data");
    assert!(is_mounted(m.path()));
    m.unmount();
}

#[test]
fn dot_kmsfs_is_hidden_and_cannot_be_created() {
    let v = local_vault();
    let config = fs::read(v.backing.join(".kmsfs/config.json")).expect("vault config");
    let m = v.mount(&[]);
    fs::write(m.join("visible"), b"x").expect("write");
    let names: Vec<_> = fs::read_dir(m.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["visible"], "root listing");
    assert!(
        File::create(m.join(".kmsfs")).is_err(),
        "creating .kmsfs as a file succeeded"
    );
    assert!(
        fs::create_dir(m.join(".kmsfs")).is_err(),
        "creating .kmsfs as a dir succeeded"
    );
    assert!(
        fs::rename(m.join("visible"), m.join(".kmsfs")).is_err(),
        "renaming onto .kmsfs succeeded"
    );
    assert!(
        fs::read(m.join(".kmsfs/config.json")).is_err(),
        ".kmsfs/config.json readable through the mount"
    );
    m.unmount();
    assert_eq!(
        fs::read(v.backing.join(".kmsfs/config.json")).expect("vault config"),
        config
    );
}

#[test]
fn second_mount_of_a_vault_is_refused() {
    let v = local_vault();
    let m = v.mount(&[]);
    let other = v.dir("mnt2");
    let err = v
        .try_mount_at(&other, &[])
        .err()
        .expect("second mount succeeded");
    assert!(err.contains("already mounted"), "{err}");
    fs::write(m.join("f"), b"first mount still works").expect("write");
    m.unmount();
    // Once the first mount is gone, the lock is released.
    v.mount_at(&other, &[]).unmount();
}

#[test]
fn mount_refuses_a_vault_naming_another_key() {
    let a = local_vault();
    let b = local_vault();
    // The vault's own hint and the trusted key differ.
    let err = a
        .try_mount(&["--key-file", b.key_file.to_str().expect("utf-8")])
        .err()
        .expect("mounted with the wrong key");
    assert!(err.contains("refusing to mount"), "{err}");

    // The vault's config edited to name another key; the host's trusted record is unchanged.
    let path = a.backing.join(".kmsfs/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("config")).expect("json");
    cfg["key_id"] = serde_json::Value::String("attacker-chosen-key".into());
    fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write config");
    let err = a
        .try_mount(&[])
        .err()
        .expect("mounted a vault naming another key");
    assert!(
        err.contains("attacker-chosen-key") && err.contains("refusing"),
        "{err}"
    );
}

#[test]
fn mount_refuses_a_world_readable_key_file() {
    let v = local_vault();
    fs::set_permissions(&v.key_file, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let err = v
        .try_mount(&[])
        .err()
        .expect("mounted with a 0644 key file");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn mount_of_an_uninitialised_dir_says_run_init() {
    let v = Vault::new();
    fs::create_dir(&v.backing).expect("mkdir");
    let err = v
        .try_mount(&[])
        .err()
        .expect("mounted an uninitialised dir");
    assert!(err.contains("run kmsfs init"), "{err}");
}

#[test]
fn unmount_returns_after_the_daemon_exited() {
    let v = local_vault();
    let m = v.mount(&[]);
    let pid = m.daemon_pid().expect("mount records its daemon pid");
    assert!(
        matches!(process_state(pid), Some(s) if s != 'Z'),
        "daemon {pid} not running"
    );
    fs::write(m.join("f"), b"data").expect("write");
    m.unmount();
    let state = process_state(pid);
    assert!(
        matches!(state, None | Some('Z' | 'X')),
        "daemon {pid} still alive in state {state:?}"
    );
    let records: Vec<_> = fs::read_dir(v.runtime_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(records.is_empty(), "mount records left behind: {records:?}");
}

#[test]
fn read_only_mount_reads_but_refuses_writes() {
    let v = local_vault();
    let m = v.mount(&[]);
    fs::write(m.join("f"), b"read me").expect("write");
    fs::create_dir(m.join("d")).expect("mkdir");
    m.unmount();

    let m = v.mount(&["--read-only"]);
    assert_contents(&m.join("f"), b"read me");
    assert_errno(
        OpenOptions::new().write(true).open(m.join("f")),
        libc::EROFS,
        "open for writing",
    );
    assert_errno(File::create(m.join("new")), libc::EROFS, "create");
    assert_errno(fs::create_dir(m.join("d2")), libc::EROFS, "mkdir");
    assert_errno(fs::remove_file(m.join("f")), libc::EROFS, "unlink");
    assert_errno(
        fs::set_permissions(m.join("f"), fs::Permissions::from_mode(0o600)),
        libc::EROFS,
        "chmod",
    );
    m.unmount();
}

#[test]
fn aws_provider_end_to_end_against_moto() {
    let moto = MotoServer::start();
    let key = moto.create_key();
    let v = Vault::new().with_kms(&moto.url());
    v.init(&["--kms-key-id", &key]);
    assert!(!v.key_file.exists(), "a KMS vault needs no local key file");
    let mut rng = Rng::new(7);
    let files: Vec<(String, Vec<u8>)> = SIZES
        .iter()
        .map(|&n| (format!("f{n}"), rng.bytes(n)))
        .collect();

    let m = v.mount(&[]);
    for (name, data) in &files {
        fs::write(m.join(name), data).expect("write");
        assert_contents(&m.join(name), data);
    }
    m.unmount();

    let m = v.mount(&[]);
    for (name, data) in &files {
        assert_contents(&m.join(name), data);
    }
    m.unmount();
}

#[test]
fn guard_unmounts_when_a_test_panics() {
    let v = local_vault();
    let panicked = std::thread::scope(|s| {
        s.spawn(|| {
            let m = v.mount(&[]);
            fs::write(m.join("f"), b"x").expect("write");
            panic!("deliberate panic with {} mounted", m.path().display());
        })
        .join()
    });
    assert!(panicked.is_err(), "the thread should have panicked");
    assert!(
        !is_mounted(&v.mnt),
        "the guard left {} mounted",
        v.mnt.display()
    );
    // The vault lock is free again: the daemon is gone.
    v.mount(&[]).unmount();
}
