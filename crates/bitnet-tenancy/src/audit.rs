//! The audit log: one row per admin change (who, what, before, after), written in the same
//! transaction as the change.

use crate::error::{Error, Result};
use crate::{new_id, now_ms};
use serde::{Deserialize, Serialize};

/// A time-ordered audit id: microseconds, then a per-process sequence (so rows written in the
/// same microsecond keep their order), then randomness.
fn audit_id() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000_000;
    let rand = new_id("");
    format!("aud_{us:017}_{seq:06}{}", &rand[1..9])
}

/// Inserts an audit row inside `tx`.
pub(crate) async fn audit<T: Serialize>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    actor: &str,
    action: &str,
    target: &str,
    before: Option<&T>,
    after: Option<&T>,
) -> Result<()> {
    let j = |v: Option<&T>| v.and_then(|v| serde_json::to_string(v).ok());
    sqlx::query(
        "INSERT INTO audit_log (id, ts_ms, actor, action, target, before_json, after_json) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(audit_id())
    .bind(now_ms())
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(j(before))
    .bind(j(after))
    .execute(&mut **tx)
    .await
    .map_err(Error::db("writing the audit log"))?;
    Ok(())
}

/// One audit row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    /// `aud_…`.
    pub id: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// Who: `key:ID` or `cli:USER`.
    pub actor: String,
    /// What: `tenant.create`, `key.update`, …
    pub action: String,
    /// The tenant or key id.
    pub target: String,
    /// The object before.
    pub before: Option<serde_json::Value>,
    /// The object after.
    pub after: Option<serde_json::Value>,
}
