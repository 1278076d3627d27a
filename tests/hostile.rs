//! A hostile backing store (docs/THREAT-MODEL.md): one test per attack of the issue, through
//! the real binary and real mounts. Each test does what an attacker with write access to the
//! vault (or another local user) would do, and checks that the mount refuses, reads EIO, or that
//! nothing outside the vault changes, within a stated time. Every mount is a `MountGuard`,
//! unmounted on every path.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::moto::{MotoServer, Proxy};
use common::mount::{Vault, stderr};
use kmsfs::format::header::FileHeader;
use kmsfs::keys::local::LocalProvider;
use kmsfs::keys::{EncryptionContext, KeyProvider};

const DIRIV: &str = ".kmsfs.diriv";

fn config_path(v: &Vault) -> PathBuf {
    v.backing.join(".kmsfs").join("config.json")
}

fn edit_config(v: &Vault, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = config_path(v);
    let mut c: serde_json::Value =
        serde_json::from_slice(&fs::read(&p).expect("read config")).expect("config is JSON");
    edit(&mut c);
    fs::write(&p, serde_json::to_vec_pretty(&c).expect("json")).expect("write config");
}

/// Every path under `dir`, recursively, sorted (to see that nothing was written).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_dir() {
                todo.push(e.path());
            }
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// The only backing directory (not kmsfs's own) in `dir`.
fn only_backing_dir(dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().expect("type").is_dir())
        .filter(|e| !e.file_name().as_bytes().starts_with(b".kmsfs"))
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The backing regular files directly in `dir` (not kmsfs's own).
fn backing_files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().expect("type").is_file())
        .filter(|e| !e.file_name().as_bytes().starts_with(b".kmsfs"))
        .map(|e| e.path())
        .collect()
}

fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status();
    assert!(ok.is_ok_and(|s| s.success()), "mkfifo {}", p.display());
}

/// Run `f` on another thread; its result, or `None` if it takes longer than `limit` (the
/// thread is left behind, blocked: the test then fails).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Attack 1: switching name encryption off (and the other config edits) is refused at mount,
/// naming the change, and nothing is written to the vault.
#[test]
fn an_edited_config_is_refused_and_nothing_is_written() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&[]);
    fs::write(m.join("before"), b"x").expect("write");
    m.unmount();
    let original = fs::read(config_path(&v)).expect("config");
    type Edit = (&'static str, &'static str, fn(&mut serde_json::Value));
    let edits: [Edit; 4] = [
        ("names off", "plaintext_names", |c| {
            c["plaintext_names"] = true.into();
            c.as_object_mut()
                .expect("object")
                .remove("wrapped_name_key");
        }),
        ("a bucket key slipped in", "wrapped_bucket_key", |c| {
            c["wrapped_bucket_key"] = "00".repeat(61).into();
        }),
        ("the name key replaced", "wrapped_name_key", |c| {
            c["wrapped_name_key"] = "01".repeat(61).into();
        }),
        ("another block size", "block_size", |c| {
            c["block_size"] = 65536.into();
        }),
    ];
    for (what, field, edit) in edits {
        fs::write(config_path(&v), &original).expect("restore");
        edit_config(&v, edit);
        let before = tree(&v.backing);
        let err = match v.try_mount(&[]) {
            Ok(m) => {
                m.unmount();
                panic!("{what}: the mount accepted the edited config");
            }
            Err(e) => e,
        };
        assert!(
            err.contains("does not verify") && err.contains(field),
            "{what}: {err}"
        );
        assert_eq!(
            tree(&v.backing),
            before,
            "{what}: the refused mount wrote to the vault"
        );
    }
    fs::write(config_path(&v), &original).expect("restore");
    let m = v.mount(&[]);
    assert_eq!(fs::read(m.join("before")).expect("read"), b"x");
    m.unmount();
}

/// Attack 2: vault W's config copied over vault V's (both under one key file) is refused for
/// V's path, with the key from this host's record and with `--key-file`; a host that never
/// used V needs `--volume-id` with the key.
#[test]
fn a_config_copied_from_another_vault_is_refused() {
    let v = Vault::new();
    v.init(&[]);
    let key = v.key_file.display().to_string();
    // W shares V's config home (one host) and key file.
    let w = Vault::new().with_env(
        "XDG_CONFIG_HOME",
        &v.root().join("config").display().to_string(),
    );
    w.init(&["--key-file", &key]);
    let m = v.mount(&[]);
    fs::write(m.join("v-file"), b"v").expect("write");
    m.unmount();
    let v_config = fs::read(config_path(&v)).expect("config");
    fs::copy(config_path(&w), config_path(&v)).expect("copy W's config over V's");
    for extra in [vec![], vec!["--key-file", key.as_str()]] {
        let err = v
            .try_mount(&extra)
            .err()
            .unwrap_or_else(|| panic!("vault V mounted under W's config with {extra:?}"));
        assert!(err.contains("swapped"), "{err}");
    }
    fs::write(config_path(&v), &v_config).expect("restore V's config");

    // Another host (its own config home): the key alone is not enough.
    let volume = serde_json::from_slice::<serde_json::Value>(&v_config).expect("json")["volume_id"]
        .as_str()
        .expect("volume id")
        .to_string();
    let mut host_b = Vault::new();
    host_b.backing = v.backing.clone();
    let err = host_b.try_mount(&["--key-file", &key]).err();
    let err = err.expect("a new host trusted a key without a volume id");
    assert!(err.contains("--volume-id"), "{err}");
    let err = host_b
        .try_mount(&["--key-file", &key, "--volume-id", &"0".repeat(32)])
        .err()
        .expect("a wrong volume id was accepted");
    assert!(err.contains("not the volume"), "{err}");
    let m = host_b.mount(&["--key-file", &key, "--volume-id", &volume]);
    assert_eq!(fs::read(m.join("v-file")).expect("read"), b"v");
    m.unmount();
    // Now recorded on host B: no options needed.
    host_b.mount(&[]).unmount();
}

/// Attack 3: a symlink planted as this host's mount lock, or as a config temporary file, is
/// never followed: the file it points to stays as it was. The raw machine id is in no name.
#[test]
fn symlinks_planted_in_kmsfs_dir_are_not_followed() {
    let v = Vault::new();
    v.init(&[]);
    v.mount(&[]).unmount();
    let meta = v.backing.join(".kmsfs");
    let lock = fs::read_dir(&meta)
        .expect("ls .kmsfs")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("mount-"))
        })
        .expect("a mount lock after a mount");
    if let Ok(id) = fs::read_to_string("/etc/machine-id") {
        let id = id.trim();
        for p in tree(&v.backing) {
            assert!(
                !p.to_string_lossy().contains(id),
                "machine id in {}",
                p.display()
            );
        }
    }
    let victim = v.root().join("victim");
    fs::write(&victim, b"precious").expect("victim");
    fs::remove_file(&lock).expect("rm lock");
    std::os::unix::fs::symlink(&victim, &lock).expect("symlink");
    let err = v.try_mount(&[]).err().expect("a symlinked lock is refused");
    assert!(err.contains("not a regular file"), "{err}");
    assert_eq!(fs::read(&victim).expect("victim"), b"precious");
    fs::remove_file(&lock).expect("rm symlink");

    let victim2 = v.root().join("victim2");
    fs::write(&victim2, b"precious too").expect("victim2");
    std::os::unix::fs::symlink(&victim2, meta.join("config.json.tmp")).expect("symlink");
    let new_key = v.root().join("new.key");
    let out = v
        .command([
            OsStr::new("rewrap"),
            v.backing.as_os_str(),
            OsStr::new("--to-key-file"),
            new_key.as_os_str(),
        ])
        .output()
        .expect("rewrap");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&victim2).expect("victim2"), b"precious too");
    let cfg = fs::symlink_metadata(config_path(&v)).expect("config");
    assert!(
        cfg.file_type().is_file(),
        "config.json is no longer a regular file"
    );
}

/// Attack 4: a FIFO in place of a directory's IV file or a long name's sidecar makes that
/// directory EIO (that entry hidden) at once; the mount goes on serving other files.
#[test]
fn a_fifo_in_place_of_kmsfs_files_does_not_hang_the_mount() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&[]);
    fs::create_dir(m.join("hr")).expect("mkdir");
    fs::write(m.join("hr/doc"), b"a").expect("write");
    fs::write(m.join("top"), b"b").expect("write");
    let long = "L".repeat(150);
    fs::write(m.join(&long), b"c").expect("write long");
    m.unmount();
    let hr = only_backing_dir(&v.backing);
    fs::remove_file(hr.join(DIRIV)).expect("rm diriv");
    mkfifo(&hr.join(DIRIV));
    let sidecar = fs::read_dir(&v.backing)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().ends_with(".name"))
        .expect("a sidecar");
    fs::remove_file(&sidecar).expect("rm sidecar");
    mkfifo(&sidecar);
    let m = v.mount(&[]);
    let hr_plain = m.join("hr");
    let listed = within(Duration::from_secs(10), move || {
        fs::read_dir(hr_plain).map(|_| ())
    });
    let err = listed
        .expect("listing a directory whose IV file is a FIFO hangs")
        .expect_err("a FIFO IV file lists");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let root = m.path().to_path_buf();
    let names = within(Duration::from_secs(10), move || {
        fs::read_dir(root)
            .expect("ls root")
            .map(|e| e.expect("entry").file_name())
            .collect::<Vec<_>>()
    })
    .expect("listing the root with a FIFO sidecar hangs");
    assert!(!names.contains(&OsString::from(&long)), "{names:?}");
    assert!(names.contains(&OsString::from("top")), "{names:?}");
    let top = m.join("top");
    let read = within(Duration::from_secs(5), move || fs::read(top));
    assert_eq!(read.expect("other files hang").expect("read top"), b"b");
    m.unmount();
}

/// Attack 5: a lock another process holds on a backing file does not stall writes to a local
/// vault (more than 5 s).
#[test]
fn a_lock_on_a_backing_file_does_not_stall_writes() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let m = v.mount(&[]);
    fs::write(m.join("f"), b"start\n").expect("write");
    let backing = v.backing.join("f");
    let locked = File::open(&backing).expect("open backing file");
    // SAFETY: zeroed flock is valid; l_pid 0 for OFD locks; a valid fd.
    let rc = unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_RDLCK as libc::c_short;
        libc::fcntl(locked.as_raw_fd(), libc::F_OFD_SETLK, &fl)
    };
    assert_eq!(rc, 0, "lock the backing file");
    let plain = m.join("f");
    let appended = within(Duration::from_secs(5), move || {
        let mut f = fs::OpenOptions::new().append(true).open(plain)?;
        f.write_all(b"more\n")
    });
    appended
        .expect("an append waits on a lock another process holds on the backing file")
        .expect("append");
    drop(locked);
    assert_eq!(fs::read(m.join("f")).expect("read"), b"start\nmore\n");
    m.unmount();
}

/// Attack 6: the control socket answers only its own user (and root), even when its file
/// permissions would let another user connect.
#[test]
fn the_control_socket_answers_only_its_user() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&[]);
    let run = v.root().join("run");
    let rt = v.runtime_dir();
    let sock = fs::read_dir(&rt)
        .expect("runtime dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension() == Some(OsStr::new("sock")))
        .expect("a control socket");
    assert_eq!(
        fs::metadata(&rt).expect("stat").mode() & 0o777,
        0o700,
        "runtime dir mode"
    );
    assert_eq!(
        fs::symlink_metadata(&sock).expect("stat").mode() & 0o777,
        0o600,
        "socket mode"
    );
    // Open the way for `nobody`, as a careless admin might.
    let open = |p: &Path, mode| fs::set_permissions(p, fs::Permissions::from_mode(mode));
    for (p, mode) in [
        (v.root(), 0o711),
        (run.as_path(), 0o711),
        (rt.as_path(), 0o711),
    ] {
        open(p, mode).expect("chmod");
    }
    open(&sock, 0o666).expect("chmod socket");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::mount::KMSFS)
        .arg("status")
        .arg(m.path())
        .env("XDG_RUNTIME_DIR", &run)
        .output()
        .expect("run kmsfs status as nobody");
    for (p, mode) in [
        (v.root(), 0o700),
        (run.as_path(), 0o700),
        (rt.as_path(), 0o700),
    ] {
        open(p, mode).expect("chmod back");
    }
    assert!(!out.status.success(), "another user got the status");
    assert!(stderr(&out).contains("not your mount"), "{}", stderr(&out));
    v.status_json(m.path());
    m.unmount();
}

/// Attack 7: an entry moved into `hr/` with the root's (then a sibling's) IV file copied beside
/// it never reads as `hr/NAME`; directory renames keep working across a remount.
#[test]
fn an_entry_moved_with_a_copied_dir_iv_is_not_a_valid_name() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&[]);
    fs::create_dir(m.join("hr")).expect("mkdir");
    fs::write(m.join("hr/own"), b"x").expect("write");
    fs::write(m.join("t1"), b"secret").expect("write");
    m.unmount();
    let hr = only_backing_dir(&v.backing);
    let t1 = backing_files_in(&v.backing);
    assert_eq!(t1.len(), 1);
    fs::rename(&t1[0], hr.join(t1[0].file_name().expect("name"))).expect("mv t1 into hr");
    fs::remove_file(hr.join(DIRIV)).expect("rm");
    fs::copy(v.backing.join(DIRIV), hr.join(DIRIV)).expect("copy the root's IV");
    let m = v.mount(&[]);
    let listed = fs::read_dir(m.join("hr"))
        .map(|d| d.map(|e| e.expect("entry").file_name()).collect::<Vec<_>>());
    match listed {
        Ok(names) => assert!(!names.contains(&OsString::from("t1")), "{names:?}"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
    assert!(fs::read(m.join("hr/t1")).is_err(), "hr/t1 reads");
    m.unmount();

    // Siblings: a directory's IV copied to its sibling is not valid there either; renamed
    // directories (across parents too) read correctly after a remount.
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&[]);
    for d in ["a", "b"] {
        fs::create_dir(m.join(d)).expect("mkdir");
        fs::write(m.join(d).join("f"), d).expect("write");
    }
    fs::rename(m.join("a"), m.join("b/a2")).expect("mv a b/a2");
    fs::create_dir(m.join("c")).expect("mkdir c");
    m.unmount();
    let m = v.mount(&[]);
    assert_eq!(fs::read(m.join("b/a2/f")).expect("renamed dir"), b"a");
    assert_eq!(fs::read(m.join("b/f")).expect("b"), b"b");
    m.unmount();
    let dirs: Vec<PathBuf> = fs::read_dir(&v.backing)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir() && !p.file_name().expect("n").as_bytes().starts_with(b".kmsfs"))
        .collect();
    assert_eq!(dirs.len(), 2, "b and c");
    let (b_dir, c_dir) = if backing_files_in(&dirs[0]).is_empty() {
        (&dirs[1], &dirs[0])
    } else {
        (&dirs[0], &dirs[1])
    };
    fs::rename(
        &backing_files_in(b_dir)[0],
        c_dir.join(backing_files_in(b_dir)[0].file_name().expect("n")),
    )
    .expect("move b's file to c");
    fs::remove_file(c_dir.join(DIRIV)).expect("rm");
    fs::copy(b_dir.join(DIRIV), c_dir.join(DIRIV)).expect("copy b's IV into c");
    let m = v.mount(&[]);
    let err = fs::read_dir(m.join("c")).expect_err("c with b's IV lists");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(fs::read(m.join("c/f")).is_err(), "c/f reads");
    m.unmount();
}

/// Attack 8: a second data key, validly wrapped for the file's own context (what someone with
/// KMS rights for that context can make), put in the inactive slot with the active byte
/// flipped: the file reads EIO, never the other key's view.
#[test]
fn a_second_key_in_the_other_slot_reads_eio() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let m = v.mount(&[]);
    fs::write(m.join("f"), vec![7u8; 10_000]).expect("write");
    m.unmount();
    let backing = v.backing.join("f");
    let mut bytes = vec![0u8; 1024];
    File::open(&backing)
        .expect("open")
        .read_exact(&mut bytes)
        .expect("read header");
    let mut h = FileHeader::decode(&bytes).expect("header");
    let p = LocalProvider::open(&v.key_file).expect("the vault's key");
    let ctx = EncryptionContext::for_file(&h.volume_id, &h.file_id);
    let second = p
        .generate_data_key(&ctx)
        .expect("a second key for this file");
    h.slots[1] = second.wrapped;
    h.active = 1;
    fs::OpenOptions::new()
        .write(true)
        .open(&backing)
        .expect("open rw")
        .write_all_at(&h.encode(), 0)
        .expect("write header");
    let m = v.mount(&[]);
    let err = fs::read(m.join("f")).expect_err("the second key opened the file");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    m.unmount();
    assert!(v.log().contains("integrity"), "no log line: {}", v.log());
}

/// Attack 9 (local provider): `forget` drops the name key and the master key too: with the key
/// file gone, neither a listing nor a read works until it is back. With AWS KMS, the next
/// listing after `forget` unwraps the name key again (a Decrypt).
#[test]
fn forget_drops_every_key() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&[]);
    fs::create_dir(m.join("d")).expect("mkdir");
    fs::write(m.join("d/f"), b"data").expect("write");
    assert_eq!(fs::read(m.join("d/f")).expect("read"), b"data");
    v.forget(m.path());
    let away = v.root().join("key-away");
    fs::rename(&v.key_file, &away).expect("move the key file away");
    assert!(
        fs::read_dir(m.join("d")).is_err(),
        "names listed after forget without the key file: the name key was kept"
    );
    assert!(
        fs::read(m.join("d/f")).is_err(),
        "a file read after forget without the key file: the master key was kept"
    );
    fs::rename(&away, &v.key_file).expect("put it back");
    // A failed unwrap is answered from memory for 100 ms (the kernel's retry of the read).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fs::read(m.join("d/f")).expect("read again"), b"data");
    assert!(fs::read_dir(m.join("d")).is_ok());
    m.unmount();

    let moto = MotoServer::start();
    let key = moto.create_key();
    let proxy = Proxy::forward_to(moto.addr());
    let v = Vault::new().with_kms(&proxy.url());
    v.init(&["--kms-key-id", &key]);
    let m = v.mount(&["--key-pool-size", "0"]);
    fs::create_dir(m.join("d")).expect("mkdir");
    fs::write(m.join("d/f"), b"x").expect("write");
    fs::read_dir(m.join("d")).expect("ls");
    v.forget(m.path());
    proxy.reset();
    fs::read_dir(m.join("d")).expect("ls after forget");
    assert!(
        proxy.count_with("Decrypt", "names") >= 1,
        "after forget the name key was not unwrapped again: {:?}",
        proxy.counts()
    );
    m.unmount();
}

/// Attack 10a: a root daemon serving other users (`--allow-other`) creates their files,
/// directories, links and nodes as them, with the group of a set-group-ID directory.
#[test]
fn allow_other_creates_as_the_caller() {
    let v = Vault::new();
    v.init(&[]);
    v.open_to_others();
    let m = v.mount(&["--allow-other"]);
    fs::create_dir(m.join("pub")).expect("mkdir");
    fs::set_permissions(m.join("pub"), fs::Permissions::from_mode(0o777)).expect("chmod");
    fs::create_dir(m.join("grp")).expect("mkdir");
    std::os::unix::fs::chown(m.join("grp"), None, Some(100)).expect("chgrp");
    fs::set_permissions(m.join("grp"), fs::Permissions::from_mode(0o2777)).expect("chmod");
    let script = "touch pub/f && mkdir pub/d && ln -s target pub/l && mkfifo pub/p && touch grp/g";
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(m.path())
        .output()
        .expect("run as nobody");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in ["pub/f", "pub/d", "pub/l", "pub/p", "grp/g"] {
        let st = fs::symlink_metadata(m.join(p)).expect("stat");
        assert_eq!(st.uid(), 65534, "{p} is not nobody's");
        let want_gid = if p.starts_with("grp") { 100 } else { 65534 };
        assert_eq!(st.gid(), want_gid, "{p}: group");
    }
    m.unmount();
    // The backing entries too (what the plain side shows is read from them).
    let owners: Vec<u32> = v
        .backing_entries()
        .iter()
        .filter(|p| p.parent() != Some(v.backing.as_path()))
        .map(|p| fs::symlink_metadata(p).expect("stat").uid())
        .collect();
    assert_eq!(owners.len(), 5, "{owners:?}");
    assert!(owners.iter().all(|&u| u == 65534), "{owners:?}");
}

/// Attack 10b: names show their length only rounded up to 16 bytes.
#[test]
fn names_show_their_length_only_to_sixteen_bytes() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&[]);
    for n in 1..=17 {
        fs::write(m.join("n".repeat(n)), b"").expect("create");
    }
    m.unmount();
    let mut lens: Vec<usize> = backing_files_in(&v.backing)
        .iter()
        .map(|p| p.file_name().expect("name").len())
        .collect();
    lens.sort();
    lens.dedup();
    assert_eq!(lens.len(), 2, "names of 1..=15 and 16..=17 bytes: {lens:?}");
}
