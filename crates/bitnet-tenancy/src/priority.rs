//! SQLite's worker threads below the request path's CPU priority.
//!
//! sqlx runs each SQLite connection on a thread of its own (`sqlx-sqlite-worker-N`). Under
//! load, that thread stores thousands of usage rows a second in short bursts, and each time it
//! wakes, the scheduler lets it preempt a thread that answers requests or runs the engine's
//! decode step — and every request in flight waits for that step. On 2 cores (AMD EPYC Zen 5,
//! 2026-12-07), the tiny model at 64 connections, the workers reniced by hand while the
//! server ran, alternating: 34–37 k requests/s at the server's own priority, 36–42 k at nice
//! 10 or 19, the same rows stored.
//!
//! So once a SQLite connection is open, its worker gets the server's nice value plus
//! [`WORKER_NICE_OFFSET`] (at most 19). It still runs whenever a core is idle, and gets its
//! weighted share when none is (nice +10 is about a tenth of the weight), so rows are still
//! stored under full load; until they are, the usage journal holds them. Linux only; elsewhere
//! nothing changes. PostgreSQL connections have no worker thread.

/// How much lower (in nice steps) SQLite's worker threads run than the server.
pub const WORKER_NICE_OFFSET: i32 = 10;

/// The prefix of sqlx's SQLite worker thread names as the kernel keeps them (`comm`: 15 bytes
/// of `sqlx-sqlite-worker-N`).
#[cfg(target_os = "linux")]
const WORKER_COMM: &str = "sqlx-sqlite-wor";

/// Gives every SQLite worker thread of this process the server's nice value plus
/// [`WORKER_NICE_OFFSET`], unless it already runs at that priority or lower. Returns how many
/// threads were changed. Failures (a thread that just ended, a kernel that refuses) are
/// logged at debug level and skipped: priority is a matter of speed, not of correctness.
#[cfg(target_os = "linux")]
pub fn lower_sqlite_workers() -> usize {
    use rustix::process::{getpriority_process, setpriority_process, Pid};
    // The process's nice value: the main thread's, which the server's threads inherit.
    let own = getpriority_process(None).unwrap_or(0);
    let target = (own + WORKER_NICE_OFFSET).min(19);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut changed = 0;
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Some(pid) = Pid::from_raw(tid) else {
            continue;
        };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(WORKER_COMM) {
            continue;
        }
        if getpriority_process(Some(pid)).is_ok_and(|p| p >= target) {
            continue;
        }
        match setpriority_process(Some(pid), target) {
            Ok(()) => changed += 1,
            Err(e) => tracing::debug!("setting nice {target} on SQLite worker thread {tid}: {e}"),
        }
    }
    changed
}

/// Elsewhere than Linux: threads keep their priority.
#[cfg(not(target_os = "linux"))]
pub fn lower_sqlite_workers() -> usize {
    0
}
