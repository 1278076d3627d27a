//! Extended attributes of the object behind a descriptor (O_PATH too), through its
//! `/proc/self/fd` path: the f*xattr calls do not take O_PATH descriptors.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{cvt, proc_path};

/// Call a getter twice: once for the size, once for the bytes (again if it grew meanwhile).
fn two_calls(get: impl Fn(*mut libc::c_void, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let n = get(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        let got = get(buf.as_mut_ptr().cast(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// The value of attribute `name` of the object behind `fd`.
pub fn get(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let path = proc_path(fd);
    // SAFETY: valid C strings; buffer pointer and length come from two_calls.
    two_calls(|buf, len| unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf, len) })
}

/// Whether the object behind `fd` has attribute `name`.
pub fn has(fd: BorrowedFd<'_>, name: &CStr) -> bool {
    let path = proc_path(fd);
    // SAFETY: valid C strings; a null buffer of length 0 asks only for the size.
    unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Whether the object at `path` (followed) has attribute `name`.
pub fn path_has(path: &Path, name: &CStr) -> bool {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: valid C strings; a null buffer of length 0 asks only for the size.
    unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Set attribute `name` of the object behind `fd` to `value` (`flags`: XATTR_CREATE, ...).
pub fn set(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: valid C strings and value buffer.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// The attribute names of the object behind `fd` (each NUL-terminated).
pub fn list(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let path = proc_path(fd);
    // SAFETY: valid C string; buffer pointer and length come from two_calls.
    two_calls(|buf, len| unsafe { libc::listxattr(path.as_ptr(), buf.cast(), len) })
}

/// Remove attribute `name` of the object behind `fd`.
pub fn remove(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}
