//! Encrypted file names through the real binary and a real mount: nothing plain reaches the
//! backing directory (names, symlink targets, xattrs), every valid name round trips, renames
//! and hard links keep working, big directories list exactly, tampered backing names are
//! hidden, and `--plaintext-names` vaults keep names readable. Every mount is a `MountGuard`,
//! unmounted on every path.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::mount::Vault;

const DIRIV: &str = ".kmsfs.diriv";

/// A vault initialised with the local provider and default options (encrypted names).
fn encrypted_vault() -> Vault {
    let v = Vault::new();
    v.init(&[]);
    v
}

fn names_in(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<OsString> {
    names.iter().map(OsString::from).collect()
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid C strings and value buffer.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// getxattr with a size query first (which must give the plain length).
fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (p, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid C strings; a null buffer of size 0 asks for the size.
    let size = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: buffer of the given length.
    let got = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(got, size, "getxattr size query and read disagree");
    Ok(buf)
}

fn lxattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let cp = cpath(p);
    let mut list = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    if n <= 0 {
        return Vec::new();
    }
    list.truncate(n as usize);
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).expect("xattr name");
        let mut v = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let m =
            unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(m.max(0) as usize);
        out.push((name.to_vec(), v));
    }
    out
}

fn listxattr(p: &Path) -> BTreeSet<Vec<u8>> {
    let cp = cpath(p);
    let mut list = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::listxattr(cp.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert!(n >= 0, "listxattr: {}", io::Error::last_os_error());
    list.truncate(n as usize);
    list.split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every path under `dir` (not following symlinks), `dir` itself excluded.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if fs::symlink_metadata(&p).expect("lstat").is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Assert that no `needle` appears in any backing name, link target, file's bytes or xattr.
fn assert_nothing_plain(backing: &Path, needles: &[&[u8]]) {
    for p in walk(backing) {
        let md = fs::symlink_metadata(&p).expect("lstat");
        let mut hay: Vec<(String, Vec<u8>)> = vec![(
            "name".into(),
            p.file_name().expect("name").as_bytes().to_vec(),
        )];
        if md.file_type().is_symlink() {
            hay.push((
                "link target".into(),
                fs::read_link(&p)
                    .expect("readlink")
                    .into_os_string()
                    .into_vec(),
            ));
        } else if md.is_file() {
            hay.push(("contents".into(), fs::read(&p).expect("read")));
        }
        for (n, v) in lxattrs(&p) {
            hay.push(("xattr name".into(), n));
            hay.push(("xattr value".into(), v));
        }
        for (what, bytes) in &hay {
            for needle in needles {
                assert!(
                    !contains(bytes, needle),
                    "{} of backing {} contains {:?}",
                    what,
                    p.display(),
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }
}

#[test]
fn nothing_plain_reaches_the_backing_dir() {
    let v = encrypted_vault();
    let m = v.mount(&[]);
    let long = format!("SECRETLONG{}", "L".repeat(240));
    let utf = "Zürich-日本-SECRETNAME";
    fs::create_dir_all(m.join("SECRETDIR/SECRETSUB")).expect("mkdir");
    fs::write(m.join("SECRETDIR/SECRETSUB").join(&long), b"a").expect("long name");
    fs::write(m.join("SECRETDIR").join(utf), b"b").expect("utf-8 name");
    std::os::unix::fs::symlink("SECRETTARGET/xyz", m.join("SECRETLINK")).expect("symlink");
    std::os::unix::fs::symlink(&long, m.join("SECRETDIR/SECRETLONGLINK")).expect("symlink");
    let f = m.join("SECRETDIR").join(utf);
    setxattr(&f, "user.SECRETATTR", b"SECRETVALUE").expect("setxattr");
    setxattr(
        &m.join("SECRETDIR"),
        "user.SECRETDIRATTR",
        b"SECRETDIRVALUE",
    )
    .expect("setxattr on a dir");
    fs::hard_link(&f, m.join("SECRETDIR/SECRETSUB/SECRETHARDLINK")).expect("link");

    // Everything reads back through the mount.
    assert_eq!(
        fs::read(m.join("SECRETDIR/SECRETSUB").join(&long)).expect("read long"),
        b"a"
    );
    assert_eq!(
        fs::read_link(m.join("SECRETLINK")).expect("readlink"),
        Path::new("SECRETTARGET/xyz")
    );
    assert_eq!(
        fs::symlink_metadata(m.join("SECRETLINK"))
            .expect("lstat")
            .len(),
        16,
        "plain target length"
    );
    assert_eq!(
        fs::read_link(m.join("SECRETDIR/SECRETLONGLINK")).expect("readlink"),
        Path::new(&long)
    );
    assert_eq!(
        getxattr(&f, "user.SECRETATTR").expect("getxattr"),
        b"SECRETVALUE"
    );
    assert_eq!(listxattr(&f), BTreeSet::from([b"user.SECRETATTR".to_vec()]));
    assert_eq!(
        names_in(&m.join("SECRETDIR")),
        set(&["SECRETSUB", utf, "SECRETLONGLINK"])
    );
    assert_eq!(
        names_in(m.path()),
        set(&["SECRETDIR", "SECRETLINK"]),
        "the mount hides .kmsfs and the IV file"
    );
    m.unmount();

    assert_nothing_plain(
        &v.backing,
        &[
            b"SECRET",
            b"LLLLLLLL",
            "Zürich".as_bytes(),
            "日本".as_bytes(),
        ],
    );
    // The IV files and the long-name sidecar are there.
    assert!(v.backing.join(DIRIV).is_file(), "root IV file");
    let longs = walk(&v.backing)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b"kmsfs.longname."))
        })
        .count();
    assert_eq!(longs, 2, "the one long name: its entry and its sidecar");
}

#[test]
fn every_name_length_and_byte_value_round_trips() {
    let v = encrypted_vault();
    let m = v.mount(&[]);
    let dir = m.join("d");
    fs::create_dir(&dir).expect("mkdir");
    let mut want = BTreeSet::new();
    for len in 1..=255usize {
        // Byte values cycle through 1..=255, so every allowed byte appears; '/' is replaced.
        let name: Vec<u8> = (0..len)
            .map(|i| ((len + i) % 255) as u8 + 1)
            .map(|b| if b == b'/' { b'_' } else { b })
            .collect();
        want.insert(OsString::from_vec(name));
    }
    for utf in ["Zürich", "日本語のファイル名", "ñandú 🐢", &"é".repeat(127)] {
        want.insert(OsString::from(utf));
    }
    for (i, name) in want.iter().enumerate() {
        fs::write(dir.join(name), i.to_le_bytes())
            .unwrap_or_else(|e| panic!("create {name:?} ({} bytes): {e}", name.len()));
    }
    assert_eq!(names_in(&dir), want);
    for (i, name) in want.iter().enumerate() {
        let p = dir.join(name);
        assert_eq!(fs::metadata(&p).expect("stat").len(), 8, "{name:?}");
        assert_eq!(fs::read(&p).expect("read"), i.to_le_bytes(), "{name:?}");
    }
    // Too long is ENAMETOOLONG, as on a local filesystem.
    let e = File::create(dir.join("x".repeat(256))).expect_err("256-byte name");
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    for name in &want {
        fs::remove_file(dir.join(name)).expect("unlink");
    }
    assert!(names_in(&dir).is_empty());
    fs::remove_dir(&dir).expect("rmdir");
    m.unmount();
    // No sidecar or IV file left behind.
    assert_eq!(names_in(&v.backing), set(&[".kmsfs", DIRIV]));
}

#[test]
fn renames_and_hard_links_keep_names_readable() {
    let v = encrypted_vault();
    let m = v.mount(&[]);
    let long = "ö".repeat(120);
    fs::create_dir_all(m.join("a/inner")).expect("mkdir");
    fs::create_dir(m.join("b")).expect("mkdir");
    fs::write(m.join("a/inner/child"), b"child").expect("write");
    fs::write(m.join("a").join(&long), b"long").expect("write");
    fs::write(m.join("a/short"), b"short").expect("write");

    // Files across directories, short ↔ long names, and over an existing file.
    fs::rename(m.join("a").join(&long), m.join("b/now-short")).expect("long → short");
    fs::rename(m.join("a/short"), m.join("b").join(&long)).expect("short → long");
    fs::write(m.join("b/victim"), b"old").expect("write");
    fs::rename(m.join("b/now-short"), m.join("b/victim")).expect("rename over a file");
    assert_eq!(fs::read(m.join("b/victim")).expect("read"), b"long");
    assert_eq!(fs::read(m.join("b").join(&long)).expect("read"), b"short");
    assert_eq!(
        names_in(&m.join("b")),
        [OsString::from("victim"), OsString::from(&long)].into()
    );

    // A directory moves with its children; an empty target directory is replaced.
    fs::create_dir(m.join("b/empty")).expect("mkdir");
    fs::rename(m.join("a/inner"), m.join("b/empty")).expect("rename onto an empty dir");
    assert_eq!(
        fs::read(m.join("b/empty/child")).expect("child after dir rename"),
        b"child"
    );
    fs::write(m.join("a/x"), b"").expect("write");
    let e = fs::rename(m.join("b/empty"), m.join("a")).expect_err("onto a non-empty dir");
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)),
        "{e}"
    );
    fs::rename(m.join("b"), m.join("a/b-moved")).expect("rename dir into another");
    assert_eq!(
        fs::read(m.join("a/b-moved/empty/child")).expect("read"),
        b"child"
    );

    // Hard links in encrypted directories, with short and long names.
    let src = m.join("a/b-moved/victim");
    fs::hard_link(&src, m.join("a").join(&long)).expect("link (long name)");
    fs::hard_link(&src, m.join("a/b-moved/empty/second")).expect("link (short name)");
    assert_eq!(fs::metadata(&src).expect("stat").nlink(), 3);
    fs::remove_file(&src).expect("unlink one link");
    assert_eq!(
        fs::read(m.join("a").join(&long)).expect("read via link"),
        b"long"
    );
    assert_eq!(
        fs::read(m.join("a/b-moved/empty/second")).expect("read via link"),
        b"long"
    );
    // Renaming a link onto another link of the same file leaves both, as POSIX says.
    fs::rename(m.join("a").join(&long), m.join("a/b-moved/empty/second"))
        .expect("rename onto own link");
    assert!(m.join("a").join(&long).exists(), "both links stay");
    m.unmount();

    // Remount: everything still decrypts, and no stray sidecar or IV file is listed.
    let m = v.mount(&[]);
    assert_eq!(
        names_in(&m.join("a")),
        [
            OsString::from("b-moved"),
            OsString::from("x"),
            OsString::from(&long)
        ]
        .into()
    );
    assert_eq!(
        names_in(&m.join("a/b-moved")),
        [OsString::from(&long), OsString::from("empty")].into()
    );
    assert_eq!(
        names_in(&m.join("a/b-moved/empty")),
        set(&["child", "second"])
    );
    m.unmount();
    let sidecars = walk(&v.backing)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().ends_with(b".name"))
        })
        .count();
    assert_eq!(sidecars, 2, "one sidecar per remaining long name");
}

#[test]
fn five_thousand_entries_list_exactly() {
    let v = encrypted_vault();
    let m = v.mount(&[]);
    let dir = m.join("big");
    fs::create_dir(&dir).expect("mkdir");
    let want: BTreeSet<OsString> = (0..5000)
        .map(|i| OsString::from(format!("entry-{i:05}")))
        .collect();
    for n in &want {
        File::create(dir.join(n)).expect("create");
    }
    assert_eq!(names_in(&dir), want);
    m.unmount();
    let backing_dir = walk(&v.backing)
        .into_iter()
        .find(|p| p.is_dir() && !p.ends_with(".kmsfs"))
        .expect("backing dir");
    assert_eq!(
        fs::read_dir(&backing_dir).expect("ls").count(),
        5001,
        "5000 entries and the IV file"
    );
}

#[test]
fn rmdir_removes_the_iv_file_and_refuses_non_empty_dirs() {
    let v = encrypted_vault();
    let m = v.mount(&[]);
    fs::create_dir(m.join("d")).expect("mkdir");
    fs::write(m.join("d/f"), b"x").expect("write");
    let e = fs::remove_dir(m.join("d")).expect_err("non-empty");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    assert_eq!(
        fs::read(m.join("d/f")).expect("still readable"),
        b"x",
        "a failed rmdir keeps the IV"
    );
    fs::remove_file(m.join("d/f")).expect("unlink");
    fs::remove_dir(m.join("d")).expect("rmdir of an empty dir");
    // A read-only empty directory can be removed too (only its parent must be writable).
    fs::create_dir(m.join("ro")).expect("mkdir");
    fs::set_permissions(
        m.join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .expect("chmod");
    fs::remove_dir(m.join("ro")).expect("rmdir of a read-only dir");
    // mkdir with a mode that lacks owner write still gets its IV file and that exact mode.
    fs::DirBuilder::new()
        .mode(0o500)
        .create(m.join("r5"))
        .expect("mkdir 0500");
    assert_eq!(
        fs::metadata(m.join("r5")).expect("stat").mode() & 0o777,
        0o500
    );
    assert!(names_in(&m.join("r5")).is_empty());
    fs::remove_dir(m.join("r5")).expect("rmdir");
    assert!(names_in(m.path()).is_empty());
    m.unmount();
    assert_eq!(names_in(&v.backing), set(&[".kmsfs", DIRIV]));
}

#[test]
fn xattrs_are_encrypted_and_behave() {
    let v = encrypted_vault();
    let m = v.mount(&[]);
    let f = m.join("f");
    fs::write(&f, b"").expect("write");
    setxattr(&f, "user.one", b"1").expect("set");
    setxattr(&f, "user.empty", b"").expect("set empty value");
    let big = vec![b'v'; 1000];
    setxattr(&f, "user.big", &big).expect("set big value");
    assert_eq!(getxattr(&f, "user.one").expect("get"), b"1");
    assert_eq!(getxattr(&f, "user.empty").expect("get"), b"");
    assert_eq!(getxattr(&f, "user.big").expect("get"), big);
    assert_eq!(
        listxattr(&f),
        BTreeSet::from([
            b"user.one".to_vec(),
            b"user.empty".to_vec(),
            b"user.big".to_vec()
        ])
    );
    let e = getxattr(&f, "user.missing").expect_err("missing");
    assert_eq!(e.raw_os_error(), Some(libc::ENODATA));
    // trusted.* is stored too (root only, the kernel checks); a namespace with no meaning is not.
    setxattr(&f, "trusted.x", b"1").expect("trusted namespace");
    let cp = cpath(&f);
    // SAFETY: valid C strings.
    assert_eq!(
        unsafe { libc::removexattr(cp.as_ptr(), c"trusted.x".as_ptr()) },
        0
    );
    let e = setxattr(&f, "system.kmsfs_unknown", b"1").expect_err("unknown system xattr");
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    // SAFETY: valid C strings.
    assert_eq!(
        unsafe { libc::removexattr(cp.as_ptr(), c"user.one".as_ptr()) },
        0
    );
    assert_eq!(
        listxattr(&f),
        BTreeSet::from([b"user.empty".to_vec(), b"user.big".to_vec()])
    );
    m.unmount();
    let backing = walk(&v.backing)
        .into_iter()
        .find(|p| p.is_file() && !p.starts_with(v.backing.join(".kmsfs")) && !p.ends_with(DIRIV))
        .expect("file");
    let stored: Vec<_> = lxattrs(&backing)
        .into_iter()
        .filter(|(n, _)| n.starts_with(b"user."))
        .collect();
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|(n, val)| n.starts_with(b"user.kmsfs.") && val.len() >= 28),
        "{stored:?}"
    );
}

#[test]
fn tampered_backing_names_are_hidden_and_the_rest_lists() {
    let v = encrypted_vault();
    let m = v.mount(&[]);
    fs::create_dir(m.join("d")).expect("mkdir");
    for n in ["keep-1", "keep-2", "garbage", "flipped", &"long".repeat(40)] {
        fs::write(m.join("d").join(n), n.as_bytes()).expect("write");
    }
    m.unmount();
    let bdir = walk(&v.backing)
        .into_iter()
        .find(|p| p.is_dir() && !p.ends_with(".kmsfs"))
        .expect("backing dir");
    let entries: Vec<OsString> = names_in(&bdir).into_iter().collect();
    // Which backing entry is which is unknown here: tamper with entries until exactly two
    // plain names are gone, checking through the mount which ones.
    let plain: Vec<OsString> = entries
        .iter()
        .filter(|n| {
            n.as_bytes() != DIRIV.as_bytes() && !n.as_bytes().starts_with(b"kmsfs.longname.")
        })
        .cloned()
        .collect();
    assert_eq!(plain.len(), 4);
    // One entry renamed to valid-looking base64 garbage, one with a character flipped, and the
    // long name's sidecar overwritten; also a foreign plain file dropped in.
    fs::rename(
        bdir.join(&plain[0]),
        bdir.join("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    )
    .expect("rename");
    let mut flipped = plain[1].as_bytes().to_vec();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    fs::rename(bdir.join(&plain[1]), bdir.join(OsStr::from_bytes(&flipped))).expect("rename");
    let side = entries
        .iter()
        .find(|n| n.as_bytes().ends_with(b".name"))
        .expect("sidecar");
    fs::set_permissions(
        bdir.join(side),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    fs::write(bdir.join(side), b"AAAA").expect("tamper sidecar");
    fs::write(bdir.join("foreign.txt"), b"").expect("foreign file");

    let m = v.mount(&[]);
    let listed = names_in(&m.join("d"));
    assert_eq!(
        listed.len(),
        2,
        "only the two untouched names list: {listed:?}"
    );
    for n in &listed {
        assert_eq!(fs::read(m.join("d").join(n)).expect("read"), n.as_bytes());
    }
    m.unmount();
    let log = v.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("tampered or foreign"))
        .count();
    assert!(
        warnings >= 4,
        "one log line per hidden entry (4 at least):\n{log}"
    );
    assert!(
        log.contains("foreign.txt"),
        "the log names the backing entry:\n{log}"
    );

    // A vault whose root IV file is gone does not mount, and says why.
    fs::remove_file(v.backing.join(DIRIV)).expect("rm root IV");
    let e = v.try_mount(&[]).err().expect("mount must fail");
    assert!(e.contains(DIRIV), "{e}");
}

#[test]
fn plaintext_names_vaults_keep_names_readable() {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    let m = v.mount(&[]);
    fs::create_dir(m.join("visible-dir")).expect("mkdir");
    fs::write(m.join("visible-dir/visible-name"), b"x").expect("write");
    std::os::unix::fs::symlink("visible-target", m.join("visible-link")).expect("symlink");
    setxattr(&m.join("visible-dir/visible-name"), "user.visible", b"v").expect("setxattr");
    assert_eq!(
        fs::read_link(m.join("visible-link")).expect("readlink"),
        Path::new("visible-target")
    );
    assert_eq!(names_in(m.path()), set(&["visible-dir", "visible-link"]));
    m.unmount();
    assert_eq!(
        names_in(&v.backing),
        set(&[".kmsfs", "visible-dir", "visible-link"]),
        "no IV file"
    );
    assert_eq!(
        names_in(&v.backing.join("visible-dir")),
        set(&["visible-name"])
    );
    assert_eq!(
        fs::read_link(v.backing.join("visible-link")).expect("readlink"),
        Path::new("visible-target")
    );
    let cfg = fs::read_to_string(v.backing.join(".kmsfs/config.json")).expect("config");
    assert!(
        cfg.contains("\"plaintext_names\": true") && !cfg.contains("wrapped_name_key"),
        "{cfg}"
    );
}
