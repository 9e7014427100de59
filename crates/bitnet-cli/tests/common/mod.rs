//! Helpers of the CLI tests: the fixture, `bitnet serve` as a child process, plain HTTP,
//! the Python `openai` SDK, `bitnet loadtest`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child's stderr lines.
pub type Log = Arc<Mutex<Vec<String>>>;

pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gqa4-bitlinear-untied")
}

/// Starts the server on a free port; returns the child and its base URL once it listens.
pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
    let (child, url, _) = spawn_logged(args, envs);
    (child, url)
}

/// [`spawn`], also returning the server's stderr lines as they come (kept in memory).
pub fn spawn_logged(args: &[&str], envs: &[(&str, &str)]) -> (Child, String, Log) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    cmd.arg("serve")
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn bitnet serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let t = Instant::now();
    let mut seen = Vec::new();
    let url = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                if let Some(u) = line.split("listening on ").nth(1) {
                    break u.trim().to_string();
                }
                seen.push(line);
            }
            Err(_) => panic!("server did not start: {seen:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{seen:?}");
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    let log: Log = Arc::new(Mutex::new(seen));
    let keep = log.clone();
    std::thread::spawn(move || {
        while let Ok(line) = rx.recv() {
            if let Ok(mut l) = keep.lock() {
                l.push(line);
            }
        }
    });
    // The server listens before the model is loaded (`/ready` answers 503 until then): wait
    // for readiness so tests do not race the load (CI's busy cores once lost that race).
    let t = Instant::now();
    while http_status(&url, "/ready") != Some(200) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "server at {url} not ready after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, url, log)
}

/// Status code of `GET path` on `url` (plain HTTP/1.1 over a blocking socket), if it answered.
pub fn http_status(url: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

pub fn python_with_openai() -> Option<String> {
    let candidates = std::env::var("BITNET_PYTHON")
        .into_iter()
        .chain(["python3".to_string()]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    None
}

/// Runs `bitnet loadtest` against `url` with `args`; returns its JSON report.
pub fn loadtest(url: &str, args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["loadtest", "--url", url, "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run bitnet loadtest");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Serving Benchmark Result"),
        "loadtest printed no table: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&json).expect("JSON report")).expect("valid JSON")
}
