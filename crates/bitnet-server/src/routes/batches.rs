//! The OpenAI Files and Batch APIs: `/v1/files` (upload JSONL with `purpose=batch`, list,
//! read, download, delete) and `/v1/batches` (create, read, list, cancel). Files and batches
//! belong to the caller's tenant; a batch's lines run as the key that created it (see
//! [`crate::batch`]). Needs multi-tenancy (`--auth`): the store holds them.

use crate::app::AppState;
use crate::batch::{parse_jsonl, ENDPOINTS};
use crate::error::{parse_json, ApiError, ErrorEnvelope};
use crate::routes::admin::store_error;
use crate::tenancy::Caller;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bitnet_tenancy::{ApiKey, Batch, StoredFile, Tenancy};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type R = Result<Response, ApiError>;

fn secs(ms: i64) -> i64 {
    ms / 1000
}

/// The OpenAI file object.
pub fn file_json(f: &StoredFile) -> Value {
    json!({"id": f.id, "object": "file", "bytes": f.bytes, "created_at": secs(f.created_ms),
           "filename": f.filename, "purpose": f.purpose, "status": "processed",
           "expires_at": f.expires_ms.map(secs), "status_details": null})
}

/// OpenAI's `expires_after` of an upload (`anchor` must be `created_at`, `seconds` from one
/// hour to 30 days); `None` when neither field was sent.
fn expires_after(
    anchor: Option<&str>,
    seconds: Option<&str>,
) -> Result<Option<std::time::Duration>, ApiError> {
    let (anchor, seconds) = match (anchor, seconds) {
        (None, None) => return Ok(None),
        (Some(a), Some(s)) => (a.trim(), s.trim()),
        (None, Some(_)) => {
            return Err(ApiError::param(
                "expires_after[anchor]",
                "expires_after needs both `anchor` (created_at) and `seconds`",
            ))
        }
        (Some(_), None) => {
            return Err(ApiError::param(
                "expires_after[seconds]",
                "expires_after needs both `anchor` (created_at) and `seconds`",
            ))
        }
    };
    if anchor != "created_at" {
        return Err(ApiError::param(
            "expires_after[anchor]",
            format!("anchor {anchor:?} is not supported: use created_at"),
        ));
    }
    match seconds.parse::<u64>() {
        Ok(s) if (3600..=2_592_000).contains(&s) => Ok(Some(std::time::Duration::from_secs(s))),
        _ => Err(ApiError::param(
            "expires_after[seconds]",
            format!("seconds {seconds:?} must be a whole number from 3600 (1 hour) to 2592000 (30 days)"),
        )),
    }
}

/// The OpenAI batch object.
pub fn batch_json(b: &Batch) -> Value {
    let t = |v: Option<i64>| v.map(secs);
    json!({
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": b.errors,
        "input_file_id": b.input_file_id, "completion_window": b.completion_window,
        "status": b.status, "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": secs(b.created_ms), "in_progress_at": t(b.in_progress_ms),
        "expires_at": secs(b.expires_ms), "finalizing_at": t(b.finalizing_ms),
        "completed_at": t(b.completed_ms), "failed_at": t(b.failed_ms),
        "expired_at": t(b.expired_ms), "cancelling_at": t(b.cancelling_ms),
        "cancelled_at": t(b.cancelled_ms),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": b.metadata,
    })
}

/// The store and the caller's key, or 404 on an open server.
fn owner<'a>(s: &'a AppState, c: &'a Caller) -> Result<(&'a Arc<Tenancy>, &'a ApiKey), ApiError> {
    match (&s.tenancy, &c.key) {
        (Some(t), Some(k)) => Ok((t, k)),
        _ => Err(ApiError::not_found(
            "The Files and Batch APIs need multi-tenancy: start `bitnet serve` with --auth",
        )),
    }
}

fn limit(q: &HashMap<String, String>) -> Result<i64, ApiError> {
    match q.get("limit") {
        None => Ok(20),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=10_000).contains(l))
            .ok_or_else(|| ApiError::param("limit", "`limit` must be an integer from 1 to 10000")),
    }
}

/// `POST /v1/files`: multipart form with `purpose=batch` and `file` (JSONL).
#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "batch",
    request_body(description = "multipart/form-data: `purpose` (`batch`), `file` (OpenAI Batch JSONL), optionally `expires_after[anchor]` (`created_at`) and `expires_after[seconds]` (3600 to 2592000; default: the server's --file-retention-days, else kept until deleted)", content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The file object `{id, object: \"file\", bytes, created_at, expires_at, filename, purpose, status}`"),
        (status = 400, description = "Missing or bad `purpose`, `file` or `expires_after[…]` (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 404, description = "Multi-tenancy off", body = ErrorEnvelope),
        (status = 413, description = "Larger than the body limit", body = ErrorEnvelope),
    )
)]
pub async fn upload(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    form: Result<Multipart, MultipartRejection>,
) -> R {
    let (t, key) = owner(&s, &c)?;
    let mut form = form.map_err(|e| {
        ApiError::param(
            "file",
            format!("expected a multipart/form-data upload: {}", e.body_text()),
        )
    })?;
    let (mut purpose, mut file) = (None, None);
    let (mut anchor, mut seconds) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(ApiError::from_status(e.status(), &e.body_text())),
        };
        let name = field.name().unwrap_or("").to_string();
        let filename = field.file_name().map(str::to_string);
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::from_status(e.status(), &e.body_text()))?;
        match name.as_str() {
            "purpose" => purpose = Some(String::from_utf8_lossy(&data).trim().to_string()),
            "file" => file = Some((filename.unwrap_or_else(|| "upload.jsonl".into()), data)),
            "expires_after[anchor]" => anchor = Some(String::from_utf8_lossy(&data).to_string()),
            "expires_after[seconds]" => seconds = Some(String::from_utf8_lossy(&data).to_string()),
            other => {
                return Err(ApiError::param(
                    other,
                    format!(
                        "unknown form field `{other}`: expected `purpose`, `file` and optionally \
                         `expires_after[anchor]`, `expires_after[seconds]`"
                    ),
                ))
            }
        }
    }
    let expires_after = expires_after(anchor.as_deref(), seconds.as_deref())?.or(t.file_retention);
    match purpose.as_deref() {
        Some("batch") => {}
        Some(p) => {
            return Err(ApiError::param(
                "purpose",
                format!("purpose {p:?} is not supported: this server takes `batch` files"),
            ))
        }
        None => {
            return Err(ApiError::param(
                "purpose",
                "the form needs a `purpose` field",
            ))
        }
    }
    let (filename, data) =
        file.ok_or_else(|| ApiError::param("file", "the form needs a `file` field"))?;
    let text = String::from_utf8(data.to_vec())
        .map_err(|_| ApiError::param("file", format!("{filename} is not UTF-8 text")))?;
    let f = t
        .store
        .create_file(
            None,
            &key.tenant_id,
            &key.id,
            &filename,
            "batch",
            &text,
            expires_after,
        )
        .await
        .map_err(store_error)?;
    Ok(Json(file_json(&f)).into_response())
}

/// `GET /v1/files`.
#[utoipa::path(get, path = "/v1/files", tag = "batch",
    params(("purpose" = Option<String>, Query, description = "Only files of this purpose"),
           ("limit" = Option<i64>, Query, description = "At most this many (default 20)")),
    responses((status = 200, description = "`{object: \"list\", data: [file]}`, newest first")))]
pub async fn files(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> R {
    let (t, key) = owner(&s, &c)?;
    let files = t
        .store
        .files(
            &key.tenant_id,
            q.get("purpose").map(String::as_str),
            limit(&q)?,
        )
        .await
        .map_err(store_error)?;
    let data: Vec<Value> = files.iter().map(file_json).collect();
    Ok(Json(json!({"object": "list", "data": data, "has_more": false})).into_response())
}

/// `GET /v1/files/{id}`.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "batch",
    params(("id" = String, Path, description = "`file-…`")),
    responses((status = 200, description = "The file object"),
              (status = 404, description = "No such file (of this tenant)", body = ErrorEnvelope)))]
pub async fn file(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> R {
    let (t, key) = owner(&s, &c)?;
    let f = t
        .store
        .file(&key.tenant_id, &id)
        .await
        .map_err(store_error)?;
    Ok(Json(file_json(&f)).into_response())
}

/// `GET /v1/files/{id}/content`.
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "batch",
    params(("id" = String, Path, description = "`file-…`")),
    responses((status = 200, description = "The file's bytes (JSONL)"),
              (status = 404, description = "No such file (of this tenant)", body = ErrorEnvelope)))]
pub async fn file_content(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> R {
    let (t, key) = owner(&s, &c)?;
    // The metadata first: an expired file is gone even before the sweep deletes it.
    t.store
        .file(&key.tenant_id, &id)
        .await
        .map_err(store_error)?;
    let text = t
        .store
        .file_content(&key.tenant_id, &id)
        .await
        .map_err(store_error)?;
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], text).into_response())
}

/// `DELETE /v1/files/{id}`.
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "batch",
    params(("id" = String, Path, description = "`file-…`")),
    responses((status = 200, description = "`{id, object: \"file\", deleted: true}`"),
              (status = 404, description = "No such file (of this tenant)", body = ErrorEnvelope)))]
pub async fn delete_file(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> R {
    let (t, key) = owner(&s, &c)?;
    t.store
        .delete_file(&key.tenant_id, &id)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})).into_response())
}

/// Body of `POST /v1/batches`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Option<Value>,
}

/// `POST /v1/batches`: checks the input file now (a bad line is a 400 naming it) and queues
/// the batch; any replica's runner picks it up.
#[utoipa::path(post, path = "/v1/batches", tag = "batch",
    request_body(description = r#"`{"input_file_id": "file-…", "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {…}}`"#, content_type = "application/json"),
    responses((status = 200, description = "The batch object (status `validating`)"),
              (status = 400, description = "Bad field or input line (named in `param` / the message)", body = ErrorEnvelope),
              (status = 404, description = "No such input file, or multi-tenancy off", body = ErrorEnvelope)))]
pub async fn create_batch(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> R {
    let (t, key) = owner(&s, &c)?;
    let req: NewBatch = parse_json(&body)?;
    if !ENDPOINTS.contains(&req.endpoint.as_str()) {
        return Err(ApiError::param(
            "endpoint",
            format!(
                "endpoint {:?}: expected /v1/chat/completions or /v1/completions",
                req.endpoint
            ),
        ));
    }
    if req.completion_window != "24h" {
        return Err(ApiError::param(
            "completion_window",
            "completion_window must be \"24h\"",
        ));
    }
    if req.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::param("metadata", "metadata must be an object"));
    }
    let f = t
        .store
        .file(&key.tenant_id, &req.input_file_id)
        .await
        .map_err(store_error)?;
    if f.purpose != "batch" {
        return Err(ApiError::param(
            "input_file_id",
            format!("{} has purpose {:?}, not \"batch\"", f.id, f.purpose),
        ));
    }
    let text = t
        .store
        .file_content(&key.tenant_id, &f.id)
        .await
        .map_err(store_error)?;
    let lines = parse_jsonl(&text, &f.id, Some(&req.endpoint))
        .map_err(|m| ApiError::param("input_file_id", m))?;
    let b = t
        .store
        .create_batch(
            &key.tenant_id,
            &key.id,
            &req.endpoint,
            &f.id,
            24 * 3_600_000,
            lines.len() as i64,
            req.metadata.as_ref(),
        )
        .await
        .map_err(store_error)?;
    Ok(Json(batch_json(&b)).into_response())
}

/// `GET /v1/batches/{id}`.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batch",
    params(("id" = String, Path, description = "`batch_…`")),
    responses((status = 200, description = "The batch object with `request_counts`"),
              (status = 404, description = "No such batch (of this tenant)", body = ErrorEnvelope)))]
pub async fn batch(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> R {
    let (t, key) = owner(&s, &c)?;
    let b = t
        .store
        .batch(Some(&key.tenant_id), &id)
        .await
        .map_err(store_error)?;
    Ok(Json(batch_json(&b)).into_response())
}

/// `POST /v1/batches/{id}/cancel`.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batch",
    params(("id" = String, Path, description = "`batch_…`")),
    responses((status = 200, description = "The batch (`cancelling`, then `cancelled` with the finished lines' files)"),
              (status = 404, description = "No such batch (of this tenant)", body = ErrorEnvelope)))]
pub async fn cancel_batch(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> R {
    let (t, key) = owner(&s, &c)?;
    let b = t
        .store
        .cancel_batch(&key.tenant_id, &id)
        .await
        .map_err(store_error)?;
    Ok(Json(batch_json(&b)).into_response())
}

/// `GET /v1/batches`.
#[utoipa::path(get, path = "/v1/batches", tag = "batch",
    params(("after" = Option<String>, Query, description = "Batches older than this id"),
           ("limit" = Option<i64>, Query, description = "At most this many (default 20)")),
    responses((status = 200, description = "`{object: \"list\", data: [batch], first_id, last_id, has_more}`, newest first")))]
pub async fn batches(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> R {
    let (t, key) = owner(&s, &c)?;
    let n = limit(&q)?;
    let mut list = t
        .store
        .batches(&key.tenant_id, q.get("after").map(String::as_str), n + 1)
        .await
        .map_err(store_error)?;
    let has_more = list.len() as i64 > n;
    list.truncate(n as usize);
    let data: Vec<Value> = list.iter().map(batch_json).collect();
    Ok(
        Json(json!({"object": "list", "data": data, "has_more": has_more,
        "first_id": list.first().map(|b| &b.id), "last_id": list.last().map(|b| &b.id)}))
        .into_response(),
    )
}
