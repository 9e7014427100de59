//! Route handlers, one file per endpoint group.

pub mod admin;
pub mod batches;
pub mod chat;
pub mod completions;
pub mod misc;
pub mod ws;

use crate::app::{unix_now, AppState, Loaded};
use crate::engine::{Job, JobParams};
use crate::error::ApiError;
use crate::stream::{Kind, Session};
use crate::tenancy::{Caller, Metering};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// A generation request ready for the engine.
pub struct Prepared {
    /// The model.
    pub loaded: Arc<Loaded>,
    /// `(choice index, prompt ids)` per sequence.
    pub seqs: Vec<(usize, Arc<Vec<u32>>)>,
    /// Engine parameters.
    pub params: JobParams,
    /// Response shape.
    pub kind: Kind,
    /// Stream the answer.
    pub stream: bool,
    /// Send the usage chunk.
    pub include_usage: bool,
    /// Prompt tokens in the usage.
    pub prompt_tokens: usize,
    /// Id prefix (`chatcmpl` / `cmpl`).
    pub prefix: &'static str,
}

/// A started generation: the session, whether to stream, and the rate-limit headers.
pub struct Started {
    /// The response state.
    pub session: Session,
    /// Stream the answer.
    pub stream: bool,
    /// `x-ratelimit-*` headers (authenticated requests).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Checks the caller's access and limits, submits to the engine and waits for admission
/// (503 on a full queue or a missed deadline).
pub async fn start(state: &AppState, caller: &Caller, p: Prepared) -> Result<Started, ApiError> {
    let admission =
        crate::tenancy::admit(&state.tenancy, caller, &p.loaded.model_id, p.prompt_tokens).await?;
    let headers = admission
        .as_ref()
        .map(|a| crate::tenancy::rate_headers(&a.info))
        .unwrap_or_default();
    let queue_timeout = state.config.queue_timeout;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Time-ordered (UUIDv7): usage rows keyed by this id are appended to the index, not
    // scattered over it.
    let id = format!("{}-{}", p.prefix, uuid::Uuid::now_v7().simple());
    let prompt_tokens = p.prompt_tokens;
    let choices = p.seqs.len();
    let mut metering =
        admission.map(|a| Metering::new(a, caller, &id, &p.loaded.model_id, prompt_tokens));
    if let Err(e) = p.loaded.engine.submit(Job {
        id: id.clone(),
        seqs: p.seqs,
        params: p.params,
        events: tx,
    }) {
        if let Some(m) = metering.as_mut() {
            m.refused(e.status.as_u16());
        }
        return Err(e);
    }
    let mut session = Session::new(
        id,
        unix_now(),
        p.loaded.model_id.clone(),
        p.loaded.fingerprint.clone(),
        p.kind,
        choices,
        p.include_usage,
        p.prompt_tokens,
        p.loaded.tok.clone(),
        rx,
    );
    if let Some(m) = metering {
        session.set_metering(m);
    }
    if let Err(e) = session
        .admitted(queue_timeout + Duration::from_secs(5))
        .await
    {
        session.meter_refused(e.status.as_u16());
        return Err(e);
    }
    Ok(Started {
        session,
        stream: p.stream,
        headers,
    })
}

/// Answers a started session: SSE when streaming, else one JSON body.
pub async fn respond(started: Started) -> Response {
    let extra = started.headers.len();
    let mut r = respond_inner(started.session, started.stream, extra).await;
    r.headers_mut().reserve(extra);
    for (name, value) in started.headers {
        r.headers_mut().insert(name, value);
    }
    r
}

/// A JSON response whose header map has room for `extra` more headers (plus the request id
/// and the others the middleware adds) from the start: growing it later is a second, larger
/// allocation and a copy on every response that carries the `x-ratelimit-*` headers.
fn json_response(v: &serde_json::Value, extra: usize) -> Response {
    let mut body = Vec::with_capacity(512);
    if let Err(e) = serde_json::to_writer(&mut body, v) {
        return ApiError::internal(format!("serializing the response: {e}")).into_response();
    }
    let mut headers = axum::http::HeaderMap::with_capacity(extra + 4);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut r = Response::new(axum::body::Body::from(body));
    *r.headers_mut() = headers;
    r
}

async fn respond_inner(session: Session, stream: bool, extra: usize) -> Response {
    if !stream {
        return match session.collect().await {
            Ok(v) => json_response(&v, extra),
            Err(e) => e.into_response(),
        };
    }
    let events = futures_util::stream::unfold(session, |mut s| async move {
        let item = s.next().await?;
        let ev = match item {
            crate::stream::Payload::Json(j) => SseEvent::default().data(j),
            crate::stream::Payload::Done => SseEvent::default().data("[DONE]"),
            crate::stream::Payload::Error(e) => SseEvent::default().data(e),
        };
        Some((Ok::<_, Infallible>(ev), s))
    });
    let mut r = Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(10))
                .text(" ping"),
        )
        .into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
