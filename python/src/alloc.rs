//! The extension's allocator: the system's, but large blocks that are freed are kept (up to
//! [`CAP`] bytes) and handed out again for a request of the same size. A cache of every
//! activation over all inputs is hundreds of megabytes of fresh arrays per call; without this,
//! each call's arrays are new pages the kernel must fault in and zero (a fifth of the call,
//! measured), and each freed array is unmapped again. Numpy frees those arrays through this
//! allocator (they are Rust vectors moved into numpy), so a notebook running the same cell again,
//! or a loop over batches, reuses them. `toylens.empty_cache()` gives the kept blocks back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks at least this large are kept when freed.
const LARGE: usize = 8 << 20;
/// At most this many bytes are kept.
const CAP: usize = 2 << 30;
const SLOTS: usize = 64;

/// (address, size) of kept blocks; size 0 marks a free slot. A fixed array: the allocator must
/// not allocate while holding its lock.
struct Kept {
    slots: [(usize, usize); SLOTS],
    bytes: usize,
}

pub struct KeepLarge {
    kept: Mutex<Kept>,
    hits: AtomicUsize,
}

impl KeepLarge {
    pub const fn new() -> Self {
        KeepLarge {
            kept: Mutex::new(Kept {
                slots: [(0, 0); SLOTS],
                bytes: 0,
            }),
            hits: AtomicUsize::new(0),
        }
    }

    /// Give every kept block back to the system; returns the bytes released.
    pub fn release(&self) -> usize {
        let mut freed = Vec::new();
        if let Ok(mut k) = self.kept.lock() {
            for s in k.slots.iter_mut().filter(|s| s.1 != 0) {
                freed.push(*s);
                *s = (0, 0);
            }
            k.bytes = 0;
        }
        let mut total = 0;
        for (addr, size) in freed {
            total += size;
            // SAFETY: each kept block came from System.alloc with this size and the
            // alignment below.
            unsafe {
                System.dealloc(
                    addr as *mut u8,
                    Layout::from_size_align_unchecked(size, ALIGN),
                )
            };
        }
        total
    }

    /// A kept block of exactly `size` bytes, taken out of the cache.
    fn take(&self, size: usize) -> Option<*mut u8> {
        let mut k = self.kept.lock().ok()?;
        let s = k.slots.iter_mut().find(|s| s.1 == size)?;
        let addr = s.0;
        *s = (0, 0);
        k.bytes -= size;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(addr as *mut u8)
    }

    /// How many large requests were served from kept blocks.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

/// Large blocks are allocated with this alignment, so any request of the size with a smaller
/// one can take any kept block.
const ALIGN: usize = 64;

fn large(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= ALIGN
}

unsafe impl GlobalAlloc for KeepLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !large(layout) {
            return System.alloc(layout);
        }
        if let Some(p) = self.take(layout.size()) {
            return p;
        }
        System.alloc(Layout::from_size_align_unchecked(layout.size(), ALIGN))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !large(layout) {
            return System.alloc_zeroed(layout);
        }
        if let Some(p) = self.take(layout.size()) {
            std::ptr::write_bytes(p, 0, layout.size());
            return p;
        }
        System.alloc_zeroed(Layout::from_size_align_unchecked(layout.size(), ALIGN))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !large(layout) {
            return System.dealloc(ptr, layout);
        }
        if let Ok(mut k) = self.kept.lock() {
            if k.bytes + layout.size() <= CAP {
                if let Some(s) = k.slots.iter_mut().find(|s| s.1 == 0) {
                    *s = (ptr as usize, layout.size());
                    k.bytes += layout.size();
                    return;
                }
            }
        }
        System.dealloc(ptr, Layout::from_size_align_unchecked(layout.size(), ALIGN))
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !large(layout) && new_size < LARGE {
            return System.realloc(ptr, layout, new_size);
        }
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new = self.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}
