//! Engine behaviour behind the API: batched output equals single-sequence output, overload is
//! a 503 with Retry-After, queue deadlines, a disconnecting client cancels its sequence,
//! graceful shutdown, and the WebSocket stream.

mod common;

use bitnet_engine::{GenerateParams, Generator, KvType, Model, Tokenizer};
use common::{chat, read_sse, TestServer};
use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A random model of the "small" shape (hidden 512, 6 layers): slow enough per token that a
/// client can leave mid-generation.
fn small_model(dir: &tempfile::TempDir) -> PathBuf {
    use bitnet_engine::convert::gguf_out::{write_gguf, GgufOptions};
    use bitnet_engine::convert::random::random_parts;
    use bitnet_formats::gguf::GgmlType;
    let path = dir.path().join("small.gguf");
    let parts = random_parts("small", bitnet_engine::Activation::Silu, 1).unwrap();
    let opts = GgufOptions {
        ternary: GgmlType::TQ2_0,
        embedding: GgmlType::Q8_0,
    };
    write_gguf(&parts, opts, &path, |_, _, _| {}).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_equal_generate() {
    batched_requests_equal_generate("fidelity-model", KvType::F32).await;
}

/// The same with `--kv-type f16`: the server's caches are f16, as the generator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_equal_generate_f16_cache() {
    batched_requests_equal_generate("fidelity-model-f16", KvType::F16).await;
}

#[test]
fn unknown_kv_type_is_a_config_error() {
    let mut opts = common::options("kv-type-model");
    opts.kv_type = Some("bf16".into());
    let e = opts.resolve().unwrap_err().to_string();
    assert!(e.contains("kv_type") && e.contains("bf16"), "{e}");
}

async fn batched_requests_equal_generate(name: &str, kv: KvType) {
    let mut opts = common::options(name);
    opts.max_batch = Some(8);
    opts.kv_type = Some(kv.name().into());
    let s = TestServer::start(opts).await;
    let model = Model::load(&common::fixture()).unwrap();
    let tok = Tokenizer::load(&common::fixture(), &model.config).unwrap();
    let prompts: Vec<Vec<u32>> = (0..12u32)
        .map(|i| {
            (0..(3 + i * 5))
                .map(|j| (j * 31 + i * 7 + 1) % 384)
                .collect()
        })
        .collect();
    let want: Vec<String> = prompts
        .iter()
        .map(|p| {
            let mut g = Generator::new(&model, &tok, None).with_kv_type(kv);
            let params = GenerateParams {
                max_tokens: 24,
                ignore_eos: true,
                ..Default::default()
            };
            g.generate(p, &params, |_| {}).unwrap().text
        })
        .collect();
    // All at once: they share batched steps (12 requests, 8 slots: some wait and join later).
    let mut tasks = Vec::new();
    for p in &prompts {
        let body = json!({"prompt": p, "max_tokens": 24, "temperature": 0, "ignore_eos": true});
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            common::request(
                addr,
                "POST",
                "/v1/completions",
                body.to_string().into_bytes(),
            )
            .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (st, _, b) = t.await.unwrap();
        assert_eq!(st, StatusCode::OK);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["choices"][0]["text"], want[i], "{kv}: prompt {i}");
        assert_eq!(v["usage"]["completion_tokens"], 24);
    }
}

/// Sampled requests (temperature, top-p, a seed each; some with log-probabilities) give the
/// same text (and log-probabilities, to rounding) in one batch, where their tokens are picked in
/// parallel, as each alone: every sequence draws from its own logits row with its own sampler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_in_a_batch_equal_each_alone() {
    let mut opts = common::options("sampling-model");
    opts.max_batch = Some(8);
    let s = TestServer::start(opts).await;
    let bodies: Vec<String> = (0..8u32)
        .map(|i| {
            let mut b = json!({"prompt": format!("The license {i}"), "max_tokens": 20,
                "temperature": 0.5 + 0.1 * i as f32, "top_p": 0.9, "seed": i, "ignore_eos": true});
            if i % 3 == 0 {
                b["logprobs"] = json!(2);
            }
            b.to_string()
        })
        .collect();
    let send = |body: String| {
        let addr = s.addr;
        tokio::spawn(async move {
            let (st, _, b) =
                common::request(addr, "POST", "/v1/completions", body.into_bytes()).await;
            assert_eq!(st, StatusCode::OK);
            let v: Value = serde_json::from_slice(&b).unwrap();
            (
                v["choices"][0]["text"].clone(),
                v["choices"][0]["logprobs"].clone(),
            )
        })
    };
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(send(b.clone()).await.unwrap());
    }
    let tasks: Vec<_> = bodies.iter().map(|b| send(b.clone())).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (text, lp) = t.await.unwrap();
        assert_eq!(text, alone[i].0, "request {i}");
        assert_eq!(lp.is_null(), i % 3 != 0, "request {i}");
        if lp.is_null() {
            continue;
        }
        // The same tokens and the same log-probabilities, bit for bit: the Q8_0 head gives a
        // token the same operations in a batch as alone.
        assert_eq!(lp["tokens"], alone[i].1["tokens"], "request {i}");
        let (a, b) = (
            lp["token_logprobs"].as_array().unwrap(),
            alone[i].1["token_logprobs"].as_array().unwrap(),
        );
        assert!(a.len() == 20 && a == b, "request {i}: {a:?} vs {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_503_with_retry_after_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::options("overload-model");
    opts.model = Some(small_model(&dir));
    opts.max_batch = Some(1);
    opts.max_queue = Some(4);
    let s = TestServer::start(opts).await;
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 16, "ignore_eos": true}).to_string();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (addr, body) = (s.addr, body.clone());
        tasks.push(tokio::spawn(async move {
            common::request(addr, "POST", "/v1/completions", body.into_bytes()).await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (st, h, b) = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("no request hangs")
            .unwrap();
        match st {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
                let v: Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(v["error"]["type"], "server_error");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok + busy, 32);
    // At least the queue's 4 are served (5 when the engine took the first one off the queue
    // before the others arrived — a race this test must not depend on), and the rest are 503s.
    assert!(ok >= 4 && busy >= 1, "ok {ok}, 503 {busy}");
    let rejected = s
        .metric(r#"bitnet_requests_rejected_total{model="overload-model",reason="queue_full"}"#)
        .await;
    assert_eq!(rejected as usize, busy);
    let done = s
        .metric(r#"bitnet_request_success_total{model="overload-model",finished_reason="length"}"#)
        .await;
    assert_eq!(done as usize, ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_deadline_disconnect_shutdown_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::options("lifecycle-model");
    opts.model = Some(small_model(&dir));
    opts.max_batch = Some(1);
    opts.queue_timeout = Some(0.3);
    opts.shutdown_grace = Some(0.5);
    let mut s = TestServer::start(opts).await;
    let long = json!({"prompt": [1, 2, 3], "max_tokens": 2000, "ignore_eos": true, "stream": true})
        .to_string();

    // A client that disconnects mid-stream cancels its sequence.
    let (st, _, mut body, conn) = s.open("/v1/completions", long.clone()).await;
    assert_eq!(st, StatusCode::OK);
    let mut frames = 0;
    while frames < 3 {
        if body.frame().await.unwrap().unwrap().is_data() {
            frames += 1;
        }
    }
    drop(body);
    conn.abort();
    let abort = r#"bitnet_request_success_total{model="lifecycle-model",finished_reason="abort"}"#;
    let t = Instant::now();
    while s.metric(abort).await < 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "disconnect did not cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let generated = s
        .metric(r#"bitnet_generation_tokens_total{model="lifecycle-model"}"#)
        .await;
    assert!(generated < 2000.0, "generation ran on: {generated}");
    assert_eq!(
        s.metric(r#"bitnet_num_requests_running{model="lifecycle-model"}"#)
            .await,
        0.0
    );

    // WebSocket: the chunks of the SSE stream, then a usage chunk, then close.
    let url = format!("ws://{}/v1/stream", s.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let req = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "ignore_eos": true});
    ws.send(Message::Text(req.to_string().into()))
        .await
        .unwrap();
    let mut msgs = Vec::new();
    while let Some(m) = ws.next().await {
        match m.unwrap() {
            Message::Text(t) => msgs.push(serde_json::from_str::<Value>(&t).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(msgs[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(msgs.iter().all(|m| m["object"] == "chat.completion.chunk"));
    let last = msgs.last().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 5);
    assert_eq!(
        msgs[msgs.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );
    // A bad first message is an envelope, then close.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", s.addr))
        .await
        .unwrap();
    ws.send(Message::Text(r#"{"messages": []}"#.into()))
        .await
        .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["error"]["param"], "messages");
        }
        m => panic!("expected the error envelope, got {m:?}"),
    }

    // Queue deadline: one long request holds the only slot; the next waits 0.3 s, then 503.
    let (_, _, body1, conn1) = s.open("/v1/completions", long.clone()).await;
    let t = Instant::now();
    let short = json!({"prompt": [5], "max_tokens": 2}).to_string();
    let (st, h, _) = s.post("/v1/completions", short).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        s.metric(
            r#"bitnet_requests_rejected_total{model="lifecycle-model",reason="queue_timeout"}"#
        )
        .await,
        1.0
    );

    // Graceful shutdown: the running stream is cut at the grace period with "abort", its
    // stream still ends properly, and the server returns.
    let reader = tokio::spawn(read_sse(body1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    s.shutdown().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    let (data, _) = reader.await.unwrap();
    conn1.abort();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let end: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(end["choices"][0]["finish_reason"], "abort");
    let _ = chat; // shared helper
}
