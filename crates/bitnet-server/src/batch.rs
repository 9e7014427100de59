//! Batch jobs in the OpenAI Batch JSONL format: the input checks (shared with `bitnet batch`)
//! and the runner that executes stored batches (`POST /v1/batches`).
//!
//! Input lines: `{"custom_id", "method": "POST", "url": "/v1/chat/completions" |
//! "/v1/completions", "body": {…}}`; output lines: `{"id", "custom_id", "response":
//! {"status_code", "request_id", "body"}, "error"}`.
//!
//! The runner claims a batch under a lease (so one replica runs it; a dead replica's batch is
//! resumed by another), sends its lines through this server's own router as the batch's key —
//! so every line is admitted, rate-limited and metered like any other request — waits out
//! 429/503 answers (`Retry-After`), records each line's result in the database before counting
//! it, and at the end writes the output (2xx) and error files.

use crate::tenancy::Caller;
use axum::body::Body;
use axum::http::{header, Request};
use axum::Router;
use bitnet_tenancy::{Batch, BatchState, Tenancy};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Most lines in one batch (OpenAI's limit).
pub const MAX_LINES: usize = 50_000;
/// The endpoints a batch line may call.
pub const ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/completions"];

/// One input line.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLine {
    /// The caller's id for the line (unique in the file).
    pub custom_id: String,
    /// `POST`.
    pub method: String,
    /// The endpoint.
    pub url: String,
    /// The request body.
    pub body: Value,
}

/// Checks a whole input file: every line a `POST` to a supported endpoint (to `endpoint`
/// when given) with an object body, no streaming, unique `custom_id`s. The error names the
/// line (`{name} line N: …`).
pub fn parse_jsonl(
    text: &str,
    name: &str,
    endpoint: Option<&str>,
) -> Result<Vec<BatchLine>, String> {
    let mut lines = Vec::new();
    let mut ids = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let at = format!("{name} line {}", i + 1);
        let l: BatchLine = serde_json::from_str(raw)
            .map_err(|e| format!("{at}: not a batch request line: {e}"))?;
        if l.method != "POST" {
            return Err(format!(
                "{at}: method {:?}: only POST is supported",
                l.method
            ));
        }
        if !ENDPOINTS.contains(&l.url.as_str()) {
            return Err(format!(
                "{at}: url {:?}: expected /v1/chat/completions or /v1/completions",
                l.url
            ));
        }
        if let Some(e) = endpoint.filter(|e| *e != l.url) {
            return Err(format!(
                "{at}: url {:?} differs from the batch's endpoint {e:?}",
                l.url
            ));
        }
        if !l.body.is_object() {
            return Err(format!("{at}: `body` must be a JSON object"));
        }
        if l.body.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err(format!("{at}: `stream: true` is not allowed in a batch"));
        }
        if !ids.insert(l.custom_id.clone()) {
            return Err(format!("{at}: custom_id {:?} appears twice", l.custom_id));
        }
        lines.push(l);
        if lines.len() > MAX_LINES {
            return Err(format!("{name}: more than {MAX_LINES} requests"));
        }
    }
    if lines.is_empty() {
        return Err(format!("{name}: no requests"));
    }
    Ok(lines)
}

/// A caller set by the runner for its in-process requests (the authentication middleware
/// takes it instead of a bearer token; requests from the network never carry it).
#[derive(Clone)]
pub struct InternalCaller(pub Caller);

/// The answer to one batch line, however it was sent (in process or over HTTP).
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `x-request-id`.
    pub request_id: String,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// The body: JSON, or the text as a JSON string.
    pub body: Value,
}

impl Answer {
    /// Reads an answer's status, headers and body.
    pub fn new(status: u16, headers: &axum::http::HeaderMap, bytes: &[u8]) -> Answer {
        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Answer {
            status,
            request_id: h("x-request-id").unwrap_or("").to_string(),
            retry_after: h("retry-after").and_then(|v| v.parse().ok()),
            body: serde_json::from_slice(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
        }
    }

    /// Whether waiting and sending again can help: a rate limit or a full queue (a spent
    /// budget does not come back by waiting).
    pub fn worth_retrying(&self) -> bool {
        let quota = self.body["error"]["code"] == "insufficient_quota";
        (self.status == 429 && !quota) || self.status == 503
    }

    /// How long to wait before sending again (`Retry-After`, 1–60 s).
    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.retry_after.unwrap_or(1).clamp(1, 60))
    }

    /// The OpenAI batch output line of this answer.
    pub fn output_line(self, custom_id: &str) -> Value {
        json!({"id": request_id(), "custom_id": custom_id, "response": {"status_code": self.status,
            "request_id": self.request_id, "body": self.body}, "error": null})
    }
}

/// The OpenAI batch output line of a line that got no answer.
pub fn error_line(custom_id: &str, code: &str, message: &str) -> Value {
    json!({"id": request_id(), "custom_id": custom_id, "response": null,
        "error": {"code": code, "message": message}})
}

/// A new output line id (`batch_req_…`).
pub const RUN: u8 = 0;
const CANCEL: u8 = 1;
const EXPIRE: u8 = 2;
const STOP: u8 = 3;

/// Runs stored batches until stopped.
pub struct Runner {
    t: Arc<Tenancy>,
    app: Router,
    width: usize,
    owner: String,
    stop: Arc<AtomicBool>,
}

impl Runner {
    /// A runner that sends lines through `app`, `width` at a time; it stops when `stop` is set.
    pub fn new(t: Arc<Tenancy>, app: Router, width: usize, stop: Arc<AtomicBool>) -> Runner {
        Runner {
            t,
            app,
            width: width.clamp(1, 16),
            owner: bitnet_tenancy::new_id("runner"),
            stop,
        }
    }

    fn tenancy(&self) -> &Arc<Tenancy> {
        &self.t
    }

    /// Claims and runs batches until stopped (polling every second when idle); deletes
    /// expired files once a minute.
    pub async fn run(self) {
        let store = &self.tenancy().store;
        let mut swept = std::time::Instant::now() - Duration::from_secs(60);
        while !self.stop.load(Ordering::Relaxed) {
            if swept.elapsed() >= Duration::from_secs(60) {
                swept = std::time::Instant::now();
                match store.purge_expired_files(bitnet_tenancy::now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("deleted {n} expired files"),
                    Err(e) => tracing::warn!("deleting expired files: {e}"),
                }
            }
            match store.claim_batch(&self.owner, 30_000).await {
                Ok(Some(b)) => {
                    let id = b.id.clone();
                    if let Err(e) = self.run_batch(b).await {
                        tracing::warn!("batch {id}: {e} (it is resumed when its lease lapses)");
                    }
                    let _ = store.renew_batch(&id, &self.owner, 0).await;
                }
                Ok(None) => tokio::time::sleep(Duration::from_secs(1)).await,
                Err(e) => {
                    tracing::warn!("looking for batches: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    async fn run_batch(&self, b: Batch) -> Result<(), bitnet_tenancy::Error> {
        let store = &self.tenancy().store;
        let text = match store.file_content(&b.tenant_id, &b.input_file_id).await {
            Ok(t) => t,
            Err(bitnet_tenancy::Error::NotFound { .. }) => {
                return fail(
                    &b,
                    &format!("input file {} was deleted", b.input_file_id),
                    store,
                )
                .await
            }
            Err(e) => return Err(e),
        };
        let lines = match parse_jsonl(&text, &b.input_file_id, Some(&b.endpoint)) {
            Ok(l) => l,
            Err(m) => return fail(&b, &m, store).await,
        };
        if b.status == "validating" {
            store
                .set_batch_status(&b.id, BatchState::InProgress, None, None)
                .await?;
        }
        let flag = Arc::new(AtomicU8::new(match b.status.as_str() {
            "cancelling" => CANCEL,
            _ if bitnet_tenancy::now_ms() > b.expires_ms => EXPIRE,
            _ => RUN,
        }));
        let done: HashSet<i64> = store
            .batch_results(&b.id)
            .await?
            .into_iter()
            .map(|(l, _, _)| l)
            .collect();
        if b.status != "finalizing" && flag.load(Ordering::Relaxed) == RUN {
            self.send_lines(&b, &lines, &done, &flag).await?;
        }
        let why = flag.load(Ordering::Relaxed);
        if why == STOP {
            return Ok(());
        }
        if why == EXPIRE {
            for (i, l) in lines.iter().enumerate() {
                if !done.contains(&(i as i64)) {
                    let out = error_line(
                        &l.custom_id,
                        "batch_expired",
                        "This line was not sent before the batch expired.",
                    );
                    store
                        .record_batch_result(&b.id, i as i64, false, &out.to_string())
                        .await?;
                }
            }
        }
        self.finish(&b, why).await
    }

    /// Sends the lines not yet done, a few at a time, recording each result; keeps the lease
    /// and watches for cancellation, expiry and shutdown.
    async fn send_lines(
        &self,
        b: &Batch,
        lines: &[BatchLine],
        done: &HashSet<i64>,
        flag: &Arc<AtomicU8>,
    ) -> Result<(), bitnet_tenancy::Error> {
        let t = self.tenancy().clone();
        let monitor = {
            let (t, flag, stop) = (t.clone(), flag.clone(), self.stop.clone());
            let (id, owner, expires) = (b.id.clone(), self.owner.clone(), b.expires_ms);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if stop.load(Ordering::Relaxed) {
                        flag.store(STOP, Ordering::Relaxed);
                    } else if bitnet_tenancy::now_ms() > expires {
                        flag.store(EXPIRE, Ordering::Relaxed);
                    } else if let Ok(b) = t.store.batch(None, &id).await {
                        if b.status == "cancelling" {
                            flag.store(CANCEL, Ordering::Relaxed);
                        }
                    }
                    if !t
                        .store
                        .renew_batch(&id, &owner, 30_000)
                        .await
                        .unwrap_or(true)
                    {
                        flag.store(STOP, Ordering::Relaxed);
                    }
                }
            })
        };
        let caller = Caller {
            key: None,
            subject: Some(format!("batch:{}", b.id)),
        };
        let width = self.width;
        let mut next = 0usize;
        let mut running = tokio::task::JoinSet::new();
        let mut result = Ok(());
        loop {
            while running.len() < width && flag.load(Ordering::Relaxed) == RUN {
                let Some(i) = (next..lines.len()).find(|i| !done.contains(&(*i as i64))) else {
                    break;
                };
                next = i + 1;
                let line = lines[i].clone();
                let (app, t, flag, caller) =
                    (self.app.clone(), t.clone(), flag.clone(), caller.clone());
                let key_id = b.key_id.clone();
                let id = b.id.clone();
                running.spawn(async move {
                    let Some((ok, out)) = send_line(&app, &t, &key_id, caller, &line, &flag).await
                    else {
                        return Ok(());
                    };
                    t.store
                        .record_batch_result(&id, i as i64, ok, &out.to_string())
                        .await
                });
            }
            match running.join_next().await {
                Some(Ok(Err(e))) => {
                    flag.store(STOP, Ordering::Relaxed);
                    result = Err(e);
                }
                Some(_) => {}
                None => break,
            }
        }
        monitor.abort();
        result
    }

    async fn finish(&self, b: &Batch, why: u8) -> Result<(), bitnet_tenancy::Error> {
        let store = &self.tenancy().store;
        store
            .set_batch_status(&b.id, BatchState::Finalizing, None, None)
            .await?;
        let results = store.batch_results(&b.id).await?;
        let join = |ok: bool| {
            results
                .iter()
                .filter(|r| r.1 == ok)
                .map(|r| format!("{}\n", r.2))
                .collect::<String>()
        };
        let (out, err) = (join(true), join(false));
        let mut ids = (None, None);
        if !out.is_empty() {
            let f = store
                .create_file(
                    Some(&format!("file-{}-output", b.id)),
                    &b.tenant_id,
                    &b.key_id,
                    &format!("{}_output.jsonl", b.id),
                    "batch_output",
                    &out,
                    self.t.file_retention,
                )
                .await?;
            ids.0 = Some(f.id);
        }
        if !err.is_empty() {
            let f = store
                .create_file(
                    Some(&format!("file-{}-error", b.id)),
                    &b.tenant_id,
                    &b.key_id,
                    &format!("{}_error.jsonl", b.id),
                    "batch_error",
                    &err,
                    self.t.file_retention,
                )
                .await?;
            ids.1 = Some(f.id);
        }
        let state = match why {
            CANCEL => BatchState::Cancelled,
            EXPIRE => BatchState::Expired,
            _ => BatchState::Completed,
        };
        store
            .set_batch_status(
                &b.id,
                state,
                Some((ids.0.as_deref(), ids.1.as_deref())),
                None,
            )
            .await?;
        tracing::info!(
            "batch {} {:?}: {} ok, {} failed",
            b.id,
            state,
            results.iter().filter(|r| r.1).count(),
            results.iter().filter(|r| !r.1).count()
        );
        Ok(())
    }
}

async fn fail(
    b: &Batch,
    message: &str,
    store: &bitnet_tenancy::Store,
) -> Result<(), bitnet_tenancy::Error> {
    let errors =
        json!({"object": "list", "data": [{"code": "invalid_request", "message": message}]});
    store
        .set_batch_status(&b.id, BatchState::Failed, None, Some(&errors))
        .await
}

fn request_id() -> String {
    bitnet_tenancy::new_id("batch_req")
}

/// Sends one line (as the batch's key, re-read for each line so a block or deletion takes
/// effect), retrying 429/503 after their `Retry-After`; `None` when the runner must stop
/// before the line has a final answer (it is sent again on resume).
async fn send_line(
    app: &Router,
    t: &Tenancy,
    key_id: &str,
    mut caller: Caller,
    line: &BatchLine,
    flag: &AtomicU8,
) -> Option<(bool, Value)> {
    let failed =
        |code: &str, message: String| Some((false, error_line(&line.custom_id, code, &message)));
    let body = serde_json::to_vec(&line.body).unwrap_or_default();
    loop {
        if flag.load(Ordering::Relaxed) != RUN {
            return None;
        }
        match t.store.key(key_id).await {
            Ok(k) => {
                if let Some(why) = k.unusable(bitnet_tenancy::now_ms()) {
                    return failed("invalid_api_key", format!("The batch's API key: {why}"));
                }
                caller.key = Some(Arc::new(k));
            }
            Err(bitnet_tenancy::Error::NotFound { .. }) => {
                return failed("invalid_api_key", "The batch's API key was deleted".into())
            }
            Err(e) => {
                tracing::warn!("batch line {}: reading its key: {e}", line.custom_id);
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        }
        let req = Request::post(&line.url)
            .header(header::CONTENT_TYPE, "application/json")
            .extension(InternalCaller(caller.clone()))
            .body(Body::from(body.clone()));
        let Ok(req) = req else {
            return failed("invalid_request", "could not build the request".into());
        };
        let Ok(resp) = app.clone().oneshot(req).await;
        let (parts, body) = resp.into_parts();
        let bytes = match axum::body::to_bytes(body, 64 << 20).await {
            Ok(b) => b,
            Err(e) => return failed("response_error", format!("reading the answer: {e}")),
        };
        let answer = Answer::new(parts.status.as_u16(), &parts.headers, &bytes);
        if answer.worth_retrying() {
            let until = tokio::time::Instant::now() + answer.wait();
            while tokio::time::Instant::now() < until {
                if flag.load(Ordering::Relaxed) != RUN {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        let ok = (200..300).contains(&answer.status);
        return Some((ok, answer.output_line(&line.custom_id)));
    }
}
