//! End to end against a small real HTTP/1.1 server started inside each test.

mod mock;

use bitnet_loadtest::{run, run_until, Endpoint, LoadtestConfig, LoadtestError};
use mock::{start, Mock};
use std::time::{Duration, Instant};

fn config(url: &str, endpoint: Endpoint) -> LoadtestConfig {
    LoadtestConfig {
        timeout: Duration::from_secs(10),
        ..LoadtestConfig::new(url, endpoint)
    }
}

#[tokio::test]
async fn non_streaming_counts_tokens_and_503s() {
    let server = start(Mock {
        fail_every: 4,
        close_every: 3,
        prompt_tokens: 5,
        ..Mock::default()
    })
    .await;
    let cfg = LoadtestConfig {
        requests: Some(40),
        concurrency: 4,
        max_tokens: 7,
        ..config(&server.url, Endpoint::Completions)
    };
    let r = run(&cfg).await.unwrap();
    assert_eq!(r.model, "mock-model", "model from /v1/models");
    assert_eq!((r.issued, r.completed, r.failed), (40, 30, 10));
    assert_eq!(r.failures_by_status.get(&503), Some(&10));
    assert_eq!(r.failures_by_status.len(), 1);
    assert_eq!(
        (r.connection_errors, r.timeouts, r.stream_errors),
        (0, 0, 0)
    );
    assert_eq!(r.total_input_tokens, 30 * 5);
    assert_eq!(r.total_output_tokens, 30 * 7);
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::SeqCst),
        40
    );
    // Closed every third success: reconnected, never failed for it.
    assert!(server.connections.load(std::sync::atomic::Ordering::SeqCst) > 5);
    assert!(
        r.failure_examples
            .iter()
            .any(|m| m.contains("503") && m.contains("server overloaded: queue full")),
        "{:?}",
        r.failure_examples
    );
    // Not streamed: TTFT is the end-to-end latency, there are no ITLs, TPOT is defined.
    assert!(
        r.mean_e2el_ms > 0.0 && r.max_e2el_ms >= r.p99_e2el_ms && r.p99_e2el_ms >= r.median_e2el_ms
    );
    assert_eq!(r.mean_ttft_ms, r.mean_e2el_ms);
    assert_eq!(r.mean_itl_ms, 0.0);
    assert_eq!(
        r.mean_tpot_ms, 0.0,
        "TTFT = E2E, so (e2e - ttft) / (n - 1) = 0"
    );
    assert!((r.request_throughput - 30.0 / r.duration_s).abs() < 1e-9);
    assert!((r.output_throughput - 210.0 / r.duration_s).abs() < 1e-9);
    assert!((r.total_token_throughput - 360.0 / r.duration_s).abs() < 1e-9);

    let table = r.to_table();
    for want in [
        "Serving Benchmark Result",
        "Successful requests:",
        "HTTP 503:",
        "Mean TTFT (ms):",
        "P99 E2EL (ms):",
        "queue full",
    ] {
        assert!(table.contains(want), "{want} missing in\n{table}");
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["failures_by_status"]["503"], 10);
    assert_eq!(json["endpoint"], "completions");
    for key in [
        "mean_ttft_ms",
        "median_ttft_ms",
        "p90_ttft_ms",
        "p99_ttft_ms",
        "std_ttft_ms",
        "max_ttft_ms",
        "mean_tpot_ms",
        "median_itl_ms",
        "p99_e2el_ms",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "total_input_tokens",
        "total_output_tokens",
        "duration_s",
        "concurrency",
        "request_rate",
        "max_tokens",
        "stream",
        "model",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
}

#[tokio::test]
async fn streaming_chat_measures_ttft_itl_tpot() {
    let server = start(Mock {
        fail_every: 4,
        close_every: 2,
        prompt_tokens: 3,
        token_delay: Duration::from_millis(2),
        ..Mock::default()
    })
    .await;
    let cfg = LoadtestConfig {
        requests: Some(20),
        concurrency: 3,
        max_tokens: 6,
        stream: true,
        url: format!("{}/v1/", server.url),
        ..config(&server.url, Endpoint::Chat)
    };
    let r = run(&cfg).await.unwrap();
    assert_eq!((r.issued, r.completed, r.failed), (20, 15, 5));
    assert_eq!(r.failures_by_status.get(&503), Some(&5));
    assert_eq!(
        (r.connection_errors, r.timeouts, r.stream_errors),
        (0, 0, 0),
        "{:?}",
        r.failure_examples
    );
    assert_eq!(r.total_output_tokens, 15 * 6, "from the usage chunk");
    assert_eq!(r.total_input_tokens, 15 * 3);
    assert!(
        r.mean_ttft_ms > 0.0 && r.mean_ttft_ms < r.mean_e2el_ms,
        "{} {}",
        r.mean_ttft_ms,
        r.mean_e2el_ms
    );
    // Tokens are 2 ms apart: ITL and TPOT are about that (sleep granularity: at least 2 ms).
    assert!(
        r.median_itl_ms >= 1.5 && r.median_itl_ms < 50.0,
        "{}",
        r.median_itl_ms
    );
    assert!(
        r.mean_tpot_ms >= 1.5 && r.mean_tpot_ms < 50.0,
        "{}",
        r.mean_tpot_ms
    );
    assert!(
        r.max_itl_ms >= r.p99_itl_ms
            && r.p99_itl_ms >= r.p90_itl_ms
            && r.p90_itl_ms >= r.median_itl_ms
    );
    assert!(r.stream);
}

#[tokio::test]
async fn streaming_without_usage_counts_content_chunks() {
    let server = start(Mock::default()).await;
    let cfg = LoadtestConfig {
        requests: Some(6),
        concurrency: 2,
        max_tokens: 5,
        stream: true,
        model: Some("no-usage".into()),
        ..config(&server.url, Endpoint::Completions)
    };
    let r = run(&cfg).await.unwrap();
    assert_eq!((r.completed, r.failed), (6, 0), "{:?}", r.failure_examples);
    assert_eq!(r.total_output_tokens, 30);
    assert_eq!(r.total_input_tokens, 0);
}

#[tokio::test]
async fn error_events_fail_the_request() {
    let server = start(Mock::default()).await;
    let cfg = LoadtestConfig {
        requests: Some(5),
        concurrency: 2,
        stream: true,
        model: Some("stream-error".into()),
        ..config(&server.url, Endpoint::Chat)
    };
    let r = run(&cfg).await.unwrap();
    assert_eq!((r.completed, r.failed, r.stream_errors), (0, 5, 5));
    assert_eq!(r.failure_examples, vec!["engine died".to_string()]);
    assert_eq!(r.total_output_tokens, 0);
}

#[tokio::test]
async fn timeouts_are_counted_and_the_run_ends() {
    let server = start(Mock::default()).await;
    let cfg = LoadtestConfig {
        requests: Some(3),
        concurrency: 2,
        model: Some("hang".into()),
        timeout: Duration::from_millis(200),
        ..config(&server.url, Endpoint::Completions)
    };
    let t = Instant::now();
    let r = run(&cfg).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!((r.completed, r.failed, r.timeouts), (0, 3, 3));
    assert!(r.to_table().contains("Timeouts:"));
}

#[tokio::test]
async fn duration_and_poisson_rate() {
    let server = start(Mock::default()).await;
    let cfg = LoadtestConfig {
        duration: Some(Duration::from_millis(500)),
        rate: Some(40.0),
        concurrency: 4,
        max_tokens: 2,
        seed: 42,
        ..config(&server.url, Endpoint::Completions)
    };
    let t = Instant::now();
    let r = run(&cfg).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // 40 req/s for 0.5 s: about 20 arrivals.
    assert!((8..=40).contains(&r.issued), "{}", r.issued);
    assert_eq!(r.completed + r.failed, r.issued);
    assert_eq!(r.failed, 0);
    assert_eq!(r.request_rate, Some(40.0));
    // Both limits: the request count comes first.
    let cfg = LoadtestConfig {
        requests: Some(3),
        duration: Some(Duration::from_secs(30)),
        rate: None,
        ..cfg
    };
    let t = Instant::now();
    let r = run(&cfg).await.unwrap();
    assert_eq!(r.issued, 3);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn shutdown_stops_issuing() {
    let server = start(Mock::default()).await;
    let cfg = LoadtestConfig {
        duration: Some(Duration::from_secs(60)),
        rate: Some(20.0),
        concurrency: 2,
        max_tokens: 2,
        ..config(&server.url, Endpoint::Completions)
    };
    let t = Instant::now();
    let r = run_until(&cfg, tokio::time::sleep(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        r.issued >= 1 && r.completed == r.issued,
        "{} {}",
        r.issued,
        r.completed
    );
}

#[tokio::test]
async fn api_key_is_sent() {
    let server = start(Mock {
        api_key: Some("secret".into()),
        ..Mock::default()
    })
    .await;
    let mut cfg = LoadtestConfig {
        requests: Some(4),
        concurrency: 2,
        api_key: Some("secret".into()),
        ..config(&server.url, Endpoint::Chat)
    };
    let r = run(&cfg).await.unwrap();
    assert_eq!((r.completed, r.failed), (4, 0));
    cfg.api_key = None;
    match run(&cfg).await {
        Err(e @ LoadtestError::Models { .. }) => {
            assert!(e.to_string().contains("bad api key"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    cfg.model = Some("m".into());
    let r = run(&cfg).await.unwrap();
    assert_eq!(r.failures_by_status.get(&401), Some(&4));
}

#[tokio::test]
async fn startup_errors() {
    let server = start(Mock {
        no_models: true,
        ..Mock::default()
    })
    .await;
    let cfg = LoadtestConfig {
        requests: Some(1),
        ..config(&server.url, Endpoint::Completions)
    };
    match run(&cfg).await {
        Err(e @ LoadtestError::Models { .. }) => assert!(e.to_string().contains("no model"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = LoadtestConfig {
        requests: Some(1),
        ..config(&format!("http://127.0.0.1:{port}"), Endpoint::Completions)
    };
    assert!(matches!(
        run(&cfg).await,
        Err(LoadtestError::Connect { .. })
    ));
    // Refused before connecting anywhere.
    for url in ["http://10.0.0.1:8080", "https://127.0.0.1:8080"] {
        let cfg = LoadtestConfig {
            requests: Some(1),
            ..config(url, Endpoint::Completions)
        };
        let e = run(&cfg).await.unwrap_err();
        assert!(
            matches!(
                e,
                LoadtestError::NotLoopback { .. } | LoadtestError::InvalidUrl { .. }
            ),
            "{e}"
        );
    }
    // Settings.
    for cfg in [
        LoadtestConfig {
            concurrency: 0,
            requests: Some(1),
            ..config(&server.url, Endpoint::Chat)
        },
        LoadtestConfig {
            requests: None,
            duration: None,
            ..config(&server.url, Endpoint::Chat)
        },
        LoadtestConfig {
            rate: Some(0.0),
            requests: Some(1),
            ..config(&server.url, Endpoint::Chat)
        },
        LoadtestConfig {
            rate: Some(f64::NAN),
            requests: Some(1),
            ..config(&server.url, Endpoint::Chat)
        },
        LoadtestConfig {
            max_tokens: 0,
            requests: Some(1),
            ..config(&server.url, Endpoint::Chat)
        },
        LoadtestConfig {
            temperature: 2.5,
            requests: Some(1),
            ..config(&server.url, Endpoint::Chat)
        },
        LoadtestConfig {
            top_p: Some(0.0),
            requests: Some(1),
            ..config(&server.url, Endpoint::Chat)
        },
    ] {
        assert!(matches!(
            run(&cfg).await,
            Err(LoadtestError::InvalidConfig(_))
        ));
    }
}
