//! The daemon's global allocator: the system allocator, except that every block is wiped when
//! freed (and the old place of a block that moves on reallocation). Key material passes through
//! buffers we do not own (the AWS SDK's HTTP and JSON buffers hold the base64 plaintext of every
//! unwrapped key), and plaintext passes through large read and write buffers; wiping on free
//! keeps neither lingering in freed heap memory. The cost is one memset per freed byte, far
//! below the cost of decrypting or encrypting those bytes (measured in docs/BENCHMARKS.md).

use std::alloc::{GlobalAlloc, Layout, System};

/// An allocator (the system's by default) that wipes every block on free and on moving
/// reallocation.
#[derive(Debug, Default)]
pub struct WipeOnFree<A = System>(pub A);

fn wipe(ptr: *mut u8, len: usize) {
    // SAFETY: the caller owns `len` bytes at `ptr` (a live block being freed).
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    zeroize::Zeroize::zeroize(bytes);
}

// SAFETY: every call is forwarded to the inner allocator with the same layout; wiping only
// writes to memory the block owns before it is released.
unsafe impl<A: GlobalAlloc> GlobalAlloc for WipeOnFree<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        wipe(ptr, layout.size());
        // SAFETY: forwarded as is.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The block may move: copy it ourselves so the old place can be wiped.
        // SAFETY: the new layout is valid (same alignment, size checked by the caller).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: forwarded allocation.
        let new = unsafe { self.0.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: the old block is ours to free.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The system allocator, counting blocks that still held a non-zero byte when freed.
    #[derive(Default)]
    struct Checking {
        dirty: AtomicUsize,
        freed: AtomicUsize,
    }

    // SAFETY: forwards to System; only reads the block it is handed back.
    unsafe impl GlobalAlloc for Checking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the block is live until the System dealloc below.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if bytes.iter().any(|&b| b != 0) {
                self.dirty.fetch_add(1, Ordering::SeqCst);
            }
            self.freed.fetch_add(1, Ordering::SeqCst);
            // SAFETY: forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Item 9 of the hostile-store issue: large blocks (plaintext read buffers) are wiped too,
    /// on free and when a reallocation moves them.
    #[test]
    fn every_block_is_wiped_before_it_is_freed() {
        let a = WipeOnFree(Checking::default());
        for size in [16usize, 64 * 1024, 64 * 1024 + 1, 4 << 20] {
            let layout = Layout::from_size_align(size, 8).expect("layout");
            // SAFETY: a fresh block of `size` bytes, filled, grown, then freed once.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 0xAB, size);
                let q = a.realloc(p, layout, size * 2);
                assert!(!q.is_null());
                assert_eq!(*q.add(size - 1), 0xAB, "contents kept");
                std::ptr::write_bytes(q, 0xCD, size * 2);
                a.dealloc(q, Layout::from_size_align(size * 2, 8).expect("layout"));
            }
        }
        assert_eq!(a.0.freed.load(Ordering::SeqCst), 8);
        assert_eq!(
            a.0.dirty.load(Ordering::SeqCst),
            0,
            "a block was freed unwiped"
        );
    }
}
