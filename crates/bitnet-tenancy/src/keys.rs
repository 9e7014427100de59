//! Tenants and API keys: creation (the secret is shown once and stored only as a SHA-256
//! hash), lookup by secret in constant time, updates, rotation with a grace period, and an
//! audit row for every change.

use crate::error::{Error, Result};
use crate::store::Store;
use crate::{new_id, now_ms};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use subtle::ConstantTimeEq;

use crate::audit::audit;
pub use crate::audit::AuditEntry;
pub use crate::period::{civil_from_days, days_from_civil, Period};

/// Prefix of every secret (`bn-` then 43 base64url characters: 32 random bytes).
pub const SECRET_PREFIX: &str = "bn-";

/// A tenant (organisation).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    /// `ten_…`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free-form JSON.
    pub metadata: serde_json::Value,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What a key may do.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including `/admin`.
    Admin,
    /// Inference routes only.
    User,
}

impl Role {
    /// `admin` / `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    /// Parses `admin` / `user`.
    pub fn parse(s: &str) -> Result<Role> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            other => Err(Error::invalid(
                "role",
                format!("unknown role {other:?}: expected admin or user"),
            )),
        }
    }
}

/// An API key as stored (never the secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    /// `key_…`.
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// The first characters of the secret, for recognising it (`bn-AbCd`).
    pub prefix: String,
    /// Human name.
    pub alias: Option<String>,
    /// Role.
    pub role: Role,
    /// Models the key may use (empty: all).
    pub models: Vec<String>,
    /// Requests per minute.
    pub rpm: Option<i64>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<i64>,
    /// Requests at once.
    pub max_parallel: Option<i64>,
    /// Tokens per budget period.
    pub budget_tokens: Option<i64>,
    /// Budget period (default total).
    pub budget_period: Option<Period>,
    /// Unix ms after which the key fails.
    pub expires_at: Option<i64>,
    /// Refused while set.
    pub blocked: bool,
    /// Free-form JSON.
    pub metadata: serde_json::Value,
    /// Unix ms.
    pub created_at: i64,
    /// The key that replaced this one.
    pub rotated_to: Option<String>,
    /// After a rotation, this key works until then (Unix ms).
    pub grace_until: Option<i64>,
}

impl ApiKey {
    /// Why the key cannot be used at `now` (blocked, expired, rotated past its grace), if so.
    pub fn unusable(&self, now: i64) -> Option<&'static str> {
        if self.blocked {
            Some("This API key is blocked")
        } else if self.expires_at.is_some_and(|e| now >= e) {
            Some("This API key has expired")
        } else if self.grace_until.is_some_and(|g| now >= g) {
            Some("This API key was rotated and its grace period is over")
        } else {
            None
        }
    }

    /// Whether the key may use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model || m == "*")
    }
}

/// Settings of a new key (also the body of `POST /admin/keys`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Tenant id or name.
    pub tenant: String,
    /// `admin` or `user` (default `user`).
    pub role: Option<Role>,
    /// Alias.
    pub alias: Option<String>,
    /// Allowed models (empty or absent: all).
    #[serde(default)]
    pub models: Vec<String>,
    /// Requests per minute.
    pub rpm: Option<i64>,
    /// Tokens per minute.
    pub tpm: Option<i64>,
    /// Requests at once.
    pub max_parallel: Option<i64>,
    /// Token budget.
    pub budget_tokens: Option<i64>,
    /// Budget period.
    pub budget_period: Option<Period>,
    /// Expiry, Unix ms.
    pub expires_at: Option<i64>,
    /// Free-form JSON.
    pub metadata: Option<serde_json::Value>,
}

/// A change to a key (the body of `PATCH /admin/keys/{id}`): absent fields stay; `null`
/// clears a limit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdate {
    /// Alias.
    #[serde(default, with = "double_option")]
    pub alias: Option<Option<String>>,
    /// Role.
    pub role: Option<Role>,
    /// Allowed models.
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    #[serde(default, with = "double_option")]
    pub rpm: Option<Option<i64>>,
    /// Tokens per minute.
    #[serde(default, with = "double_option")]
    pub tpm: Option<Option<i64>>,
    /// Requests at once.
    #[serde(default, with = "double_option")]
    pub max_parallel: Option<Option<i64>>,
    /// Token budget.
    #[serde(default, with = "double_option")]
    pub budget_tokens: Option<Option<i64>>,
    /// Budget period.
    #[serde(default, with = "double_option")]
    pub budget_period: Option<Option<Period>>,
    /// Expiry.
    #[serde(default, with = "double_option")]
    pub expires_at: Option<Option<i64>>,
    /// Blocked flag.
    pub blocked: Option<bool>,
    /// Metadata.
    pub metadata: Option<serde_json::Value>,
}

mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<T: Serialize, S: Serializer>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A fresh secret: `bn-` + base64url(32 random bytes).
pub fn generate_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::invalid("key", format!("the OS random source failed: {e}")))?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Hex SHA-256 of a secret: the only form stored.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Lower-case hex of `bytes` (no allocation per byte).
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn check_limit(field: &str, v: Option<i64>) -> Result<()> {
    match v {
        Some(x) if x < 0 => Err(Error::invalid(field, format!("must be ≥ 0, got {x}"))),
        _ => Ok(()),
    }
}

fn check_key_fields(
    rpm: Option<i64>,
    tpm: Option<i64>,
    par: Option<i64>,
    budget: Option<i64>,
    models: &[String],
) -> Result<()> {
    check_limit("rpm", rpm)?;
    check_limit("tpm", tpm)?;
    check_limit("max_parallel", par)?;
    check_limit("budget_tokens", budget)?;
    if models.iter().any(|m| m.trim().is_empty()) {
        return Err(Error::invalid("models", "model names must not be empty"));
    }
    Ok(())
}

const KEY_COLUMNS: &str = "id, tenant_id, prefix, alias, role, models, rpm, tpm, max_parallel, \
    budget_tokens, budget_period, expires_at, blocked, metadata, created_at, rotated_to, grace_until";

fn json_col(row: &AnyRow, col: &str) -> Result<serde_json::Value> {
    let s: String = row
        .try_get(col)
        .map_err(Error::db(format!("reading {col}")))?;
    serde_json::from_str(&s).map_err(|e| Error::Corrupt {
        what: col.to_string(),
        detail: e.to_string(),
    })
}

fn key_from_row(row: &AnyRow) -> Result<ApiKey> {
    let g = |c: &str| Error::db(format!("reading api_keys.{c}"));
    let role: String = row.try_get("role").map_err(g("role"))?;
    let models: Vec<String> =
        serde_json::from_value(json_col(row, "models")?).map_err(|e| Error::Corrupt {
            what: "api_keys.models".into(),
            detail: e.to_string(),
        })?;
    let period: Option<String> = row.try_get("budget_period").map_err(g("budget_period"))?;
    Ok(ApiKey {
        id: row.try_get("id").map_err(g("id"))?,
        tenant_id: row.try_get("tenant_id").map_err(g("tenant_id"))?,
        prefix: row.try_get("prefix").map_err(g("prefix"))?,
        alias: row.try_get("alias").map_err(g("alias"))?,
        role: Role::parse(&role).map_err(|e| Error::Corrupt {
            what: "api_keys.role".into(),
            detail: e.to_string(),
        })?,
        models,
        rpm: row.try_get("rpm").map_err(g("rpm"))?,
        tpm: row.try_get("tpm").map_err(g("tpm"))?,
        max_parallel: row.try_get("max_parallel").map_err(g("max_parallel"))?,
        budget_tokens: row.try_get("budget_tokens").map_err(g("budget_tokens"))?,
        budget_period: match period {
            Some(p) => Some(Period::parse(&p).map_err(|e| Error::Corrupt {
                what: "api_keys.budget_period".into(),
                detail: e.to_string(),
            })?),
            None => None,
        },
        expires_at: row.try_get("expires_at").map_err(g("expires_at"))?,
        blocked: row.try_get::<i64, _>("blocked").map_err(g("blocked"))? != 0,
        metadata: json_col(row, "metadata")?,
        created_at: row.try_get("created_at").map_err(g("created_at"))?,
        rotated_to: row.try_get("rotated_to").map_err(g("rotated_to"))?,
        grace_until: row.try_get("grace_until").map_err(g("grace_until"))?,
    })
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant> {
    let g = |c: &str| Error::db(format!("reading tenants.{c}"));
    Ok(Tenant {
        id: row.try_get("id").map_err(g("id"))?,
        name: row.try_get("name").map_err(g("name"))?,
        metadata: json_col(row, "metadata")?,
        created_at: row.try_get("created_at").map_err(g("created_at"))?,
    })
}

impl Store {
    async fn begin(&self, what: &str) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        self.pool.begin().await.map_err(Error::db(what.to_string()))
    }

    /// Creates a tenant.
    pub async fn create_tenant(
        &self,
        actor: &str,
        name: &str,
        metadata: Option<serde_json::Value>,
    ) -> Result<Tenant> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(Error::invalid(
                "name",
                "a tenant name is 1 to 200 characters",
            ));
        }
        if self.tenant(name).await.is_ok() {
            return Err(Error::Conflict {
                what: "tenant",
                id: name.to_string(),
            });
        }
        let t = Tenant {
            id: new_id("ten"),
            name: name.to_string(),
            metadata: metadata.unwrap_or_else(|| serde_json::json!({})),
            created_at: now_ms(),
        };
        let mut tx = self.begin("creating a tenant").await?;
        sqlx::query("INSERT INTO tenants (id, name, metadata, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.metadata.to_string())
            .bind(t.created_at)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(format!("creating tenant {name:?}")))?;
        audit(&mut tx, actor, "tenant.create", &t.id, None, Some(&t)).await?;
        tx.commit().await.map_err(Error::db("creating a tenant"))?;
        Ok(t)
    }

    /// A tenant by id or name.
    pub async fn tenant(&self, id_or_name: &str) -> Result<Tenant> {
        let row = sqlx::query(
            "SELECT id, name, metadata, created_at FROM tenants WHERE id = $1 OR name = $1",
        )
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::db("reading a tenant"))?;
        tenant_from_row(&Error::found(row, "tenant", id_or_name)?)
    }

    /// All tenants, oldest first.
    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query(
            "SELECT id, name, metadata, created_at FROM tenants ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db("listing tenants"))?;
        rows.iter().map(tenant_from_row).collect()
    }

    /// Creates a key; returns it and its secret (the only time the secret exists outside
    /// the client).
    pub async fn create_key(&self, actor: &str, new: &NewKey) -> Result<(ApiKey, String)> {
        let tenant = self.tenant(&new.tenant).await?;
        check_key_fields(
            new.rpm,
            new.tpm,
            new.max_parallel,
            new.budget_tokens,
            &new.models,
        )?;
        let secret = generate_secret()?;
        let key = ApiKey {
            id: new_id("key"),
            tenant_id: tenant.id,
            prefix: secret.chars().take(SECRET_PREFIX.len() + 6).collect(),
            alias: new.alias.clone(),
            role: new.role.unwrap_or(Role::User),
            models: new.models.clone(),
            rpm: new.rpm,
            tpm: new.tpm,
            max_parallel: new.max_parallel,
            budget_tokens: new.budget_tokens,
            budget_period: new.budget_period,
            expires_at: new.expires_at,
            blocked: false,
            metadata: new
                .metadata
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
            created_at: now_ms(),
            rotated_to: None,
            grace_until: None,
        };
        let mut tx = self.begin("creating a key").await?;
        insert_key(&mut tx, &key, &hash_secret(&secret)).await?;
        audit(&mut tx, actor, "key.create", &key.id, None, Some(&key)).await?;
        key_event(&mut tx, "key.created", actor, &key).await?;
        tx.commit().await.map_err(Error::db("creating a key"))?;
        Ok((key, secret))
    }

    /// A key by id.
    pub async fn key(&self, id: &str) -> Result<ApiKey> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::db("reading a key"))?;
        key_from_row(&Error::found(row, "key", id)?)
    }

    /// The key whose secret this is, if any (hash lookup, then a constant-time compare).
    pub async fn key_by_secret(&self, secret: &str) -> Result<Option<ApiKey>> {
        let h = hash_secret(secret);
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS}, secret_hash FROM api_keys WHERE secret_hash = $1"
        )))
        .bind(&h)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::db("looking up a key"))?;
        match row {
            Some(r) => {
                let stored: String = r
                    .try_get("secret_hash")
                    .map_err(Error::db("reading api_keys.secret_hash"))?;
                if hashes_equal(&stored, &h) {
                    key_from_row(&r).map(Some)
                } else {
                    Ok(None)
                }
            }
            None => Ok(None),
        }
    }

    /// Keys, of one tenant (id or name) or all.
    pub async fn keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let rows = match tenant {
            Some(t) => {
                let t = self.tenant(t).await?;
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
                )))
                .bind(t.id)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
                )))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(Error::db("listing keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    /// Applies `update` to key `id`.
    pub async fn update_key(&self, actor: &str, id: &str, update: &KeyUpdate) -> Result<ApiKey> {
        let before = self.key(id).await?;
        let mut k = before.clone();
        if let Some(v) = &update.alias {
            k.alias = v.clone();
        }
        if let Some(v) = update.role {
            k.role = v;
        }
        if let Some(v) = &update.models {
            k.models = v.clone();
        }
        if let Some(v) = update.rpm {
            k.rpm = v;
        }
        if let Some(v) = update.tpm {
            k.tpm = v;
        }
        if let Some(v) = update.max_parallel {
            k.max_parallel = v;
        }
        if let Some(v) = update.budget_tokens {
            k.budget_tokens = v;
        }
        if let Some(v) = update.budget_period {
            k.budget_period = v;
        }
        if let Some(v) = update.expires_at {
            k.expires_at = v;
        }
        if let Some(v) = update.blocked {
            k.blocked = v;
        }
        if let Some(v) = &update.metadata {
            k.metadata = v.clone();
        }
        check_key_fields(k.rpm, k.tpm, k.max_parallel, k.budget_tokens, &k.models)?;
        let action = match (before.blocked, k.blocked) {
            (false, true) => "key.block",
            (true, false) => "key.unblock",
            _ => "key.update",
        };
        let mut tx = self.begin("updating a key").await?;
        sqlx::query(
            "UPDATE api_keys SET alias = $2, role = $3, models = $4, rpm = $5, tpm = $6, \
             max_parallel = $7, budget_tokens = $8, budget_period = $9, expires_at = $10, \
             blocked = $11, metadata = $12 WHERE id = $1",
        )
        .bind(&k.id)
        .bind(&k.alias)
        .bind(k.role.as_str())
        .bind(serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into()))
        .bind(k.rpm)
        .bind(k.tpm)
        .bind(k.max_parallel)
        .bind(k.budget_tokens)
        .bind(k.budget_period.map(Period::as_str))
        .bind(k.expires_at)
        .bind(i64::from(k.blocked))
        .bind(k.metadata.to_string())
        .execute(&mut *tx)
        .await
        .map_err(Error::db(format!("updating key {id}")))?;
        audit(&mut tx, actor, action, id, Some(&before), Some(&k)).await?;
        match action {
            "key.block" => key_event(&mut tx, "key.blocked", actor, &k).await?,
            "key.unblock" => key_event(&mut tx, "key.unblocked", actor, &k).await?,
            _ => {}
        }
        tx.commit().await.map_err(Error::db("updating a key"))?;
        Ok(k)
    }

    /// Replaces key `id` with a new secret carrying the same settings; the old secret keeps
    /// working for `grace_ms`. Returns the new key and its secret.
    pub async fn rotate_key(
        &self,
        actor: &str,
        id: &str,
        grace_ms: i64,
    ) -> Result<(ApiKey, String)> {
        if grace_ms < 0 {
            return Err(Error::invalid("grace", "the grace period must be ≥ 0"));
        }
        let before = self.key(id).await?;
        if before.rotated_to.is_some() {
            return Err(Error::invalid(
                "key",
                format!("key {id} was already rotated; rotate its successor instead"),
            ));
        }
        let secret = generate_secret()?;
        let now = now_ms();
        let new = ApiKey {
            id: new_id("key"),
            prefix: secret.chars().take(SECRET_PREFIX.len() + 6).collect(),
            created_at: now,
            rotated_to: None,
            grace_until: None,
            ..before.clone()
        };
        let mut old = before.clone();
        old.rotated_to = Some(new.id.clone());
        old.grace_until = Some(now.saturating_add(grace_ms));
        let mut tx = self.begin("rotating a key").await?;
        insert_key(&mut tx, &new, &hash_secret(&secret)).await?;
        sqlx::query("UPDATE api_keys SET rotated_to = $2, grace_until = $3 WHERE id = $1")
            .bind(id)
            .bind(&old.rotated_to)
            .bind(old.grace_until)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(format!("rotating key {id}")))?;
        audit(&mut tx, actor, "key.rotate", id, Some(&before), Some(&old)).await?;
        audit(&mut tx, actor, "key.create", &new.id, None, Some(&new)).await?;
        key_event(&mut tx, "key.rotated", actor, &old).await?;
        tx.commit().await.map_err(Error::db("rotating a key"))?;
        Ok((new, secret))
    }

    /// Deletes key `id` (its usage rows stay).
    pub async fn delete_key(&self, actor: &str, id: &str) -> Result<ApiKey> {
        let before = self.key(id).await?;
        let mut tx = self.begin("deleting a key").await?;
        sqlx::query("DELETE FROM api_keys WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(format!("deleting key {id}")))?;
        audit::<ApiKey>(&mut tx, actor, "key.delete", id, Some(&before), None).await?;
        key_event(&mut tx, "key.deleted", actor, &before).await?;
        tx.commit().await.map_err(Error::db("deleting a key"))?;
        Ok(before)
    }

    /// Audit rows, newest first, at most `limit`.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, ts_ms, actor, action, target, before_json, after_json FROM audit_log \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db("reading the audit log"))?;
        rows.iter()
            .map(|r| {
                let g = |c: &str| Error::db(format!("reading audit_log.{c}"));
                let j = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
                Ok(AuditEntry {
                    id: r.try_get("id").map_err(g("id"))?,
                    ts_ms: r.try_get("ts_ms").map_err(g("ts_ms"))?,
                    actor: r.try_get("actor").map_err(g("actor"))?,
                    action: r.try_get("action").map_err(g("action"))?,
                    target: r.try_get("target").map_err(g("target"))?,
                    before: j(r.try_get("before_json").map_err(g("before_json"))?),
                    after: j(r.try_get("after_json").map_err(g("after_json"))?),
                })
            })
            .collect()
    }
}

/// Queues a key webhook event (never the secret: the stored key only).
async fn key_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: &str,
    actor: &str,
    key: &ApiKey,
) -> Result<()> {
    crate::webhooks::enqueue(
        tx,
        None,
        kind,
        serde_json::json!({"actor": actor, "key": key}),
    )
    .await
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    k: &ApiKey,
    hash: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, secret_hash, prefix, alias, role, models, rpm, tpm, \
         max_parallel, budget_tokens, budget_period, expires_at, blocked, metadata, created_at, \
         rotated_to, grace_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    )
    .bind(&k.id)
    .bind(&k.tenant_id)
    .bind(hash)
    .bind(&k.prefix)
    .bind(&k.alias)
    .bind(k.role.as_str())
    .bind(serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into()))
    .bind(k.rpm)
    .bind(k.tpm)
    .bind(k.max_parallel)
    .bind(k.budget_tokens)
    .bind(k.budget_period.map(Period::as_str))
    .bind(k.expires_at)
    .bind(i64::from(k.blocked))
    .bind(k.metadata.to_string())
    .bind(k.created_at)
    .bind(&k.rotated_to)
    .bind(k.grace_until)
    .execute(&mut **tx)
    .await
    .map_err(Error::db(format!("inserting key {}", k.id)))?;
    Ok(())
}
