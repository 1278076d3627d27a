//! Scale: a tree of more entries than the daemon may hold descriptors for extracts intact, the
//! daemon's descriptors stay bounded, and inode numbers are the same in `stat` and `readdir`
//! and across remounts. Every mount is a `MountGuard`, unmounted on every path.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::mount::{Rng, Vault, files_under};

/// The open-file limit the daemon runs under in these tests.
const FD_LIMIT: u64 = 256;

/// `dirs` directories of `per_dir` files each (small, random), under `root`; returns each
/// file's path relative to `root` and its contents.
fn make_tree(root: &Path, dirs: usize, per_dir: usize, seed: u64) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut rng = Rng::new(seed);
    let mut out = BTreeMap::new();
    for d in 0..dirs {
        let dir = PathBuf::from(format!("d{d:03}/sub"));
        fs::create_dir_all(root.join(&dir)).expect("mkdir");
        for f in 0..per_dir {
            let rel = dir.join(format!("f{f:03}.txt"));
            let len = rng.below(3000) as usize;
            let data = rng.bytes(len);
            fs::write(root.join(&rel), &data).expect("write");
            out.insert(rel, data);
        }
    }
    out
}

/// Every entry under `dir` with the inode number `readdir` gives it and the one `stat`
/// gives, by path relative to `dir`.
fn inode_numbers(dir: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let st = fs::symlink_metadata(e.path()).expect("stat");
            if st.is_dir() {
                todo.push(e.path());
            }
            let rel = e.path().strip_prefix(dir).expect("inside").to_path_buf();
            out.insert(rel, (e.ino(), st.ino()));
        }
    }
    out
}

/// More files than the daemon's descriptor limit, made (with `cp -r`, as tar would), listed,
/// read back and compared; the daemon never goes over its limit and reports its counts.
#[test]
fn a_tree_larger_than_the_descriptor_limit_extracts_intact() {
    let v = Vault::new().with_fd_limit(FD_LIMIT);
    v.init(&[]);
    let src = v.dir("src");
    let tree = make_tree(&src, 40, 25, 7);
    assert!(tree.len() as u64 > 3 * FD_LIMIT);
    let m = v.mount(&[]);
    let out = std::process::Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(m.join("t"))
        .output()
        .expect("cp");
    assert!(
        out.status.success(),
        "cp -r into the mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = files_under(&m.join("t"));
    assert_eq!(copied.len(), tree.len(), "files in the mount");
    for (rel, data) in &tree {
        assert_eq!(
            &fs::read(m.join("t").join(rel)).expect("read"),
            data,
            "{}",
            rel.display()
        );
    }
    let status = v.status_json(m.path());
    let held = status["fds_held"].as_u64().expect("fds_held");
    let open = status["fds_open"].as_u64().expect("fds_open");
    let limit = status["fd_cache_limit"].as_u64().expect("fd_cache_limit");
    assert!(limit < FD_LIMIT, "cache limit {limit}");
    assert!(
        held <= limit + 1,
        "{held} descriptors held for inodes, limit {limit}"
    );
    assert!(open < FD_LIMIT, "{open} descriptors open");
    assert!(
        status["inodes_known"].as_u64().expect("inodes_known") > FD_LIMIT,
        "the kernel should know more inodes than there are descriptors: {status}"
    );
    // Renames of directories full of known inodes are followed.
    fs::rename(m.join("t/d001"), m.join("t/d000/moved")).expect("mv");
    for (rel, data) in tree.iter().filter(|(r, _)| r.starts_with("d001")) {
        let moved = Path::new("d000/moved").join(rel.strip_prefix("d001").expect("d001"));
        assert_eq!(
            &fs::read(m.join("t").join(moved)).expect("read moved"),
            data
        );
    }
    m.unmount();
}

/// `st_ino` equals `d_ino`, hard links share it, and every number is the same after a remount.
#[test]
fn inode_numbers_are_stable_and_equal_in_stat_and_readdir() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&[]);
    make_tree(&m.join("t"), 5, 20, 9);
    fs::hard_link(m.join("t/d000/sub/f000.txt"), m.join("t/link")).expect("link");
    std::os::unix::fs::symlink("d000", m.join("t/sym")).expect("symlink");
    let before = inode_numbers(&m.join("t"));
    for (p, (d_ino, st_ino)) in &before {
        assert_eq!(d_ino, st_ino, "{}: readdir and stat differ", p.display());
    }
    assert_eq!(
        before[Path::new("link")],
        before[Path::new("d000/sub/f000.txt")],
        "hard links share the number"
    );
    m.unmount();
    let m = v.mount(&[]);
    // Looked up in another order this time.
    let _ = fs::metadata(m.join("t/d004/sub/f019.txt")).expect("stat");
    assert_eq!(
        inode_numbers(&m.join("t")),
        before,
        "numbers changed across a remount"
    );
    m.unmount();
}

/// The kernel forgetting every inode (`echo 2 > drop_caches`) between renames, unlinks and new
/// files that take freed inode numbers: every name reads what was last written under it.
#[test]
fn forget_storms_keep_every_file_right() {
    let v = Vault::new().with_fd_limit(FD_LIMIT);
    v.init(&[]);
    let m = v.mount(&["--fd-cache", "16"]);
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rng = Rng::new(11);
    fs::create_dir(m.join("w")).expect("mkdir");
    for round in 0..4 {
        for i in 0..150 {
            let name = format!("w/r{round}-{i}");
            let len = rng.below(5000) as usize;
            let data = rng.bytes(len);
            fs::write(m.join(&name), &data).expect("write");
            want.insert(name, data);
        }
        let names: Vec<String> = want.keys().cloned().collect();
        for (k, name) in names.iter().enumerate() {
            match k % 4 {
                0 => {
                    fs::remove_file(m.join(name)).expect("rm");
                    want.remove(name);
                }
                1 => {
                    let to = format!("{name}-mv");
                    fs::rename(m.join(name), m.join(&to)).expect("mv");
                    let data = want.remove(name).expect("known");
                    want.insert(to, data);
                }
                _ => {}
            }
        }
        fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop dentries and inodes");
        for (name, data) in &want {
            assert_eq!(
                &fs::read(m.join(name)).expect("read"),
                data,
                "round {round}: {name}"
            );
        }
    }
    m.unmount();
}
