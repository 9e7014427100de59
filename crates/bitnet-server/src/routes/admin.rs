//! `/admin`: tenants, keys, usage (JSON or CSV) and the audit log, for admin keys only (the
//! authentication middleware checks the role). Every change is audited with the acting key.

use crate::app::AppState;
use crate::error::{parse_json, ApiError, ErrorEnvelope};
use crate::tenancy::Caller;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bitnet_tenancy::usage::{parse_time, usage_csv};
use bitnet_tenancy::{Error, KeyUpdate, NewKey, Tenancy, UsageFilter};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// The API error of a tenancy error.
pub fn store_error(e: Error) -> ApiError {
    match e {
        Error::Invalid { field, message } => ApiError::param(field, message),
        e @ Error::NotFound { .. } => ApiError::not_found(e.to_string()),
        e @ Error::Conflict { .. } => ApiError::conflict(e.to_string()),
        e => {
            tracing::error!("admin: {e}");
            ApiError::internal(e.to_string())
        }
    }
}

fn tenancy(state: &AppState) -> Result<&Arc<Tenancy>, ApiError> {
    state.tenancy.as_ref().ok_or_else(|| {
        ApiError::not_found("Multi-tenancy is off: start `bitnet serve` with --auth")
    })
}

fn actor(caller: &Caller) -> String {
    match (&caller.subject, &caller.key) {
        (Some(s), Some(k)) => format!("{s} (via key:{})", k.id),
        (Some(s), None) => s.clone(),
        (None, Some(k)) => format!("key:{}", k.id),
        (None, None) => "anonymous".into(),
    }
}

fn list<T: serde::Serialize>(data: Vec<T>) -> Response {
    Json(json!({"object": "list", "data": data})).into_response()
}

fn created<T: serde::Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

type R = Result<Response, ApiError>;

/// The `limit` query parameter: a positive integer, if given.
fn limit_param(q: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    q.get("limit")
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|l| *l > 0)
                .ok_or_else(|| ApiError::param("limit", "`limit` must be a positive integer"))
        })
        .transpose()
}

/// Body of `POST /admin/tenants`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    metadata: Option<serde_json::Value>,
}

/// `GET /admin/tenants`.
#[utoipa::path(
    get,
    path = "/admin/tenants",
    tag = "admin",
    responses(
        (status = 200, description = r#"The tenants: `{"object":"list","data":[{id,name,metadata,created_at}]}`"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn tenants(State(s): State<Arc<AppState>>) -> R {
    Ok(list(
        tenancy(&s)?.store.tenants().await.map_err(store_error)?,
    ))
}

/// `POST /admin/tenants`.
#[utoipa::path(
    post,
    path = "/admin/tenants",
    tag = "admin",
    request_body(description = r#"`{"name": "acme", "metadata": {…}}`"#, content_type = "application/json"),
    responses(
        (status = 201, description = r#"The tenant"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn create_tenant(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> R {
    let t = tenancy(&s)?;
    let req: NewTenant = parse_json(&body)?;
    let tenant = t
        .store
        .create_tenant(&actor(&c), &req.name, req.metadata)
        .await
        .map_err(store_error)?;
    Ok(created(tenant))
}

/// `GET /admin/keys[?tenant=]`.
#[utoipa::path(
    get,
    path = "/admin/keys",
    tag = "admin",
    responses(
        (status = 200, description = r#"The keys (never their secrets); `?tenant=` filters"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn keys(State(s): State<Arc<AppState>>, Query(q): Query<HashMap<String, String>>) -> R {
    let t = tenancy(&s)?;
    let keys = t
        .store
        .keys(q.get("tenant").map(String::as_str))
        .await
        .map_err(store_error)?;
    Ok(list(keys))
}

/// `POST /admin/keys`: the answer carries the secret, the only time it is shown.
#[utoipa::path(
    post,
    path = "/admin/keys",
    tag = "admin",
    request_body(description = r#"`{"tenant", "role": "admin"|"user", "alias", "models": [...], "rpm", "tpm", "max_parallel", "budget_tokens", "budget_period": "daily"|"weekly"|"monthly"|"total", "expires_at", "metadata"}`"#, content_type = "application/json"),
    responses(
        (status = 201, description = r#"`{"key": {...}, "secret": "bn-…"}`: the secret is shown only here"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn create_key(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> R {
    let t = tenancy(&s)?;
    let req: NewKey = parse_json(&body)?;
    let (key, secret) = t
        .store
        .create_key(&actor(&c), &req)
        .await
        .map_err(store_error)?;
    Ok(created(json!({"key": key, "secret": secret})))
}

/// `GET /admin/keys/{id}`.
#[utoipa::path(
    get,
    path = "/admin/keys/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    responses(
        (status = 200, description = r#"The key"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn key(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> R {
    let t = tenancy(&s)?;
    Ok(Json(t.store.key(&id).await.map_err(store_error)?).into_response())
}

/// `PATCH /admin/keys/{id}`.
#[utoipa::path(
    patch,
    path = "/admin/keys/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    request_body(description = r#"Any fields of the key to change (`null` clears a limit); `"blocked": true` blocks it"#, content_type = "application/json"),
    responses(
        (status = 200, description = r#"The key after the change"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn update_key(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> R {
    let t = tenancy(&s)?;
    let req: KeyUpdate = parse_json(&body)?;
    let k = t
        .store
        .update_key(&actor(&c), &id, &req)
        .await
        .map_err(store_error)?;
    t.invalidate();
    Ok(Json(k).into_response())
}

/// `DELETE /admin/keys/{id}`.
#[utoipa::path(
    delete,
    path = "/admin/keys/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    responses(
        (status = 200, description = r#"`{"id", "object": "key", "deleted": true}`"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn delete_key(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> R {
    let t = tenancy(&s)?;
    let k = t
        .store
        .delete_key(&actor(&c), &id)
        .await
        .map_err(store_error)?;
    t.invalidate();
    Ok(Json(json!({"id": k.id, "object": "key", "deleted": true})).into_response())
}

/// Body of `POST /admin/keys/{id}/rotate`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// Seconds the old secret keeps working [default: 86400].
    grace_seconds: Option<f64>,
}

/// `POST /admin/keys/{id}/rotate`: a new secret; the old one works for the grace period.
#[utoipa::path(
    post,
    path = "/admin/keys/{id}/rotate",
    tag = "admin",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    request_body(description = r#"`{"grace_seconds": 86400}`: how long the old secret keeps working"#, content_type = "application/json"),
    responses(
        (status = 201, description = r#"`{"key": {...}, "secret": "bn-…"}`: the new key"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn rotate_key(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> R {
    let t = tenancy(&s)?;
    let req: Rotate = if body.is_empty() {
        Rotate::default()
    } else {
        parse_json(&body)?
    };
    let grace = req.grace_seconds.unwrap_or(86_400.0);
    if !(grace.is_finite() && (0.0..=1e9).contains(&grace)) {
        return Err(ApiError::param(
            "grace_seconds",
            "`grace_seconds` must be between 0 and 1e9",
        ));
    }
    let (key, secret) = t
        .store
        .rotate_key(&actor(&c), &id, (grace * 1000.0) as i64)
        .await
        .map_err(store_error)?;
    t.invalidate();
    Ok(created(json!({"key": key, "secret": secret})))
}

/// `GET /admin/usage?from=&to=&tenant=&key=&model=&subject=&limit=&format=json|csv&group=request|daily`.
#[utoipa::path(
    get,
    path = "/admin/usage",
    tag = "admin",
    responses(
        (status = 200, description = r#"Usage rows (`format=json|csv`) or daily aggregates (`group=daily`), filtered by `from`, `to` (YYYY-MM-DD or Unix ms), `tenant`, `key`, `model`, `subject` (an SSO caller, `oidc:SUB`; rows only), `limit`"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn usage(State(s): State<Arc<AppState>>, Query(q): Query<HashMap<String, String>>) -> R {
    let t = tenancy(&s)?;
    for k in q.keys() {
        if ![
            "from", "to", "tenant", "key", "model", "subject", "limit", "format", "group",
        ]
        .contains(&k.as_str())
        {
            return Err(ApiError::param(
                k.clone(),
                format!("Unknown query parameter `{k}`"),
            ));
        }
    }
    let time = |name: &str| {
        q.get(name)
            .map(|v| parse_time(name, v))
            .transpose()
            .map_err(store_error)
    };
    let tenant_id = match q.get("tenant") {
        Some(name) => Some(t.store.tenant(name).await.map_err(store_error)?.id),
        None => None,
    };
    let limit = limit_param(&q)?;
    let f = UsageFilter {
        from_ms: time("from")?,
        to_ms: time("to")?,
        tenant_id,
        key_id: q.get("key").cloned(),
        model: q.get("model").cloned(),
        subject: q.get("subject").cloned(),
        limit,
    };
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::param(
                "format",
                format!("Unknown format {other:?}: json or csv"),
            ))
        }
    };
    match q.get("group").map(String::as_str) {
        None | Some("request") => {
            let rows = t.store.usage(&f).await.map_err(store_error)?;
            if csv {
                let mut r = usage_csv(&rows).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                );
                r.headers_mut().insert(
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"usage.csv\""),
                );
                Ok(r)
            } else {
                Ok(list(rows))
            }
        }
        Some("daily") if !csv => Ok(list(t.store.daily_usage(&f).await.map_err(store_error)?)),
        Some("daily") => Err(ApiError::param(
            "format",
            "CSV export is per request (group=request)",
        )),
        Some(other) => Err(ApiError::param(
            "group",
            format!("Unknown group {other:?}: request or daily"),
        )),
    }
}

/// `GET /admin/audit[?limit=]`, newest first.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    responses(
        (status = 200, description = r#"Audit entries, newest first: who (`key:ID` / `cli:USER`), what, before, after"#),
        (status = 400, description = "Bad field or parameter (named in `param`)", body = ErrorEnvelope),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 404, description = "No such tenant or key, or multi-tenancy off", body = ErrorEnvelope),
    )
)]
pub async fn audit(State(s): State<Arc<AppState>>, Query(q): Query<HashMap<String, String>>) -> R {
    let t = tenancy(&s)?;
    let limit = limit_param(&q)?.unwrap_or(100);
    Ok(list(t.store.audit_log(limit).await.map_err(store_error)?))
}

/// `GET /admin/webhooks[?limit=]`: outbox events, newest first, each with its delivery attempts.
#[utoipa::path(
    get,
    path = "/admin/webhooks",
    tag = "admin",
    responses(
        (status = 200, description = r#"`{"object":"list","data":[{event…, "deliveries":[{ts_ms, url, status_code, error, duration_ms}]}]}`"#),
        (status = 401, description = "No or bad API key", body = ErrorEnvelope),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
    )
)]
pub async fn webhooks(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> R {
    let t = tenancy(&s)?;
    let limit = limit_param(&q)?.unwrap_or(100);
    let mut out = Vec::new();
    for e in t.store.webhook_events(limit).await.map_err(store_error)? {
        let d = t
            .store
            .webhook_deliveries(&e.id)
            .await
            .map_err(store_error)?;
        let mut v = serde_json::to_value(&e).map_err(|e| ApiError::internal(e.to_string()))?;
        v["deliveries"] = serde_json::to_value(d).map_err(|e| ApiError::internal(e.to_string()))?;
        out.push(v);
    }
    Ok(list(out))
}
