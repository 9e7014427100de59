//! The OpenAPI 3.1 document of every route (`GET /openapi.json`).

use crate::error::{ErrorBody, ErrorEnvelope};
use crate::routes;
use crate::types::*;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "BitNet-Rust server",
        description = "OpenAI-compatible API for BitNet b1.58 models, with continuous batching. \
            With `bitnet serve --auth`, every /v1, /tokenize, /detokenize and /admin route needs \
            `Authorization: Bearer KEY`; /admin needs an admin key."
    ),
    paths(
        routes::chat::chat_completions,
        routes::completions::completions,
        routes::misc::models,
        routes::misc::model,
        routes::misc::tokenize,
        routes::misc::detokenize,
        routes::misc::health,
        routes::misc::ready,
        routes::misc::metrics,
        routes::misc::openapi,
        routes::ws::stream,
        routes::admin::tenants,
        routes::admin::create_tenant,
        routes::admin::keys,
        routes::admin::create_key,
        routes::admin::key,
        routes::admin::update_key,
        routes::admin::delete_key,
        routes::admin::rotate_key,
        routes::admin::usage,
        routes::admin::audit,
        routes::admin::webhooks,
        routes::batches::upload,
        routes::batches::files,
        routes::batches::file,
        routes::batches::file_content,
        routes::batches::delete_file,
        routes::batches::create_batch,
        routes::batches::batch,
        routes::batches::batches,
        routes::batches::cancel_batch,
    ),
    components(schemas(
        ErrorEnvelope,
        ErrorBody,
        ChatRequest,
        CompletionRequest,
        ChatCompletion,
        ChatChunk,
        Completion,
        ModelList,
        ModelCard,
        TokenizeRequest,
        TokenizeResponse,
        DetokenizeRequest,
        DetokenizeResponse,
        HealthResponse,
        Usage
    ))
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
