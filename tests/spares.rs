//! Spare backing files (`--spare-files`): they become new files, and none outlives the mount
//! or a kill -9 of its daemon.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::crashkit::*;
use common::mount::{Vault, assert_contents};

// ---------------------------------------------------------------------------------------------
// Spare backing files (`--spare-files`) across unmount and kill -9.

/// The spares waiting in the vault's `.kmsfs/spares-HOST` directories.
fn spares_of(v: &Vault) -> Vec<PathBuf> {
    let meta = fs::read_dir(v.backing.join(".kmsfs")).expect("list .kmsfs");
    meta.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("spares-"))
        .flat_map(|d| fs::read_dir(d.path()).expect("list spares").flatten())
        .map(|e| e.path())
        .collect()
}

/// The spare directory of this host (made by the first mount).
fn spare_dir(v: &Vault) -> PathBuf {
    fs::read_dir(v.backing.join(".kmsfs"))
        .expect("list .kmsfs")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("spares-"))
        .expect("a spares- directory")
        .path()
}

#[test]
fn spare_files_become_new_files_and_none_outlive_the_mount_or_a_crash() {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(&["--spare-files", "8"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while spares_of(&v).len() < 8 {
        assert!(Instant::now() < deadline, "the pool never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    // More creates than spares: the pool refills, and every file is a proper new file.
    for i in 0..20 {
        let p = m.join(format!("f{i}"));
        fs::write(&p, format!("file {i}")).expect("create");
        let md = fs::metadata(&p).expect("stat");
        assert_eq!(md.permissions().mode() & 0o7777, 0o644, "mode of f{i}");
        let age = std::time::SystemTime::now()
            .duration_since(md.modified().expect("mtime"))
            .unwrap_or_default();
        assert!(
            age < Duration::from_secs(5),
            "f{i} has the spare's old mtime"
        );
    }
    let listed: Vec<_> = fs::read_dir(m.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(listed.len(), 20, "spares are never listed: {listed:?}");
    for i in 0..20 {
        assert_contents(&m.join(format!("f{i}")), format!("file {i}").as_bytes());
    }
    // A set-group-ID directory gives its group to new files (no spare, which keeps its own);
    // a spare taken and not used would outlive the unmount below.
    let g = m.join("shared");
    fs::create_dir(&g).expect("mkdir shared");
    std::os::unix::fs::chown(&g, None, Some(65534)).expect("chgrp shared");
    fs::set_permissions(&g, fs::Permissions::from_mode(0o2775)).expect("chmod g+s");
    for i in 0..3 {
        let p = g.join(format!("s{i}"));
        fs::write(&p, b"in a setgid dir").expect("create in setgid dir");
        assert_eq!(
            fs::metadata(&p).expect("stat").gid(),
            65534,
            "group of {}",
            p.display()
        );
    }
    // O_EXCL on an existing name fails and the file keeps its content.
    let excl = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.join("f0"));
    assert_eq!(
        excl.map(|_| ()).map_err(|e| e.kind()),
        Err(io::ErrorKind::AlreadyExists)
    );
    assert_contents(&m.join("f0"), b"file 0");
    m.unmount();
    assert_eq!(
        spares_of(&v),
        Vec::<PathBuf>::new(),
        "unmount removes the spares"
    );

    // A crash leaves spares behind; the next mount clears them before making its own.
    let m = v.mount(&["--spare-files", "8"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while spares_of(&v).len() < 8 {
        assert!(Instant::now() < deadline, "the pool never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_daemon(&m);
    drop(m);
    fs::write(spare_dir(&v).join("s999"), b"stale").expect("plant a stale spare");
    let m = v.mount(&["--spare-files", "8"]);
    std::thread::sleep(Duration::from_millis(200));
    let left = spares_of(&v);
    assert!(
        left.len() <= 8 && !left.iter().any(|p| p.ends_with("s999")),
        "stale spares survive a remount: {left:?}"
    );
    fs::write(m.join("after"), b"x").expect("create after the crash");
    assert_contents(&m.join("after"), b"x");
    m.unmount();

    // --spare-files 0: no pool at all.
    let m = v.mount(&["--spare-files", "0"]);
    fs::write(m.join("plain-create"), b"y").expect("create without spares");
    assert_eq!(
        spares_of(&v),
        Vec::<PathBuf>::new(),
        "--spare-files 0 makes none"
    );
    m.unmount();
}
