//! `keep_workers_awake` allocates nothing on a pool worker once warm (the decode step must
//! not allocate; `bitnet-engine`'s test fixtures are too small for it to spin).

use bitnet_kernels::alloc_count::CountingAlloc;
use bitnet_kernels::pool::keep_workers_awake;
use rayon::prelude::*;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

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
    let allocs = pool.install(|| {
        for _ in 0..5 {
            step(&mut out);
        }
        GLOBAL.start();
        for _ in 0..20 {
            step(&mut out);
        }
        GLOBAL.stop()
    });
    assert_eq!(allocs, 0, "allocations while awake");
    let want: u64 = (0..25u64).map(|_| (0..50u64).sum::<u64>()).sum();
    assert_eq!(out[0], want, "the work ran");
}
