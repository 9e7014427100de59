//! API keys, limits and metering in the request path: the authentication middleware, the
//! admission of generation requests (model access, RPM/TPM/parallel limits, budgets) with
//! the `x-ratelimit-*` headers, and the usage row every admitted request leaves.

use crate::app::AppState;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bitnet_tenancy::{Admission, ApiKey, AuthError, RateInfo, Refusal, Role, Tenancy, UsageRow};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who sent the request.
#[derive(Clone, Default)]
pub struct Caller {
    /// The key whose role, models and limits apply; `None` on an open server.
    pub key: Option<Arc<ApiKey>>,
    /// For an OIDC caller, `oidc:SUB` (the audit log's actor).
    pub subject: Option<String>,
}

/// Whether `path` needs a key when auth is on (everything but health, readiness, metrics
/// and the OpenAPI document).
fn protected(path: &str) -> bool {
    path.starts_with("/v1/")
        || path == "/v1"
        || path.starts_with("/tokenize")
        || path.starts_with("/detokenize")
        || path.starts_with("/admin")
}

/// The WebSocket subprotocol prefix that carries a key where a browser cannot set headers
/// (`Sec-WebSocket-Protocol: bitnet.v1, openai-insecure-api-key.KEY`, OpenAI's convention).
pub const WS_KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// The bearer token of a request: `Authorization: Bearer KEY`, or for a WebSocket upgrade
/// without that header, a [`WS_KEY_PROTOCOL`] subprotocol.
pub fn bearer(req: &Request<Body>) -> Option<&str> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let (scheme, token) = v.to_str().ok()?.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim());
    }
    req.headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?
        .split(',')
        .find_map(|p| p.trim().strip_prefix(WS_KEY_PROTOCOL))
}

/// Middleware: authenticates protected routes (401), keeps `/admin` for admin keys (403),
/// and puts the [`Caller`] into the request for the handlers.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    // The batch runner's own requests carry their caller (never set from the network).
    if let Some(crate::batch::InternalCaller(c)) = req.extensions_mut().remove() {
        req.extensions_mut().insert(c);
        return next.run(req).await;
    }
    let mut caller = Caller::default();
    if let Some(t) = &state.tenancy {
        let path = req.uri().path();
        if protected(path) {
            let admin_route = path.starts_with("/admin");
            match t.authenticate(bearer(&req)).await {
                Ok(a) => {
                    if admin_route && a.key.role != Role::Admin {
                        crate::metrics::rejected_by_tenancy(
                            &state.config.model_name,
                            Some(&a.key.tenant_id),
                            "forbidden",
                        );
                        let who = if a.subject.is_some() {
                            "caller"
                        } else {
                            "API key"
                        };
                        return ApiError::forbidden(format!(
                            "This {who} is not an admin: /admin needs role admin"
                        ))
                        .into_response();
                    }
                    caller = Caller {
                        key: Some(a.key),
                        subject: a.subject,
                    };
                }
                Err(AuthError::Store(e)) => {
                    tracing::error!("authenticating a request: {e}");
                    return ApiError::overloaded("The key store is unavailable", 5).into_response();
                }
                Err(AuthError::Forbidden(m)) => {
                    crate::metrics::rejected_by_tenancy(
                        &state.config.model_name,
                        None,
                        "forbidden",
                    );
                    return ApiError::forbidden(m).into_response();
                }
                Err(e) => {
                    crate::metrics::rejected_by_tenancy(
                        &state.config.model_name,
                        None,
                        "unauthorized",
                    );
                    return ApiError::unauthorized(e.to_string()).into_response();
                }
            }
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// The `Ns` reset value for `ms`; the values of a one-minute window are made once and
/// shared (a clone is a reference count, not an allocation on every response).
fn reset_value(ms: i64) -> HeaderValue {
    static COMMON: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let secs = (ms.max(0) + 999) / 1000;
    let common = COMMON.get_or_init(|| (0..=60).map(seconds_value).collect());
    match usize::try_from(secs).ok().and_then(|s| common.get(s)) {
        Some(v) => v.clone(),
        None => seconds_value(secs),
    }
}

/// `Ns` as a header value (digits and `s` are always valid header bytes).
fn seconds_value(secs: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("{secs}s")).unwrap_or_else(|_| HeaderValue::from_static("60s"))
}

/// `n` as a header value with one allocation (`HeaderValue::from(i64)` takes two: its
/// buffer, then a shared header for the buffer's spare room when it is frozen).
fn int_value(n: i64) -> HeaderValue {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    // Digits and '-' are always valid header bytes.
    HeaderValue::from_bytes(&buf[i..]).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A key's limit as a header value: the same few limits come back on every response, so the
/// values are kept per thread (a clone is a reference count, not an allocation).
fn limit_value(n: i64) -> HeaderValue {
    const KEPT: usize = 8;
    thread_local! {
        static LIMITS: std::cell::RefCell<(usize, Vec<(i64, HeaderValue)>)> =
            const { std::cell::RefCell::new((0, Vec::new())) };
    }
    LIMITS.with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return int_value(n);
        };
        if let Some((_, v)) = c.1.iter().find(|(k, _)| *k == n) {
            return v.clone();
        }
        let v = int_value(n);
        let (next, kept) = &mut *c;
        if kept.len() < KEPT {
            kept.push((n, v.clone()));
        } else {
            kept[*next] = (n, v.clone());
            *next = (*next + 1) % KEPT;
        }
        v
    })
}

/// `x-ratelimit-*` headers for `info`.
pub fn rate_headers(info: &RateInfo) -> Vec<(HeaderName, HeaderValue)> {
    let reset = reset_value(info.reset_ms);
    let mut h = Vec::with_capacity(6);
    if let (Some(l), Some(r)) = (info.limit_requests, info.remaining_requests) {
        h.push((LIMIT_REQUESTS, limit_value(l)));
        h.push((REMAINING_REQUESTS, int_value(r)));
        h.push((RESET_REQUESTS, reset.clone()));
    }
    if let (Some(l), Some(r)) = (info.limit_tokens, info.remaining_tokens) {
        h.push((LIMIT_TOKENS, limit_value(l)));
        h.push((REMAINING_TOKENS, int_value(r)));
        h.push((RESET_TOKENS, reset));
    }
    h
}

fn retry_secs(ms: i64) -> u64 {
    ((ms.max(0) + 999) / 1000).max(1) as u64
}

/// The API error for a refused admission.
pub fn refusal(r: Refusal, key: &ApiKey, prompt_tokens: i64) -> ApiError {
    match r {
        Refusal::Model(m) => {
            ApiError::forbidden(format!("This API key may not use the model `{m}`"))
        }
        Refusal::Requests(i) => {
            let mut e = ApiError::rate_limited(
                "requests",
                format!(
                    "Rate limit reached for requests per minute: limit {}, used {}. Retry in {} s.",
                    i.limit_requests.unwrap_or(0),
                    i.limit_requests.unwrap_or(0) - i.remaining_requests.unwrap_or(0),
                    retry_secs(i.reset_ms)
                ),
                retry_secs(i.reset_ms),
            );
            e.headers = Some(Box::new(rate_headers(&i)));
            e
        }
        Refusal::Tokens(i) => {
            let limit = i.limit_tokens.unwrap_or(0);
            let msg = if prompt_tokens > limit {
                format!(
                    "This request's {prompt_tokens} prompt tokens exceed the key's limit of \
                     {limit} tokens per minute"
                )
            } else {
                format!(
                    "Rate limit reached for tokens per minute: limit {limit}, used {}, requested \
                     {prompt_tokens}. Retry in {} s.",
                    limit - i.remaining_tokens.unwrap_or(0),
                    retry_secs(i.reset_ms)
                )
            };
            let mut e = ApiError::rate_limited("tokens", msg, retry_secs(i.reset_ms));
            e.headers = Some(Box::new(rate_headers(&i)));
            e
        }
        Refusal::Parallel(i, limit) => {
            let mut e = ApiError::rate_limited(
                "requests",
                format!("Too many requests at once for this API key (limit {limit} in parallel)"),
                1,
            );
            e.headers = Some(Box::new(rate_headers(&i)));
            e
        }
        Refusal::Budget(budget, spent, end) => {
            let retry = if end == i64::MAX {
                86_400
            } else {
                retry_secs(end - bitnet_tenancy::now_ms())
            };
            ApiError::insufficient_quota(
                format!(
                    "You exceeded your token budget: {spent} of {budget} tokens used{}",
                    match key.budget_period {
                        Some(p) if p != bitnet_tenancy::Period::Total =>
                            format!(" this {} period", p.as_str()),
                        _ => String::new(),
                    }
                ),
                retry,
            )
        }
        Refusal::Store(e) => {
            tracing::error!("checking limits: {e}");
            ApiError::overloaded("The rate-limit store is unavailable", 5)
        }
    }
}

/// Admits a generation request of `caller` (no-op on an open server).
pub async fn admit(
    tenancy: &Option<Arc<Tenancy>>,
    caller: &Caller,
    model: &str,
    prompt_tokens: usize,
) -> Result<Option<Admission>, ApiError> {
    let (Some(t), Some(key)) = (tenancy, &caller.key) else {
        return Ok(None);
    };
    let p = prompt_tokens as i64;
    t.admit(key, model, p).await.map(Some).map_err(|r| {
        let reason = match &r {
            Refusal::Model(_) => "model_forbidden",
            Refusal::Requests(_) => "rate_limited_requests",
            Refusal::Tokens(_) => "rate_limited_tokens",
            Refusal::Parallel(..) => "rate_limited_parallel",
            Refusal::Budget(..) => "insufficient_quota",
            Refusal::Store(_) => "store_unavailable",
        };
        crate::metrics::rejected_by_tenancy(model, Some(&key.tenant_id), reason);
        refusal(r, key, p)
    })
}

/// The usage row of one admitted request, written when it ends — completed, failed, or
/// cancelled by the client going away (then with the tokens sent so far).
pub struct Metering {
    admission: Option<Admission>,
    request_id: String,
    model: String,
    prompt_tokens: i64,
    subject: Option<String>,
    started: Instant,
    first_token: Option<Duration>,
    tokens_sent: i64,
}

impl Metering {
    /// Starts metering `admission` for the response `request_id` of `caller`.
    pub fn new(
        admission: Admission,
        caller: &Caller,
        request_id: &str,
        model: &str,
        prompt_tokens: usize,
    ) -> Self {
        Metering {
            admission: Some(admission),
            request_id: request_id.to_string(),
            model: model.to_string(),
            prompt_tokens: prompt_tokens as i64,
            subject: caller.subject.clone(),
            started: Instant::now(),
            first_token: None,
            tokens_sent: 0,
        }
    }

    /// A token went out.
    pub fn token(&mut self) {
        if self.first_token.is_none() {
            self.first_token = Some(self.started.elapsed());
        }
        self.tokens_sent += 1;
    }

    /// The row of this request with `tokens` = (prompt, completion), borrowing its text (it
    /// is serialized into the journal, not kept).
    fn row<'a>(
        &'a self,
        key: &'a ApiKey,
        tokens: (i64, i64),
        status: u16,
        reason: &'a str,
    ) -> UsageRow<'a> {
        UsageRow {
            request_id: Cow::Borrowed(&self.request_id),
            ts_ms: bitnet_tenancy::now_ms(),
            tenant_id: Cow::Borrowed(&key.tenant_id),
            key_id: Cow::Borrowed(&key.id),
            model: Cow::Borrowed(&self.model),
            prompt_tokens: tokens.0,
            completion_tokens: tokens.1,
            ttft_ms: self.first_token.map(|d| d.as_millis() as i64),
            duration_ms: self.started.elapsed().as_millis() as i64,
            status: i64::from(status),
            finish_reason: Cow::Borrowed(reason),
            subject: self.subject.as_deref().map(Cow::Borrowed),
        }
    }

    /// The request ended: writes its row (once).
    pub fn finish(&mut self, completion_tokens: Option<usize>, status: u16, finish_reason: &str) {
        let Some(a) = self.admission.take() else {
            return;
        };
        let completion = completion_tokens
            .map(|c| c as i64)
            .unwrap_or(self.tokens_sent);
        let key = a.key.clone();
        let rec = self.row(
            &key,
            (self.prompt_tokens, completion),
            status,
            finish_reason,
        );
        a.finish(rec);
    }

    /// The engine refused the request before generating (queue full, deadline, shutdown):
    /// a row with no tokens and `status`, and the prompt tokens charged at admission are
    /// given back.
    pub fn refused(&mut self, status: u16) {
        let Some(a) = self.admission.take() else {
            return;
        };
        let key = a.key.clone();
        let rec = self.row(&key, (0, 0), status, "refused");
        a.refund(rec, self.prompt_tokens);
    }
}

impl Drop for Metering {
    fn drop(&mut self) {
        // 499: the client closed the request (nginx's convention).
        self.finish(None, 499, "cancelled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_header_values_match_the_decimal_form() {
        for n in [0, 7, -7, 10, 99, 1_000_000_007, -42_000, i64::MAX, i64::MIN] {
            assert_eq!(int_value(n).to_str().unwrap(), n.to_string(), "{n}");
            // Twice, and past the per-thread table's size: always the right value.
            for m in [n, n.wrapping_add(1), n, n.wrapping_sub(3)] {
                assert_eq!(limit_value(m).to_str().unwrap(), m.to_string(), "{m}");
            }
        }
    }
}
