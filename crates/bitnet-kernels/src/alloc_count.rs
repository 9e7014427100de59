//! A global allocator that counts allocations while switched on: for the tests that assert a
//! hot path allocates nothing (`tests/pool_alloc.rs` here, `bitnet-engine`'s `tests/no_alloc.rs`).
//! A test binary installs it with `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The system allocator, counting `alloc` and `realloc` calls between [`CountingAlloc::start`]
/// and [`CountingAlloc::stop`] (from every thread).
pub struct CountingAlloc {
    on: AtomicBool,
    count: AtomicUsize,
}

impl CountingAlloc {
    /// Not counting yet.
    pub const fn new() -> Self {
        Self {
            on: AtomicBool::new(false),
            count: AtomicUsize::new(0),
        }
    }

    /// Starts counting from zero.
    pub fn start(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.on.store(true, Ordering::SeqCst);
    }

    /// Stops counting; returns how many allocations were made since [`CountingAlloc::start`].
    pub fn stop(&self) -> usize {
        self.on.store(false, Ordering::SeqCst);
        self.count.load(Ordering::SeqCst)
    }

    fn note(&self) {
        if self.on.load(Ordering::Relaxed) {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
