//! The Files and Batch APIs: upload JSONL, a batch runs every line as its key (rate limits
//! waited out, usage metered), output and error files in the OpenAI shape, tenant isolation,
//! cancellation, and a batch interrupted by a shutdown resumed by the next server with every
//! line answered exactly once.

mod common;

use bitnet_tenancy::{NewKey, Role, Store, UsageFilter};
use common::{request_with, TestServer};
use hyper::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

struct Client {
    addr: std::net::SocketAddr,
    key: String,
}

impl Client {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        ctype: &str,
    ) -> (StatusCode, Value, String) {
        let auth = format!("Bearer {}", self.key);
        let headers = [("authorization", auth.as_str()), ("content-type", ctype)];
        let (s, _, b) = request_with(self.addr, method, path, &headers, body).await;
        let text = String::from_utf8_lossy(&b).to_string();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    async fn json(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let b = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (s, v, _) = self.call(method, path, b, "application/json").await;
        (s, v)
    }

    /// Uploads `text` as a multipart form (`purpose`, `file`).
    async fn upload(&self, purpose: &str, text: &str) -> (StatusCode, Value) {
        self.upload_with(purpose, text, &[]).await
    }

    /// [`Client::upload`] with more form fields.
    async fn upload_with(
        &self,
        purpose: &str,
        text: &str,
        fields: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let bd = "----bitnet-test-boundary";
        let extra: String = fields
            .iter()
            .map(|(k, v)| {
                format!("--{bd}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
            })
            .collect();
        let body = format!(
            "--{bd}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
             {extra}--{bd}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n{text}\r\n--{bd}--\r\n"
        );
        let (s, v, _) = self
            .call(
                "POST",
                "/v1/files",
                body.into_bytes(),
                &format!("multipart/form-data; boundary={bd}"),
            )
            .await;
        (s, v)
    }

    async fn wait_final(&self, id: &str, secs: u64) -> Value {
        let t = Instant::now();
        loop {
            let (s, b) = self
                .json("GET", &format!("/v1/batches/{id}"), Value::Null)
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            if ["completed", "failed", "cancelled", "expired"]
                .contains(&b["status"].as_str().unwrap())
            {
                return b;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "batch not done: {b}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn lines(n: usize, max_tokens: u32) -> String {
    (0..n)
        .map(|i| {
            json!({"custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"messages": [{"role": "user", "content": format!("hello {i}")}],
                            "max_tokens": max_tokens, "ignore_eos": true}})
            .to_string()
                + "\n"
        })
        .collect()
}

/// A SQLite store with tenants `acme` (a key allowed `parallel` requests at a time) and
/// `other`: `(database URL, acme's key id, acme's secret, other's secret)`.
async fn setup(dir: &std::path::Path, parallel: Option<i64>) -> (String, String, String, String) {
    let db = format!("sqlite://{}", dir.join("t.db").display());
    let store = Store::connect(&db, 1).await.unwrap();
    let mut secrets = Vec::new();
    for (t, parallel) in [("acme", parallel), ("other", None)] {
        store.create_tenant("cli:test", t, None).await.unwrap();
        let (k, s) = store
            .create_key(
                "cli:test",
                &NewKey {
                    tenant: t.into(),
                    role: Some(Role::User),
                    max_parallel: parallel,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        secrets.push((k.id, s));
    }
    store.close().await;
    let (other, acme) = (secrets.pop().unwrap(), secrets.pop().unwrap());
    (db, acme.0, acme.1, other.1)
}

fn opts(dir: &std::path::Path, db: &str) -> bitnet_server::ServeOptions {
    let mut o = common::options("batch-model");
    o.database_url = Some(db.into());
    o.journal_dir = Some(dir.join("journal"));
    o.max_batch = Some(4);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_run_as_their_key_and_are_metered() {
    let dir = tempfile::tempdir().unwrap();
    // Two at a time while the runner sends four: the 429s are waited out, not recorded.
    let (db, key_id, secret, other_secret) = setup(dir.path(), Some(2)).await;
    let mut server = TestServer::start(opts(dir.path(), &db)).await;
    let c = Client {
        addr: server.addr,
        key: secret,
    };
    let other = Client {
        addr: server.addr,
        key: other_secret,
    };

    // Bad uploads and bad batches are 400s naming the parameter or the line.
    let (s, v) = c.upload("fine-tune", "{}").await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("purpose")),
        "{v}"
    );
    let (_, bad) = c
        .upload("batch", &(lines(2, 4) + "{\"custom_id\": \"x\"}\n"))
        .await;
    let (s, v) = c
        .json("POST", "/v1/batches", json!({"input_file_id": bad["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 3"),
        "{v}"
    );
    let (s, v) = c
        .json("POST", "/v1/batches", json!({"input_file_id": bad["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}))
        .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("endpoint"))
    );

    // Five lines, one of them invalid (temperature 9): four succeed, one lands in the errors.
    let mut text = lines(4, 5);
    text.push_str(
        &(json!({"custom_id": "bad-temp", "method": "POST", "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "x"}], "temperature": 9}})
        .to_string()
            + "\n"),
    );
    let (s, f) = c.upload("batch", &text).await;
    assert_eq!(s, StatusCode::OK, "{f}");
    assert_eq!(
        (f["object"].as_str(), f["purpose"].as_str()),
        (Some("file"), Some("batch"))
    );
    assert_eq!(f["bytes"].as_u64(), Some(text.len() as u64));
    let (s, b) = c
        .json(
            "POST",
            "/v1/batches",
            json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
               "completion_window": "24h", "metadata": {"job": "nightly"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "validating");
    let id = b["id"].as_str().unwrap().to_string();
    // Another tenant sees neither the file nor the batch.
    assert_eq!(
        other
            .json("GET", &format!("/v1/batches/{id}"), Value::Null)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        other
            .json(
                "GET",
                &format!("/v1/files/{}", f["id"].as_str().unwrap()),
                Value::Null
            )
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let b = c.wait_final(&id, 120).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": 5, "completed": 4, "failed": 1})
    );
    assert_eq!(b["metadata"]["job"], "nightly");
    // Result files have ids derived from the batch (a resumed finalization cannot duplicate them).
    assert_eq!(b["output_file_id"], format!("file-{id}-output"));
    let (s, _, out) = c
        .call(
            "GET",
            &format!(
                "/v1/files/{}/content",
                b["output_file_id"].as_str().unwrap()
            ),
            Vec::new(),
            "application/json",
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let out: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: HashSet<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..4)
            .map(|i| format!("req-{i}"))
            .collect::<HashSet<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
    let mut client_tokens = 0;
    for l in &out {
        assert_eq!(l["response"]["status_code"], 200);
        assert!(!l["response"]["request_id"].as_str().unwrap().is_empty());
        assert_eq!(l["response"]["body"]["object"], "chat.completion");
        assert_eq!(l["response"]["body"]["usage"]["completion_tokens"], 5);
        client_tokens += l["response"]["body"]["usage"]["total_tokens"]
            .as_i64()
            .unwrap();
    }
    let (_, _, err) = c
        .call(
            "GET",
            &format!("/v1/files/{}/content", b["error_file_id"].as_str().unwrap()),
            Vec::new(),
            "application/json",
        )
        .await;
    let err: Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(
        (
            err["custom_id"].as_str(),
            err["response"]["status_code"].as_u64()
        ),
        (Some("bad-temp"), Some(400))
    );
    assert_eq!(err["response"]["body"]["error"]["param"], "temperature");
    // Listing.
    let (_, list) = c.json("GET", "/v1/batches?limit=1", Value::Null).await;
    assert_eq!(
        (list["data"][0]["id"].as_str(), list["has_more"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    let (_, files) = c
        .json("GET", "/v1/files?purpose=batch_output", Value::Null)
        .await;
    assert_eq!(files["data"].as_array().unwrap().len(), 1);

    // Cancel a long batch right away: it ends `cancelled` with fewer lines done.
    let (_, f) = c.upload("batch", &lines(40, 8)).await;
    let (_, b) = c
        .json("POST", "/v1/batches", json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .await;
    let long = b["id"].as_str().unwrap().to_string();
    let (s, v) = c
        .json("POST", &format!("/v1/batches/{long}/cancel"), Value::Null)
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("cancelling")),
        "{v}"
    );
    let b = c.wait_final(&long, 60).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    assert!(
        b["request_counts"]["completed"].as_i64().unwrap() < 40,
        "{b}"
    );
    server.shutdown().await.unwrap();

    // Metering: one usage row per line that got a 200, tokens equal to what the batch returned.
    let store = Store::connect(&db, 1).await.unwrap();
    let rows = store
        .usage(&UsageFilter {
            key_id: Some(key_id),
            ..Default::default()
        })
        .await
        .unwrap();
    let first: Vec<_> = rows
        .iter()
        .filter(|r| {
            out.iter()
                .any(|l| l["response"]["body"]["id"] == r.request_id.as_str())
        })
        .collect();
    assert_eq!(first.len(), 4, "{rows:?}");
    assert_eq!(
        first
            .iter()
            .map(|r| r.prompt_tokens + r.completion_tokens)
            .sum::<i64>(),
        client_tokens
    );
    assert_eq!(
        rows.len() as i64,
        4 + b["request_counts"]["completed"].as_i64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_batch_resumes_without_repeating_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let (db, key_id, secret, _) = setup(dir.path(), None).await;
    let mut a = TestServer::start(opts(dir.path(), &db)).await;
    let c = Client {
        addr: a.addr,
        key: secret.clone(),
    };
    // Enough lines that the batch cannot finish between the poll that sees 3 done and the
    // shutdown (with the engine inside its pool, 24 short lines once did).
    const N: usize = 96;
    let (_, f) = c.upload("batch", &lines(N, 24)).await;
    let (_, b) = c
        .json("POST", "/v1/batches", json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .await;
    let id = b["id"].as_str().unwrap().to_string();
    // Stop the server once a few lines are done.
    let t = Instant::now();
    loop {
        let (_, b) = c
            .json("GET", &format!("/v1/batches/{id}"), Value::Null)
            .await;
        if b["request_counts"]["completed"].as_i64().unwrap() >= 3 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await.unwrap();
    let store = Store::connect(&db, 1).await.unwrap();
    let mid = store.batch(None, &id).await.unwrap();
    assert!(
        mid.completed < N as i64 && mid.status == "in_progress",
        "{mid:?}"
    );
    store.close().await;

    // The next server (same store) resumes it.
    let mut b2 = TestServer::start(opts(dir.path(), &db)).await;
    let c = Client {
        addr: b2.addr,
        key: secret,
    };
    let done = c.wait_final(&id, 120).await;
    assert_eq!(
        done["request_counts"],
        json!({"total": N, "completed": N, "failed": 0}),
        "{done}"
    );
    let (_, _, out) = c
        .call(
            "GET",
            &format!(
                "/v1/files/{}/content",
                done["output_file_id"].as_str().unwrap()
            ),
            Vec::new(),
            "application/json",
        )
        .await;
    let ids: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), N);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), N);
    b2.shutdown().await.unwrap();
    // Every line was generated (and metered) exactly once.
    let store = Store::connect(&db, 1).await.unwrap();
    let rows = store
        .usage(&UsageFilter {
            key_id: Some(key_id),
            ..Default::default()
        })
        .await
        .unwrap();
    // (A line the engine refused while shutting down leaves a row without tokens.)
    let answered: Vec<_> = rows.iter().filter(|r| r.status == 200).collect();
    assert_eq!(answered.len(), N, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.status == 200 || r.prompt_tokens + r.completion_tokens == 0),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_expire_after_their_expires_after_or_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _, secret, _) = setup(dir.path(), None).await;
    let mut o = opts(dir.path(), &db);
    o.file_retention_days = Some(2.0);
    let mut server = TestServer::start(o).await;
    let c = Client {
        addr: server.addr,
        key: secret,
    };
    let text = lines(1, 2);
    // OpenAI's `expires_after` (as the SDK sends it: bracketed form fields).
    let hour = [
        ("expires_after[anchor]", "created_at"),
        ("expires_after[seconds]", "3600"),
    ];
    let (s, f) = c.upload_with("batch", &text, &hour).await;
    assert_eq!(s, StatusCode::OK, "{f}");
    assert_eq!(
        f["expires_at"].as_i64(),
        Some(f["created_at"].as_i64().unwrap() + 3600),
        "{f}"
    );
    let (s, g) = c
        .json(
            "GET",
            &format!("/v1/files/{}", f["id"].as_str().unwrap()),
            Value::Null,
        )
        .await;
    assert_eq!(
        (s, &g["expires_at"]),
        (StatusCode::OK, &f["expires_at"]),
        "{g}"
    );
    // Without it, the server's --file-retention-days.
    let (s, f) = c.upload("batch", &text).await;
    assert_eq!(s, StatusCode::OK, "{f}");
    assert_eq!(
        f["expires_at"].as_i64(),
        Some(f["created_at"].as_i64().unwrap() + 2 * 86_400),
        "{f}"
    );
    // Bad values are 400s naming the field.
    for (fields, param) in [
        (
            vec![
                ("expires_after[anchor]", "created_at"),
                ("expires_after[seconds]", "60"),
            ],
            "expires_after[seconds]",
        ),
        (
            vec![
                ("expires_after[anchor]", "last_active_at"),
                ("expires_after[seconds]", "3600"),
            ],
            "expires_after[anchor]",
        ),
        (
            vec![("expires_after[seconds]", "3600")],
            "expires_after[anchor]",
        ),
        (
            vec![
                ("expires_after[anchor]", "created_at"),
                ("expires_after[seconds]", "1e9"),
            ],
            "expires_after[seconds]",
        ),
    ] {
        let (s, v) = c.upload_with("batch", &text, &fields).await;
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (StatusCode::BAD_REQUEST, Some(param)),
            "{fields:?}: {v}"
        );
    }
    server.shutdown().await.unwrap();
}
