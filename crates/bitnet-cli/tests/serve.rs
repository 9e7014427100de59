//! `bitnet serve` as a process: the official `openai` Python SDK against it, flags from a
//! TOML file and the environment, and SIGTERM → graceful exit.

mod common;

use common::{fixture, loadtest, python_with_openai, spawn};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

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
