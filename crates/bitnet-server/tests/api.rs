//! The wire format: responses, SSE, errors in the OpenAI envelope (never a 500), the OpenAPI
//! document, readiness.

mod common;

use common::{chat, read_sse, TestServer};
use hyper::StatusCode;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};

fn assert_envelope(
    status: StatusCode,
    body: &[u8],
    want: StatusCode,
    param: Option<&str>,
) -> Value {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    let v: Value = serde_json::from_slice(body).expect("error body is JSON");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_streams_and_errors() {
    let s = TestServer::start(common::options("api-model")).await;

    // Non-streaming chat.
    let (st, h, v) = s
        .post_json(
            "/v1/chat/completions",
            chat(
                "Hello",
                json!({"model": "api-model", "max_tokens": 7, "seed": 3}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(h.contains_key("x-request-id"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "api-model");
    assert!(v["system_fingerprint"].is_string());
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 7);
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + 7)
    );

    // The same seed gives the same text; n choices are distinct sequences.
    let (_, _, v2) = s
        .post_json(
            "/v1/chat/completions",
            chat("Hello", json!({"max_tokens": 7, "seed": 3})),
        )
        .await;
    assert_eq!(v2["choices"][0]["message"], c["message"]);
    let (_, _, vn) = s
        .post_json(
            "/v1/chat/completions",
            chat(
                "Hello",
                json!({"max_tokens": 12, "n": 3, "temperature": 1.5, "seed": 9}),
            ),
        )
        .await;
    let texts: Vec<&str> = (0..3)
        .map(|i| vn["choices"][i]["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        (0..3)
            .map(|i| vn["choices"][i]["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "{texts:?}");
    assert_eq!(vn["usage"]["completion_tokens"], 36);

    // Streaming chat with usage.
    let body = chat(
        "Hi",
        json!({"max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true}),
    );
    let (st, h, b, _c) = s.open("/v1/chat/completions", body.to_string()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let (data, _) = read_sse(b).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = &chunks[0]["id"];
    assert!(chunks
        .iter()
        .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(chunks[n - 1]["usage"]["completion_tokens"], 6);
    assert!(chunks[..n - 1].iter().all(|c| c["usage"].is_null()));

    // Streaming text completion without usage: no usage chunk.
    // (`ignore_eos`: the test is about the wire format, not whether the sample hits EOS.)
    let body =
        json!({"prompt": "The license", "max_tokens": 4, "stream": true, "ignore_eos": true});
    let (_, _, b, _c) = s.open("/v1/completions", body.to_string()).await;
    let (data, _) = read_sse(b).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["object"], "text_completion");
    assert_eq!(last["choices"][0]["finish_reason"], "length");

    // Completions: echo, logprobs, token-id prompts, several prompts.
    let (st, _, v) = s
        .post_json("/v1/completions", json!({"prompt": "The license", "max_tokens": 5, "echo": true, "logprobs": 2, "temperature": 0}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let c = &v["choices"][0];
    assert!(c["text"].as_str().unwrap().starts_with("The license"));
    assert_eq!(c["logprobs"]["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(
        c["logprobs"]["top_logprobs"][0].as_object().unwrap().len(),
        2
    );
    // Greedy: the chosen token is the most likely one.
    let lp = c["logprobs"]["token_logprobs"][0].as_f64().unwrap();
    let best = c["logprobs"]["top_logprobs"][0]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert!((lp - best).abs() < 1e-6 && lp <= 0.0);
    let (st, _, v) = s
        .post_json(
            "/v1/completions",
            json!({"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 2, "n": 2}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 4);
    assert_eq!(v["usage"]["prompt_tokens"], 3 * 2 + 2 * 2);

    // Chat logprobs.
    let (_, _, v) = s
        .post_json(
            "/v1/chat/completions",
            chat(
                "Hi",
                json!({"max_tokens": 3, "logprobs": true, "top_logprobs": 3}),
            ),
        )
        .await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(content[0]["bytes"].is_array());

    // Stop strings: the text ends before the stop string and finish_reason is stop.
    let (_, _, v) = s
        .post_json(
            "/v1/completions",
            json!({"prompt": "The license", "max_tokens": 30, "temperature": 0}),
        )
        .await;
    let full = v["choices"][0]["text"].as_str().unwrap().to_string();
    let stop: String = full.chars().skip(3).take(2).collect();
    let (_, _, v) = s
        .post_json(
            "/v1/completions",
            json!({"prompt": "The license", "max_tokens": 30, "temperature": 0, "stop": [stop]}),
        )
        .await;
    let cut = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(
        full.starts_with(cut) && !cut.contains(&stop),
        "{full:?} {cut:?} {stop:?}"
    );

    // Tokenize / detokenize round trip; models.
    let (st, _, v) = s
        .post_json("/tokenize", json!({"prompt": "The license"}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let toks = v["tokens"].clone();
    assert_eq!(
        v["count"].as_u64().unwrap() as usize,
        toks.as_array().unwrap().len()
    );
    let (_, _, v) = s.post_json("/detokenize", json!({"tokens": toks})).await;
    assert!(v["prompt"].as_str().unwrap().ends_with("The license"));
    let (st, _, v) = s
        .post_json(
            "/tokenize",
            json!({"messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, _, b) = s.get("/v1/models").await;
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["data"][0]["id"], "api-model");
    assert_eq!(s.get("/v1/models/api-model").await.0, StatusCode::OK);
    assert_eq!(s.get("/health").await.0, StatusCode::OK);

    // Errors, one per class.
    let m = |x: Value| chat("hi", x).to_string();
    for (path, body, status, param) in [
        ("/v1/chat/completions", "{not json".to_string(), 400, None),
        ("/v1/chat/completions", String::new(), 400, None),
        ("/v1/chat/completions", "[1,2]".to_string(), 400, None),
        (
            "/v1/chat/completions",
            "{}".to_string(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":"x"}"#.to_string(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":5}]}"#.to_string(),
            400,
            Some("messages[0].content"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"robot","content":"x"}]}"#.to_string(),
            400,
            Some("messages[0].role"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[]}"#.to_string(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"temperature": "hot"})),
            400,
            Some("temperature"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"temperature": -1})),
            400,
            Some("temperature"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"top_p": 0})),
            400,
            Some("top_p"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"top_k": -5})),
            400,
            Some("top_k"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"min_p": 2})),
            400,
            Some("min_p"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"repetition_penalty": 0})),
            400,
            Some("repetition_penalty"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"presence_penalty": 3})),
            400,
            Some("presence_penalty"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"frequency_penalty": -3})),
            400,
            Some("frequency_penalty"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"logit_bias": {"x": 1}})),
            400,
            Some("logit_bias"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"logit_bias": {"1": 200}})),
            400,
            Some("logit_bias"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"logit_bias": {"999999": 1}})),
            400,
            Some("logit_bias"),
        ),
        ("/v1/chat/completions", m(json!({"n": 0})), 400, Some("n")),
        ("/v1/chat/completions", m(json!({"n": 99})), 400, Some("n")),
        (
            "/v1/chat/completions",
            m(json!({"max_tokens": 0})),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"max_completion_tokens": -2})),
            400,
            Some("max_completion_tokens"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"stop": 5})),
            400,
            Some("stop"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"seed": "x"})),
            400,
            Some("seed"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"top_logprobs": 50, "logprobs": true})),
            400,
            Some("top_logprobs"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"stream": "yes"})),
            400,
            Some("stream"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"max_tokens": 100000})),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            m(json!({"model": "gpt-4"})),
            404,
            Some("model"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": 5}"#.to_string(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": [99999]}"#.to_string(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "logprobs": 99}"#.to_string(),
            400,
            Some("logprobs"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": ""}"#.to_string(),
            200,
            None,
        ),
        (
            "/detokenize",
            r#"{"tokens": [99999]}"#.to_string(),
            400,
            Some("tokens"),
        ),
        (
            "/detokenize",
            r#"{"tokens": "x"}"#.to_string(),
            400,
            Some("tokens"),
        ),
        ("/tokenize", r#"{}"#.to_string(), 400, Some("prompt")),
        ("/v1/nope", "{}".to_string(), 404, None),
    ] {
        let (st, _, b) = s.post(path, body.clone()).await;
        if status == 200 {
            // An empty text prompt still has BOS: a valid request.
            assert!(
                st == StatusCode::OK || st == StatusCode::BAD_REQUEST,
                "{path} {body}: {st}"
            );
            continue;
        }
        let v = assert_envelope(st, &b, StatusCode::from_u16(status).unwrap(), param);
        if status == 400 && param == Some("messages") && body.contains("100000") {
            assert_eq!(v["error"]["code"], "context_length_exceeded");
        }
        if status == 404 && path != "/v1/nope" {
            assert_eq!(v["error"]["code"], "model_not_found");
        }
    }
    // Wrong method, unknown route, huge body.
    let (st, _, b) = common::request(s.addr, "DELETE", "/v1/models", vec![]).await;
    assert_envelope(st, &b, StatusCode::METHOD_NOT_ALLOWED, None);
    let (st, _, b) = s.get("/v1/unknown").await;
    assert_envelope(st, &b, StatusCode::NOT_FOUND, None);
    let huge = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(5 << 20));
    let (st, _, b) = s.post("/v1/completions", huge).await;
    assert_envelope(st, &b, StatusCode::PAYLOAD_TOO_LARGE, None);
}

/// Random mutations of valid bodies: always a proper status with the envelope, never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_bodies_never_500() {
    let s = TestServer::start(common::options("fuzz-model")).await;
    let seeds = [
        chat("Hello there", json!({"max_tokens": 2, "temperature": 0.7, "top_p": 0.9, "stop": ["x"], "n": 2, "logprobs": true, "top_logprobs": 2})).to_string(),
        json!({"prompt": ["a", "b"], "max_tokens": 2, "echo": true, "logprobs": 1, "logit_bias": {"5": 3}, "seed": 4}).to_string(),
        json!({"prompt": [1, 2, 3], "max_tokens": 1, "stream": true, "stream_options": {"include_usage": true}}).to_string(),
    ];
    let paths = [
        "/v1/chat/completions",
        "/v1/completions",
        "/tokenize",
        "/detokenize",
    ];
    let tokens = [
        "null",
        "true",
        "-1",
        "1e309",
        "\"\"",
        "[]",
        "{}",
        "0",
        "9999999999999",
        "\"\\ud800\"",
        "[[]]",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..400 {
        let mut b = seeds[i % seeds.len()].clone().into_bytes();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random::<u8>();
                }
            }
            1 => b.truncate(rng.random_range(0..b.len())),
            2 => {
                // Replace a value after a colon with a hostile token.
                let colons: Vec<usize> = b
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c == b':')
                    .map(|(i, _)| i)
                    .collect();
                let at = colons[rng.random_range(0..colons.len())] + 1;
                let end = b[at..]
                    .iter()
                    .position(|&c| c == b',' || c == b'}')
                    .map(|p| at + p)
                    .unwrap_or(b.len());
                let t = tokens[rng.random_range(0..tokens.len())];
                b.splice(at..end, t.bytes());
            }
            _ => {
                let at = rng.random_range(0..b.len());
                b.splice(at..at, std::iter::repeat_n(b'[', rng.random_range(1..200)));
            }
        }
        let path = paths[rng.random_range(0..paths.len())];
        let (st, _, body) = s.post(path, b.clone()).await;
        *statuses.entry(st.as_u16()).or_insert(0) += 1;
        assert!(
            !st.is_server_error(),
            "{path} {}: {st} {}",
            String::from_utf8_lossy(&b),
            String::from_utf8_lossy(&body)
        );
        if st.is_client_error() {
            assert_envelope(st, &body, st, None);
        }
    }
    assert!(statuses.len() >= 2, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_covers_every_route() {
    let s = TestServer::start(common::options("openapi-model")).await;
    let (st, _, b) = s.get("/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    let paths = v["paths"].as_object().unwrap();
    for (route, method) in [
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/v1/models", "get"),
        ("/v1/models/{model}", "get"),
        ("/v1/stream", "get"),
        ("/tokenize", "post"),
        ("/detokenize", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/admin/tenants", "get"),
        ("/admin/tenants", "post"),
        ("/admin/keys", "get"),
        ("/admin/keys", "post"),
        ("/admin/keys/{id}", "get"),
        ("/admin/keys/{id}", "patch"),
        ("/admin/keys/{id}", "delete"),
        ("/admin/keys/{id}/rotate", "post"),
        ("/admin/usage", "get"),
        ("/admin/audit", "get"),
        ("/admin/webhooks", "get"),
        ("/v1/files", "get"),
        ("/v1/files", "post"),
        ("/v1/files/{id}", "get"),
        ("/v1/files/{id}", "delete"),
        ("/v1/files/{id}/content", "get"),
        ("/v1/batches", "get"),
        ("/v1/batches", "post"),
        ("/v1/batches/{id}", "get"),
        ("/v1/batches/{id}/cancel", "post"),
    ] {
        assert!(
            paths.get(route).and_then(|p| p.get(method)).is_some(),
            "{route} {method} missing"
        );
    }
    assert!(v["components"]["schemas"]["ChatRequest"].is_object());
}

#[tokio::test]
async fn ready_is_503_until_loaded() {
    use tower::ServiceExt;
    let config = common::options("unloaded").resolve().unwrap();
    let state = std::sync::Arc::new(bitnet_server::app::AppState {
        config,
        loaded: Default::default(),
        prometheus: None,
        started: 0,
        tenancy: None,
    });
    let app = bitnet_server::app::router(state);
    for (m, path) in [
        ("GET", "/ready"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ] {
        let req = axum::http::Request::builder()
            .method(m)
            .uri(path)
            .body(axum::body::Body::from(chat("x", json!({})).to_string()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(resp.headers().contains_key("retry-after"));
    }
    let req = axum::http::Request::builder()
        .uri("/health")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(req).await.unwrap().status(), StatusCode::OK);
}
