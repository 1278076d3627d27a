//! Large cold reads of a backing file straight from the disk (O_DIRECT). A buffered read puts
//! the ciphertext into the page cache and then copies it into the daemon: in a cold sequential
//! read that copy was a third of the daemon's CPU time, for pages nobody reads again (the
//! kernel caches the plaintext above FUSE). Ranges still in the page cache are read the
//! ordinary way, so recently written data is never forced out to disk first.

use std::alloc::Layout;
use std::fs::File;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment O_DIRECT needs for offsets, lengths and buffers (a page covers every common
/// logical block size).
const ALIGN: usize = 4096;
/// Reads smaller than this stay buffered: the disk round trip is not worth it.
pub const MIN_DIRECT_LEN: usize = 128 * 1024;

/// The O_DIRECT twin of one backing file, opened on first use.
#[derive(Debug, Default)]
pub struct DirectReader {
    fd: OnceLock<Option<File>>,
    failed: AtomicBool,
}

impl DirectReader {
    /// Read `len` bytes at `offset` of `file` from the disk. `None` when the page cache holds
    /// the range, when the backing file system cannot do O_DIRECT (its first failure turns it
    /// off for this file), or when fewer bytes came back (the end of the file, or damage): the
    /// caller then reads buffered, and judges.
    pub fn read(&self, file: &File, offset: u64, len: usize) -> Option<Stored> {
        if self.failed.load(Ordering::Relaxed) || mostly_cached(file, offset, len) {
            return None;
        }
        let direct = self
            .fd
            .get_or_init(|| {
                crate::sys::reopen(file.as_fd(), libc::O_RDONLY | libc::O_DIRECT)
                    .ok()
                    .map(File::from)
            })
            .as_ref()?;
        let from = offset as usize / ALIGN * ALIGN;
        let skip = offset as usize - from;
        let span = (skip + len).div_ceil(ALIGN) * ALIGN;
        let mut buf = AlignedBuf::take(span);
        let bytes = buf.bytes_mut()?;
        let n = match direct_read(direct, bytes, from as u64) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("O_DIRECT reads off for this file: {e}");
                self.failed.store(true, Ordering::Relaxed);
                return None;
            }
        };
        if n < skip + len {
            return None;
        }
        Some(Stored { buf, at: skip, len })
    }
}

/// Whether the range `offset .. offset + len` of `file` is better read through the page cache:
/// at least half of it is cached, or some of it is dirty (a direct read would first write it
/// out). Asked with cachestat(2), which, unlike a RWF_NOWAIT read, starts no readahead. On
/// kernels without it (before 6.5) every read stays buffered.
fn mostly_cached(file: &File, offset: u64, len: usize) -> bool {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // The same number in every architecture's table since Linux 6.5.
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut st = CacheStat::default();
    // SAFETY: valid fd, pointers to live structs of the kernel's layout, flags 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut CacheStat,
            0,
        )
    };
    let pages = len.div_ceil(ALIGN) as u64;
    rc != 0 || st.nr_dirty + st.nr_writeback > 0 || st.nr_cache * 2 >= pages
}

/// Fill `buf` from aligned offset `at` with O_DIRECT, stopping short only at the end of file.
fn direct_read(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                // An unaligned count means the end of the file; reading on would be EINVAL.
                if done % ALIGN != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Bytes read from a backing file, in a page-aligned buffer that goes back to its thread's
/// spare slot when dropped (large allocations would otherwise be fresh, faulting pages).
pub struct Stored {
    buf: AlignedBuf,
    at: usize,
    len: usize,
}

impl Deref for Stored {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf
            .bytes()
            .map_or(&[], |b| &b[self.at..self.at + self.len])
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        SPARE.with(|s| {
            let mut spare = s.take();
            if spare.capacity() < self.buf.capacity() {
                spare = std::mem::take(&mut self.buf);
            }
            s.set(spare);
        });
    }
}

thread_local! {
    static SPARE: std::cell::Cell<AlignedBuf> = std::cell::Cell::new(AlignedBuf::default());
}

/// A zero-initialized, page-aligned heap buffer (ciphertext only: nothing to wipe).
#[derive(Default)]
struct AlignedBuf {
    ptr: Option<std::ptr::NonNull<u8>>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer is uniquely owned, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `len` bytes: this thread's spare one if big enough, else a new one.
    fn take(len: usize) -> Self {
        let mut buf = SPARE.with(|s| s.take());
        if buf.cap < len {
            buf = AlignedBuf::alloc(len);
        }
        buf.len = len.min(buf.cap);
        buf
    }

    fn alloc(len: usize) -> Self {
        let Ok(layout) = Layout::from_size_align(len.max(ALIGN), ALIGN) else {
            return AlignedBuf::default();
        };
        // SAFETY: the layout has a non-zero size.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) });
        AlignedBuf {
            cap: if ptr.is_some() { layout.size() } else { 0 },
            ptr,
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.cap
    }

    fn bytes(&self) -> Option<&[u8]> {
        // SAFETY: ptr holds `cap >= len` initialized bytes owned by self.
        self.ptr
            .map(|p| unsafe { std::slice::from_raw_parts(p.as_ptr(), self.len) })
    }

    fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        // SAFETY: as in `bytes`, and `&mut self` makes the access unique.
        self.ptr
            .map(|p| unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), self.len) })
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let (Some(p), Ok(layout)) = (self.ptr, Layout::from_size_align(self.cap, ALIGN)) {
            // SAFETY: allocated in `alloc` with this very layout.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_match_buffered_reads_at_any_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let file = File::open(&path).expect("open");
        file.sync_all().expect("sync");
        // SAFETY: valid fd; advice only. Evicts the pages so the reads go to the disk.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert!(!mostly_cached(&file, 0, data.len()), "pages still cached");
        let reader = DirectReader::default();
        for (offset, len) in [
            (0, 300_000),
            (4124, 256 * 4124),
            (1, 131_072),
            (599_000, 5_000),
        ] {
            let end = offset + len;
            if end > data.len() {
                assert!(
                    reader.read(&file, offset as u64, len).is_none(),
                    "short read"
                );
                continue;
            }
            let Some(got) = reader.read(&file, offset as u64, len) else {
                return; // no O_DIRECT on this file system
            };
            assert_eq!(&got[..], &data[offset..end], "at {offset}+{len}");
        }
    }
}
