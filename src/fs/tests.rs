//! The filesystem's methods against a real backing directory in a temporary dir, without FUSE:
//! what the kernel would ask, called directly.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::content::Volume;
use crate::format::Layout;
use crate::format::header::{HEADER_SIZE, ProviderId};
use crate::keys::testing::{Fault, FaultyProvider};
use crate::keys::{KeyCache, KeyProvider};
use crate::vault::VaultConfig;

const ROOT: u64 = inodes::ROOT;
const ME: Caller = Caller::ROOT;

/// User nobody, in no group of root's files.
fn nobody() -> Caller {
    Caller {
        uid: 65534,
        gid: 65534,
        pid: std::process::id(),
    }
}

/// A vault in a temp dir, opened as a mount opens it, over a fault-injecting provider.
struct Fixture {
    fs: KmsFs,
    kms: Arc<FaultyProvider>,
    invalidated: Arc<Recorder>,
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct Recorder(AtomicUsize);

impl Invalidator for Recorder {
    fn inval_inode(&self, _ino: u64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn inval_attr(&self, _ino: u64) {}
}

fn fixture_with(encrypted: bool, opts: FsOptions, ttl: Duration) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("vault");
    std::fs::create_dir(&root).expect("mkdir vault");
    let kms = Arc::new(FaultyProvider::new(dir.path()).expect("key"));
    let provider: Arc<dyn KeyProvider> = kms.clone();
    let mut cfg =
        VaultConfig::new(4096, ProviderId::AwsKms, provider.key_id(), !encrypted).expect("cfg");
    crate::names::Names::init_vault(&root, &mut cfg, provider.as_ref()).expect("names");
    let names = crate::names::Names::for_vault(&root, &cfg, provider.clone()).expect("names");
    let keys = Arc::new(KeyCache::new(provider.clone(), ttl, ttl, 64).with_max_waiters(2));
    let layout = Layout::new(HEADER_SIZE as u64, 4096).expect("layout");
    let volume = cfg.volume_id_bytes().expect("volume id");
    std::fs::create_dir(root.join(".kmsfs")).expect("meta dir");
    let holes = crate::vault::hole_dir(&root, true).expect("holes dir");
    let store = holes.map(crate::content::HoleStore::new);
    let vault = Arc::new(Volume::new(volume, layout, ProviderId::AwsKms, keys).with_holes(store));
    let fs = KmsFs::new(&root, vault, names, opts).expect("fs");
    let invalidated = Arc::new(Recorder::default());
    let inval: Arc<dyn Invalidator> = invalidated.clone();
    let _ = fs.invalidator_slot().set(inval);
    Fixture {
        fs,
        kms,
        invalidated,
        dir,
    }
}

fn fixture() -> Fixture {
    fixture_with(true, FsOptions::default(), Duration::from_secs(300))
}

impl Fixture {
    fn backing(&self) -> std::path::PathBuf {
        self.dir.path().join("vault")
    }

    /// Create `name` in `parent` holding `data`; returns its inode number.
    fn file(&self, parent: u64, name: &str, data: &[u8]) -> u64 {
        let (e, fh) = self
            .fs
            .create(&ME, parent, OsStr::new(name), 0o644, 0o022, libc::O_WRONLY)
            .expect("create");
        if !data.is_empty() {
            assert_eq!(
                self.fs.write(e.attr.ino, fh, 0, data, None).expect("write") as usize,
                data.len()
            );
        }
        self.fs.release(e.attr.ino, fh);
        e.attr.ino
    }

    fn read_all(&self, ino: u64) -> FsResult<Vec<u8>> {
        let o = self.fs.open(ino, libc::O_RDONLY)?;
        let r = self.fs.read(ino, o.fh, 0, 1 << 20);
        self.fs.release(ino, o.fh);
        r
    }

    fn dir(&self, parent: u64, name: &str) -> u64 {
        self.fs
            .mkdir(&ME, parent, OsStr::new(name), 0o755, 0o022)
            .expect("mkdir")
            .attr
            .ino
    }

    /// chmod as root.
    fn chmod(&self, ino: u64, mode: u32) {
        self.fs
            .setattr(
                &Caller::ROOT,
                ino,
                SetAttr {
                    mode: Some(mode),
                    ..Default::default()
                },
            )
            .expect("chmod");
    }

    fn lookup(&self, parent: u64, name: &str) -> FsResult<Entry> {
        self.fs.lookup(parent, OsStr::new(name))
    }

    /// The plain names `readdirplus` lists in `dir` (without "." and ".."), with their numbers.
    fn list(&self, dir: u64) -> Vec<(OsString, u64)> {
        struct Collect(Vec<(OsString, u64)>);
        impl DirSink for Collect {
            fn add(&mut self, name: &OsStr, _next: u64, e: &Entry) -> bool {
                self.0.push((name.to_os_string(), e.attr.ino));
                false
            }
        }
        let fh = self.fs.opendir(dir).expect("opendir");
        let mut c = Collect(Vec::new());
        self.fs
            .readdirplus(dir, fh, 0, &mut c)
            .expect("readdirplus");
        self.fs.releasedir(fh);
        c.0.into_iter()
            .filter(|(n, _)| n != "." && n != "..")
            .collect()
    }
}

#[test]
fn a_file_round_trips_and_shows_its_plain_size() {
    let f = fixture();
    for (i, len) in [0usize, 1, 4095, 4096, 4097, 100_000]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        let ino = f.file(ROOT, &format!("f{len}"), &data);
        assert_eq!(f.read_all(ino).expect("read"), data, "{len} bytes");
        assert_eq!(f.fs.getattr(ino).expect("getattr").size, len as u64);
        assert_eq!(
            f.lookup(ROOT, &format!("f{len}")).expect("lookup").attr.ino,
            ino
        );
    }
}

#[test]
fn listings_show_plain_names_with_the_numbers_stat_gives() {
    let f = fixture();
    let d = f.dir(ROOT, "docs");
    let mut want = BTreeSet::new();
    for i in 0..40 {
        let name = format!("report-{i:02}.txt");
        f.file(d, &name, b"x");
        want.insert(OsString::from(name));
    }
    let listed = f.list(d);
    let names: BTreeSet<OsString> = listed.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, want);
    for (name, ino) in &listed {
        assert_eq!(f.fs.getattr(*ino).expect("getattr").ino, *ino);
        assert_eq!(f.fs.lookup(d, name).expect("lookup").attr.ino, *ino);
    }
    let mut plain = Vec::new();
    let fh = f.fs.opendir(d).expect("opendir");
    f.fs.readdir(d, fh, 0, |ino, _, kind, name| {
        plain.push((name.to_os_string(), ino, kind));
        false
    })
    .expect("readdir");
    f.fs.releasedir(fh);
    assert_eq!(plain.len(), 42, "40 files and . and ..");
    for (name, ino, kind) in plain.iter().filter(|(n, ..)| n != "." && n != "..") {
        assert_eq!(*kind, Kind::RegularFile);
        assert!(
            listed.contains(&(name.clone(), *ino)),
            "readdir's d_ino differs for {name:?}"
        );
    }
    // No plain name reaches the backing directory.
    for e in std::fs::read_dir(f.backing()).expect("ls") {
        let n = e.expect("e").file_name();
        assert!(!n.to_string_lossy().contains("report"), "{n:?}");
    }
}

#[test]
fn renames_exchanges_links_and_removals_keep_names_and_numbers() {
    let f = fixture();
    let a = f.dir(ROOT, "a");
    let b = f.dir(ROOT, "b");
    let x = f.file(a, "x", b"xx");
    let y = f.file(b, "y", b"yy");
    f.fs.rename(a, OsStr::new("x"), b, OsStr::new("x2"), 0)
        .expect("rename across directories");
    assert_eq!(f.lookup(a, "x").err(), Some(FsError::ENOENT));
    assert_eq!(f.lookup(b, "x2").expect("moved").attr.ino, x);
    assert_eq!(f.read_all(x).expect("read"), b"xx");
    f.fs.rename(
        b,
        OsStr::new("x2"),
        b,
        OsStr::new("y"),
        libc::RENAME_EXCHANGE,
    )
    .expect("exchange");
    assert_eq!(f.lookup(b, "y").expect("y").attr.ino, x);
    assert_eq!(f.lookup(b, "x2").expect("x2").attr.ino, y);
    let l = f.fs.link(x, a, OsStr::new("hard")).expect("link");
    assert_eq!(l.attr.ino, x, "a hard link shares the number");
    assert_eq!(f.fs.getattr(x).expect("getattr").nlink, 2);
    f.fs.unlink(b, OsStr::new("y")).expect("unlink one name");
    assert_eq!(f.read_all(x).expect("the other name still reads"), b"xx");
    assert_eq!(
        f.fs.rmdir(ROOT, OsStr::new("a")).err(),
        Some(FsError(libc::ENOTEMPTY))
    );
    f.fs.unlink(a, OsStr::new("hard")).expect("unlink");
    f.fs.rmdir(ROOT, OsStr::new("a")).expect("rmdir");
    assert_eq!(f.lookup(ROOT, "a").err(), Some(FsError::ENOENT));
    // A directory moved with its entries keeps them readable.
    let c = f.dir(b, "c");
    let z = f.file(c, "z", b"zz");
    f.fs.rename(b, OsStr::new("c"), ROOT, OsStr::new("c2"), 0)
        .expect("move dir");
    let c2 = f.lookup(ROOT, "c2").expect("moved dir").attr.ino;
    assert_eq!(c2, c);
    assert_eq!(f.lookup(c2, "z").expect("z").attr.ino, z);
}

#[test]
fn symlinks_store_their_targets_encrypted() {
    let f = fixture();
    let e =
        f.fs.symlink(&ME, ROOT, OsStr::new("l"), Path::new("../docs/report.txt"))
            .expect("symlink");
    assert_eq!(e.attr.kind, Kind::Symlink);
    assert_eq!(e.attr.size, 18, "the plain target's length");
    assert_eq!(
        f.fs.readlink(e.attr.ino).expect("readlink"),
        b"../docs/report.txt"
    );
    for entry in std::fs::read_dir(f.backing()).expect("ls") {
        let p = entry.expect("e").path();
        if let Ok(t) = std::fs::read_link(&p) {
            assert!(!t.to_string_lossy().contains("report"), "{t:?}");
        }
    }
    assert_eq!(f.fs.listxattr(e.attr.ino).expect("no xattrs on links"), b"");
}

#[test]
fn setattr_truncates_changes_modes_owners_and_times() {
    let f = fixture();
    let ino = f.file(ROOT, "f", b"hello");
    let a =
        f.fs.setattr(
            &ME,
            ino,
            SetAttr {
                size: Some(10_000),
                ..SetAttr::default()
            },
        )
        .expect("extend");
    assert_eq!(a.size, 10_000);
    let data = f.read_all(ino).expect("read");
    assert_eq!(&data[..5], b"hello");
    assert!(
        data[5..].iter().all(|&b| b == 0),
        "the extension reads as zeros"
    );
    let a =
        f.fs.setattr(
            &ME,
            ino,
            SetAttr {
                size: Some(3),
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .expect("cut and chmod");
    assert_eq!((a.size, a.perm), (3, 0o600));
    let t = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let a =
        f.fs.setattr(
            &ME,
            ino,
            SetAttr {
                mtime: Some(SetTime::At(t)),
                uid: Some(65534),
                ..SetAttr::default()
            },
        )
        .expect("times and owner");
    assert_eq!((a.mtime, a.uid), (t, 65534));
    assert!(f.fs.getattr(ino).expect("getattr").atime <= SystemTime::now());
}

#[test]
fn xattrs_round_trip_encrypted() {
    let f = fixture();
    let ino = f.file(ROOT, "f", b"x");
    f.fs.setxattr(&ME, ino, OsStr::new("user.comment"), b"secret value", 0)
        .expect("setxattr");
    assert_eq!(
        f.fs.getxattr(ino, OsStr::new("user.comment")).expect("get"),
        b"secret value"
    );
    assert_eq!(f.fs.listxattr(ino).expect("list"), b"user.comment\0");
    // Trusted xattrs and ACLs are stored too (the kernel gives them their meaning).
    f.fs.setxattr(&ME, ino, OsStr::new("trusted.x"), b"v", 0)
        .expect("trusted");
    let acl = OsStr::new("system.posix_acl_access");
    // version 2 (u16 tag, u16 perm, u32 id each): owner rwx, user 1000 r--, owning group
    // r-x, mask r-x, other --- (a named user: more than the mode says, so it is stored).
    let value = b"\x02\0\0\0\x01\0\x07\0\xff\xff\xff\xff\x02\0\x04\0\xe8\x03\0\0\x04\0\x05\0\xff\xff\xff\xff\x10\0\x05\0\xff\xff\xff\xff\x20\0\0\0\xff\xff\xff\xff";
    f.fs.setxattr(&ME, ino, acl, value, 0).expect("acl");
    assert_eq!(f.fs.getxattr(ino, acl).expect("acl"), value);
    assert_eq!(
        f.fs.getattr(ino).expect("attr").perm & 0o777,
        0o750,
        "the mode follows"
    );
    assert_eq!(
        f.fs.setxattr(&ME, ino, acl, b"\x02\0\0\0", 0).err(),
        Some(FsError::EINVAL),
        "an ACL without entries"
    );
    assert_eq!(
        f.fs.setxattr(&ME, ino, OsStr::new("system.other"), b"v", 0)
            .err(),
        Some(FsError::EOPNOTSUPP)
    );
    f.fs.removexattr(ino, OsStr::new("user.comment"))
        .expect("remove");
    let mut left = f.fs.listxattr(ino).expect("list");
    left.sort();
    let mut want = b"trusted.x\0system.posix_acl_access\0".to_vec();
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn the_vault_config_dir_is_reserved_and_read_only_mounts_refuse_changes() {
    let f = fixture();
    assert!(f.backing().join(".kmsfs").is_dir());
    assert_eq!(f.lookup(ROOT, ".kmsfs").err(), Some(FsError::ENOENT));
    let made = f.fs.create(&ME, ROOT, OsStr::new(".kmsfs"), 0o644, 0, 0);
    assert_eq!(made.err(), Some(FsError::EPERM));
    let ro = fixture_with(
        true,
        FsOptions {
            read_only: true,
            ..FsOptions::default()
        },
        Duration::from_secs(300),
    );
    let err = ro.fs.mkdir(&ME, ROOT, OsStr::new("d"), 0o755, 0).err();
    assert_eq!(err, Some(FsError::EROFS));
}

#[test]
fn a_tampered_block_reads_as_eio_and_other_files_still_read() {
    let f = fixture_with(false, FsOptions::default(), Duration::from_secs(300));
    let ino = f.file(ROOT, "victim", &vec![7u8; 9000]);
    let other = f.file(ROOT, "other", b"fine");
    let p = f.backing().join("victim");
    let mut bytes = std::fs::read(&p).expect("backing");
    bytes[HEADER_SIZE + 100] ^= 1;
    std::fs::write(&p, &bytes).expect("tamper");
    assert_eq!(f.read_all(ino).err(), Some(FsError::EIO));
    assert_eq!(f.read_all(other).expect("read"), b"fine");
}

#[test]
fn fallocate_zeroes_ranges_and_refuses_unknown_modes() {
    let f = fixture();
    let ino = f.file(ROOT, "f", &vec![1u8; 10_000]);
    let o = f.fs.open(ino, libc::O_RDWR).expect("open");
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    let root = &Caller::ROOT;
    f.fs.fallocate(
        root,
        ino,
        o.fh,
        100,
        5000,
        libc::FALLOC_FL_PUNCH_HOLE | keep,
    )
    .expect("punch");
    f.fs.fallocate(root, ino, o.fh, 20_000, 10, 0)
        .expect("grow");
    let err =
        f.fs.fallocate(root, ino, o.fh, 0, 10, libc::FALLOC_FL_COLLAPSE_RANGE);
    assert_eq!(err.err(), Some(FsError::EOPNOTSUPP));
    f.fs.release(ino, o.fh);
    let data = f.read_all(ino).expect("read");
    assert_eq!(data.len(), 20_010);
    assert!(data[100..5100].iter().all(|&b| b == 0) && data[99] == 1 && data[5100] == 1);
}

/// The hole maps in the fixture's vault.
fn maps(f: &Fixture) -> usize {
    std::fs::read_dir(f.backing().join(".kmsfs/holes"))
        .expect("holes dir")
        .count()
}

#[test]
fn a_sparse_file_takes_its_hole_map_along_when_its_last_name_goes() {
    let f = fixture();
    let ino = f.file(ROOT, "sparse", b"x");
    let o = f.fs.open(ino, libc::O_RDWR).expect("open");
    f.fs.write(ino, o.fh, 1 << 20, b"far", None)
        .expect("write past a hole");
    assert_eq!(maps(&f), 1);
    let seen = f.fs.lseek(o.fh, 0, false).expect("SEEK_HOLE");
    assert_eq!(seen, 4096);
    assert_eq!(f.fs.lseek(o.fh, 4096, true).expect("SEEK_DATA"), 1 << 20);
    assert_eq!(f.fs.lseek(o.fh, 2 << 20, true).err(), Some(FsError::ENXIO));
    // Before the start there is neither (ext4 answers ENXIO too, not EINVAL).
    assert_eq!(f.fs.lseek(o.fh, -1, true).err(), Some(FsError::ENXIO));
    assert_eq!(f.fs.lseek(o.fh, -1, false).err(), Some(FsError::ENXIO));
    f.fs.release(ino, o.fh);
    // A second name keeps it; removing both drops it.
    f.fs.link(ino, ROOT, OsStr::new("again")).expect("link");
    f.fs.unlink(ROOT, OsStr::new("sparse")).expect("unlink");
    assert_eq!(maps(&f), 1);
    // Open while its last name goes: the map stays while the kernel may still open it (after
    // the last close too), and goes when the kernel forgets the inode.
    let o = f.fs.open(ino, libc::O_RDONLY).expect("open");
    f.fs.unlink(ROOT, OsStr::new("again")).expect("unlink");
    assert_eq!(maps(&f), 1);
    let hole =
        f.fs.read(ino, o.fh, 4096, 100)
            .expect("hole of an unlinked file");
    assert!(hole.iter().all(|&b| b == 0));
    f.fs.release(ino, o.fh);
    assert_eq!(maps(&f), 1, "an open of the unlinked file may still come");
    let o = f.fs.open(ino, libc::O_RDONLY).expect("open again");
    assert!(
        f.fs.read(ino, o.fh, 4096, 100)
            .expect("hole")
            .iter()
            .all(|&b| b == 0)
    );
    f.fs.release(ino, o.fh);
    f.fs.forget(ino, u64::MAX);
    assert_eq!(maps(&f), 0);
    // Replaced by a rename, and emptied by O_TRUNC.
    for how in ["rename", "truncate"] {
        let victim = f.file(ROOT, "victim", b"y");
        let o = f.fs.open(victim, libc::O_RDWR).expect("open");
        f.fs.write(victim, o.fh, 1 << 20, b"z", None).expect("hole");
        f.fs.release(victim, o.fh);
        assert_eq!(maps(&f), 1, "{how}");
        if how == "rename" {
            f.file(ROOT, "new", b"n");
            f.fs.rename(ROOT, OsStr::new("new"), ROOT, OsStr::new("victim"), 0)
                .expect("rename over");
            f.fs.forget(victim, u64::MAX);
        } else {
            let o =
                f.fs.open(victim, libc::O_RDWR | libc::O_TRUNC)
                    .expect("O_TRUNC");
            f.fs.release(victim, o.fh);
        }
        assert_eq!(maps(&f), 0, "{how}");
        f.fs.unlink(ROOT, OsStr::new("victim")).expect("clean up");
    }
}

#[test]
fn unknown_inodes_and_handles_are_estale_and_ebadf() {
    let f = fixture();
    assert_eq!(f.lookup(999_999, "x").err(), Some(FsError::ESTALE));
    assert_eq!(f.fs.read(ROOT, 12345, 0, 10).err(), Some(FsError::EBADF));
    assert_eq!(f.fs.opendir(999_999).err(), Some(FsError::ESTALE));
    let d = f.fs.readdir(ROOT, 777, 0, |_, _, _, _| false);
    assert_eq!(d.err(), Some(FsError::EBADF));
}

#[test]
fn a_refused_key_fails_the_read_with_eacces_and_drops_cached_pages() {
    let f = fixture_with(true, FsOptions::default(), Duration::ZERO);
    let ino = f.file(ROOT, "f", b"data");
    f.fs.vault().keys.clear();
    f.kms.set(Fault::Refuse);
    let o = f.fs.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(
        f.fs.read(ino, o.fh, 0, 10).err(),
        Some(FsError(libc::EACCES))
    );
    f.fs.release(ino, o.fh);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while f.invalidated.0.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        f.invalidated.0.load(Ordering::SeqCst) > 0,
        "pages not dropped"
    );
    f.kms.set(Fault::None);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(f.read_all(ino).expect("allowed again"), b"data");
}

#[test]
fn a_kms_outage_fails_cold_files_but_cached_ones_read_unreachable() {
    let f = fixture();
    let hot = f.file(ROOT, "hot", b"cached");
    let cold = f.file(ROOT, "cold", b"not cached");
    // Make "cold" cold: every key dropped, then only "hot" read again.
    f.fs.vault().keys.clear();
    assert_eq!(f.read_all(hot).expect("hot"), b"cached");
    f.kms.set(Fault::Unreachable);
    assert_eq!(f.read_all(hot).expect("served from the cache"), b"cached");
    assert_eq!(f.read_all(cold).err(), Some(FsError::EIO));
    let more =
        f.fs.create(&ME, ROOT, OsStr::new("new"), 0o644, 0, 0)
            .expect("touch");
    f.fs.release(more.0.attr.ino, more.1);
    assert!(f.lookup(ROOT, "new").is_ok(), "empty files need no key");
    f.kms.set(Fault::None);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(f.read_all(cold).expect("back"), b"not cached");
}

#[test]
fn a_hanging_kms_does_not_hang_reads_of_cached_files() {
    let f = Arc::new(fixture());
    let hot = f.file(ROOT, "hot", b"cached");
    let cold = f.file(ROOT, "cold", b"waits");
    f.fs.vault().keys.clear();
    assert_eq!(f.read_all(hot).expect("hot"), b"cached");
    f.kms.set(Fault::Hang);
    let waiter = {
        let f = f.clone();
        std::thread::spawn(move || f.read_all(cold))
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(f.read_all(hot).expect("hot during the hang"), b"cached");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cached reads waited on the KMS"
    );
    f.kms.release();
    assert_eq!(
        waiter.join().expect("join").err(),
        Some(FsError::EIO),
        "the hung read fails"
    );
}

#[test]
fn creating_files_makes_one_data_key_each_and_empty_files_none() {
    let f = fixture();
    let before = f.kms.generates();
    for i in 0..10 {
        f.file(ROOT, &format!("empty{i}"), b"");
    }
    assert_eq!(f.kms.generates(), before, "touch made keys");
    for i in 0..10 {
        f.file(ROOT, &format!("full{i}"), b"x");
    }
    assert_eq!(f.kms.generates(), before + 10);
}

#[test]
fn statfs_and_access_answer() {
    let f = fixture();
    let s = f.fs.statfs().expect("statfs");
    assert!(s.blocks > 0 && s.bsize > 0 && s.namelen > 0);
    assert!(f.fs.access(ROOT).is_ok());
    assert_eq!(f.fs.access(424_242).err(), Some(FsError::ESTALE));
    f.fs.fsyncdir(ROOT).expect("fsyncdir");
}

#[test]
fn a_file_is_named_by_its_plain_path_for_log_lines() {
    let f = fixture();
    let d = f.dir(ROOT, "reports");
    let ino = f.file(d, "q3.txt", b"x");
    assert_eq!(
        f.fs.plain_path(ino),
        Some(std::path::PathBuf::from("/reports/q3.txt"))
    );
    assert_eq!(f.fs.plain_path(ROOT), Some(std::path::PathBuf::from("/")));
}

#[test]
fn new_directory_ivs_and_sidecars_are_synced_by_the_next_fsync() {
    let f = fixture();
    let unsynced = f.fs.names.unsynced().expect("encrypted names");
    let d = f.dir(ROOT, "src");
    let long = "n".repeat(200);
    f.file(d, &long, b"x");
    assert_eq!(
        unsynced.len(),
        2,
        "the IV file and the long name's sidecar wait"
    );
    let (e, fh) =
        f.fs.create(&ME, d, OsStr::new("lib.rs"), 0o644, 0o022, libc::O_WRONLY)
            .expect("create");
    f.fs.fsync(fh, true).expect("fsync");
    assert!(unsynced.is_empty(), "an fsync syncs them first");
    f.fs.release(e.attr.ino, fh);
    f.dir(d, "sub");
    f.fs.fsyncdir(d).expect("fsyncdir");
    assert!(unsynced.is_empty(), "so does an fsyncdir");
    f.dir(d, "sub2");
    f.fs.destroy();
    assert!(unsynced.is_empty(), "and the unmount");
}

// Set-ID bits, ACLs and rewinddir: POSIX behaviour beside the basics above.
#[path = "tests_posix.rs"]
mod posix;
