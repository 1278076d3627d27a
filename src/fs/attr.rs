//! Backing `stat` → the attributes the mount shows (plain sizes for regular files), in the
//! filesystem's own types; the FUSE adapter converts them to the kernel's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::content::Volume;

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A FIFO.
    NamedPipe,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A regular file.
    RegularFile,
}

/// The attributes of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The inode number.
    pub ino: u64,
    /// Plain size (regular files), backing size otherwise (symlinks: the plain target length).
    pub size: u64,
    /// 512-byte blocks allocated in the backing store.
    pub blocks: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
    /// Its type.
    pub kind: Kind,
    /// Permission bits (with set-ID and sticky).
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (devices).
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// The file type of a `st_mode`.
pub fn kind(mode: u32) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Directory,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::NamedPipe,
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFCHR => Kind::CharDevice,
        libc::S_IFBLK => Kind::BlockDevice,
        _ => Kind::RegularFile,
    }
}

/// The file type of a directory entry's `std::fs::FileType`.
pub fn kind_of(t: &std::fs::FileType) -> Kind {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        Kind::Directory
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_fifo() {
        Kind::NamedPipe
    } else if t.is_socket() {
        Kind::Socket
    } else if t.is_char_device() {
        Kind::CharDevice
    } else if t.is_block_device() {
        Kind::BlockDevice
    } else {
        Kind::RegularFile
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// The attributes of inode `ino` whose backing object has `st`.
pub fn from_stat(ino: u64, st: &libc::stat, vault: &Volume) -> Attr {
    let kind = kind(st.st_mode);
    let size = if kind == Kind::RegularFile {
        vault.plain_size(st.st_size as u64)
    } else {
        st.st_size as u64
    };
    Attr {
        ino,
        size,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
    }
}
