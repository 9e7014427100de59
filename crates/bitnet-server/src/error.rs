//! The OpenAI error envelope (`{"error":{"message","type","param","code"}}`) with the status
//! codes of SERVING.md, and the middleware that puts every non-JSON error (unknown route, wrong
//! method, body too large, timeout) into it.

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An API error: status, OpenAI `type`, `code`, `param` and message, plus `Retry-After` for
/// 429/503.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI error `type`.
    pub kind: &'static str,
    /// OpenAI error `code` (null when absent).
    pub code: Option<&'static str>,
    /// The request parameter at fault.
    pub param: Option<String>,
    /// Human-readable message.
    pub message: String,
    /// Seconds for the `Retry-After` header.
    pub retry_after: Option<u64>,
    /// More headers (`x-ratelimit-*` on a 429); boxed to keep the error small.
    pub headers: Option<Box<Vec<(HeaderName, HeaderValue)>>>,
}

/// The JSON envelope.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The body of the envelope.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Human-readable message.
    pub message: String,
    /// `invalid_request_error`, `permission_error`, `server_error`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The request parameter at fault, or null.
    pub param: Option<String>,
    /// A machine-readable code, or null.
    pub code: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
            headers: None,
        }
    }

    /// 401 `invalid_api_key`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message);
        e.code = Some("invalid_api_key");
        e
    }

    /// 403 `permission_error`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    /// 429 `rate_limit_exceeded`, of type `requests` or `tokens`.
    pub fn rate_limited(kind: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, message);
        e.code = Some("rate_limit_exceeded");
        e.retry_after = Some(retry_after.max(1));
        e
    }

    /// 429 `insufficient_quota`: the budget is spent.
    pub fn insufficient_quota(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message);
        e.code = Some("insufficient_quota");
        e.retry_after = Some(retry_after.max(1));
        e
    }

    /// 404 for an unknown tenant or key (admin API).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    /// 409 for a name already taken (admin API).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", message)
    }

    /// 400 for a bad request parameter, naming it.
    pub fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param.into());
        e
    }

    /// 400 for a request that is not valid JSON or not an object.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(model: &str, served: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist. This server serves `{served}`."),
        );
        e.code = Some("model_not_found");
        e.param = Some("model".into());
        e
    }

    /// 400 `context_length_exceeded`: never truncate silently.
    pub fn context_length(param: &str, prompt: usize, max_tokens: usize, ctx: usize) -> Self {
        let mut e = Self::param(
            param,
            format!(
                "This model's maximum context length is {ctx} tokens. However, you requested \
                 {} tokens ({prompt} in the prompt, {max_tokens} for the completion). Please \
                 reduce the length of the prompt or the completion.",
                prompt + max_tokens
            ),
        );
        e.code = Some("context_length_exceeded");
        e
    }

    /// 503: queue full, deadline passed, shutting down, or model still loading.
    pub fn overloaded(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.retry_after = Some(retry_after.max(1));
        e
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// An error for a status produced outside the handlers.
    pub fn from_status(status: StatusCode, detail: &str) -> Self {
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let mut e = Self::new(status, kind, detail.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            e.retry_after = Some(1);
        }
        e
    }

    /// The envelope as a JSON value.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorBody {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.map(String::from),
            },
        }
    }

    /// The envelope serialized.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.envelope()).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#
                .to_string()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.to_json(),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        for (name, value) in self.headers.into_iter().flat_map(|h| h.into_iter()) {
            r.headers_mut().insert(name, value);
        }
        r
    }
}

/// Middleware: an error response that is not already JSON (axum's 405, the body limit's 413,
/// the timeout's 408, …) is replaced by the envelope with the same status.
pub async fn envelope_errors(req: Request<Body>, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => format!("Invalid URL ({method} {path})"),
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("Method {method} is not allowed for {path}")
        }
        StatusCode::PAYLOAD_TOO_LARGE => "The request body is too large".to_string(),
        StatusCode::REQUEST_TIMEOUT => "The request timed out".to_string(),
        s => s.canonical_reason().unwrap_or("request failed").to_string(),
    };
    let mut e = ApiError::from_status(status, &detail);
    if let Some(ra) = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        e.retry_after = Some(ra);
    }
    let mut out = e.into_response();
    for name in ["x-request-id", "allow"] {
        if let Some(v) = resp.headers().get(name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// Parses a JSON request body; a syntax error is a 400 without `param`, a wrong type or
/// missing field a 400 naming the parameter's path (`messages[0].content`, `temperature`).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "The request body is empty: expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::invalid(format!(
                    "The request body is not valid JSON: {inner}"
                )));
            }
            if (path.is_empty() || path == ".") && inner.to_string().contains("expected struct") {
                return Err(ApiError::invalid("The request body must be a JSON object"));
            }
            if path.is_empty() || path == "." {
                // A missing top-level field: serde names it in the message.
                let msg = inner.to_string();
                let param = msg
                    .split('`')
                    .nth(1)
                    .filter(|_| msg.starts_with("missing field"))
                    .map(String::from);
                return Err(match param {
                    Some(p) => ApiError::param(p, format!("Invalid request: {msg}")),
                    None => ApiError::invalid(format!("Invalid request: {msg}")),
                });
            }
            let msg = format!("Invalid value for `{path}`: {inner}");
            Err(ApiError::param(path, msg))
        }
    }
}
