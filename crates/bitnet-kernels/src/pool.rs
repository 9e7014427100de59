//! Keeping the rayon pool's workers awake through a run of short parallel regions.
//!
//! A decode step is ~150 parallel regions (the projections of 30 layers, attention, the head)
//! separated by a few microseconds of serial work on one thread. Between them an idle rayon
//! worker goes to sleep, and each region then waits for a futex wake-up before its second
//! half starts: `perf stat` counted ~131 context switches per token of a 2-thread decode of the
//! 2B-4T shape.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a spinning worker waits without finding work before it returns to the pool
/// anyway. This bounds what a spinner can cost when it was picked up inside another job's
/// join (that job waits under it), and lets workers sleep through long serial stretches.
const IDLE_LIMIT: Duration = Duration::from_micros(500);

thread_local! {
    /// How many [`keep_workers_awake`] bodies this thread is running (nested calls count).
    static RUNNING: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f`, called on a worker of a rayon pool, while the pool's other workers spin, running
/// any pending work of the pool (`rayon::yield_now`) instead of going to sleep between `f`'s
/// parallel regions. A spinner returns to the pool when `f` has returned, or after
/// [`IDLE_LIMIT`] without work. Outside a pool, with one thread, or inside another call's `f`,
/// it just runs `f`. Meant for a decode step: many short parallel regions; the other workers
/// use their cores fully while it runs. Results do not depend on it (the same work, split the
/// same way), and it allocates nothing: the spinners are `rayon::join` jobs on the stack.
pub fn keep_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let n = rayon::current_num_threads();
    // Outside a pool the first `join` would inject a job into the pool's queue (an allocation
    // now and then); nested in another body the spinners already run.
    if n < 2 || rayon::current_thread_index().is_none() || RUNNING.with(|c| c.get()) > 0 {
        return f();
    }
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let body = move || {
        RUNNING.with(|c| c.set(c.get() + 1));
        // Undone on return and on a panic out of `f` alike.
        let _done = Done(stop);
        f()
    };
    // `join` runs `body` here and offers the spinners to the other workers.
    rayon::join(body, move || spinners(n - 1, stop)).0
}

/// Ends a body: this thread runs one body fewer, and its spinners stop.
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        RUNNING.with(|c| c.set(c.get() - 1));
        self.0.store(true, Ordering::Release);
    }
}

/// `k` spinners, offered to the pool one `join` at a time.
fn spinners(k: usize, stop: &AtomicBool) {
    match k {
        0 => {}
        1 => spin(stop),
        _ => {
            rayon::join(|| spin(stop), || spinners(k - 1, stop));
        }
    }
}

/// Takes the pool's pending work until `stop`, or until idle for [`IDLE_LIMIT`].
fn spin(stop: &AtomicBool) {
    // The thread that runs a body may pick a spinner up while it waits for a join inside the
    // body: spinning there would only wait for the body.
    if RUNNING.with(|c| c.get()) > 0 {
        return;
    }
    let mut idle = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle = Instant::now();
        } else if idle.elapsed() > IDLE_LIMIT {
            return;
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Work inside gives the same result as outside, from inside a pool and from outside one,
    /// and nested or concurrent uses finish (a spinner picked up inside another job's join
    /// returns to it).
    #[test]
    fn runs_the_work_and_always_returns() {
        let sum = |n: u64| (0..n).into_par_iter().map(|i| i * i).sum::<u64>();
        let want = sum(100_000);
        assert_eq!(keep_workers_awake(|| sum(100_000)), want);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let got = pool.install(|| {
            keep_workers_awake(|| {
                (0..8u64)
                    .into_par_iter()
                    .map(|_| keep_workers_awake(|| sum(100_000)))
                    .sum::<u64>()
            })
        });
        assert_eq!(got, 8 * want);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..20)
                        .map(|_| keep_workers_awake(|| sum(10_000)))
                        .sum::<u64>()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 20 * sum(10_000));
        }
    }
}
