//! Usage rows (one per request) and their daily aggregates: batch inserts that skip rows
//! already stored (replays are idempotent), filters, and CSV export.

use crate::error::{Error, Result};
use crate::keys::civil_from_days;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// What one request used.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UsageRecord {
    /// The response id (`chatcmpl-…`), unique.
    pub request_id: String,
    /// When the request ended, Unix ms.
    pub ts_ms: i64,
    /// Tenant id.
    pub tenant_id: String,
    /// Key id.
    pub key_id: String,
    /// Model id.
    pub model: String,
    /// Prompt tokens (per choice, summed).
    pub prompt_tokens: i64,
    /// Completion tokens sent.
    pub completion_tokens: i64,
    /// Time to the first token, ms (none when no token came).
    pub ttft_ms: Option<i64>,
    /// Request duration, ms.
    pub duration_ms: i64,
    /// HTTP status of the response.
    pub status: i64,
    /// `stop`, `length`, `abort`, `cancelled` (client went away), `error`.
    pub finish_reason: String,
    /// Who called, when not the key's own holder: `oidc:SUB` for an SSO caller (SSO callers
    /// of a tenant share its policy key, so the key alone does not say who it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A usage row borrowing its text: what a request writes to the journal without copying its
/// ids into fresh strings, and what the store inserts. Serialized exactly as [`UsageRecord`]
/// (same fields, same order), so a journal line reads back as a [`UsageRecord`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UsageRow<'a> {
    /// See [`UsageRecord::request_id`].
    pub request_id: Cow<'a, str>,
    /// See [`UsageRecord::ts_ms`].
    pub ts_ms: i64,
    /// See [`UsageRecord::tenant_id`].
    pub tenant_id: Cow<'a, str>,
    /// See [`UsageRecord::key_id`].
    pub key_id: Cow<'a, str>,
    /// See [`UsageRecord::model`].
    pub model: Cow<'a, str>,
    /// See [`UsageRecord::prompt_tokens`].
    pub prompt_tokens: i64,
    /// See [`UsageRecord::completion_tokens`].
    pub completion_tokens: i64,
    /// See [`UsageRecord::ttft_ms`].
    pub ttft_ms: Option<i64>,
    /// See [`UsageRecord::duration_ms`].
    pub duration_ms: i64,
    /// See [`UsageRecord::status`].
    pub status: i64,
    /// See [`UsageRecord::finish_reason`].
    pub finish_reason: Cow<'a, str>,
    /// See [`UsageRecord::subject`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Cow<'a, str>>,
}

impl<'a> From<&'a UsageRecord> for UsageRow<'a> {
    fn from(u: &'a UsageRecord) -> Self {
        UsageRow {
            request_id: Cow::Borrowed(&u.request_id),
            ts_ms: u.ts_ms,
            tenant_id: Cow::Borrowed(&u.tenant_id),
            key_id: Cow::Borrowed(&u.key_id),
            model: Cow::Borrowed(&u.model),
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            ttft_ms: u.ttft_ms,
            duration_ms: u.duration_ms,
            status: u.status,
            finish_reason: Cow::Borrowed(&u.finish_reason),
            subject: u.subject.as_deref().map(Cow::Borrowed),
        }
    }
}

/// PostgreSQL's usage INSERT of a whole batch given as one JSON array of rows (one bound
/// value instead of twelve per row: the `Any` driver makes an owned copy of every text value
/// it binds). SQLite binds the values instead: its `json_each` with a `->>` per column
/// measured about twice the cost of binding.
const PG_INSERT_JSON: &str = "INSERT INTO usage_log (request_id, ts_ms, tenant_id, key_id, \
     model, prompt_tokens, completion_tokens, ttft_ms, duration_ms, status, finish_reason, \
     subject) SELECT request_id, ts_ms, tenant_id, key_id, model, prompt_tokens, \
     completion_tokens, ttft_ms, duration_ms, status, finish_reason, subject \
     FROM jsonb_to_recordset($1::jsonb) AS x(request_id TEXT, ts_ms BIGINT, tenant_id TEXT, \
     key_id TEXT, model TEXT, prompt_tokens BIGINT, completion_tokens BIGINT, ttft_ms BIGINT, \
     duration_ms BIGINT, status BIGINT, finish_reason TEXT, subject TEXT) \
     ON CONFLICT (request_id) DO NOTHING";

/// Rows per INSERT statement where values are bound. Few enough that binding stays cheap
/// (SQLite looks parameter names up linearly) and that the handful of distinct statement texts
/// (1 to 32 rows) stay in sqlx's prepared-statement cache, so nothing is parsed twice.
const INSERT_CHUNK: usize = 32;

/// `(day number since 1970-01-01, tenant, key, model)` of a daily aggregate.
type DayKey<'a> = (i64, &'a str, &'a str, &'a str);

/// A daily aggregate row.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DailyUsage {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Tenant id.
    pub tenant_id: String,
    /// Key id.
    pub key_id: String,
    /// Model.
    pub model: String,
    /// Requests.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
}

/// Filters of `/admin/usage` and `bitnet admin usage`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UsageFilter {
    /// From (Unix ms, inclusive).
    pub from_ms: Option<i64>,
    /// To (Unix ms, exclusive).
    pub to_ms: Option<i64>,
    /// Tenant id.
    pub tenant_id: Option<String>,
    /// Key id.
    pub key_id: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Caller subject (`oidc:SUB`); rows only (the daily aggregates are per key).
    pub subject: Option<String>,
    /// At most this many rows (default 10 000).
    pub limit: Option<i64>,
}

/// `YYYY-MM-DD` of a Unix ms time.
pub fn day_of(ts_ms: i64) -> String {
    let (y, m, d) = civil_from_days(ts_ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` (start of that day, UTC) or Unix milliseconds.
pub fn parse_time(field: &str, s: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let parts: Vec<&str> = s.split('-').collect();
    let bad = || {
        Error::invalid(
            field,
            format!("{s:?} is not a date (YYYY-MM-DD) or Unix milliseconds"),
        )
    };
    if parts.len() != 3 {
        return Err(bad());
    }
    let y: i64 = parts[0].parse().map_err(|_| bad())?;
    let m: u32 = parts[1].parse().map_err(|_| bad())?;
    let d: u32 = parts[2].parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(crate::keys::days_from_civil(y, m, d) * 86_400_000)
}

fn usage_from_row(r: &AnyRow) -> Result<UsageRecord> {
    let g = |c: &str| Error::db(format!("reading usage_log.{c}"));
    Ok(UsageRecord {
        request_id: r.try_get("request_id").map_err(g("request_id"))?,
        ts_ms: r.try_get("ts_ms").map_err(g("ts_ms"))?,
        tenant_id: r.try_get("tenant_id").map_err(g("tenant_id"))?,
        key_id: r.try_get("key_id").map_err(g("key_id"))?,
        model: r.try_get("model").map_err(g("model"))?,
        prompt_tokens: r.try_get("prompt_tokens").map_err(g("prompt_tokens"))?,
        completion_tokens: r
            .try_get("completion_tokens")
            .map_err(g("completion_tokens"))?,
        ttft_ms: r.try_get("ttft_ms").map_err(g("ttft_ms"))?,
        duration_ms: r.try_get("duration_ms").map_err(g("duration_ms"))?,
        status: r.try_get("status").map_err(g("status"))?,
        finish_reason: r.try_get("finish_reason").map_err(g("finish_reason"))?,
        subject: r.try_get("subject").map_err(g("subject"))?,
    })
}

/// A bound value of a filter.
enum Arg {
    Int(i64),
    Text(String),
}

/// `WHERE …` and its arguments for a filter; `time` turns the time bounds into the values
/// compared with `time_col`.
fn where_clause(f: &UsageFilter, time_col: &str, time: impl Fn(i64) -> Arg) -> (String, Vec<Arg>) {
    let mut conds = vec!["1 = 1".to_string()];
    let mut args = Vec::new();
    let mut push = |cond: String, v: Arg| {
        args.push(v);
        conds.push(cond.replace('?', &format!("${}", args.len())));
    };
    if let Some(t) = f.from_ms {
        push(format!("{time_col} >= ?"), time(t));
    }
    if let Some(t) = f.to_ms {
        push(format!("{time_col} < ?"), time(t));
    }
    if let Some(t) = &f.tenant_id {
        push("tenant_id = ?".into(), Arg::Text(t.clone()));
    }
    if let Some(k) = &f.key_id {
        push("key_id = ?".into(), Arg::Text(k.clone()));
    }
    if let Some(m) = &f.model {
        push("model = ?".into(), Arg::Text(m.clone()));
    }
    if let Some(s) = &f.subject {
        push("subject = ?".into(), Arg::Text(s.clone()));
    }
    (conds.join(" AND "), args)
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    args: Vec<Arg>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for a in args {
        q = match a {
            Arg::Int(i) => q.bind(i),
            Arg::Text(s) => q.bind(s),
        };
    }
    q
}

/// Binds the 12 columns of each row of `chunk` to the query `q` (a `Query` or a
/// `QueryScalar`: both have an inherent `bind`), in [`insert_sql`]'s order.
macro_rules! bind_rows {
    ($q:expr, $chunk:expr) => {{
        let mut q = $q;
        for u in $chunk {
            q = q
                .bind(u.request_id.as_ref())
                .bind(u.ts_ms)
                .bind(u.tenant_id.as_ref())
                .bind(u.key_id.as_ref())
                .bind(u.model.as_ref())
                .bind(u.prompt_tokens)
                .bind(u.completion_tokens)
                .bind(u.ttft_ms)
                .bind(u.duration_ms)
                .bind(u.status)
                .bind(u.finish_reason.as_ref())
                .bind(u.subject.as_deref());
        }
        q
    }};
}

impl Store {
    /// Stores a batch of usage rows in one transaction; rows whose request id is already
    /// stored are skipped (so replaying a journal twice counts once). Daily aggregates grow
    /// by the rows actually inserted. Returns how many were new.
    ///
    /// The common case, every row new, takes inserts that return only a count (SQLite:
    /// multi-row inserts of bound values; PostgreSQL: one insert of the whole batch as a JSON
    /// array, `jsonb_to_recordset`). When a count comes up short (a replay, or a batch retried
    /// after a commit whose answer was lost), that transaction is rolled back and the batch is
    /// stored again with `RETURNING`, which names the rows inserted, so the aggregates count
    /// exactly those.
    pub async fn insert_usage(&self, batch: &[UsageRecord]) -> Result<usize> {
        let rows: Vec<UsageRow> = batch.iter().map(UsageRow::from).collect();
        self.insert_usage_rows(&rows).await
    }

    /// [`Store::insert_usage`] for rows that borrow their text.
    pub async fn insert_usage_rows(&self, rows: &[UsageRow<'_>]) -> Result<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::db("storing usage"))?;
        let what = || format!("storing {} usage rows", rows.len());
        let all_new = if self.backend() == crate::store::Backend::Sqlite {
            let mut all_new = true;
            for chunk in rows.chunks(INSERT_CHUNK) {
                let sql = insert_sql(chunk.len(), true, false);
                let done = bind_rows!(query(sql), chunk)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db(what()))?;
                if done.rows_affected() != chunk.len() as u64 {
                    all_new = false;
                    break;
                }
            }
            all_new
        } else {
            let json = serde_json::to_string(rows)
                .map_err(|e| Error::invalid("usage", format!("{}: {e}", what())))?;
            let done = sqlx::query(PG_INSERT_JSON)
                .bind(json)
                .execute(&mut *tx)
                .await
                .map_err(Error::db(what()))?;
            done.rows_affected() == rows.len() as u64
        };
        if !all_new {
            tx.rollback().await.map_err(Error::db("storing usage"))?;
            return self.insert_usage_naming_new(rows).await;
        }
        add_daily(&mut tx, rows.iter()).await?;
        tx.commit().await.map_err(Error::db("storing usage"))?;
        Ok(rows.len())
    }

    /// [`Store::insert_usage`] for a batch where some rows may be stored already.
    async fn insert_usage_naming_new(&self, batch: &[UsageRow<'_>]) -> Result<usize> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::db("storing usage"))?;
        let mut new_rows: Vec<UsageRow> = Vec::new();
        // RETURNING names the rows actually inserted, so repeats add nothing to the aggregates.
        let sqlite = self.backend() == crate::store::Backend::Sqlite;
        for chunk in batch.chunks(INSERT_CHUNK) {
            let sql = insert_sql(chunk.len(), sqlite, true);
            let q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.into_owned()));
            let inserted: std::collections::HashSet<String> = bind_rows!(q, chunk)
                .fetch_all(&mut *tx)
                .await
                .map_err(Error::db(format!("storing {} usage rows", chunk.len())))?
                .into_iter()
                .collect();
            new_rows.extend(
                chunk
                    .iter()
                    .filter(|u| inserted.contains(u.request_id.as_ref()))
                    .cloned(),
            );
        }
        add_daily(&mut tx, new_rows.iter()).await?;
        tx.commit().await.map_err(Error::db("storing usage"))?;
        Ok(new_rows.len())
    }

    /// Usage rows matching `f`, oldest first.
    pub async fn usage(&self, f: &UsageFilter) -> Result<Vec<UsageRecord>> {
        let (w, args) = where_clause(f, "ts_ms", Arg::Int);
        let sql = format!(
            "SELECT request_id, ts_ms, tenant_id, key_id, model, prompt_tokens, completion_tokens, \
             ttft_ms, duration_ms, status, finish_reason, subject FROM usage_log WHERE {w} \
             ORDER BY ts_ms, request_id LIMIT {}",
            f.limit.unwrap_or(10_000).clamp(1, 1_000_000)
        );
        let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), args)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("reading usage"))?;
        rows.iter().map(usage_from_row).collect()
    }

    /// Daily aggregates matching `f` (the times select whole days).
    pub async fn daily_usage(&self, f: &UsageFilter) -> Result<Vec<DailyUsage>> {
        if f.subject.is_some() {
            return Err(Error::invalid(
                "subject",
                "the daily aggregates are per key, not per caller subject: filter the rows",
            ));
        }
        let (w, args) = where_clause(f, "day", |t| Arg::Text(day_of(t)));
        let sql = format!(
            "SELECT day, tenant_id, key_id, model, requests, prompt_tokens, completion_tokens \
             FROM usage_daily WHERE {w} ORDER BY day, tenant_id, key_id, model"
        );
        let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), args)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("reading daily usage"))?;
        rows.iter()
            .map(|r| {
                let g = |c: &str| Error::db(format!("reading usage_daily.{c}"));
                Ok(DailyUsage {
                    day: r.try_get("day").map_err(g("day"))?,
                    tenant_id: r.try_get("tenant_id").map_err(g("tenant_id"))?,
                    key_id: r.try_get("key_id").map_err(g("key_id"))?,
                    model: r.try_get("model").map_err(g("model"))?,
                    requests: r.try_get("requests").map_err(g("requests"))?,
                    prompt_tokens: r.try_get("prompt_tokens").map_err(g("prompt_tokens"))?,
                    completion_tokens: r
                        .try_get("completion_tokens")
                        .map_err(g("completion_tokens"))?,
                })
            })
            .collect()
    }

    /// Prompt + completion tokens of key `key_id` since `since_ms` (seeds budget counters).
    /// Budget periods start at midnight UTC, so the daily aggregates answer (written in the
    /// same transaction as the rows: the same sum, read from a row per day and model instead
    /// of a row per request); other starts sum the rows.
    pub async fn tokens_since(&self, key_id: &str, since_ms: i64) -> Result<i64> {
        let q = if since_ms.rem_euclid(86_400_000) == 0 {
            sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) \
                 FROM usage_daily WHERE key_id = $1 AND day >= $2",
            )
            .bind(key_id)
            .bind(day_of(since_ms))
        } else {
            sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) \
                 FROM usage_log WHERE key_id = $1 AND ts_ms >= $2",
            )
            .bind(key_id)
            .bind(since_ms)
        };
        let v: Option<i64> = q
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!("summing the usage of key {key_id}")))?;
        Ok(v.unwrap_or(0))
    }
}

/// Adds `rows` to their daily aggregates (one upsert per day, tenant, key and model).
async fn add_daily<'a, 'r: 'a>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: impl Iterator<Item = &'a UsageRow<'r>>,
) -> Result<()> {
    let mut daily: BTreeMap<DayKey, (i64, i64, i64)> = BTreeMap::new();
    for u in rows {
        let e = daily
            .entry((
                u.ts_ms.div_euclid(86_400_000),
                &*u.tenant_id,
                &*u.key_id,
                &*u.model,
            ))
            .or_default();
        e.0 += 1;
        e.1 += u.prompt_tokens;
        e.2 += u.completion_tokens;
    }
    for ((day, tenant, key, model), (n, p, c)) in daily {
        sqlx::query(
            "INSERT INTO usage_daily (day, tenant_id, key_id, model, requests, prompt_tokens, \
             completion_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (day, tenant_id, key_id, model) DO UPDATE SET \
             requests = usage_daily.requests + excluded.requests, \
             prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, \
             completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens",
        )
        .bind(day_of(day * 86_400_000))
        .bind(tenant)
        .bind(key)
        .bind(model)
        .bind(n)
        .bind(p)
        .bind(c)
        .execute(&mut **tx)
        .await
        .map_err(Error::db("updating the daily usage aggregates"))?;
    }
    Ok(())
}

/// The multi-row usage INSERT for `rows` rows: SQLite gets anonymous `?` parameters (sqlx
/// resolves `$N` names one by one, quadratic in the 384 parameters of a full chunk),
/// PostgreSQL `$N`; `returning` adds `RETURNING request_id`. Full chunks, the common case,
/// are built once.
fn insert_sql(rows: usize, sqlite: bool, returning: bool) -> Cow<'static, str> {
    const COLUMNS: usize = 12;
    static FULL: [std::sync::OnceLock<String>; 4] = [const { std::sync::OnceLock::new() }; 4];
    let build = || {
        let mut sql = String::from(
            "INSERT INTO usage_log (request_id, ts_ms, tenant_id, key_id, model, prompt_tokens, \
             completion_tokens, ttft_ms, duration_ms, status, finish_reason, subject) VALUES ",
        );
        for i in 0..rows {
            sql.push_str(if i > 0 { ", (" } else { "(" });
            for c in 1..=COLUMNS {
                if c > 1 {
                    sql.push_str(", ");
                }
                if sqlite {
                    sql.push('?');
                } else {
                    sql.push_str(&format!("${}", i * COLUMNS + c));
                }
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
        if returning {
            sql.push_str(" RETURNING request_id");
        }
        sql
    };
    if rows == INSERT_CHUNK {
        let slot = usize::from(sqlite) + 2 * usize::from(returning);
        Cow::Borrowed(FULL[slot].get_or_init(build))
    } else {
        Cow::Owned(build())
    }
}

/// A query for `sql` (a full chunk's text is shared, not copied).
fn query(
    sql: Cow<'static, str>,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    match sql {
        Cow::Borrowed(s) => sqlx::query(AssertSqlSafe(s)),
        Cow::Owned(s) => sqlx::query(AssertSqlSafe(s)),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Usage rows as CSV (RFC 4180, with a header line).
pub fn usage_csv(rows: &[UsageRecord]) -> String {
    let mut out = String::from(
        "request_id,time,tenant_id,key_id,model,prompt_tokens,completion_tokens,ttft_ms,duration_ms,status,finish_reason,subject\n",
    );
    for u in rows {
        let fields = [
            csv_field(&u.request_id),
            u.ts_ms.to_string(),
            csv_field(&u.tenant_id),
            csv_field(&u.key_id),
            csv_field(&u.model),
            u.prompt_tokens.to_string(),
            u.completion_tokens.to_string(),
            u.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
            u.duration_ms.to_string(),
            u.status.to_string(),
            csv_field(&u.finish_reason),
            csv_field(u.subject.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}
