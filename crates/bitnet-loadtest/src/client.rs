//! One worker's connection: sends the prepared request, reads the response and times it.

use crate::sse::{SseEvent, SseParser};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Error bodies are read up to this many bytes (the rest is drained unread).
const ERROR_BODY_CAP: usize = 64 * 1024;

/// The request every worker sends, prepared once.
pub(crate) struct Template {
    /// Path (with the base prefix) of the endpoint.
    pub uri: Uri,
    /// `Host` header.
    pub host: HeaderValue,
    /// `Authorization` header.
    pub auth: Option<HeaderValue>,
    /// The serialized JSON body.
    pub body: Bytes,
    /// Whether the body asks for a stream.
    pub stream: bool,
    /// Per-request limit.
    pub timeout: Duration,
}

impl Template {
    /// A fresh request sharing the prepared parts (reference-counted, not copied).
    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(a) = &self.auth {
            h.insert(AUTHORIZATION, a.clone());
        }
        req
    }
}

/// How a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// A non-2xx response.
    Status(u16),
    /// Connecting, sending or reading failed.
    Connection,
    /// The request took longer than the timeout.
    Timeout,
    /// A 2xx response whose content was an error: an SSE error event, bad JSON, no `[DONE]`.
    Stream,
}

/// A failed request.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The category.
    pub kind: FailureKind,
    /// The server's or the client's message.
    pub message: String,
    /// Whether the connection is unusable afterwards.
    drop_conn: bool,
}

impl Failure {
    fn connection(what: &str, e: impl fmt::Display) -> Failure {
        Failure {
            kind: FailureKind::Connection,
            message: format!("{what}: {e}"),
            drop_conn: true,
        }
    }

    fn stream(message: String, drop_conn: bool) -> Failure {
        Failure {
            kind: FailureKind::Stream,
            message,
            drop_conn,
        }
    }
}

/// A successful request's measurements (its ITLs are in [`Conn::itl`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Success {
    /// Time to the first content-bearing chunk (non-streaming: the end-to-end latency), s.
    pub ttft: f64,
    /// Sending to the end of the body, s.
    pub e2e: f64,
    /// `usage.prompt_tokens` (0 when absent).
    pub prompt_tokens: u64,
    /// `usage.completion_tokens`; streaming without usage: the content-bearing chunks.
    pub completion_tokens: u64,
}

/// Opens a keep-alive HTTP/1.1 connection with `TCP_NODELAY`.
pub(crate) async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Failure::connection("connect", e))?;
    tcp.set_nodelay(true)
        .map_err(|e| Failure::connection("TCP_NODELAY", e))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| Failure::connection("handshake", e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("loadtest connection ended: {e}");
        }
    });
    Ok(sender)
}

/// Reads the rest of `body` into `buf` (at most `cap` bytes kept; the rest drained).
pub(crate) async fn read_body(
    body: &mut Incoming,
    buf: &mut Vec<u8>,
    cap: usize,
) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = cap.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(())
}

/// The message of an OpenAI error envelope (`{"error":{"message":…}}`), else the text.
pub(crate) fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: serde_json::Value,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) => error_value_message(&e.error),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            match text.char_indices().nth(200) {
                Some((i, _)) => format!("{}…", &text[..i]),
                None if text.is_empty() => "(empty body)".to_string(),
                None => text.to_string(),
            }
        }
    }
}

fn error_value_message(e: &serde_json::Value) -> String {
    match e
        .get("message")
        .and_then(|m| m.as_str())
        .or_else(|| e.as_str())
    {
        Some(m) => m.to_string(),
        None => e.to_string(),
    }
}

/// One keep-alive connection and its reusable buffers.
pub(crate) struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    buf: Vec<u8>,
    sse: SseParser,
    /// The inter-token latencies (s) of the last request.
    pub itl: Vec<f64>,
}

impl Conn {
    /// A connection to `addr`, opened at the first request.
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            sender: None,
            buf: Vec::new(),
            sse: SseParser::new(),
            itl: Vec::new(),
        }
    }

    /// Sends one request and reads the whole response, within the template's timeout.
    pub async fn request(&mut self, t: &Template) -> Result<Success, Failure> {
        let start = Instant::now();
        self.itl.clear();
        match tokio::time::timeout(t.timeout, self.exchange(t, start)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(f)) => {
                if f.drop_conn {
                    self.sender = None;
                }
                Err(f)
            }
            Err(_) => {
                self.sender = None;
                Err(Failure {
                    kind: FailureKind::Timeout,
                    message: format!("no complete response within {:?}", t.timeout),
                    drop_conn: true,
                })
            }
        }
    }

    /// Sends the request, reconnecting when the connection is closed; retries once on a
    /// reused connection that turns out closed before the request got through.
    async fn send(&mut self, t: &Template) -> Result<Response<Incoming>, Failure> {
        let mut retried = false;
        loop {
            let (mut sender, reused) = match self.sender.take() {
                Some(s) if !s.is_closed() => (s, true),
                _ => (connect(self.addr).await?, false),
            };
            let retry = reused && !retried;
            if let Err(e) = sender.ready().await {
                if retry {
                    retried = true;
                    continue;
                }
                return Err(Failure::connection("connection not ready", e));
            }
            match sender.try_send_request(t.request()).await {
                Ok(resp) => {
                    self.sender = Some(sender);
                    return Ok(resp);
                }
                Err(mut e) => {
                    let unsent = e.take_message().is_some();
                    let e = e.into_error();
                    if retry && (unsent || e.is_incomplete_message() || e.is_canceled()) {
                        tracing::debug!("loadtest: reconnecting after {e}");
                        retried = true;
                        continue;
                    }
                    return Err(Failure::connection("request", e));
                }
            }
        }
    }

    async fn exchange(&mut self, t: &Template, start: Instant) -> Result<Success, Failure> {
        let resp = self.send(t).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        self.buf.clear();
        if !status.is_success() {
            read_body(&mut body, &mut self.buf, ERROR_BODY_CAP)
                .await
                .map_err(|e| Failure::connection("reading the error body", e))?;
            return Err(Failure {
                kind: FailureKind::Status(status.as_u16()),
                message: format!("{status}: {}", error_message(&self.buf)),
                drop_conn: false,
            });
        }
        if !t.stream {
            read_body(&mut body, &mut self.buf, usize::MAX)
                .await
                .map_err(|e| Failure::connection("reading the body", e))?;
            let e2e = start.elapsed().as_secs_f64();
            let (prompt_tokens, completion_tokens) =
                parse_completion(&self.buf).map_err(|m| Failure::stream(m, false))?;
            return Ok(Success {
                ttft: e2e,
                e2e,
                prompt_tokens,
                completion_tokens,
            });
        }
        self.sse.reset();
        let mut first: Option<Instant> = None;
        let mut last = start;
        let mut chunks = 0u64;
        let mut usage: Option<Usage> = None;
        let mut done = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::connection("reading the stream", e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if done {
                continue; // drain whatever follows [DONE] so the connection can be reused
            }
            let now = Instant::now();
            self.sse.feed(&data);
            while let Some(event) = self.sse.next_event() {
                let data = match event {
                    SseEvent::Done => {
                        done = true;
                        break;
                    }
                    SseEvent::Data(d) => d,
                };
                let chunk = parse_chunk(data).map_err(|m| Failure::stream(m, true))?;
                if chunk.usage.is_some() {
                    usage = chunk.usage;
                }
                if chunk.has_text {
                    chunks += 1;
                    if first.is_none() {
                        first = Some(now);
                    } else {
                        self.itl.push(now.duration_since(last).as_secs_f64());
                    }
                    last = now;
                }
            }
        }
        let end = Instant::now();
        if !done {
            return Err(Failure::stream(
                "the stream ended without `data: [DONE]`".to_string(),
                false,
            ));
        }
        let e2e = end.duration_since(start).as_secs_f64();
        Ok(Success {
            ttft: first.map_or(e2e, |f| f.duration_since(start).as_secs_f64()),
            e2e,
            prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
            completion_tokens: usage.map_or(chunks, |u| u.completion_tokens),
        })
    }
}

/// `usage` of a response or chunk.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// What one streamed chunk says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ChunkInfo {
    /// `choices[0].delta.content` (chat) or `choices[0].text` (completions) is non-empty.
    pub has_text: bool,
    /// The usage chunk's counts.
    pub usage: Option<Usage>,
}

/// A string field deserialized only as "is it non-empty" (no allocation, even escaped).
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NonEmpty, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!v.is_empty()))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
struct Delta {
    content: Option<NonEmpty>,
    reasoning_content: Option<NonEmpty>,
    reasoning: Option<NonEmpty>,
}

#[derive(Deserialize)]
struct Choice {
    text: Option<NonEmpty>,
    delta: Option<Delta>,
}

impl Choice {
    fn has_text(&self) -> bool {
        let set = |x: &Option<NonEmpty>| x.as_ref().is_some_and(|n| n.0);
        set(&self.text)
            || self
                .delta
                .as_ref()
                .is_some_and(|d| set(&d.content) || set(&d.reasoning_content) || set(&d.reasoning))
    }
}

/// `choices`, reduced to whether the first choice carries text (the rest is skipped).
struct FirstChoiceHasText(bool);

impl<'de> Deserialize<'de> for FirstChoiceHasText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FirstChoiceHasText, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstChoiceHasText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<Choice>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstChoiceHasText(first.is_some_and(|c| c.has_text())))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct Chunk {
    choices: Option<FirstChoiceHasText>,
    usage: Option<Usage>,
    error: Option<serde_json::Value>,
}

/// Parses one streamed chunk; an error event (`{"error":…}`) gives its message.
pub(crate) fn parse_chunk(data: &[u8]) -> Result<ChunkInfo, String> {
    let c: Chunk = serde_json::from_slice(data).map_err(|e| {
        format!(
            "bad stream chunk ({e}): {}",
            error_message(&data[..data.len().min(200)])
        )
    })?;
    if let Some(e) = c.error.filter(|e| !e.is_null()) {
        return Err(error_value_message(&e));
    }
    Ok(ChunkInfo {
        has_text: c.choices.is_some_and(|c| c.0),
        usage: c.usage,
    })
}

/// `(prompt_tokens, completion_tokens)` of a non-streamed response (0 without `usage`).
pub(crate) fn parse_completion(body: &[u8]) -> Result<(u64, u64), String> {
    #[derive(Deserialize)]
    struct Completion {
        usage: Option<Usage>,
        error: Option<serde_json::Value>,
    }
    let c: Completion = serde_json::from_slice(body)
        .map_err(|e| format!("bad response body ({e}): {}", error_message(body)))?;
    if let Some(e) = c.error.filter(|e| !e.is_null()) {
        return Err(error_value_message(&e));
    }
    let u = c.usage.unwrap_or_default();
    Ok((u.prompt_tokens, u.completion_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks() {
        let text = |s: &str| parse_chunk(s.as_bytes()).unwrap();
        assert!(text(r#"{"choices":[{"index":0,"text":"hi","logprobs":null}]}"#).has_text);
        assert!(!text(r#"{"choices":[{"index":0,"text":""}]}"#).has_text);
        assert!(text(r#"{"choices":[{"delta":{"content":"\u00e9"}}]}"#).has_text);
        assert!(!text(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#).has_text);
        assert!(!text(r#"{"choices":[{"delta":{"content":null}}]}"#).has_text);
        assert!(!text(r#"{"choices":[]}"#).has_text);
        assert!(text(r#"{"choices":[{"text":"a"},{"text":""}],"id":"x"}"#).has_text);
        let u = text(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
        );
        assert_eq!(
            u,
            ChunkInfo {
                has_text: false,
                usage: Some(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 7
                })
            }
        );
        assert_eq!(
            text(r#"{"choices":[{"text":"x"}],"usage":null}"#).usage,
            None
        );
        assert_eq!(
            parse_chunk(br#"{"error":{"message":"overloaded","type":"server_error"}}"#),
            Err("overloaded".to_string())
        );
        assert_eq!(
            parse_chunk(br#"{"error":"plain"}"#),
            Err("plain".to_string())
        );
        assert!(parse_chunk(b"{not json")
            .unwrap_err()
            .contains("bad stream chunk"));
    }

    #[test]
    fn completions_and_errors() {
        let body = br#"{"id":"c","choices":[{"text":"abc"}],"usage":{"prompt_tokens":3,"completion_tokens":9}}"#;
        assert_eq!(parse_completion(body), Ok((3, 9)));
        assert_eq!(parse_completion(br#"{"choices":[]}"#), Ok((0, 0)));
        assert_eq!(
            parse_completion(br#"{"error":{"message":"nope"}}"#),
            Err("nope".to_string())
        );
        assert_eq!(
            error_message(br#"{"error":{"message":"queue full","type":"server_error"}}"#),
            "queue full"
        );
        assert_eq!(error_message(b"Service Unavailable"), "Service Unavailable");
        assert_eq!(error_message(b""), "(empty body)");
        let long = "é".repeat(300);
        assert_eq!(error_message(long.as_bytes()).chars().count(), 201);
    }
}
