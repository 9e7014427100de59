//! `POST /v1/chat/completions`.

use super::{respond, start, Prepared};
use crate::app::{AppState, Loaded};
use crate::error::{parse_json, ApiError, ErrorEnvelope};
use crate::params;
use crate::stream::Kind;
use crate::tenancy::Caller;
use crate::types::{ChatCompletion, ChatMessageIn, ChatRequest, MessageContent};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bitnet_engine::ChatMessage;
use std::sync::Arc;

/// Renders `messages` with the model's chat template and tokenizes the result.
pub fn render_messages(l: &Loaded, messages: &[ChatMessageIn]) -> Result<Vec<u32>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::param("messages", "`messages` must not be empty"));
    }
    let mut msgs = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::param(
                    format!("messages[{i}].role"),
                    format!(
                    "Unknown role {other:?}: expected system, developer, user, assistant or tool"
                ),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut s = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::param(
                                format!("messages[{i}].content[{j}]"),
                                format!(
                                    "Only text content parts are supported, got type {:?}",
                                    p.kind
                                ),
                            ))
                        }
                    }
                }
                s
            }
        };
        msgs.push(ChatMessage::new(role, &content));
    }
    let template = l.template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "This model has no chat template; use /v1/completions with a plain prompt",
        )
    })?;
    let text = template
        .render(&msgs, true)
        .map_err(|e| ApiError::param("messages", format!("The chat template failed: {e}")))?;
    l.tok
        .encode(&text, false)
        .map_err(|e| ApiError::internal(format!("tokenizing the conversation: {e}")))
}

/// Builds the engine request.
pub fn prepare(state: &AppState, body: &[u8], force_stream: bool) -> Result<Prepared, ApiError> {
    // Sampling fields first: their errors then name the parameter (flattened fields lose it).
    parse_json::<crate::types::SamplingFields>(body)?;
    let req: ChatRequest = parse_json(body)?;
    let l = state.model_for(req.model.as_deref())?;
    let mut c = params::common(
        &req.sampling,
        req.max_completion_tokens,
        &l.defaults,
        l.vocab,
    )?;
    let top = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if !(0..=20).contains(&k) => {
            return Err(ApiError::param(
                "top_logprobs",
                format!("`top_logprobs` must be between 0 and 20, got {k}"),
            ))
        }
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::param(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ))
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, _) => None,
    };
    let prompt = render_messages(&l, &req.messages)?;
    c.job.max_tokens = params::fit_context("messages", prompt.len(), c.max_tokens, l.ctx)?;
    c.job.logprobs = top;
    let prompt_tokens = prompt.len() * c.n;
    let prompt = Arc::new(prompt);
    Ok(Prepared {
        seqs: (0..c.n).map(|i| (i, prompt.clone())).collect(),
        loaded: l,
        params: c.job,
        kind: Kind::Chat,
        stream: c.stream || force_stream,
        include_usage: c.include_usage || force_stream,
        prompt_tokens,
        prefix: "chatcmpl",
    })
}

/// Creates a chat completion (streamed as server-sent events with `stream: true`).
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The completion, or an SSE stream of `chat.completion.chunk` objects ending in `data: [DONE]`", body = ChatCompletion),
        (status = 400, description = "Bad parameter or context length exceeded", body = ErrorEnvelope),
        (status = 401, description = "Missing, wrong, blocked or expired API key (with --auth)", body = ErrorEnvelope),
        (status = 403, description = "The key may not use this model", body = ErrorEnvelope),
        (status = 404, description = "Unknown model", body = ErrorEnvelope),
        (status = 429, description = "Rate limit (`requests`/`tokens`) or budget (`insufficient_quota`), with Retry-After and x-ratelimit-* headers", body = ErrorEnvelope),
        (status = 503, description = "Queue full, deadline passed, loading or shutting down (with Retry-After)", body = ErrorEnvelope),
    )
)]
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let p = match prepare(&state, &body, false) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match start(&state, &caller, p).await {
        Ok(started) => respond(started).await,
        Err(e) => e.into_response(),
    }
}
