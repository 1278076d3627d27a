//! POSIX ACLs under FUSE_POSIX_ACL: the kernel enforces them, but the file's mode and its
//! access ACL must agree, and keeping them so is the file system's job (the kernel sends no
//! SETATTR when an ACL is set, nor an ACL when the mode changes). The xattr value format is the
//! kernel's: u32 LE version 2, then entries of (u16 tag, u16 perm, u32 id), sorted by tag.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use super::{Caller, FsError, FsResult, KmsFs, e_io};
use crate::sys;

/// The access ACL's xattr name.
pub const ACCESS: &str = "system.posix_acl_access";
/// The default ACL's xattr name (directories: what new entries inherit).
pub const DEFAULT: &str = "system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// The entries of an ACL xattr value; None if it is not one.
fn entries(value: &[u8]) -> Option<Vec<(u16, u16, u32)>> {
    let (head, body) = value.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != VERSION || body.len() % 8 != 0 {
        return None;
    }
    let out: Vec<_> = body
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect();
    let valid_tags = out.iter().all(|&(t, p, _)| {
        matches!(t, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER) && p <= 7
    });
    let has = |tag| out.iter().filter(|e| e.0 == tag).count() == 1;
    let named = out.iter().any(|e| matches!(e.0, USER | GROUP));
    (valid_tags && has(USER_OBJ) && has(GROUP_OBJ) && has(OTHER) && (!named || has(MASK)))
        .then_some(out)
}

/// The permission bits (0o777) an access ACL gives the file: owner, mask (or owning group
/// without a mask), other.
pub fn mode_bits(value: &[u8]) -> Option<u32> {
    let e = entries(value)?;
    let perm = |tag| e.iter().find(|x| x.0 == tag).map(|x| u32::from(x.1));
    let group = perm(MASK).or_else(|| perm(GROUP_OBJ))?;
    Some(perm(USER_OBJ)? << 6 | group << 3 | perm(OTHER)?)
}

/// Whether an access ACL says no more than a mode does (no named entries, no mask): such an
/// ACL is not stored, as on ext4.
pub fn is_equivalent(value: &[u8]) -> bool {
    entries(value).is_some_and(|e| {
        e.iter()
            .all(|x| matches!(x.0, USER_OBJ | GROUP_OBJ | OTHER))
    })
}

/// What a new entry inherits from its directory's default ACL `default`, created with `mode`
/// (not masked by the umask, which a default ACL replaces): the mode, and its access ACL
/// unless that is equivalent to the mode (POSIX.1e, as the kernel's posix_acl_create).
pub fn inherit(default: &[u8], mode: u32) -> Option<(u32, Option<Vec<u8>>)> {
    let e = entries(default)?;
    let has_mask = e.iter().any(|x| x.0 == MASK);
    let mut out = VERSION.to_le_bytes().to_vec();
    let mut bits = 0u32;
    for (tag, perm, id) in e {
        let perm = u32::from(perm)
            & match tag {
                USER_OBJ => (mode >> 6) & 7,
                MASK => (mode >> 3) & 7,
                GROUP_OBJ if !has_mask => (mode >> 3) & 7,
                OTHER => mode & 7,
                _ => 7,
            };
        match tag {
            USER_OBJ => bits |= perm << 6,
            MASK => bits |= perm << 3,
            GROUP_OBJ if !has_mask => bits |= perm << 3,
            OTHER => bits |= perm,
            _ => {}
        }
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&(perm as u16).to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    let access = (!is_equivalent(&out)).then_some(out);
    Some(((mode & !0o777) | bits, access))
}

/// `value` with its owner, mask (or owning group) and other entries set from `mode`.
pub fn with_mode(value: &[u8], mode: u32) -> Option<Vec<u8>> {
    let e = entries(value)?;
    let has_mask = e.iter().any(|x| x.0 == MASK);
    let mut out = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in e {
        let perm = match tag {
            USER_OBJ => (mode >> 6) & 7,
            MASK => (mode >> 3) & 7,
            GROUP_OBJ if !has_mask => (mode >> 3) & 7,
            OTHER => mode & 7,
            _ => u32::from(perm),
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&(perm as u16).to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Some(out)
}

/// What a new entry takes from its directory: its mode, and the ACLs to give it.
#[derive(Debug, Default)]
pub(super) struct Inherited {
    /// The mode to create it with.
    pub mode: u32,
    /// Its access ACL (None: the mode says it all).
    pub access: Option<Vec<u8>>,
    /// Its default ACL (directories under a default ACL).
    pub default: Option<Vec<u8>>,
}

impl KmsFs {
    /// The mode and ACLs of a new entry with `mode` in the directory `parent`, whose caller
    /// has `umask`: inherited from the directory's default ACL when it has one (the umask then
    /// does not apply), else `mode` masked by the umask.
    pub(super) fn inherited(
        &self,
        parent: BorrowedFd<'_>,
        mode: u32,
        umask: u32,
        dir: bool,
    ) -> Inherited {
        let plain = Inherited {
            mode: mode & !umask,
            ..Default::default()
        };
        let Some(default) = self.acl_of(parent, DEFAULT) else {
            return plain;
        };
        match inherit(&default, mode) {
            Some((mode, access)) => Inherited {
                mode,
                access,
                default: dir.then_some(default),
            },
            None => plain,
        }
    }

    /// Give the new entry `fd` the ACLs it inherited.
    pub(super) fn give_acls(&self, fd: BorrowedFd<'_>, acls: &Inherited) -> FsResult<()> {
        for (name, value) in [(ACCESS, &acls.access), (DEFAULT, &acls.default)] {
            if let Some(v) = value {
                let n = self.names.xattr_name(OsStr::new(name)).map_err(e_io)?;
                let sealed = self.names.seal_xattr(&n, v).map_err(e_io)?;
                sys::xattr::set(fd, &n, &sealed, 0).map_err(e_io)?;
            }
        }
        Ok(())
    }

    /// The plain value of ACL xattr `name` of `fd`, if it has one.
    fn acl_of(&self, fd: BorrowedFd<'_>, name: &str) -> Option<Vec<u8>> {
        let n = self.names.xattr_name(OsStr::new(name)).ok()?;
        let stored = sys::xattr::get(fd, &n).ok()?;
        self.names.open_xattr(&n, stored).ok()
    }

    /// Setting an access ACL: refuse a malformed one, and give the file the mode it implies.
    pub(super) fn access_acl_set(
        &self,
        caller: &Caller,
        ino: u64,
        fd: BorrowedFd<'_>,
        value: &[u8],
    ) -> FsResult<()> {
        let bits = mode_bits(value).ok_or(FsError::EINVAL)?;
        let st = sys::stat_fd(fd).map_err(e_io)?;
        let mut special = st.st_mode & 0o7000;
        // As chmod: a caller outside the file's group (without CAP_FSETID) loses set-group-ID.
        if caller.uid != 0 && !self.in_group(caller, st.st_gid) {
            special &= !libc::S_ISGID;
        }
        sys::chmod_fd(fd, special | bits).map_err(e_io)?;
        self.drop_cached_attr(ino);
        Ok(())
    }

    /// After a chmod: bring the file's access ACL (if any) in line with the new mode.
    pub(super) fn access_acl_follow_mode(&self, fd: BorrowedFd<'_>, mode: u32) -> FsResult<()> {
        let Some(acl) = self.acl_of(fd, ACCESS) else {
            return Ok(());
        };
        let name = self.names.xattr_name(OsStr::new(ACCESS)).map_err(e_io)?;
        if let Some(new) = with_mode(&acl, mode) {
            let sealed = self.names.seal_xattr(&name, &new).map_err(e_io)?;
            sys::xattr::set(fd.as_fd(), &name, &sealed, 0).map_err(e_io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(e: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for &(t, p, id) in e {
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&p.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn the_mode_follows_the_acl_and_the_acl_follows_the_mode() {
        let u = u32::MAX;
        let named = acl(&[
            (USER_OBJ, 6, u),
            (USER, 4, 65534),
            (GROUP_OBJ, 0, u),
            (MASK, 4, u),
            (OTHER, 0, u),
        ]);
        assert_eq!(mode_bits(&named), Some(0o640));
        let plain = acl(&[(USER_OBJ, 7, u), (GROUP_OBJ, 5, u), (OTHER, 1, u)]);
        assert_eq!(mode_bits(&plain), Some(0o751));
        let chmodded = with_mode(&named, 0o750).expect("acl");
        assert_eq!(mode_bits(&chmodded), Some(0o750));
        // The named entry keeps its permission; the mask carries the group bits.
        assert_eq!(entries(&chmodded).expect("entries")[1], (USER, 4, 65534));
        assert_eq!(
            mode_bits(&acl(&[
                (USER_OBJ, 6, u),
                (USER, 4, 1),
                (GROUP_OBJ, 0, u),
                (OTHER, 0, u)
            ])),
            None
        );
        assert_eq!(mode_bits(b"\x02\0\0\0\x01\0"), None);
        assert_eq!(mode_bits(&[]), None);
        assert!(is_equivalent(&plain) && !is_equivalent(&named));
    }

    #[test]
    fn new_entries_inherit_the_default_acl_masked_by_their_mode() {
        let u = u32::MAX;
        // default: owner rwx, nobody r-x, group r-x, mask rwx, other ---
        let default = acl(&[
            (USER_OBJ, 7, u),
            (USER, 5, 65534),
            (GROUP_OBJ, 5, u),
            (MASK, 7, u),
            (OTHER, 0, u),
        ]);
        let (mode, access) = inherit(&default, libc::S_IFREG | 0o644).expect("inherit");
        assert_eq!(
            mode,
            libc::S_IFREG | 0o640,
            "owner rw, mask r (from the mode's group bits)"
        );
        let access = access.expect("a named entry: an access ACL");
        assert_eq!(mode_bits(&access), Some(0o640));
        assert_eq!(
            entries(&access).expect("entries")[1],
            (USER, 5, 65534),
            "named entries kept"
        );
        // A default ACL that the mode can say: the mode, no access ACL.
        let plain = acl(&[(USER_OBJ, 7, u), (GROUP_OBJ, 5, u), (OTHER, 1, u)]);
        assert_eq!(inherit(&plain, 0o777), Some((0o751, None)));
    }
}
