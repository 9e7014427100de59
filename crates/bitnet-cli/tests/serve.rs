//! `bitnet serve` as a process: the official `openai` Python SDK against it, flags from a
//! TOML file and the environment, and SIGTERM → graceful exit.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gqa4-bitlinear-untied")
}

/// Starts the server on a free port; returns the child and its base URL once it listens.
fn spawn(args: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
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
    std::thread::spawn(move || while rx.recv().is_ok() {});
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
    (child, url)
}

/// Status code of `GET path` on `url` (plain HTTP/1.1 over a blocking socket), if it answered.
fn http_status(url: &str, path: &str) -> Option<u16> {
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

fn python_with_openai() -> Option<String> {
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

#[test]
fn openai_python_sdk_works_unchanged() {
    let Some(py) = python_with_openai() else {
        assert!(
            std::env::var("BITNET_REQUIRE_OPENAI_SDK").is_err(),
            "BITNET_REQUIRE_OPENAI_SDK is set but no Python with the `openai` package was found \
             (set BITNET_PYTHON)"
        );
        eprintln!("SKIPPED: no Python with the `openai` package (CI installs it; see .ci/run)");
        return;
    };
    let model = fixture();
    let (mut child, url) = spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--port",
            "0",
            "--model-name",
            "sdk-model",
        ],
        &[],
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/openai_sdk_check.py");
    let out = Command::new(py)
        .arg(script)
        .arg(&url)
        .arg("sdk-model")
        .output()
        .expect("run python");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "openai SDK check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn config_file_env_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\nmodel_name = \"from-toml\"\nport = 1\nmax_batch = 3\n",
            fixture().to_str().unwrap()
        ),
    )
    .unwrap();
    // The environment beats the file (port), the file beats the defaults (model name).
    let (mut child, url) = spawn(
        &["--config", cfg.to_str().unwrap()],
        &[("BITNET_PORT", "0")],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = rt.block_on(async {
        let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    });
    assert!(body.contains("\"from-toml\""), "{body}");
    // SIGTERM: graceful exit with status 0.
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A bad config file is a clear error naming it.
    std::fs::write(&cfg, "modle = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("serve.toml") && err.contains("modle"),
        "{err}"
    );
}

/// Runs `bitnet loadtest` against `url` with `args`; returns its JSON report.
fn loadtest(url: &str, args: &[&str]) -> serde_json::Value {
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

#[test]
fn loadtest_measures_a_real_server_and_sees_overload() {
    let model = fixture();
    let model = model.to_str().expect("utf-8 path");
    // Streaming load: every request completes with exactly --max-tokens tokens (EOS ignored),
    // and the latency metrics are real measurements (positive, ordered).
    let (mut child, url) = spawn(&["--model", model, "--port", "0"], &[]);
    let r = loadtest(
        &url,
        &[
            "--concurrency",
            "4",
            "--requests",
            "12",
            "--max-tokens",
            "5",
            "--stream",
        ],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r["completed"], 12, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["total_output_tokens"], 60, "{r}");
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"));
    assert!(
        f("output_throughput") > 0.0 && f("mean_ttft_ms") > 0.0,
        "{r}"
    );
    assert!(f("median_ttft_ms") <= f("p99_ttft_ms") && f("p99_ttft_ms") <= f("max_ttft_ms"));
    assert!(
        f("mean_itl_ms") > 0.0 && f("mean_e2el_ms") >= f("mean_ttft_ms"),
        "{r}"
    );

    // Overload: one running, one waiting; the rest are 503s that loadtest counts by status.
    let (mut child, url) = spawn(
        &[
            "--model",
            model,
            "--port",
            "0",
            "--max-batch",
            "1",
            "--max-queue",
            "1",
        ],
        &[],
    );
    let r = loadtest(
        &url,
        &[
            "--concurrency",
            "8",
            "--requests",
            "16",
            "--max-tokens",
            "40",
        ],
    );
    let _ = child.kill();
    let _ = child.wait();
    let rejected = r["failures_by_status"]["503"].as_u64().unwrap_or(0);
    assert!(rejected > 0, "no 503 under overload: {r}");
    assert_eq!(r["completed"].as_u64().unwrap_or(0) + rejected, 16, "{r}");
    assert_eq!(r["timeouts"], 0, "{r}");
}
