//! Names against backing directories in a temporary dir.
use super::*;
use std::fs::File;
use std::os::fd::AsRawFd;

/// A vault root in a temp dir with encrypted names, its root IV made as `init` makes it.
fn vault_with(key: &DataKey) -> (tempfile::TempDir, Names, File) {
    let t = tempfile::tempdir().expect("tempdir");
    let n = Names::encrypted(
        DataKey::from_slice(key.expose()).expect("key"),
        None,
        t.path(),
    )
    .expect("names");
    let enc = n.enc.as_ref().expect("encrypted");
    enc.dirivs
        .init_root(&enc.cipher().expect("cipher"))
        .expect("root iv");
    let f = File::open(t.path()).expect("open");
    (t, n, f)
}

fn vault() -> (tempfile::TempDir, Names, File) {
    vault_with(&DataKey::generate().expect("key"))
}

/// A new directory `plain` in `d`, opened.
fn subdir(n: &Names, d: &File, plain: &str) -> (BackingName, File) {
    let b = n.backing(d.as_fd(), OsStr::new(plain)).expect("name");
    n.mkdir(d.as_fd(), &b, 0o755).expect("mkdir");
    let f = File::from(openat(d.as_fd(), &b, libc::O_RDONLY | libc::O_DIRECTORY).expect("open"));
    (b, f)
}

fn touch(dir: &File, name: &OsStr) {
    sys::openat(dir.as_fd(), name, libc::O_CREAT | libc::O_WRONLY, 0o644).expect("create");
}

#[test]
fn a_refused_name_key_stops_name_operations_until_allowed() {
    let key = DataKey::generate().expect("key");
    let (_t, n, d) = vault_with(&key);
    let before = n.backing(d.as_fd(), OsStr::new("a")).expect("backing");
    let handle = n.key_handle().expect("encrypted names have a key");
    handle.rekey(Err(crate::keys::KeyError::Unreachable("down".into())));
    assert!(
        n.backing(d.as_fd(), OsStr::new("a")).is_ok(),
        "unreachable KMS keeps the key"
    );
    handle.rekey(Err(crate::keys::KeyError::Refused("disabled".into())));
    let err = n.backing(d.as_fd(), OsStr::new("a")).expect_err("refused");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    handle.rekey(Ok(key));
    assert_eq!(
        n.backing(d.as_fd(), OsStr::new("a"))
            .expect("allowed again"),
        before
    );
}

#[test]
fn plaintext_mode_passes_names_through_and_hides_only_the_config_dir() {
    let n = Names::plaintext();
    let t = tempfile::tempdir().expect("tempdir");
    let d = File::open(t.path()).expect("open");
    let b = n.backing(d.as_fd(), OsStr::new("a.txt")).expect("backing");
    assert_eq!(&*b, OsStr::new("a.txt"));
    let l = n.lister(d.as_fd(), true).expect("lister");
    assert_eq!(l.plain(OsStr::new(".kmsfs")), None);
    assert_eq!(l.plain(OsStr::new(DIRIV_NAME)), Some(DIRIV_NAME.into()));
    assert_eq!(n.link_size(10), 10);
    assert!(
        n.is_reserved(true, OsStr::new(".kmsfs")) && !n.is_reserved(false, OsStr::new(".kmsfs"))
    );
}

#[test]
fn encrypted_names_round_trip_through_a_directory() {
    let (t, n, d) = vault();
    for len in [1usize, 111, 112, 255] {
        let plain = OsString::from("é".repeat(len / 2) + &"x".repeat(len % 2));
        let b = n.backing(d.as_fd(), &plain).expect("backing");
        assert_eq!(b.is_long(), len > cipher::SHORT_NAME_MAX, "len {len}");
        n.create(d.as_fd(), &b, |bn| {
            std::fs::write(
                Path::new(&format!("/proc/self/fd/{}", d.as_raw_fd())).join(bn),
                b"",
            )
        })
        .expect("create");
        let l = n.lister(d.as_fd(), true).expect("lister");
        assert_eq!(l.plain(&b), Some(plain.clone()));
        n.unlink(d.as_fd(), &b).expect("unlink");
    }
    let left: Vec<_> = std::fs::read_dir(t.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(left, vec![OsString::from(DIRIV_NAME)], "sidecars removed");
    assert!(
        n.backing(d.as_fd(), &OsString::from("x".repeat(256)))
            .is_err()
    );
}

#[test]
fn same_name_differs_between_directories_and_is_stable_within_one() {
    let (_t, n, root) = vault();
    let (_, da) = subdir(&n, &root, "a");
    let (_, db) = subdir(&n, &root, "b");
    let name = OsStr::new("salaries-2026.xlsx");
    let a1 = n.backing(da.as_fd(), name).expect("a");
    assert_eq!(a1, n.backing(da.as_fd(), name).expect("a again"));
    assert_ne!(a1, n.backing(db.as_fd(), name).expect("b"));
    // Foreign or moved entries are hidden, kmsfs's own files silently.
    let lb = n.lister(db.as_fd(), false).expect("lister");
    assert_eq!(lb.plain(&a1), None);
    assert_eq!(lb.plain(OsStr::new("plain-name")), None);
    assert_eq!(lb.plain(OsStr::new(DIRIV_NAME)), None);
}

#[test]
fn missing_diriv_is_eio() {
    let (_t, n, root) = vault();
    let b = n.backing(root.as_fd(), OsStr::new("d")).expect("name");
    mkdirat(root.as_fd(), &b, 0o755).expect("mkdir without an IV");
    let d = File::from(openat(root.as_fd(), &b, libc::O_RDONLY).expect("open"));
    let e = n.backing(d.as_fd(), OsStr::new("x")).expect_err("no diriv");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
}

/// Attacks 4 and 7 of the hostile-store issue, in-process: a directory whose IV file was
/// replaced by the root's, by a sibling's, or by a FIFO reads as EIO (at once, for the
/// FIFO); a FIFO in place of a long name's sidecar hides that entry without blocking.
#[test]
fn a_diriv_copied_from_elsewhere_or_a_fifo_is_eio() {
    let key = DataKey::generate().expect("key");
    let (t, n, root) = vault_with(&key);
    let (hb, hr) = subdir(&n, &root, "hr");
    let (ob, _ot) = subdir(&n, &root, "ops");
    let secret = n.backing(root.as_fd(), OsStr::new("t1")).expect("t1");
    touch(&root, &secret);
    // Move t1 into hr/ with the root's IV copied beside it.
    std::fs::rename(t.path().join(&*secret), t.path().join(&*hb).join(&*secret)).expect("mv");
    let iv_of = |b: &OsStr| t.path().join(b).join(DIRIV_NAME);
    std::fs::remove_file(iv_of(&hb)).expect("rm");
    std::fs::copy(t.path().join(DIRIV_NAME), iv_of(&hb)).expect("copy root iv");
    // A fresh mount: nothing cached.
    let fresh = || vault_again(&key, t.path());
    let e = fresh()
        .lister(hr.as_fd(), false)
        .err()
        .expect("root IV in hr");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    std::fs::remove_file(iv_of(&hb)).expect("rm");
    std::fs::copy(iv_of(&ob), iv_of(&hb)).expect("copy sibling iv");
    let e = fresh()
        .lister(hr.as_fd(), false)
        .err()
        .expect("sibling IV in hr");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    std::fs::remove_file(iv_of(&hb)).expect("rm");
    let made = std::process::Command::new("mkfifo")
        .arg(iv_of(&hb))
        .status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let started = std::time::Instant::now();
    let e = fresh().lister(hr.as_fd(), false).err().expect("FIFO IV");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "blocked on a FIFO"
    );
    // A long name whose sidecar is a FIFO.
    let long = n
        .backing(root.as_fd(), &OsString::from("L".repeat(150)))
        .expect("long");
    n.create(root.as_fd(), &long, |b| {
        sys::openat(root.as_fd(), b, libc::O_CREAT | libc::O_WRONLY, 0o644).map(drop)
    })
    .expect("create");
    let side = long.sidecar().expect("sidecar");
    std::fs::remove_file(t.path().join(&side)).expect("rm sidecar");
    let made = std::process::Command::new("mkfifo")
        .arg(t.path().join(&side))
        .status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let started = std::time::Instant::now();
    assert_eq!(
        fresh()
            .lister(root.as_fd(), true)
            .expect("root")
            .plain(&long),
        None
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "blocked on a FIFO"
    );
}

/// The names of `root`'s vault with `key`, as a new mount would see them (no cached IV).
fn vault_again(key: &DataKey, root: &Path) -> Names {
    Names::encrypted(DataKey::from_slice(key.expose()).expect("key"), None, root).expect("names")
}

/// Renamed and exchanged directories keep their entries' names, in a fresh mount too.
#[test]
fn renamed_directories_keep_their_names() {
    let key = DataKey::generate().expect("key");
    let (t, n, root) = vault_with(&key);
    let (ab, a) = subdir(&n, &root, "a");
    let (bb, b) = subdir(&n, &root, "b");
    let inner = n.backing(a.as_fd(), OsStr::new("inner")).expect("inner");
    touch(&a, &inner);
    // a -> b/c (another parent), then b <-> b/c's sibling exchange.
    let to = n.backing(b.as_fd(), OsStr::new("c")).expect("c");
    n.rename(root.as_fd(), &ab, b.as_fd(), &to, 0)
        .expect("mv a b/c");
    let check = |names: &Names| {
        let c = File::from(openat(b.as_fd(), &to, libc::O_RDONLY).expect("open c"));
        assert_eq!(
            names
                .lister(c.as_fd(), false)
                .expect("c lists")
                .plain(&inner),
            Some("inner".into())
        );
    };
    check(&n);
    check(&vault_again(&key, t.path()));
    let x = n.backing(root.as_fd(), OsStr::new("x")).expect("x");
    n.mkdir(root.as_fd(), &x, 0o755).expect("mkdir x");
    n.rename(root.as_fd(), &bb, root.as_fd(), &x, libc::RENAME_EXCHANGE)
        .expect("exchange b and x");
    let fresh = vault_again(&key, t.path());
    let b_now = File::from(openat(root.as_fd(), &x, libc::O_RDONLY).expect("open"));
    assert_eq!(
        fresh
            .lister(b_now.as_fd(), false)
            .expect("lists")
            .plain(&to),
        Some("c".into())
    );
    let left = std::fs::read(t.path().join(&*x).join(DIRIV_NAME)).expect("iv");
    assert_eq!(
        left.len(),
        diriv::DIRIV_FILE_LEN,
        "the old binding is dropped"
    );
}

#[test]
fn mkdir_rmdir_and_rename_keep_ivs_and_sidecars_in_step() {
    let (t, n, d) = vault();
    let sub = n.backing(d.as_fd(), OsStr::new("sub")).expect("sub");
    n.mkdir(d.as_fd(), &sub, 0o500).expect("mkdir");
    let st = std::fs::metadata(t.path().join(&*sub)).expect("stat");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&st.permissions()) & 0o777,
        0o500
    );
    assert_eq!(
        std::fs::read(t.path().join(&*sub).join(DIRIV_NAME))
            .expect("iv")
            .len(),
        diriv::DIRIV_FILE_LEN
    );
    // A long name moves into the sub directory (made writable for the test).
    std::fs::set_permissions(
        t.path().join(&*sub),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let sd = File::open(t.path().join(&*sub)).expect("open sub");
    let long = OsString::from("L".repeat(200));
    let from = n.backing(d.as_fd(), &long).expect("from");
    n.create(d.as_fd(), &from, |b| {
        sys::openat(d.as_fd(), b, libc::O_CREAT | libc::O_WRONLY, 0o644).map(drop)
    })
    .expect("create");
    let to = n.backing(sd.as_fd(), &long).expect("to");
    n.rename(d.as_fd(), &from, sd.as_fd(), &to, 0)
        .expect("rename");
    assert!(!sys::exists_at(d.as_fd(), &from.sidecar().expect("long")));
    assert_eq!(
        n.lister(sd.as_fd(), false).expect("l").plain(&to),
        Some(long.clone())
    );
    // Not empty: ENOTEMPTY, and the IV stays.
    let e = n.rmdir(d.as_fd(), &sub).expect_err("not empty");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    n.unlink(sd.as_fd(), &to).expect("unlink");
    // A directory renamed onto an empty one replaces it.
    let other = n.backing(d.as_fd(), OsStr::new("other")).expect("other");
    n.mkdir(d.as_fd(), &other, 0o755).expect("mkdir other");
    n.rename(d.as_fd(), &sub, d.as_fd(), &other, 0)
        .expect("rename onto empty dir");
    n.rmdir(d.as_fd(), &other).expect("rmdir");
    let left: Vec<_> = std::fs::read_dir(t.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(left, vec![OsString::from(DIRIV_NAME)]);
}

#[test]
fn xattrs_of_the_stored_namespaces_round_trip() {
    let (_t, n, _d) = vault();
    assert_eq!(
        n.xattr_name(OsStr::new("system.foo"))
            .expect_err("")
            .raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    for name in ["security.selinux", "trusted.t", "system.posix_acl_default"] {
        let b = n.xattr_name(OsStr::new(name)).expect("name");
        assert!(b.as_bytes().starts_with(b"user.kmsfs."), "{name}");
    }
    let b = n.xattr_name(OsStr::new("user.x")).expect("name");
    assert!(b.as_bytes().starts_with(b"user.kmsfs."));
    let v = n.seal_xattr(&b, b"v").expect("seal");
    assert_eq!(n.open_xattr(&b, v).expect("open"), b"v");
    let mut list = b.as_bytes_with_nul().to_vec();
    list.extend_from_slice(b"user.foreign\0user.kmsfs.garbage\0");
    assert_eq!(n.plain_xattr_list(list), b"user.x\0");
}
