//! The audit log: one row per admin change (who, what, before, after), written in the same
//! transaction as the change.

use crate::error::{Error, Result};
use crate::{new_id, now_ms};
use serde::{Deserialize, Serialize};

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
    .bind(new_id("aud"))
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
