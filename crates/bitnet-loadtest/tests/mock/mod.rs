//! A tiny hand-written HTTP/1.1 server for the tests (hyper's server feature is not enabled
//! in the workspace): keep-alive, `/v1/models`, non-streamed and streamed (chunked SSE)
//! completions and chat completions, 503s with an OpenAI error envelope, `Connection:
//! close`, a bearer key, hanging and failing streams chosen by the model name.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How the server behaves.
#[derive(Clone, Debug, Default)]
pub struct Mock {
    /// Answer every n-th completion request (n, 2n, …) with a 503; 0 = never.
    pub fail_every: usize,
    /// Close the connection after every n-th successful response; 0 = never.
    pub close_every: usize,
    /// Require `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// `/v1/models` lists nothing.
    pub no_models: bool,
    /// Pause between streamed tokens.
    pub token_delay: Duration,
    /// Prompt tokens reported in `usage`.
    pub prompt_tokens: u64,
}

/// A running mock server.
pub struct Server {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Completion requests received.
    pub requests: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

/// Starts a server on the current runtime.
pub async fn start(mock: Mock) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (r, c) = (requests.clone(), connections.clone());
    let mock = Arc::new(mock);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, mock.clone(), r.clone()));
        }
    });
    Server {
        url: format!("http://{addr}"),
        requests,
        connections,
    }
}

async fn read_some(s: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut tmp = [0u8; 16384];
    loop {
        s.readable().await?;
        match s.try_read(&mut tmp) {
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(s: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        s.writable().await?;
        match s.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Req {
    method: String,
    path: String,
    auth: Option<String>,
    body: Vec<u8>,
}

/// Reads one request; `None` at EOF.
async fn read_request(s: &TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Req>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if read_some(s, buf).await? == 0 {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let (mut len, mut auth) = (0usize, None);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + 4 + len {
        if read_some(s, buf).await? == 0 {
            return Ok(None);
        }
    }
    let body = buf[head_end + 4..head_end + 4 + len].to_vec();
    buf.drain(..head_end + 4 + len);
    Ok(Some(Req {
        method,
        path,
        auth,
        body,
    }))
}

fn response(status: &str, body: &str, close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

fn error(status: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
    response(status, &body.to_string(), false)
}

/// Writes `event` as two HTTP chunks split inside it, so SSE events straddle frames.
async fn write_split_chunks(s: &TcpStream, event: &str, at: usize) -> io::Result<()> {
    let bytes = event.as_bytes();
    let at = at.min(bytes.len());
    for piece in [&bytes[..at], &bytes[at..]] {
        if piece.is_empty() {
            continue;
        }
        let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
        c.extend_from_slice(piece);
        c.extend_from_slice(b"\r\n");
        write_all(s, &c).await?;
    }
    Ok(())
}

async fn serve(s: TcpStream, mock: Arc<Mock>, requests: Arc<AtomicUsize>) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut served = 0usize;
    while let Some(req) = read_request(&s, &mut buf).await? {
        if let Some(key) = &mock.api_key {
            if req.auth.as_deref() != Some(format!("Bearer {key}").as_str()) {
                write_all(&s, &error("401 Unauthorized", "bad api key")).await?;
                continue;
            }
        }
        if req.method == "GET" && req.path == "/v1/models" {
            let data = if mock.no_models {
                "[]"
            } else {
                r#"[{"id":"mock-model","object":"model"}]"#
            };
            let body = format!(r#"{{"object":"list","data":{data}}}"#);
            write_all(&s, &response("200 OK", &body, false)).await?;
            continue;
        }
        let chat = req.path == "/v1/chat/completions";
        if req.method != "POST" || !(chat || req.path == "/v1/completions") {
            write_all(&s, &error("404 Not Found", "no such route")).await?;
            continue;
        }
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        let model = v["model"].as_str().unwrap_or("").to_string();
        let max_tokens = v["max_tokens"].as_u64().unwrap_or(16);
        let stream = v["stream"].as_bool().unwrap_or(false);
        let usage_wanted = v["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        if mock.fail_every > 0 && n.is_multiple_of(mock.fail_every) {
            write_all(
                &s,
                &error("503 Service Unavailable", "server overloaded: queue full"),
            )
            .await?;
            continue;
        }
        if model == "hang" {
            std::future::pending::<()>().await;
        }
        served += 1;
        let close = mock.close_every > 0 && served.is_multiple_of(mock.close_every);
        let usage = serde_json::json!({
            "prompt_tokens": mock.prompt_tokens,
            "completion_tokens": max_tokens,
            "total_tokens": mock.prompt_tokens + max_tokens,
        });
        if !stream {
            let text: String = (0..max_tokens).map(|i| format!("t{i} ")).collect();
            let choice = if chat {
                serde_json::json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
            } else {
                serde_json::json!({"index": 0, "text": text, "finish_reason": "length"})
            };
            let body =
                serde_json::json!({"id": "x", "model": model, "choices": [choice], "usage": usage});
            write_all(&s, &response("200 OK", &body.to_string(), close)).await?;
        } else {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{}\r\n",
                if close { "connection: close\r\n" } else { "" }
            );
            write_all(&s, head.as_bytes()).await?;
            write_split_chunks(&s, ": ping\n\n", 3).await?;
            if chat {
                let role = r#"data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#;
                write_split_chunks(&s, &format!("{role}\n\n"), 11).await?;
            }
            for i in 0..max_tokens {
                if !mock.token_delay.is_zero() {
                    tokio::time::sleep(mock.token_delay).await;
                }
                let piece = format!("t{i} ");
                let choice = if chat {
                    serde_json::json!({"index": 0, "delta": {"content": piece}})
                } else {
                    serde_json::json!({"index": 0, "text": piece})
                };
                let mut ev = format!(
                    "data: {}\n\n",
                    serde_json::json!({"choices": [choice], "usage": null})
                );
                if i == 0 {
                    ev.push_str(": ping\n\n");
                }
                write_split_chunks(&s, &ev, 5 + i as usize % 17).await?;
                if model == "stream-error" {
                    let e = r#"data: {"error":{"message":"engine died","type":"server_error"}}"#;
                    write_split_chunks(&s, &format!("{e}\n\n"), 20).await?;
                    break;
                }
            }
            if usage_wanted && model != "no-usage" {
                let ev = format!(
                    "data: {}\n\n",
                    serde_json::json!({"choices": [], "usage": usage})
                );
                write_split_chunks(&s, &ev, 9).await?;
            }
            write_split_chunks(&s, "data: [DONE]\n\n", 7).await?;
            write_all(&s, b"0\r\n\r\n").await?;
        }
        if close {
            return Ok(());
        }
    }
    Ok(())
}
