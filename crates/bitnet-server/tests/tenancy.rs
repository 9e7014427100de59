//! `bitnet serve` with API keys on SQLite: 401/403/429 with the OpenAI envelope and
//! headers, the admin API (tenants, keys, rotation, blocking, usage JSON/CSV, audit), and a
//! usage row per request equal to the usage the client received.

mod common;

use common::{chat, request_with, TestServer};
use hyper::StatusCode;
use serde_json::{json, Value};

struct Auth<'a> {
    s: &'a TestServer,
}

impl Auth<'_> {
    async fn call(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, hyper::HeaderMap, Value) {
        let bearer = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (s, h, b) = request_with(self.s.addr, method, path, &headers, body).await;
        let v =
            serde_json::from_slice(&b).unwrap_or(Value::String(String::from_utf8_lossy(&b).into()));
        (s, h, v)
    }
}

fn err(v: &Value) -> (&str, Option<&str>) {
    (
        v["error"]["type"].as_str().unwrap_or("?"),
        v["error"]["code"].as_str(),
    )
}

#[tokio::test]
async fn keys_limits_admin_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    // The first admin key is made on the store directly (as `bitnet admin` does).
    let store = bitnet_tenancy::Store::connect(&db, 1).await.unwrap();
    store.create_tenant("cli:test", "root", None).await.unwrap();
    let (_, admin) = store
        .create_key(
            "cli:test",
            &bitnet_tenancy::NewKey {
                tenant: "root".into(),
                role: Some(bitnet_tenancy::Role::Admin),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store.close().await;

    // A webhook receiver: records the event header of every POST, answers 200.
    let hooks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hooks.local_addr().unwrap());
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut c, _) = hooks.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let n = c.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(l) = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("x-bitnet-event:"))
            {
                seen2.lock().unwrap().push(l[15..].trim().to_string());
            }
            let _ = c
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    let mut opts = common::options("tenancy-model");
    opts.webhook_url = Some(hook_url);
    opts.webhook_secret = Some("hook-secret".into());
    opts.database_url = Some(db.clone());
    opts.journal_dir = Some(dir.path().join("journal"));
    opts.key_cache_ttl = Some(0.0);
    let mut server = TestServer::start(opts).await;
    let a = Auth { s: &server };
    let model = "tenancy-model";

    // Open routes stay open; protected ones need a key.
    assert_eq!(server.get("/health").await.0, StatusCode::OK);
    assert_eq!(server.get("/metrics").await.0, StatusCode::OK);
    let (s, _, v) = a.call(None, "GET", "/v1/models", Value::Null).await;
    assert_eq!(
        (s, err(&v)),
        (
            StatusCode::UNAUTHORIZED,
            ("invalid_request_error", Some("invalid_api_key"))
        )
    );
    let (s, _, v) = a
        .call(
            Some("bn-wrong"),
            "POST",
            "/v1/chat/completions",
            chat("hi", json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        !v.to_string().contains("bn-wrong"),
        "the key is not echoed: {v}"
    );

    // Admin API: a tenant and a user key with limits.
    let (s, _, t) = a
        .call(
            Some(&admin),
            "POST",
            "/admin/tenants",
            json!({"name": "acme"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let (s, _, v) = a
        .call(
            Some(&admin),
            "POST",
            "/admin/tenants",
            json!({"name": "acme"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _, v) = a
        .call(
            Some(&admin),
            "POST",
            "/admin/keys",
            json!({"tenant": "acme", "rpm": -5}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("rpm"))
    );
    let (s, _, k) = a
        .call(
            Some(&admin),
            "POST",
            "/admin/keys",
            json!({"tenant": "acme", "rpm": 3, "tpm": 100000, "models": [model]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let user = k["secret"].as_str().unwrap().to_string();
    let user_id = k["key"]["id"].as_str().unwrap().to_string();
    assert!(k["key"].get("secret_hash").is_none());

    // A user key cannot use /admin.
    let (s, _, v) = a.call(Some(&user), "GET", "/admin/keys", Value::Null).await;
    assert_eq!((s, err(&v).0), (StatusCode::FORBIDDEN, "permission_error"));

    // Three requests fit the RPM; the headers count down; the fourth is a 429.
    let mut sent = Vec::new();
    for i in 0..3 {
        let (s, h, v) = a
            .call(
                Some(&user),
                "POST",
                "/v1/chat/completions",
                chat(
                    "hi",
                    json!({"max_tokens": 4, "ignore_eos": true, "model": model}),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            h["x-ratelimit-remaining-requests"],
            (2 - i).to_string().as_str()
        );
        assert!(h.contains_key("x-ratelimit-remaining-tokens") && h.contains_key("x-request-id"));
        sent.push(v);
    }
    let (s, h, v) = a
        .call(
            Some(&user),
            "POST",
            "/v1/chat/completions",
            chat("hi", json!({"max_tokens": 4})),
        )
        .await;
    assert_eq!(
        (s, err(&v)),
        (
            StatusCode::TOO_MANY_REQUESTS,
            ("requests", Some("rate_limit_exceeded"))
        )
    );
    assert!(h.contains_key("retry-after"));
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");

    // A key limited to another model: 403.
    let (_, _, k2) = a
        .call(
            Some(&admin),
            "POST",
            "/admin/keys",
            json!({"tenant": "acme", "models": ["other"], "budget_tokens": 30}),
        )
        .await;
    let other = k2["secret"].as_str().unwrap().to_string();
    let other_id = k2["key"]["id"].as_str().unwrap().to_string();
    let (s, _, v) = a.call(Some(&other), "GET", "/v1/models", Value::Null).await;
    assert_eq!(
        (s, v["data"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "{v}"
    );
    let path = format!("/v1/models/{model}");
    assert_eq!(
        a.call(Some(&other), "GET", &path, Value::Null).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, _, v) = a
        .call(
            Some(&other),
            "POST",
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": 2}),
        )
        .await;
    assert_eq!(
        (s, err(&v).0),
        (StatusCode::FORBIDDEN, "permission_error"),
        "{v}"
    );

    // Budgets: allow the model, spend the 30 tokens, then insufficient_quota.
    let (s, _, _) = a
        .call(
            Some(&admin),
            "PATCH",
            &format!("/admin/keys/{other_id}"),
            json!({"models": []}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut streamed_usage = None;
    for _ in 0..10 {
        let body = json!({"prompt": "hello", "max_tokens": 8, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
        let (s, _, b) = request_with(
            server.addr,
            "POST",
            "/v1/completions",
            &[("authorization", &format!("Bearer {other}"))],
            body.to_string().into_bytes(),
        )
        .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(err(&v), ("insufficient_quota", Some("insufficient_quota")));
            break;
        }
        assert_eq!(s, StatusCode::OK);
        let text = String::from_utf8_lossy(&b).to_string();
        let usage_line = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .rfind(|d| d.contains("\"usage\":{"))
            .unwrap()
            .to_string();
        streamed_usage = Some(serde_json::from_str::<Value>(&usage_line).unwrap());
    }
    let su = streamed_usage.expect("at least one streamed request before the budget ran out");

    // Blocking takes effect at once on this replica.
    let (s, _, v) = a
        .call(
            Some(&admin),
            "PATCH",
            &format!("/admin/keys/{user_id}"),
            json!({"blocked": true}),
        )
        .await;
    assert_eq!((s, v["blocked"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, _, v) = a.call(Some(&user), "GET", "/v1/models", Value::Null).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["message"].as_str().unwrap().contains("blocked"));

    // Rotation: the new secret works, the old one until its grace ends (0 here).
    let (s, _, r) = a
        .call(
            Some(&admin),
            "POST",
            &format!("/admin/keys/{other_id}/rotate"),
            json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let rotated = r["secret"].as_str().unwrap();
    assert_eq!(
        a.call(Some(&other), "GET", "/v1/models", Value::Null)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        a.call(Some(rotated), "GET", "/v1/models", Value::Null)
            .await
            .0,
        StatusCode::OK
    );

    // Usage rows (stored in the background within ~50 ms) match what the clients got.
    let mut rows = Vec::new();
    for _ in 0..100 {
        let (_, _, v) = a
            .call(
                Some(&admin),
                "GET",
                &format!("/admin/usage?key={user_id}"),
                Value::Null,
            )
            .await;
        rows = v["data"].as_array().cloned().unwrap_or_default();
        if rows.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, resp) in rows.iter().zip(&sent) {
        let id = resp["id"].as_str().unwrap();
        let r = rows.iter().find(|r| r["request_id"] == id).unwrap_or(row);
        assert_eq!(r["request_id"], id);
        assert_eq!(r["prompt_tokens"], resp["usage"]["prompt_tokens"]);
        assert_eq!(r["completion_tokens"], resp["usage"]["completion_tokens"]);
        assert_eq!(r["status"], 200);
        assert_eq!(r["model"], model);
        assert_eq!(r["finish_reason"], "length");
        assert!(r["ttft_ms"].is_i64());
    }
    let (_, _, v) = a
        .call(
            Some(&admin),
            "GET",
            &format!("/admin/usage?key={other_id}"),
            Value::Null,
        )
        .await;
    let last = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request_id"] == su["id"])
        .cloned()
        .unwrap();
    assert_eq!(last["completion_tokens"], su["usage"]["completion_tokens"]);
    assert_eq!(last["prompt_tokens"], su["usage"]["prompt_tokens"]);

    let (s, h, b) = request_with(
        server.addr,
        "GET",
        "/admin/usage?format=csv&tenant=acme",
        &[("authorization", &format!("Bearer {admin}"))],
        Vec::new(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = String::from_utf8(b.to_vec()).unwrap();
    assert!(csv.starts_with("request_id,time,tenant_id,key_id,model,"));
    let (s, _, v) = a
        .call(Some(&admin), "GET", "/admin/usage?group=daily", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK);
    let total: i64 = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["requests"].as_i64().unwrap())
        .sum();
    assert_eq!(total as usize, csv.lines().count() - 1);
    let (s, _, v) = a
        .call(
            Some(&admin),
            "GET",
            "/admin/usage?from=yesterday",
            Value::Null,
        )
        .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("from"))
    );

    // The audit log names the acting key, with before and after.
    let (_, _, v) = a
        .call(Some(&admin), "GET", "/admin/audit", Value::Null)
        .await;
    let block = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "key.block")
        .unwrap()
        .clone();
    assert!(block["actor"].as_str().unwrap().starts_with("key:key_"));
    assert_eq!(
        (
            block["before"]["blocked"].as_bool(),
            block["after"]["blocked"].as_bool()
        ),
        (Some(false), Some(true))
    );

    // Webhooks reached the receiver (the admin-created keys, the block, the rotation).
    for _ in 0..100 {
        if seen.lock().unwrap().iter().any(|e| e == "key.rotated") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let events = seen.lock().unwrap().clone();
    for kind in [
        "key.created",
        "key.blocked",
        "key.rotated",
        "budget.exceeded",
    ] {
        assert!(
            events.iter().any(|e| e == kind),
            "{kind} not delivered: {events:?}"
        );
    }

    // Refusals are counted by reason (and tenant, where the key is known).
    let (_, _, m) = server.get("/metrics").await;
    let m = String::from_utf8_lossy(&m);
    for reason in [
        "unauthorized",
        "rate_limited_requests",
        "insufficient_quota",
    ] {
        assert!(
            m.lines()
                .any(|l| l.starts_with("bitnet_requests_rejected_total")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "{reason} not counted:\n{m}"
        );
    }
    assert!(m.contains(&format!("tenant=\"{}\"", t["id"].as_str().unwrap())));

    server.shutdown().await.unwrap();
    // Nothing on disk holds a secret in clear.
    let mut bytes = Vec::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            bytes.extend(std::fs::read(p).unwrap());
        }
    }
    let hay = String::from_utf8_lossy(&bytes);
    for secret in [&admin, &user, &other] {
        assert!(!hay.contains(secret.as_str()));
    }
    // Graceful shutdown stored everything: the journal is empty.
    assert_eq!(
        std::fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .count(),
        0
    );
}

/// An RS256 token for `tenant` with `roles`, audience `aud`, signed with the tenancy tests' key.
fn oidc_token(tenant: &str, roles: Value, aud: &str) -> String {
    let pem = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bitnet-tenancy/tests/data/rsa.pem");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(pem).unwrap()).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("k1".into());
    let now = bitnet_tenancy::now_ms() / 1000;
    let claims = json!({"iss": "http://idp.test", "aud": aud, "sub": "alice@acme",
                        "exp": now + 300, "tenant": tenant, "roles": roles});
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

#[tokio::test]
async fn oidc_tokens_use_the_tenants_policy_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = bitnet_tenancy::Store::connect(&db, 1).await.unwrap();
    for (tenant, role, rpm) in [
        ("root", bitnet_tenancy::Role::Admin, None),
        ("acme", bitnet_tenancy::Role::User, Some(1)),
    ] {
        store.create_tenant("cli:test", tenant, None).await.unwrap();
        store
            .create_key(
                "cli:test",
                &bitnet_tenancy::NewKey {
                    tenant: tenant.into(),
                    alias: Some("sso".into()),
                    role: Some(role),
                    rpm,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    store.close().await;
    // The public half of the signing key as a JWKS file.
    let pem = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bitnet-tenancy/tests/data/rsa.pem");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(pem).unwrap()).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();

    let mut opts = common::options("tenancy-model");
    opts.database_url = Some(db);
    opts.journal_dir = Some(dir.path().join("journal"));
    opts.oidc_jwks = Some(jwks.display().to_string());
    opts.oidc_issuer = Some("http://idp.test".into());
    opts.oidc_audience = Some("bitnet, other".into());
    let mut server = TestServer::start(opts).await;
    let a = Auth { s: &server };
    let user = oidc_token("acme", json!(["admin"]), "bitnet");
    let (s, _, v) = a.call(Some(&user), "GET", "/v1/models", Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The policy key's RPM of 1 holds for the tenant's SSO callers.
    let body = chat("hi", json!({"max_tokens": 2}));
    let (s, h, v) = a
        .call(Some(&user), "POST", "/v1/chat/completions", body.clone())
        .await;
    assert_eq!(
        (s, &h["x-ratelimit-limit-requests"]),
        (StatusCode::OK, &"1".parse().unwrap()),
        "{v}"
    );
    let alice_tokens = v["usage"]["completion_tokens"].clone();
    let (s, _, v) = a
        .call(Some(&user), "POST", "/v1/chat/completions", body)
        .await;
    assert_eq!(
        (s, err(&v).1),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limit_exceeded"))
    );
    // Its role claim says admin, but the policy key is a user key.
    let (s, _, v) = a.call(Some(&user), "GET", "/admin/keys", Value::Null).await;
    assert_eq!(
        (s, err(&v).0),
        (StatusCode::FORBIDDEN, "permission_error"),
        "{v}"
    );
    // Wrong audience: 401 with the reason; unknown tenant: 403.
    let (s, _, v) = a
        .call(
            Some(&oidc_token("acme", json!([]), "nope")),
            "GET",
            "/v1/models",
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("audience"),
        "{v}"
    );
    let (s, _, v) = a
        .call(
            Some(&oidc_token("zeta", json!([]), "bitnet")),
            "GET",
            "/v1/models",
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // An admin of the admin tenant administers; the audit log names the token's subject.
    let root = oidc_token("root", json!(["admin"]), "other");
    let (s, _, v) = a
        .call(
            Some(&root),
            "POST",
            "/admin/tenants",
            json!({"name": "newco"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, _, v) = a
        .call(Some(&root), "GET", "/admin/audit", Value::Null)
        .await;
    let actor = v["data"][0]["actor"].as_str().unwrap();
    assert!(
        actor.starts_with("oidc:alice@acme (via key:key_"),
        "{actor}"
    );
    // The completion's usage row names the SSO caller (its key is the shared policy key);
    // the refused second request left none.
    let mut rows = Vec::new();
    for _ in 0..100 {
        let (s, _, v) = a
            .call(
                Some(&root),
                "GET",
                "/admin/usage?subject=oidc:alice@acme",
                Value::Null,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        rows = v["data"].as_array().cloned().unwrap_or_default();
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (&rows[0]["subject"], &rows[0]["completion_tokens"]),
        (&json!("oidc:alice@acme"), &alice_tokens),
        "{rows:?}"
    );
    let (s, _, v) = a
        .call(
            Some(&root),
            "GET",
            "/admin/usage?group=daily&subject=oidc:alice@acme",
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "subject", "{v}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn websocket_takes_the_key_as_a_subprotocol() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = bitnet_tenancy::Store::connect(&db, 1).await.unwrap();
    store.create_tenant("cli:test", "web", None).await.unwrap();
    let (_, secret) = store
        .create_key(
            "cli:test",
            &bitnet_tenancy::NewKey {
                tenant: "web".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store.close().await;
    let mut opts = common::options("ws-auth-model");
    opts.database_url = Some(db);
    opts.journal_dir = Some(dir.path().join("journal"));
    let mut server = TestServer::start(opts).await;
    let url = format!("ws://{}/v1/stream", server.addr);
    let with = |protocols: String| {
        let mut r = url.clone().into_client_request().unwrap();
        r.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        r
    };
    // No key: the upgrade is refused with 401.
    let e = tokio_tungstenite::connect_async(with("bitnet.v1".into()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    let (mut ws, resp) = tokio_tungstenite::connect_async(with(format!(
        "bitnet.v1, openai-insecure-api-key.{secret}"
    )))
    .await
    .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "bitnet.v1");
    let req = chat("Hi", json!({"max_tokens": 3}));
    ws.send(Message::Text(req.to_string().into()))
        .await
        .unwrap();
    let mut last = Value::Null;
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Text(t) => last = serde_json::from_str(&t).unwrap(),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(last["usage"]["completion_tokens"], 3, "{last}");
    server.shutdown().await.unwrap();
}
