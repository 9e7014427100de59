//! SQLite's worker threads run below the server's priority (`bitnet_tenancy::priority`). In a
//! test binary of its own: another test opening a connection at the same moment would show a
//! worker not yet lowered.

#![cfg(target_os = "linux")]

use bitnet_tenancy::priority::{lower_sqlite_workers, WORKER_NICE_OFFSET};
use bitnet_tenancy::store::Store;

/// The nice value in a `/proc/…/stat` line (field 19, the 17th after the parenthesized name).
fn nice_of(stat: &str) -> i32 {
    let rest = &stat[stat.rfind(')').expect("stat has a name") + 2..];
    rest.split(' ')
        .nth(16)
        .expect("stat has 19 fields")
        .parse()
        .expect("nice is a number")
}

/// The nice value of every SQLite worker thread of this process.
fn worker_nices() -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("sqlx-sqlite-wor") {
            out.push(nice_of(
                &std::fs::read_to_string(task.path().join("stat")).unwrap(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_workers_run_below_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::connect(&url, 2).await.unwrap();
    let own = nice_of(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let want = (own + WORKER_NICE_OFFSET).min(19);
    let nices = worker_nices();
    assert!(!nices.is_empty(), "no SQLite worker thread found");
    assert!(
        nices.iter().all(|&n| n >= want),
        "worker nice values {nices:?}, want at least {want}"
    );
    // Already lowered: nothing left to change.
    assert_eq!(lower_sqlite_workers(), 0);
    store.close().await;
}
