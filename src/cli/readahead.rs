//! The kernel's readahead window of a mount. FUSE mounts start at 128 KiB and the INIT reply
//! can only lower it, so a larger window is set afterwards through the mount's backing device
//! info in sysfs (root only).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Set the readahead of the (answering) mount at `mountpoint` to `kib` KiB.
pub fn set(mountpoint: &Path, kib: u32) -> std::io::Result<()> {
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    std::fs::write(knob, kib.to_string())
}
