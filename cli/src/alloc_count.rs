//! A counting global allocator for `allocs_per_request` (cargo feature `count-allocs`).
//!
//! [`CountingAllocator`] forwards every call to the system allocator and counts the calls
//! that hand out memory (`alloc`, `alloc_zeroed`, `realloc`). It is installed as the global
//! allocator only with the `count-allocs` feature, so normal builds pay nothing.

use agentwire_core::sync::{AtomicU64, Ordering};
use std::alloc::{GlobalAlloc, Layout, System};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting allocations.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

#[cfg(feature = "count-allocs")]
#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made through [`CountingAllocator`] so far: `None` when it is not the global
/// allocator (built without the `count-allocs` feature).
#[must_use]
pub fn allocations() -> Option<u64> {
    cfg!(feature = "count-allocs").then(|| ALLOCATIONS.load(Ordering::Relaxed))
}

// `unsafe` is denied workspace-wide; implementing `GlobalAlloc` is the one place this crate
// needs it. Every method only forwards its arguments, unchanged, to `System`.
#[allow(unsafe_code)]
// SAFETY: `System` upholds the `GlobalAlloc` contract, and every method below passes its
// arguments to the same method of `System` unchanged, so this allocator upholds it too.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller guarantees `ptr` came from this allocator (hence from `System`)
        // with `layout`, and that `new_size` is valid; forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator (hence from `System`)
        // with `layout`; forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn counts_and_forwards_every_call() {
        let a = CountingAllocator;
        let layout = Layout::from_size_align(64, 16).unwrap();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        // SAFETY: non-zero size; each pointer is freed once, with the layout it was
        // allocated with, and only used within its size.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % 16, 0);
            p.write_bytes(0xAB, 64);
            let q = a.realloc(p, layout, 4096);
            assert!(!q.is_null());
            assert_eq!(*q.add(63), 0xAB, "realloc keeps the contents");
            a.dealloc(q, Layout::from_size_align(4096, 16).unwrap());
            let z = a.alloc_zeroed(layout);
            assert!(!z.is_null());
            assert!((0..64).all(|i| *z.add(i) == 0));
            a.dealloc(z, layout);
        }
        // Other tests may allocate concurrently through the global allocator (with the
        // feature): at least our three calls were counted.
        assert!(ALLOCATIONS.load(Ordering::Relaxed) - before >= 3);
    }

    #[test]
    fn reports_only_when_installed() {
        let installed = cfg!(feature = "count-allocs");
        assert_eq!(allocations().is_some(), installed);
        if let Some(before) = allocations() {
            let v: Vec<u64> = std::hint::black_box((0..100).collect());
            assert_eq!(v.len(), 100);
            assert!(allocations().unwrap() > before);
        }
    }
}
