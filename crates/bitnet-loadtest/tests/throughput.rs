//! How many requests/s one client thread drives against a trivial server on another thread
//! of the same machine. Ignored by default (timing-dependent); run with
//! `cargo test -p bitnet-loadtest --release --test throughput -- --ignored --nocapture`.

mod mock;

use bitnet_loadtest::{Endpoint, LoadtestConfig};
use std::time::Duration;

/// User + system CPU seconds of the calling thread (Linux), if readable.
fn thread_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn measure(stream: bool, max_tokens: u32, concurrency: usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let server = mock::start(mock::Mock::default()).await;
            tx.send(server.url.clone()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let url = rx.recv().unwrap();
    let cfg = LoadtestConfig {
        duration: Some(Duration::from_secs(3)),
        concurrency,
        max_tokens,
        stream,
        model: Some("m".into()),
        ..LoadtestConfig::new(url, Endpoint::Completions)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cpu0 = thread_cpu_s();
    let r = rt.block_on(bitnet_loadtest::run(&cfg)).unwrap();
    let cpu = thread_cpu_s().zip(cpu0).map(|(b, a)| b - a);
    println!(
        "stream={stream} max_tokens={max_tokens} concurrency={concurrency}: {:.0} req/s, {:.0} tok/s, \
         {} failed, client thread CPU {:?} s over {:.2} s ({:.1} us/request)",
        r.request_throughput,
        r.output_throughput,
        r.failed,
        cpu,
        r.duration_s,
        cpu.unwrap_or(f64::NAN) * 1e6 / r.issued as f64,
    );
    assert_eq!(r.failed, 0, "{:?}", r.failure_examples);
}

#[test]
#[ignore = "timing; run by hand"]
fn throughput() {
    measure(false, 16, 32);
    measure(true, 16, 32);
}
