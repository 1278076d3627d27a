//! The filesystem's POSIX corners, in-process: set-ID bits cleared as Linux clears them, ACLs
//! and the mode in step, rewinddir. The fixture is the parent module's.

use std::ffi::{OsStr, OsString};

use super::*;

#[test]
fn fallocate_by_another_user_clears_set_id_bits_as_linux_does() {
    let f = fixture();
    let ino = f.file(ROOT, "sid", b"");
    let mode = || f.fs.getattr(ino).expect("getattr").perm;
    let o = f.fs.open(ino, libc::O_RDWR).expect("open");
    let nobody = nobody();
    // Not in the file's group: both bits go, group-exec or not.
    f.chmod(ino, 0o6666);
    f.fs.fallocate(&nobody, ino, o.fh, 0, 8192, 0)
        .expect("fallocate");
    assert_eq!(mode(), 0o666);
    // In the file's group: set-group-ID without group-exec stays (generic/355).
    let member = Caller {
        uid: 65534,
        gid: 0,
        pid: std::process::id(),
    };
    f.chmod(ino, 0o6666);
    f.fs.fallocate(&member, ino, o.fh, 0, 8192, 0)
        .expect("fallocate");
    assert_eq!(mode(), 0o2666);
    f.chmod(ino, 0o6676);
    f.fs.fallocate(&member, ino, o.fh, 0, 8192, 0)
        .expect("fallocate");
    assert_eq!(mode(), 0o676);
    // Root keeps them.
    f.chmod(ino, 0o6666);
    f.fs.fallocate(&Caller::ROOT, ino, o.fh, 0, 8192, 0)
        .expect("fallocate");
    assert_eq!(mode(), 0o6666);
    f.fs.release(ino, o.fh);
}

#[test]
fn an_access_acl_set_outside_the_group_clears_set_group_id_as_chmod_does() {
    let f = fixture();
    let ino = f.file(ROOT, "sgid", b"");
    let acl = OsStr::new("system.posix_acl_access");
    // u::rwx, g::rwx, o::rwx: the same as mode 0777.
    let value = b"\x02\0\0\0\x01\0\x07\0\xff\xff\xff\xff\x04\0\x07\0\xff\xff\xff\xff\x20\0\x07\0\xff\xff\xff\xff";
    let nobody = nobody();
    f.chmod(ino, 0o2755);
    f.fs.setxattr(&nobody, ino, acl, value, 0).expect("setfacl");
    assert_eq!(f.fs.getattr(ino).expect("attr").perm, 0o777);
    f.chmod(ino, 0o2755);
    f.fs.setxattr(&Caller::ROOT, ino, acl, value, 0)
        .expect("setfacl");
    assert_eq!(f.fs.getattr(ino).expect("attr").perm, 0o2777);
}

#[test]
fn rewinding_a_directory_lists_entries_made_since_opendir() {
    let f = fixture();
    let d = f.dir(ROOT, "d");
    f.file(d, "before", b"");
    let fh = f.fs.opendir(d).expect("opendir");
    // Made after opendir, before the first readdir: listed (POSIX leaves this open; ext4
    // lists it, and a rewinddir right after opendir must).
    f.file(d, "between", b"");
    let names = |f: &Fixture| {
        let mut v = Vec::new();
        f.fs.readdir(d, fh, 0, |_, _, _, name| {
            v.push(name.to_os_string());
            false
        })
        .expect("readdir");
        v
    };
    let first = names(&f);
    assert!(first.contains(&OsString::from("before")));
    assert!(first.contains(&OsString::from("between")), "{first:?}");
    f.file(d, "after", b"");
    assert!(
        names(&f).contains(&OsString::from("after")),
        "rewinddir missed a new entry"
    );
    f.fs.releasedir(fh);
}
