//! Behaving like a local file system, through a real mount: sparse files that take no space,
//! SEEK_DATA / SEEK_HOLE, punching frees space, set-ID bits cleared by fallocate, POSIX ACLs
//! enforced, times before 1970, rewinddir, the generic mount flags and `-o remount`.
//!
//! Vaults use `--plaintext-names` so a test finds the backing file of `NAME` at `vault/NAME`.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mount::{Rng, Vault, assert_contents};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Bytes a file occupies on disk.
fn allocated(p: &Path) -> u64 {
    fs::metadata(p).expect("stat").blocks() * 512
}

/// lseek(2) with SEEK_DATA or SEEK_HOLE.
fn seek(f: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: a valid open fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// fallocate(2), asserting success.
fn fallocate(f: &File, mode: libc::c_int, offset: u64, len: u64) {
    // SAFETY: a valid open fd.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    assert_eq!(rc, 0, "fallocate: {}", io::Error::last_os_error());
}

/// Run `program args` as user nobody (uid and gid 65534, no supplementary groups).
fn as_nobody(program: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
        .args(args)
        .output()
        .expect("run setpriv")
}

fn plain_vault() -> Vault {
    let v = Vault::new();
    v.init(&["--plaintext-names"]);
    v
}

#[test]
fn holes_take_no_space_and_seek_finds_them() {
    let v = plain_vault();
    let m = v.mount(&[]);
    let p = m.join("big");
    let f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&p)
        .expect("create");
    f.set_len(100 * GIB).expect("truncate -s 100G");
    let backing = v.backing.join("big");
    let a0 = allocated(&backing);
    assert!(a0 < MIB, "truncate -s 100G allocated {a0} bytes");
    let data = Rng::from_env("holes").bytes(4096);
    f.write_all_at(&data, 50 * GIB).expect("4 KiB at 50 GiB");
    f.sync_all().expect("fsync");
    let a1 = allocated(&backing);
    assert!(
        a1 - a0 < MIB,
        "a 4 KiB write at 50 GiB allocated {} bytes",
        a1 - a0
    );
    assert!(
        allocated(&p) < 2 * MIB,
        "du of the plain file: {}",
        allocated(&p)
    );
    assert_eq!(fs::metadata(&p).expect("stat").len(), 100 * GIB);
    assert_eq!(seek(&f, 0, libc::SEEK_DATA).expect("SEEK_DATA"), 50 * GIB);
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE).expect("SEEK_HOLE"), 0);
    assert_eq!(
        seek(&f, 50 * GIB, libc::SEEK_HOLE).expect("SEEK_HOLE"),
        50 * GIB + 4096
    );
    let past = seek(&f, 100 * GIB, libc::SEEK_DATA).expect_err("past the end");
    assert_eq!(past.raw_os_error(), Some(libc::ENXIO));
    let mut buf = vec![1u8; 8192];
    f.read_exact_at(&mut buf, 50 * GIB - 4096)
        .expect("read around the data");
    assert!(buf[..4096].iter().all(|&b| b == 0) && buf[4096..] == data[..]);
    f.read_exact_at(&mut buf, 99 * GIB)
        .expect("read a far hole");
    assert!(buf.iter().all(|&b| b == 0));
    drop(f);
    m.unmount();
    let out = v
        .command(["fsck", &v.backing.display().to_string()])
        .output()
        .expect("fsck");
    assert!(
        out.status.success(),
        "fsck of a sparse vault: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn punching_64_of_128_mib_frees_the_space_and_keeps_the_rest() {
    let v = plain_vault();
    let m = v.mount(&[]);
    let p = m.join("p");
    let mut want = Rng::from_env("punch").bytes(128 * MIB as usize);
    fs::write(&p, &want).expect("write 128 MiB");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    f.sync_all().expect("fsync");
    let before = allocated(&v.backing.join("p"));
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | keep, 32 * MIB, 64 * MIB);
    f.sync_all().expect("fsync");
    let freed = before - allocated(&v.backing.join("p"));
    assert!(freed >= 60 * MIB, "punching 64 MiB freed {freed} bytes");
    want[32 * MIB as usize..96 * MIB as usize].fill(0);
    drop(f);
    assert_contents(&p, &want);
    m.unmount();
    let m = v.mount(&[]);
    assert_contents(&m.join("p"), &want);
    m.unmount();
}

#[test]
fn fallocate_by_another_user_clears_set_id_bits() {
    let v = plain_vault();
    v.open_to_others();
    let m = v.mount(&["--allow-other"]);
    let p = m.join("sid");
    fs::write(&p, b"").expect("create");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o6666)).expect("chmod 6666");
    let out = as_nobody("fallocate", &["-l", "8192", &p.display().to_string()]);
    assert!(
        out.status.success(),
        "fallocate as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o666, "fallocate by nobody left mode {mode:o}");
    m.unmount();
}

/// A POSIX ACL xattr value (version 2): owner rw, `nobody` read, group none, mask read, other
/// none.
fn acl_nobody_may_read() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    let undefined = u32::MAX;
    for (tag, perm, id) in [
        (0x01u16, 6u16, undefined), // ACL_USER_OBJ
        (0x02, 4, 65534),           // ACL_USER nobody
        (0x04, 0, undefined),       // ACL_GROUP_OBJ
        (0x10, 4, undefined),       // ACL_MASK
        (0x20, 0, undefined),       // ACL_OTHER
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn posix_acls_are_stored_encrypted_and_enforced() {
    let v = Vault::new();
    v.init(&[]);
    v.open_to_others();
    let m = v.mount(&["--allow-other"]);
    let p = m.join("secret");
    fs::write(&p, b"only for nobody\n").expect("write");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let path = p.display().to_string();
    assert!(
        !as_nobody("cat", &[&path]).status.success(),
        "mode 600 lets nobody read"
    );
    let c = CString::new(p.as_os_str().as_bytes()).expect("path");
    let acl = acl_nobody_may_read();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setting an ACL: {}", io::Error::last_os_error());
    let out = as_nobody("cat", &[&path]);
    assert!(
        out.status.success(),
        "the ACL is not honoured: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"only for nobody\n");
    // The group bits show the ACL mask, as on ext4.
    let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    m.unmount();
    // Nothing of it is readable in the backing store: no ACL or plain xattr name there.
    for entry in v.backing_files() {
        let names = xattr_names(&entry);
        assert!(
            names.iter().all(|n| n.starts_with("user.kmsfs.")),
            "{names:?}"
        );
    }
    let m = v.mount(&["--allow-other"]);
    assert!(
        as_nobody("cat", &[&m.join("secret").display().to_string()])
            .status
            .success()
    );
    m.unmount();
}

/// The xattr names of `p` in the backing store.
fn xattr_names(p: &Path) -> Vec<String> {
    let c = CString::new(p.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr: {}", io::Error::last_os_error());
    buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[test]
fn times_before_1970_survive_a_remount() {
    let v = plain_vault();
    let m = v.mount(&[]);
    let p = m.join("old");
    fs::write(&p, b"x").expect("write");
    // 1960-01-01 00:00:00.25 UTC, and a time a quarter second before the epoch.
    let t1960 = UNIX_EPOCH - Duration::from_secs(315_619_200) + Duration::from_millis(250);
    let just_before = UNIX_EPOCH - Duration::from_millis(250);
    let f = File::options().write(true).open(&p).expect("open");
    f.set_times(
        fs::FileTimes::new()
            .set_modified(t1960)
            .set_accessed(just_before),
    )
    .expect("set times");
    drop(f);
    m.unmount();
    let m = v.mount(&[]);
    let md = fs::metadata(m.join("old")).expect("stat");
    assert_eq!(md.modified().expect("mtime"), t1960);
    assert_eq!(md.accessed().expect("atime"), just_before);
    assert_eq!(md.mtime(), -315_619_200, "whole seconds round down");
    m.unmount();
}

#[test]
fn rewinddir_sees_entries_made_after_opendir() {
    let v = plain_vault();
    let m = v.mount(&[]);
    let d = m.join("d");
    fs::create_dir(&d).expect("mkdir");
    fs::write(d.join("first"), b"").expect("create");
    let c = CString::new(d.as_os_str().as_bytes()).expect("path");
    // SAFETY: valid C string; the stream is closed below.
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!dir.is_null(), "opendir: {}", io::Error::last_os_error());
    let names = || {
        let mut out = Vec::new();
        loop {
            // SAFETY: an open stream; the entry is read before the next call.
            let e = unsafe { libc::readdir(dir) };
            if e.is_null() {
                return out;
            }
            // SAFETY: readdir returned a valid entry with a NUL-terminated name.
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
            out.push(name.to_string_lossy().into_owned());
        }
    };
    assert!(names().contains(&"first".to_string()));
    for i in 0..50 {
        fs::write(d.join(format!("new{i}")), b"").expect("create");
    }
    // SAFETY: an open stream.
    unsafe { libc::rewinddir(dir) };
    let again = names();
    // SAFETY: an open stream, closed once.
    unsafe { libc::closedir(dir) };
    for i in 0..50 {
        assert!(
            again.contains(&format!("new{i}")),
            "new{i} missing after rewinddir"
        );
    }
    m.unmount();
}

/// The mount options the kernel shows for `mnt` (the per-mount field of mountinfo).
fn mount_options(mnt: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*mnt.display().to_string()))
        .unwrap_or_else(|| panic!("{} not in mountinfo", mnt.display()));
    line.split(' ')
        .nth(5)
        .expect("options")
        .split(',')
        .map(String::from)
        .collect()
}

#[test]
fn mount_flags_apply_and_remount_switches_read_only() {
    let v = plain_vault();
    let m = v.mount(&["--flags", "noatime,nodiratime,dev,suid,noexec"]);
    let opts = mount_options(m.path());
    for want in ["noatime", "nodiratime", "noexec"] {
        assert!(
            opts.iter().any(|o| o == want),
            "{want} missing from {opts:?}"
        );
    }
    for unwanted in ["nodev", "nosuid"] {
        assert!(
            !opts.iter().any(|o| o == unwanted),
            "{unwanted} in {opts:?}"
        );
    }
    // noatime: reading a file leaves its backing access time alone.
    fs::write(m.join("f"), b"data").expect("write");
    let backing = v.backing.join("f");
    let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
    File::options()
        .write(true)
        .open(&backing)
        .expect("open backing")
        .set_times(fs::FileTimes::new().set_accessed(old))
        .expect("age the atime");
    assert_eq!(fs::read(m.join("f")).expect("read"), b"data");
    let atime = fs::metadata(&backing)
        .expect("stat")
        .accessed()
        .expect("atime");
    assert_eq!(atime, old, "a read under noatime changed the access time");
    // `mount -o remount,ro` runs the helper form, as mount.fuse does.
    let vault = v.backing.display().to_string();
    let mnt = m.path().display().to_string();
    let remount = |opts: &str| {
        let out = v.command([&vault, &mnt, "-o", opts]).output().expect("run");
        assert!(
            out.status.success(),
            "remount {opts}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    remount("ro,nosuid,nodev,relatime,remount,user_id=0,group_id=0,default_permissions");
    assert!(mount_options(m.path()).iter().any(|o| o == "ro"));
    let err = fs::write(m.join("g"), b"x").expect_err("a write after remount,ro");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    remount("remount,rw");
    fs::write(m.join("g"), b"x").expect("a write after remount,rw");
    m.unmount();
    // Generic flags in the helper form become --flags; unknown ones are refused.
    let out = v
        .command([&vault, &mnt, "-o", "nodiratime,bogus"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

#[test]
fn dev_and_suid_only_when_root_asks() {
    let v = plain_vault();
    let has = |mnt: &Path, o: &str| mount_options(mnt).iter().any(|x| x == o);
    // `kmsfs mount`: nodev,nosuid unless --flags says otherwise.
    let m = v.mount(&[]);
    assert!(has(m.path(), "nodev") && has(m.path(), "nosuid"));
    m.unmount();
    if kmsfs::sys::process::euid() != 0 {
        return;
    }
    // The helper form as mount(8) runs it for root: mount(8) drops dev and suid (its
    // defaults) and passes nodev/nosuid only when the options say so.
    let (vault, mnt) = (v.backing.display().to_string(), v.mnt.display().to_string());
    for (opts, dev) in [("rw", true), ("rw,nosuid,nodev", false)] {
        let out = v.command([&vault, &mnt, "-o", opts]).output().expect("run");
        assert!(
            out.status.success(),
            "{opts}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Read without panicking: the mount is undone before anything is asserted.
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(mnt.as_str()));
        let opt = |o: &str| {
            line.is_some_and(|l| {
                l.split(' ')
                    .nth(5)
                    .is_some_and(|x| x.split(',').any(|y| y == o))
            })
        };
        let (nodev, nosuid) = (opt("nodev"), opt("nosuid"));
        let un = v.command(["unmount", &mnt]).output().expect("unmount");
        assert!(
            un.status.success(),
            "{}",
            String::from_utf8_lossy(&un.stderr)
        );
        assert_eq!((nodev, nosuid), (!dev, !dev), "-o {opts}");
    }
}
