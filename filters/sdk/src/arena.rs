//! A per-request arena allocator for filters whose instances are recycled.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};

/// A bump allocator over an `N`-byte array in the guest's static data, for
/// use as the `#[global_allocator]` of a filter:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: edgegate_filter_sdk::RequestArena<14336> = edgegate_filter_sdk::RequestArena::new();
/// ```
///
/// Allocating moves a pointer; freeing gives memory back only when it is
/// the last block allocated (a growing `String` or `Vec` reallocates in
/// place). Nothing else is ever reclaimed, and nothing needs to be: the
/// gateway puts an instance's whole memory back after every call (or
/// discards the instance), so each request starts with the arena as the
/// guest's `phases` left it. That makes allocation almost free, where the
/// default allocator (wasi-libc's dlmalloc) cost the first-party header
/// filters a tenth of their run time.
///
/// When a request needs more than the arena holds, allocations fall back to
/// the default allocator, which grows linear memory: that request still
/// works, and its instance is then not recycled. Size `N` so the component
/// still starts with one 64 KiB page (stack + data + arena; `edgegate
/// filter test` prints the memory each call used), and keep this for
/// filters that allocate little per request: one that builds large buffers
/// (an image transform) should keep the default allocator.
pub struct RequestArena<const N: usize> {
    /// Offset of the first free byte.
    next: Cell<usize>,
    bytes: UnsafeCell<[u8; N]>,
}

// SAFETY: wasm32-wasip2 guests are single-threaded; nothing else touches
// the arena.
unsafe impl<const N: usize> Sync for RequestArena<N> {}

impl<const N: usize> RequestArena<N> {
    /// An empty arena (zeroed static data: it costs the component nothing
    /// to ship).
    pub const fn new() -> Self {
        Self {
            next: Cell::new(0),
            bytes: UnsafeCell::new([0; N]),
        }
    }

    fn base(&self) -> usize {
        self.bytes.get() as usize
    }

    fn holds(&self, ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= self.base() && p < self.base() + N
    }

    /// The block for `layout` in the arena, if it fits.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let base = self.base();
        let start = (base + self.next.get()).checked_next_multiple_of(layout.align())?;
        let end = start.checked_add(layout.size())?;
        if end > base + N {
            return None;
        }
        self.next.set(end - base);
        Some(start as *mut u8)
    }
}

impl<const N: usize> Default for RequestArena<N> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks are disjoint ranges of the array, aligned as asked, and
// each lives until it is freed (the array is never reused below a live
// block: `next` only moves back over the last block, when it is freed).
unsafe impl<const N: usize> GlobalAlloc for RequestArena<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(p) => p,
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.holds(ptr) {
            if ptr as usize + layout.size() == self.base() + self.next.get() {
                self.next.set(ptr as usize - self.base());
            }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.holds(ptr) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let p = ptr as usize;
        let last = p + layout.size() == self.base() + self.next.get();
        if last && p + new_size <= self.base() + N {
            self.next.set(p + new_size - self.base());
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `new_size` is non-zero and, rounded to `layout.align()`,
        // no larger than `isize::MAX` (GlobalAlloc::realloc's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_frees_the_last_block_and_falls_back() {
        let a = RequestArena::<64>::new();
        unsafe {
            let l8 = Layout::from_size_align(8, 8).unwrap();
            let p = a.alloc(l8);
            assert!(a.holds(p) && (p as usize).is_multiple_of(8));
            let q = a.alloc(Layout::from_size_align(3, 1).unwrap());
            assert_eq!(q as usize, p as usize + 8);
            // Aligned past the 3-byte block.
            let r = a.alloc(l8);
            assert_eq!(r as usize, p as usize + 16);
            // Freeing the last block gives it back; an earlier one does not.
            a.dealloc(r, l8);
            assert_eq!(a.alloc(l8), r);
            a.dealloc(p, l8);
            assert_eq!(a.next.get(), r as usize - a.base() + 8);
            // The last block grows in place, and copies when it is not last.
            let g = a.realloc(r, l8, 24);
            assert_eq!(g, r);
            std::ptr::write_bytes(q, 7, 3);
            let moved = a.realloc(q, Layout::from_size_align(3, 1).unwrap(), 10);
            assert!(moved != q && a.holds(moved));
            assert_eq!(std::slice::from_raw_parts(moved, 3), &[7, 7, 7]);
            // Full: the default allocator serves, and frees, what does not fit.
            let big = Layout::from_size_align(100, 1).unwrap();
            let b = a.alloc(big);
            assert!(!b.is_null() && !a.holds(b));
            a.dealloc(b, big);
        }
    }
}
