//! The daemon's global allocator: the system allocator, except that small blocks are wiped
//! when freed. Key material passes through buffers we do not own (the AWS SDK's HTTP and JSON
//! buffers hold the base64 plaintext of every unwrapped key); wiping on free keeps such copies
//! from lingering in freed heap memory. Large blocks (file data buffers) are not wiped: the
//! cost would be a memset per megabyte read, and `cryptfile` wipes its own plaintext blocks.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks up to this size are wiped on free (KMS requests and replies are a few KiB).
const WIPE_LIMIT: usize = 64 * 1024;

/// The system allocator, wiping small blocks on free and on moving reallocation.
#[derive(Debug, Default)]
pub struct WipeOnFree;

fn wipe(ptr: *mut u8, len: usize) {
    // SAFETY: the caller owns `len` bytes at `ptr` (a live block being freed).
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    zeroize::Zeroize::zeroize(bytes);
}

// SAFETY: every call is forwarded to `System` with the same layout; wiping only writes to
// memory the block owns before it is released.
unsafe impl GlobalAlloc for WipeOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() <= WIPE_LIMIT {
            wipe(ptr, layout.size());
        }
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() > WIPE_LIMIT {
            // SAFETY: forwarded as is.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // A small block may move: copy it ourselves so the old place can be wiped.
        // SAFETY: the new layout is valid (same alignment, size checked by the caller).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: forwarded allocation.
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: the old block is ours to free.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}
