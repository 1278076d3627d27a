//! POSIX behaviour through a real kmsfs mount: the operations an unmodified program expects.
//! Every test mounts in its own temp dir and its `MountGuard` unmounts on every path.
// The mount tier: real FUSE mounts, run by `scripts/test` (`--features fuse-tests`).
#![cfg(feature = "fuse-tests")]

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::mount::{MountGuard, Rng, Vault, assert_contents};

/// An initialised local-provider vault, mounted.
fn mounted(extra: &[&str]) -> (Vault, MountGuard) {
    let v = Vault::new();
    v.init(&[]);
    let m = v.mount(extra);
    (v, m)
}

/// Unmount and mount the vault again (to see what reached the backing dir).
fn remount(v: &Vault, m: MountGuard) -> MountGuard {
    m.unmount();
    v.mount(&[])
}

/// `path` as a C string for libc calls.
fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in path")
}

/// An OS error from a libc return value (-1 → errno).
fn check(rc: libc::c_int, what: &str) {
    assert!(rc == 0, "{what}: {}", io::Error::last_os_error());
}

/// Assert that `r` failed with OS error `errno`.
fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, errno: i32, what: &str) {
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(errno), "{what}: {e}"),
        Ok(v) => panic!("{what}: expected errno {errno}, got Ok({v:?})"),
    }
}

/// Run `script` with /bin/sh as user nobody; its exit status and stderr.
fn as_nobody(script: &str) -> (bool, String) {
    let out = Command::new("su")
        .args(["nobody", "-s", "/bin/sh", "-c", script])
        .output()
        .expect("run su");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rename_over_a_file_and_across_directories() {
    let (_v, m) = mounted(&[]);
    fs::write(m.join("a"), b"content of a").expect("write a");
    fs::write(m.join("b"), b"old b, longer than a").expect("write b");
    let old_b = File::open(m.join("b")).expect("open b");
    fs::rename(m.join("a"), m.join("b")).expect("rename over b");
    assert!(!m.join("a").exists());
    assert_contents(&m.join("b"), b"content of a");
    let mut replaced = String::new();
    (&old_b)
        .read_to_string(&mut replaced)
        .expect("read the replaced file");
    assert_eq!(
        replaced, "old b, longer than a",
        "an open handle keeps the file it opened"
    );
    drop(old_b);

    fs::create_dir_all(m.join("d1/deep")).expect("mkdir d1");
    fs::create_dir(m.join("d2")).expect("mkdir d2");
    fs::rename(m.join("b"), m.join("d1/deep/moved")).expect("rename into dir");
    fs::write(m.join("d2/target"), b"to be replaced").expect("write target");
    fs::rename(m.join("d1/deep/moved"), m.join("d2/target"))
        .expect("rename across dirs over a file");
    assert_contents(&m.join("d2/target"), b"content of a");
    fs::rename(m.join("d1/deep"), m.join("d2/deep")).expect("rename a directory");
    assert!(m.join("d2/deep").is_dir() && !m.join("d1/deep").exists());
    assert_eq!(fs::read_dir(m.join("d1")).expect("readdir").count(), 0);
    m.unmount();
}

#[test]
fn hard_links_share_inode_and_content() {
    let (v, m) = mounted(&[]);
    fs::write(m.join("one"), b"shared start").expect("write");
    fs::create_dir(m.join("dir")).expect("mkdir");
    fs::hard_link(m.join("one"), m.join("dir/two")).expect("link");
    let (a, b) = (
        fs::metadata(m.join("one")).expect("stat"),
        fs::metadata(m.join("dir/two")).expect("stat"),
    );
    assert_eq!((a.nlink(), b.nlink()), (2, 2), "link counts");
    assert_eq!(a.ino(), b.ino(), "same inode");
    assert_contents(&m.join("dir/two"), b"shared start");

    let one = OpenOptions::new()
        .write(true)
        .open(m.join("one"))
        .expect("open one");
    one.write_all_at(b"SHARED", 0).expect("write through one");
    one.write_all_at(b" and grown", 12)
        .expect("append through one");
    drop(one);
    assert_contents(&m.join("dir/two"), b"SHARED start and grown");

    let m = remount(&v, m);
    assert_contents(&m.join("dir/two"), b"SHARED start and grown");
    fs::remove_file(m.join("one")).expect("unlink one");
    assert_eq!(fs::metadata(m.join("dir/two")).expect("stat").nlink(), 1);
    assert_contents(&m.join("dir/two"), b"SHARED start and grown");
    m.unmount();
}

#[test]
fn symlinks_and_readlink() {
    let (v, m) = mounted(&[]);
    fs::create_dir(m.join("d")).expect("mkdir");
    fs::write(m.join("d/target"), b"through the link").expect("write");
    std::os::unix::fs::symlink("d/target", m.join("rel")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/abs", m.join("dangling")).expect("dangling symlink");
    assert_eq!(
        fs::read_link(m.join("rel")).expect("readlink"),
        Path::new("d/target")
    );
    assert!(
        fs::symlink_metadata(m.join("rel"))
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert_contents(&m.join("rel"), b"through the link");

    let m = remount(&v, m);
    assert_eq!(
        fs::read_link(m.join("dangling")).expect("readlink"),
        Path::new("/nonexistent/abs")
    );
    assert_errno(
        fs::read(m.join("dangling")),
        libc::ENOENT,
        "read through a dangling link",
    );
    assert_contents(&m.join("rel"), b"through the link");
    m.unmount();
}

#[test]
fn chmod_chown_utimens_survive_remount() {
    let (v, m) = mounted(&[]);
    let f = m.join("f");
    fs::write(&f, b"attrs").expect("write");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).expect("chmod");
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).expect("chown");
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_200_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    // SAFETY: valid C string and a two-element timespec array.
    check(
        unsafe { libc::utimensat(libc::AT_FDCWD, c_path(&f).as_ptr(), times.as_ptr(), 0) },
        "utimensat",
    );

    let expect = |f: &Path, when: &str| {
        let md = fs::metadata(f).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o640, "{when}: mode");
        assert_eq!((md.uid(), md.gid()), (1234, 5678), "{when}: owner");
        assert_eq!(
            (md.atime(), md.atime_nsec()),
            (1_000_000_000, 123_456_789),
            "{when}: atime"
        );
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (1_200_000_000, 987_654_321),
            "{when}: mtime"
        );
    };
    expect(&f, "mounted");
    let m = remount(&v, m);
    expect(&m.join("f"), "after remount");
    let files = v.backing_files();
    assert_eq!(files.len(), 1, "one backing file: {files:?}");
    let backing = fs::metadata(&files[0]).expect("stat backing");
    assert_eq!(
        (backing.mode() & 0o7777, backing.uid(), backing.gid()),
        (0o640, 1234, 5678),
        "backing file"
    );
    assert_contents(&m.join("f"), b"attrs");
    m.unmount();
}

#[test]
fn o_append_from_two_handles_keeps_every_write_in_order() {
    let (v, m) = mounted(&[]);
    let p = m.join("log");
    fs::write(&p, b"start\n").expect("write");
    let open = || {
        OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open O_APPEND")
    };
    let (mut a, mut b) = (open(), open());
    let mut want = b"start\n".to_vec();
    for i in 0..200 {
        let (h, line) = if i % 3 == 0 {
            (&mut b, format!("b{i}\n"))
        } else {
            (&mut a, format!("a{i} {}\n", "x".repeat(i * 37 % 5000)))
        };
        h.write_all(line.as_bytes()).expect("append");
        want.extend_from_slice(line.as_bytes());
    }
    drop((a, b));
    assert_contents(&p, &want);
    let m = remount(&v, m);
    assert_contents(&m.join("log"), &want);
    m.unmount();
}

#[test]
fn mmap_write_then_read() {
    let (v, m) = mounted(&[]);
    let p = m.join("mapped");
    let len = 3 * 4096 + 100;
    let mut want = vec![b'.'; len];
    fs::write(&p, &want).expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open rw");
    // SAFETY: mapping a file we hold open for `len` bytes, all within its size.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        map,
        libc::MAP_FAILED,
        "mmap: {}",
        io::Error::last_os_error()
    );
    // SAFETY: `map` is a live writable mapping of `len` bytes.
    let view = unsafe { std::slice::from_raw_parts_mut(map.cast::<u8>(), len) };
    for (at, text) in [
        (0, &b"head"[..]),
        (4095, b"straddles a page"),
        (len - 4, b"tail"),
    ] {
        view[at..at + text.len()].copy_from_slice(text);
        want[at..at + text.len()].copy_from_slice(text);
    }
    // SAFETY: the mapping made above, unmapped once.
    unsafe {
        check(libc::msync(map, len, libc::MS_SYNC), "msync");
        check(libc::munmap(map, len), "munmap");
    }
    let mut got = Vec::new();
    (&f).read_to_end(&mut got).expect("read back");
    assert!(got == want, "read after munmap differs");
    drop(f);
    let m = remount(&v, m);
    assert_contents(&m.join("mapped"), &want);
    m.unmount();
}

#[test]
fn xattrs_set_get_list_remove() {
    let (v, m) = mounted(&[]);
    let p = m.join("x");
    fs::write(&p, b"has xattrs").expect("write");
    let path = c_path(&p);
    let (name, value) = (c"user.kmsfs.test", b"some value");
    // SAFETY (all calls below): valid C strings and buffers of the lengths passed.
    check(
        unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
        "setxattr",
    );
    let get = |path: &CString| {
        let mut buf = [0u8; 64];
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(buf[..n as usize].to_vec())
        }
    };
    assert_eq!(get(&path).expect("getxattr"), value);
    let mut list = [0u8; 256];
    let n = unsafe { libc::listxattr(path.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert!(n >= 0, "listxattr: {}", io::Error::last_os_error());
    let names: Vec<&[u8]> = list[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .collect();
    assert!(names.contains(&name.to_bytes()), "listxattr: {names:?}");
    // a too-small buffer is ERANGE, a size query returns the size
    let mut tiny = [0u8; 2];
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            tiny.as_mut_ptr().cast(),
            tiny.len(),
        )
    };
    assert_eq!(
        (n, io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::ERANGE)),
        "small buffer"
    );
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(n, value.len() as isize, "size query");

    let m = remount(&v, m);
    let path = c_path(&m.join("x"));
    assert_eq!(get(&path).expect("getxattr after remount"), value);
    check(
        unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) },
        "removexattr",
    );
    assert_errno(get(&path), libc::ENODATA, "getxattr after remove");
    m.unmount();
}

#[test]
fn statfs_reports_sane_numbers() {
    let (_v, m) = mounted(&[]);
    // SAFETY: zeroed statvfs is a valid out buffer; valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    check(
        unsafe { libc::statvfs(c_path(m.path()).as_ptr(), &mut s) },
        "statvfs",
    );
    assert!(s.f_blocks > 0, "f_blocks {}", s.f_blocks);
    assert!(
        s.f_bsize > 0 && s.f_frsize > 0,
        "block sizes {} {}",
        s.f_bsize,
        s.f_frsize
    );
    assert!(
        s.f_bfree <= s.f_blocks && s.f_bavail <= s.f_bfree,
        "free {} avail {} of {}",
        s.f_bfree,
        s.f_bavail,
        s.f_blocks
    );
    assert!(
        s.f_files > 0 && s.f_ffree <= s.f_files,
        "inodes {} free {}",
        s.f_files,
        s.f_ffree
    );
    assert!(s.f_namemax >= 255, "f_namemax {}", s.f_namemax);
    m.unmount();
}

#[test]
fn fallocate_extends_punches_and_zeroes() {
    let (v, m) = mounted(&[]);
    let p = m.join("falloc");
    let mut want = Rng::new(11).bytes(10_000);
    fs::write(&p, &want).expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    let fallocate = |mode: libc::c_int, off: usize, len: usize| {
        // SAFETY: a valid open fd.
        check(
            unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) },
            &format!("fallocate mode {mode:#x}"),
        );
    };
    fallocate(0, 8000, 12_000); // extends to 20 000
    want.resize(20_000, 0);
    assert_eq!(f.metadata().expect("fstat").len(), 20_000);
    assert_contents(&p, &want);

    fallocate(
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        1000,
        5000,
    );
    want[1000..6000].fill(0);
    assert_eq!(f.metadata().expect("fstat").len(), 20_000);
    assert_contents(&p, &want);

    want = Rng::new(12).bytes(20_000);
    fs::write(&p, &want).expect("rewrite");
    fallocate(libc::FALLOC_FL_ZERO_RANGE, 4090, 4100);
    want[4090..8190].fill(0);
    assert_contents(&p, &want);
    fallocate(
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        19_000,
        5000,
    ); // past EOF, size kept
    want[19_000..].fill(0);
    assert_eq!(f.metadata().expect("fstat").len(), 20_000);
    assert_contents(&p, &want);
    drop(f);

    let m = remount(&v, m);
    assert_contents(&m.join("falloc"), &want);
    m.unmount();
}

#[test]
fn three_hundred_files_open_at_once() {
    let (_v, m) = mounted(&[]);
    let n = 300;
    let mut files: Vec<File> = (0..n)
        .map(|i| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(m.join(format!("f{i:03}")))
                .expect("create")
        })
        .collect();
    for (i, f) in files.iter_mut().enumerate() {
        f.write_all(format!("file {i} ").repeat(i + 1).as_bytes())
            .expect("write");
    }
    for (i, f) in files.iter().enumerate() {
        let want = format!("file {i} ").repeat(i + 1);
        let mut got = vec![0u8; want.len()];
        f.read_exact_at(&mut got, 0)
            .expect("read through the open handle");
        assert_eq!(got, want.as_bytes(), "file {i}");
    }
    drop(files);
    assert_eq!(fs::read_dir(m.path()).expect("readdir").count(), n);
    assert_contents(&m.join("f299"), "file 299 ".repeat(300).as_bytes());
    m.unmount();
}

#[test]
fn one_file_through_several_handles() {
    let (_v, m) = mounted(&[]);
    let p = m.join("shared");
    let writer = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .expect("open writer");
    let reader = File::open(&p).expect("open reader");
    let other = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open second writer");
    let data = Rng::new(3).bytes(3 * 4096 + 7);
    writer.write_all_at(&data, 0).expect("write via first");
    let mut got = vec![0u8; data.len()];
    reader.read_exact_at(&mut got, 0).expect("read via second");
    assert_eq!(got, data);
    other
        .write_all_at(b"OVERWRITE", 4090)
        .expect("write via third");
    let mut mid = [0u8; 9];
    writer
        .read_exact_at(&mut mid, 4090)
        .expect("read via first");
    assert_eq!(&mid, b"OVERWRITE");
    let mut expect = data.clone();
    expect[4090..4099].copy_from_slice(b"OVERWRITE");
    drop((writer, other));
    reader
        .read_exact_at(&mut got, 0)
        .expect("read after the writers closed");
    assert_eq!(got, expect);
    drop(reader);
    m.unmount();
}

#[test]
fn concurrent_writers_sharing_blocks() {
    let (v, m) = mounted(&[]);
    let p = m.join("race");
    File::create(&p).expect("create");
    // Writer i owns every chunk k with k % WRITERS == i; chunks are 1000 bytes, so neighbouring
    // writers keep rewriting the same 4 KiB blocks (read-modify-write under contention).
    const WRITERS: usize = 6;
    const CHUNK: usize = 1000;
    const ROUNDS: usize = 150;
    std::thread::scope(|s| {
        for i in 0..WRITERS {
            let f = OpenOptions::new()
                .write(true)
                .open(&p)
                .expect("open writer");
            s.spawn(move || {
                for r in 0..ROUNDS {
                    let k = r * WRITERS + i;
                    f.write_all_at(&[b'A' + i as u8; CHUNK], (k * CHUNK) as u64)
                        .expect("pwrite");
                }
            });
        }
    });
    let want: Vec<u8> = (0..WRITERS * ROUNDS)
        .flat_map(|k| [b'A' + (k % WRITERS) as u8; CHUNK])
        .collect();
    assert_contents(&p, &want);
    let m = remount(&v, m);
    assert_contents(&m.join("race"), &want);
    m.unmount();
}

#[test]
fn mkdir_and_rmdir() {
    let (_v, m) = mounted(&[]);
    fs::create_dir(m.join("d")).expect("mkdir");
    assert!(fs::metadata(m.join("d")).expect("stat").is_dir());
    assert_errno(
        fs::create_dir(m.join("d")),
        libc::EEXIST,
        "mkdir of an existing dir",
    );
    fs::write(m.join("d/f"), b"x").expect("write");
    assert_errno(
        fs::remove_dir(m.join("d")),
        libc::ENOTEMPTY,
        "rmdir of a non-empty dir",
    );
    assert_errno(
        fs::remove_dir(m.join("d/f")),
        libc::ENOTDIR,
        "rmdir of a file",
    );
    fs::remove_file(m.join("d/f")).expect("unlink");
    fs::remove_dir(m.join("d")).expect("rmdir");
    assert_errno(fs::metadata(m.join("d")), libc::ENOENT, "stat after rmdir");
    m.unmount();
}

#[test]
fn unlinked_open_file_stays_readable() {
    let (v, m) = mounted(&[]);
    let p = m.join("doomed");
    let data = Rng::new(5).bytes(10_000);
    fs::write(&p, &data).expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    fs::remove_file(&p).expect("unlink");
    assert_errno(fs::metadata(&p), libc::ENOENT, "stat after unlink");
    let mut got = vec![0u8; data.len()];
    f.read_exact_at(&mut got, 0)
        .expect("read the unlinked file");
    assert_eq!(got, data);
    f.write_all_at(b"still writable", 100)
        .expect("write the unlinked file");
    let mut back = [0u8; 14];
    f.read_exact_at(&mut back, 100).expect("read back");
    assert_eq!(&back, b"still writable");
    drop(f);
    let left = v.backing_files();
    assert!(
        left.is_empty(),
        "backing file left behind after the last close: {left:?}"
    );
    m.unmount();
}

#[test]
fn truncate_through_a_handle_and_a_path() {
    let (v, m) = mounted(&[]);
    let p = m.join("t");
    let mut want = Rng::new(6).bytes(9000);
    fs::write(&p, &want).expect("write");
    let f = OpenOptions::new().write(true).open(&p).expect("open");
    f.set_len(5000).expect("ftruncate down");
    want.truncate(5000);
    assert_contents(&p, &want);
    f.set_len(12_000).expect("ftruncate up");
    want.resize(12_000, 0);
    assert_contents(&p, &want);
    drop(f);

    // SAFETY: valid C string.
    check(
        unsafe { libc::truncate(c_path(&p).as_ptr(), 4096) },
        "truncate down by path",
    );
    want.truncate(4096);
    assert_contents(&p, &want);
    check(
        unsafe { libc::truncate(c_path(&p).as_ptr(), 4097) },
        "truncate up by path",
    );
    want.push(0);
    assert_contents(&p, &want);
    check(
        unsafe { libc::truncate(c_path(&p).as_ptr(), 0) },
        "truncate to 0 by path",
    );
    assert_eq!(fs::metadata(&p).expect("stat").len(), 0);
    want.clear();

    let m = remount(&v, m);
    assert_contents(&m.join("t"), &want);
    m.unmount();
}

#[test]
fn allow_other_files_belong_to_the_creating_user() {
    let v = Vault::new();
    v.init(&[]);
    v.open_to_others();
    let m = v.mount(&["--allow-other"]);
    fs::create_dir(m.join("drop")).expect("mkdir");
    fs::set_permissions(m.join("drop"), fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
    let file = m.join("drop/file");
    let (ok, err) = as_nobody(&format!(
        "echo x > '{}' && mkdir '{}'",
        file.display(),
        m.join("drop/sub").display()
    ));
    assert!(ok, "nobody cannot write through --allow-other: {err}");
    let nobody = 65534;
    for p in [&file, &m.join("drop/sub")] {
        let md = fs::metadata(p).expect("stat");
        assert_eq!(
            (md.uid(), md.gid()),
            (nobody, nobody),
            "owner of {}",
            p.display()
        );
    }
    // In the backing dir (names encrypted): everything below the backing of "drop".
    let made: Vec<_> = v
        .backing_entries()
        .into_iter()
        .filter(|p| p.parent() != Some(v.backing.as_path()))
        .collect();
    assert_eq!(
        made.len(),
        2,
        "the backing file and dir nobody made: {made:?}"
    );
    for p in made {
        let md = fs::symlink_metadata(&p).expect("stat backing");
        assert_eq!(
            (md.uid(), md.gid()),
            (nobody, nobody),
            "owner of backing {}",
            p.display()
        );
    }
    assert_contents(&file, b"x\n");
    m.unmount();
}

#[test]
fn without_allow_other_other_users_are_shut_out() {
    let v = Vault::new();
    v.init(&[]);
    v.open_to_others();
    let m = v.mount(&[]);
    fs::write(m.join("f"), b"private").expect("write");
    let (ok, _) = as_nobody(&format!("ls '{}'", m.path().display()));
    assert!(!ok, "user nobody could list a mount without --allow-other");
    let (ok, _) = as_nobody(&format!("cat '{}'", m.join("f").display()));
    assert!(!ok, "user nobody could read a mount without --allow-other");
    // The same command works on a plain directory that is open to others, so the refusal is the mount's.
    let (ok, err) = as_nobody(&format!("ls '{}'", v.backing.display()));
    assert!(ok, "nobody cannot list the backing dir either: {err}");
    m.unmount();
}

#[test]
fn writes_and_truncates_by_others_clear_set_id_bits_and_root_keeps_them() {
    // kmsfs takes over this from the kernel (FUSE_HANDLE_KILLPRIV_V2).
    let v = Vault::new();
    v.init(&[]);
    v.open_to_others();
    let m = v.mount(&["--allow-other"]);
    let mode_of = |p: &Path| fs::metadata(p).expect("stat").mode() & 0o7777;
    let set = |p: &Path, mode: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let f = m.join("prog");
    fs::write(&f, b"v1").expect("write");

    set(&f, 0o6777);
    fs::write(&f, b"root writes").expect("root write");
    assert_eq!(mode_of(&f), 0o6777, "a root write keeps the set-ID bits");
    // (mode before, what nobody does, mode after, why). Set-group-ID without group execute
    // stays only for a writer in the file's group (Linux 6.2+, generic/355); nobody is not in
    // root's group, so it goes too.
    let cases = [
        (
            0o6777,
            "printf x >>",
            0o777,
            "a write by nobody clears both set-ID bits",
        ),
        (
            0o6767,
            "printf y >>",
            0o767,
            "a writer outside the group clears set-group-ID even when group cannot execute",
        ),
        (
            0o6777,
            "truncate -s 1",
            0o777,
            "a truncate by nobody clears the set-ID bits",
        ),
    ];
    for (before, action, after, why) in cases {
        set(&f, before);
        let (ok, err) = as_nobody(&format!("{action} '{}'", f.display()));
        assert!(ok, "nobody runs {action}: {err}");
        assert_eq!(mode_of(&f), after, "{why}");
    }
    assert_contents(&f, b"r");
    m.unmount();
}
