//! `keep_workers_awake` allocates nothing on a pool worker once warm (the decode step must
//! not allocate; `bitnet-engine`'s test fixtures are too small for it to spin).

use bitnet_kernels::pool::keep_workers_awake;
use rayon::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn keeping_workers_awake_allocates_nothing() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .expect("pool");
    let mut out = vec![0u64; 4096];
    let step = |out: &mut [u64]| {
        keep_workers_awake(|| {
            // Many short parallel regions, as a decode step has.
            for r in 0..50u64 {
                out.par_chunks_mut(64)
                    .enumerate()
                    .for_each(|(i, c)| c.iter_mut().for_each(|v| *v += r + i as u64));
            }
        })
    };
    // Every worker started (a thread's start-up allocates) and warm.
    pool.broadcast(|_| ());
    pool.install(|| {
        for _ in 0..5 {
            step(&mut out);
        }
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for _ in 0..20 {
            step(&mut out);
        }
        COUNTING.store(false, Ordering::SeqCst);
    });
    assert_eq!(ALLOCS.load(Ordering::SeqCst), 0, "allocations while awake");
    let want: u64 = (0..25u64).map(|_| (0..50u64).sum::<u64>()).sum();
    assert_eq!(out[0], want, "the work ran");
}
