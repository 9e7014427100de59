//! A server on a free loopback port and a small HTTP client for the tests.
#![allow(dead_code)]

use bitnet_server::{serve_on, ServeError, ServeOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The repository's small GQA fixture (has a chat template).
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gqa4-bitlinear-untied")
}

/// Options for the fixture with a unique model name (metrics are process-wide).
pub fn options(name: &str) -> ServeOptions {
    ServeOptions {
        model: Some(fixture()),
        model_name: Some(name.into()),
        ..Default::default()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    pub async fn start(opts: ServeOptions) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = opts.resolve().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(
            listener,
            config,
            async {
                let _ = rx.await;
            },
            |_| {},
        ));
        let s = TestServer {
            addr,
            stop: Some(tx),
            task: Some(task),
        };
        for _ in 0..500 {
            if s.get("/ready").await.0 == StatusCode::OK {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not become ready");
    }

    /// Triggers graceful shutdown; returns the server's result.
    pub async fn shutdown(&mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.unwrap(),
            None => Ok(()),
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        request(self.addr, "GET", path, Vec::new()).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: impl Into<Vec<u8>>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        request(self.addr, "POST", path, body.into()).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        v: serde_json::Value,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let (s, h, b) = self.post(path, v.to_string()).await;
        let j = serde_json::from_slice(&b).unwrap_or_else(|e| {
            panic!(
                "{path}: non-JSON body ({e}): {}",
                String::from_utf8_lossy(&b)
            )
        });
        (s, h, j)
    }

    /// Starts a request and returns the response head and the open body.
    pub async fn open(
        &self,
        path: &str,
        body: String,
    ) -> (StatusCode, HeaderMap, Incoming, JoinHandle<()>) {
        open(self.addr, "POST", path, body.into_bytes()).await
    }

    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let (_, _, b) = self.get("/metrics").await;
        let text = String::from_utf8_lossy(&b).to_string();
        text.lines()
            .filter(|l| l.starts_with(line_prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

pub async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Incoming, JoinHandle<()>) {
    open_with(addr, method, path, &[], body).await
}

/// [`open`] with extra request headers.
pub async fn open_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Incoming, JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    let req = headers
        .iter()
        .fold(req, |r, (k, v)| r.header(*k, *v))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body, conn)
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    request_with(addr, method, path, &[], body).await
}

/// A request with headers, its body read whole.
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    let (s, h, body, conn) = open_with(addr, method, path, headers, body).await;
    let b = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    conn.abort();
    (s, h, b)
}

/// Reads an SSE body to the end: the `data:` payloads in order, and the comment lines.
pub async fn read_sse(mut body: Incoming) -> (Vec<String>, Vec<String>) {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            buf.extend_from_slice(&d);
        }
    }
    let text = String::from_utf8(buf).expect("SSE body is UTF-8");
    let mut data = Vec::new();
    let mut comments = Vec::new();
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        for line in ev.lines() {
            if let Some(d) = line.strip_prefix("data: ") {
                data.push(d.to_string());
            } else if line.starts_with(':') {
                comments.push(line.to_string());
            } else {
                panic!("unexpected SSE line {line:?}");
            }
        }
    }
    (data, comments)
}

pub fn chat(content: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({"messages": [{"role": "user", "content": content}]});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}
