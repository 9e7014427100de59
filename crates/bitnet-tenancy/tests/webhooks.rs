//! Webhooks: key events go to the outbox with the change; a delivery failure is retried with
//! backoff; every attempt is logged; the body is signed with HMAC-SHA256.

use bitnet_tenancy::webhooks::{signature, Deliverer, WebhookConfig};
use bitnet_tenancy::{KeyUpdate, NewKey, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback receiver answering 500 to the first request and 200 after; records
/// `(signature header, event header, body)`.
async fn receiver() -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/bitnet", l.local_addr().unwrap());
    let got: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            let (head, body) = loop {
                let k = s.read(&mut tmp).await.unwrap();
                buf.extend_from_slice(&tmp[..k]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    while buf.len() < i + 4 + len {
                        let k = s.read(&mut tmp).await.unwrap();
                        buf.extend_from_slice(&tmp[..k]);
                    }
                    break (
                        head,
                        String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).to_string(),
                    );
                }
            };
            let h = |name: &str| {
                head.lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                    .unwrap_or_default()
            };
            g.lock()
                .unwrap()
                .push((h("x-bitnet-signature"), h("x-bitnet-event"), body));
            n += 1;
            let status = if n == 1 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = s
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    (url, got)
}

#[tokio::test]
async fn key_events_are_signed_retried_and_logged() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", d.path().join("t.db").display()), 2)
        .await
        .unwrap();
    store.create_tenant("cli:t", "acme", None).await.unwrap();
    let (key, secret) = store
        .create_key(
            "cli:t",
            &NewKey {
                tenant: "acme".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .update_key(
            "cli:t",
            &key.id,
            &KeyUpdate {
                blocked: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let events = store.webhook_events(10).await.unwrap();
    let kinds: Vec<&str> = events.iter().rev().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["key.created", "key.blocked"]);
    assert!(!events
        .iter()
        .any(|e| e.payload.to_string().contains(&secret)));

    let (url, got) = receiver().await;
    let hmac_key = b"s3cret".to_vec();
    let deliverer = Deliverer::new(
        store.clone(),
        WebhookConfig {
            url: url.clone(),
            secret: hmac_key.clone(),
            timeout: Duration::from_secs(5),
        },
    )
    .unwrap();
    // First pass: the first POST gets a 500 (retried in 1 s), the second a 200.
    assert_eq!(deliverer.run_once().await.unwrap(), 2);
    assert_eq!(
        deliverer.run_once().await.unwrap(),
        0,
        "the failed one waits for its backoff"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(deliverer.run_once().await.unwrap(), 1);
    let events = store.webhook_events(10).await.unwrap();
    assert!(events.iter().all(|e| e.status == "delivered"), "{events:?}");
    let created = events.iter().find(|e| e.kind == "key.created").unwrap();
    let tries = store.webhook_deliveries(&created.id).await.unwrap();
    assert_eq!(
        tries.iter().map(|t| t.status_code).collect::<Vec<_>>(),
        [Some(500), Some(200)],
        "every attempt is logged"
    );
    assert_eq!(tries[0].url, url);
    for (sig, kind, body) in got.lock().unwrap().iter() {
        assert_eq!(
            sig,
            &signature(&hmac_key, body.as_bytes()),
            "HMAC-SHA256 over the body"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(&v["type"], kind);
        assert_eq!(v["data"]["key"]["id"], key.id);
    }
    // Budget events: once per key and period.
    store
        .budget_exceeded(&key.id, "ten", 10, 12, 0)
        .await
        .unwrap();
    store
        .budget_exceeded(&key.id, "ten", 10, 13, 0)
        .await
        .unwrap();
    let n = store
        .webhook_events(10)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == "budget.exceeded")
        .count();
    assert_eq!(n, 1);
    assert!(Deliverer::new(
        store.clone(),
        WebhookConfig {
            url: "https://x/y".into(),
            secret: vec![1],
            timeout: Duration::from_secs(1)
        }
    )
    .is_err());
}
