//! `POST /v1/completions`.

use super::{respond, start, Prepared};
use crate::app::AppState;
use crate::error::{parse_json, ApiError, ErrorEnvelope};
use crate::params;
use crate::stream::Kind;
use crate::tenancy::Caller;
use crate::types::{Completion, CompletionRequest, PromptField};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::sync::Arc;

/// Most prompts in one request.
const MAX_PROMPTS: usize = 64;

fn prepare(state: &AppState, body: &[u8]) -> Result<Prepared, ApiError> {
    parse_json::<crate::types::SamplingFields>(body)?;
    let req: CompletionRequest = parse_json(body)?;
    let l = state.model_for(req.model.as_deref())?;
    let mut c = params::common(&req.sampling, None, &l.defaults, l.vocab)?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=20).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::param(
                "logprobs",
                format!("`logprobs` must be between 0 and 20, got {k}"),
            ))
        }
    };
    let encode = |t: &str| {
        l.tok
            .encode(t, true)
            .map_err(|e| ApiError::internal(format!("tokenizing the prompt: {e}")))
    };
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        PromptField::Text(t) => vec![encode(t)?],
        PromptField::Texts(v) => v.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        PromptField::Tokens(ids) => vec![ids.clone()],
        PromptField::TokenLists(v) => v.clone(),
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(ApiError::param(
            "prompt",
            format!(
                "`prompt` must hold 1 to {MAX_PROMPTS} prompts, got {}",
                prompts.len()
            ),
        ));
    }
    let mut max_tokens = usize::MAX;
    for (i, p) in prompts.iter().enumerate() {
        if let Some(&bad) = p.iter().find(|&&t| t as usize >= l.vocab) {
            return Err(ApiError::param(
                "prompt",
                format!(
                    "prompt {i}: token id {bad} is outside the vocabulary of {}",
                    l.vocab
                ),
            ));
        }
        max_tokens = max_tokens.min(params::fit_context("prompt", p.len(), c.max_tokens, l.ctx)?);
    }
    c.job.max_tokens = max_tokens;
    c.job.logprobs = logprobs;
    let echo = req.echo.unwrap_or(false);
    let mut seqs = Vec::with_capacity(prompts.len() * c.n);
    let mut echo_text = Vec::new();
    let mut prompt_tokens = 0;
    for p in prompts {
        let text = if echo {
            l.tok
                .decode(&p, true)
                .map_err(|e| ApiError::internal(format!("detokenizing the prompt: {e}")))?
        } else {
            String::new()
        };
        let p = Arc::new(p);
        for _ in 0..c.n {
            prompt_tokens += p.len();
            echo_text.push(text.clone());
            seqs.push((seqs.len(), p.clone()));
        }
    }
    if !echo {
        echo_text.clear();
    }
    Ok(Prepared {
        loaded: l,
        seqs,
        params: c.job,
        kind: Kind::Completion { echo: echo_text },
        stream: c.stream,
        include_usage: c.include_usage,
        prompt_tokens,
        prefix: "cmpl",
    })
}

/// Creates a text completion (streamed as server-sent events with `stream: true`).
#[utoipa::path(
    post,
    path = "/v1/completions",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion, or an SSE stream of `text_completion` chunks ending in `data: [DONE]`", body = Completion),
        (status = 400, description = "Bad parameter or context length exceeded", body = ErrorEnvelope),
        (status = 401, description = "Missing, wrong, blocked or expired API key (with --auth)", body = ErrorEnvelope),
        (status = 403, description = "The key may not use this model", body = ErrorEnvelope),
        (status = 404, description = "Unknown model", body = ErrorEnvelope),
        (status = 429, description = "Rate limit (`requests`/`tokens`) or budget (`insufficient_quota`), with Retry-After and x-ratelimit-* headers", body = ErrorEnvelope),
        (status = 503, description = "Queue full, deadline passed, loading or shutting down (with Retry-After)", body = ErrorEnvelope),
    )
)]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let p = match prepare(&state, &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match start(&state, &caller, p).await {
        Ok(started) => respond(started).await,
        Err(e) => e.into_response(),
    }
}
