//! Models, tokenization, health, readiness, metrics, the OpenAPI document, and 404s.

use crate::app::AppState;
use crate::error::{parse_json, ApiError, ErrorEnvelope};
use crate::tenancy::Caller;
use crate::types::*;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use std::sync::Arc;

fn card(state: &AppState) -> Result<ModelCard, ApiError> {
    let l = state.loaded()?;
    Ok(ModelCard {
        id: l.model_id.clone(),
        object: "model",
        created: state.started,
        owned_by: "bitnet-rust",
        max_model_len: l.ctx,
    })
}

/// Lists the served model.
#[utoipa::path(get, path = "/v1/models", responses(
    (status = 200, body = ModelList),
    (status = 503, description = "Model loading", body = ErrorEnvelope)))]
pub async fn models(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    match card(&state) {
        Ok(c) => Json(ModelList {
            object: "list",
            // A key limited to other models sees none.
            data: if allowed(&caller, &c.id) {
                vec![c]
            } else {
                vec![]
            },
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Whether `caller` may use `model` (always on an open server).
fn allowed(caller: &Caller, model: &str) -> bool {
    caller.key.as_ref().is_none_or(|k| k.allows_model(model))
}

/// Describes one model.
#[utoipa::path(get, path = "/v1/models/{model}",
    params(("model" = String, Path, description = "Model id")),
    responses((status = 200, body = ModelCard), (status = 404, body = ErrorEnvelope)))]
pub async fn model(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
) -> Response {
    if !allowed(&caller, &model) {
        return ApiError::forbidden(format!("This API key may not use the model `{model}`"))
            .into_response();
    }
    match state.model_for(Some(&model)).and_then(|_| card(&state)) {
        Ok(c) => Json(c).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Tokenizes a prompt, or a conversation rendered with the chat template.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest, responses(
    (status = 200, body = TokenizeResponse), (status = 400, body = ErrorEnvelope)))]
pub async fn tokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = || -> Result<TokenizeResponse, ApiError> {
        let req: TokenizeRequest = parse_json(&body)?;
        let l = state.model_for(req.model.as_deref())?;
        let tokens = match (&req.messages, req.prompt.as_ref().or(req.content.as_ref())) {
            (Some(m), None) => super::chat::render_messages(&l, m)?,
            (None, Some(text)) => l
                .tok
                .encode(text, req.add_special_tokens.unwrap_or(true))
                .map_err(|e| ApiError::internal(format!("tokenizing: {e}")))?,
            _ => {
                return Err(ApiError::param(
                    "prompt",
                    "Give exactly one of `prompt` (or `content`) and `messages`",
                ))
            }
        };
        Ok(TokenizeResponse {
            count: tokens.len(),
            max_model_len: l.ctx,
            tokens,
        })
    };
    match run() {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Turns token ids back into text.
#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest, responses(
    (status = 200, body = DetokenizeResponse), (status = 400, body = ErrorEnvelope)))]
pub async fn detokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let run = || -> Result<DetokenizeResponse, ApiError> {
        let req: DetokenizeRequest = parse_json(&body)?;
        let l = state.model_for(req.model.as_deref())?;
        if let Some(&bad) = req.tokens.iter().find(|&&t| t as usize >= l.vocab) {
            return Err(ApiError::param(
                "tokens",
                format!("token id {bad} is outside the vocabulary of {}", l.vocab),
            ));
        }
        let prompt = l
            .tok
            .decode(&req.tokens, false)
            .map_err(|e| ApiError::internal(format!("detokenizing: {e}")))?;
        Ok(DetokenizeResponse { prompt })
    };
    match run() {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthResponse)))]
pub async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok" })
}

/// Readiness: 200 once the model is loaded and the engine accepts work; 503 while loading
/// or shutting down.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, body = HealthResponse),
    (status = 503, description = "Loading or shutting down", body = ErrorEnvelope)))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.loaded.get() {
        Some(l) if l.engine.is_ready() => Json(HealthResponse { status: "ready" }).into_response(),
        Some(_) => ApiError::overloaded("The server is shutting down", 5).into_response(),
        None => ApiError::overloaded("The model is still loading", 5).into_response(),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match &state.prometheus {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            h.render(),
        )
            .into_response(),
        None => ApiError::internal("metrics are handled by the embedding program").into_response(),
    }
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", responses(
    (status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

/// Unknown routes: 404 in the envelope.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    let mut e = ApiError::from_status(
        axum::http::StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {})", uri.path()),
    );
    e.code = Some("unknown_url");
    e.into_response()
}
