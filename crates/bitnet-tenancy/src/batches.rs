//! The Batch API's storage: uploaded files, batch jobs and their per-line results.
//!
//! Files hold JSONL text in the database, so every replica sees them. A batch is run by one
//! replica at a time under a lease (`lease_owner`, `lease_until`): a runner renews it while it
//! works, and when a replica dies its lease lapses and another claims the batch. Each finished
//! input line is one `batch_results` row written before the next is counted, so a resumed
//! batch skips what is done and never sends a line twice.

use crate::error::{Error, Result};
use crate::store::Store;
use crate::{new_id, now_ms};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

/// An uploaded (or produced) file, without its content.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StoredFile {
    /// `file-…`.
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// The key that uploaded it (for produced files: the batch's key).
    pub key_id: String,
    /// The name given at upload.
    pub filename: String,
    /// `batch`, `batch_output` or `batch_error`.
    pub purpose: String,
    /// Size of the content.
    pub bytes: i64,
    /// Unix ms.
    pub created_ms: i64,
    /// When it expires (Unix ms); `None`: kept until deleted.
    pub expires_ms: Option<i64>,
}

/// A batch job.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Batch {
    /// `batch_…`.
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// The key its requests run as (and are metered to).
    pub key_id: String,
    /// `/v1/chat/completions` or `/v1/completions`.
    pub endpoint: String,
    /// The input file.
    pub input_file_id: String,
    /// `24h`.
    pub completion_window: String,
    /// `validating`, `in_progress`, `finalizing`, `completed`, `failed`, `cancelling`,
    /// `cancelled` or `expired`.
    pub status: String,
    /// Unix ms of each state reached.
    pub created_ms: i64,
    /// When unfinished lines stop being sent.
    pub expires_ms: i64,
    /// Unix ms.
    pub in_progress_ms: Option<i64>,
    /// Unix ms.
    pub finalizing_ms: Option<i64>,
    /// Unix ms.
    pub completed_ms: Option<i64>,
    /// Unix ms.
    pub failed_ms: Option<i64>,
    /// Unix ms.
    pub cancelling_ms: Option<i64>,
    /// Unix ms.
    pub cancelled_ms: Option<i64>,
    /// Unix ms.
    pub expired_ms: Option<i64>,
    /// Input lines.
    pub total: i64,
    /// Lines answered with a 2xx.
    pub completed: i64,
    /// Lines that failed.
    pub failed: i64,
    /// Results of the 2xx lines.
    pub output_file_id: Option<String>,
    /// Results of the failed lines.
    pub error_file_id: Option<String>,
    /// Why the batch failed validation (JSON).
    pub errors: Option<serde_json::Value>,
    /// Caller's metadata (JSON object).
    pub metadata: Option<serde_json::Value>,
}

impl Batch {
    /// Whether the batch has reached a final state.
    pub fn is_final(&self) -> bool {
        matches!(
            self.status.as_str(),
            "completed" | "failed" | "cancelled" | "expired"
        )
    }
}

const FILE_COLUMNS: &str =
    "id, tenant_id, key_id, filename, purpose, bytes, created_ms, expires_ms";
/// The condition of a file the API still shows: not expired at the time bound to `$n`.
fn not_expired(n: usize) -> String {
    format!("(expires_ms IS NULL OR expires_ms > ${n})")
}
const BATCH_COLUMNS: &str = "id, tenant_id, key_id, endpoint, input_file_id, completion_window, \
    status, created_ms, expires_ms, in_progress_ms, finalizing_ms, completed_ms, failed_ms, \
    cancelling_ms, cancelled_ms, expired_ms, total, completed, failed, output_file_id, \
    error_file_id, errors, metadata";

fn file_from_row(r: &AnyRow) -> Result<StoredFile> {
    let g = |c: &str| Error::db(format!("reading files.{c}"));
    Ok(StoredFile {
        id: r.try_get("id").map_err(g("id"))?,
        tenant_id: r.try_get("tenant_id").map_err(g("tenant_id"))?,
        key_id: r.try_get("key_id").map_err(g("key_id"))?,
        filename: r.try_get("filename").map_err(g("filename"))?,
        purpose: r.try_get("purpose").map_err(g("purpose"))?,
        bytes: r.try_get("bytes").map_err(g("bytes"))?,
        created_ms: r.try_get("created_ms").map_err(g("created_ms"))?,
        expires_ms: r.try_get("expires_ms").map_err(g("expires_ms"))?,
    })
}

fn json_col(r: &AnyRow, c: &str) -> Result<Option<serde_json::Value>> {
    let s: Option<String> = r
        .try_get(c)
        .map_err(Error::db(format!("reading batches.{c}")))?;
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| Error::Corrupt {
            what: format!("batches.{c}"),
            detail: e.to_string(),
        })
    })
    .transpose()
}

fn batch_from_row(r: &AnyRow) -> Result<Batch> {
    let g = |c: &str| Error::db(format!("reading batches.{c}"));
    macro_rules! col {
        ($c:literal) => {
            r.try_get($c).map_err(g($c))?
        };
    }
    Ok(Batch {
        id: col!("id"),
        tenant_id: col!("tenant_id"),
        key_id: col!("key_id"),
        endpoint: col!("endpoint"),
        input_file_id: col!("input_file_id"),
        completion_window: col!("completion_window"),
        status: col!("status"),
        created_ms: col!("created_ms"),
        expires_ms: col!("expires_ms"),
        in_progress_ms: col!("in_progress_ms"),
        finalizing_ms: col!("finalizing_ms"),
        completed_ms: col!("completed_ms"),
        failed_ms: col!("failed_ms"),
        cancelling_ms: col!("cancelling_ms"),
        cancelled_ms: col!("cancelled_ms"),
        expired_ms: col!("expired_ms"),
        total: col!("total"),
        completed: col!("completed"),
        failed: col!("failed"),
        output_file_id: col!("output_file_id"),
        error_file_id: col!("error_file_id"),
        errors: json_col(r, "errors")?,
        metadata: json_col(r, "metadata")?,
    })
}

/// A state a batch can be moved to by [`Store::set_batch_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchState {
    /// Lines are being sent.
    InProgress,
    /// The result files are being written.
    Finalizing,
    /// Done.
    Completed,
    /// Did not validate.
    Failed,
    /// Cancelled before the end (the result files hold what finished).
    Cancelled,
    /// Past its completion window.
    Expired,
}

impl BatchState {
    fn column(self) -> (&'static str, &'static str) {
        match self {
            BatchState::InProgress => ("in_progress", "in_progress_ms"),
            BatchState::Finalizing => ("finalizing", "finalizing_ms"),
            BatchState::Completed => ("completed", "completed_ms"),
            BatchState::Failed => ("failed", "failed_ms"),
            BatchState::Cancelled => ("cancelled", "cancelled_ms"),
            BatchState::Expired => ("expired", "expired_ms"),
        }
    }
}

impl Store {
    /// Stores a file under a new id, or under `id` (a batch's result files: storing them
    /// again after a crash keeps the first copy instead of adding another). It expires
    /// `expires_after` after its creation (`None`: kept until deleted).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_file(
        &self,
        id: Option<&str>,
        tenant_id: &str,
        key_id: &str,
        filename: &str,
        purpose: &str,
        content: &str,
        expires_after: Option<std::time::Duration>,
    ) -> Result<StoredFile> {
        let created_ms = now_ms();
        let f = StoredFile {
            id: id
                .map(str::to_string)
                .unwrap_or_else(|| new_id("file").replacen('_', "-", 1)),
            tenant_id: tenant_id.into(),
            key_id: key_id.into(),
            filename: filename.into(),
            purpose: purpose.into(),
            bytes: content.len() as i64,
            created_ms,
            expires_ms: expires_after
                .map(|d| created_ms.saturating_add(d.as_millis().min(i64::MAX as u128) as i64)),
        };
        sqlx::query(
            "INSERT INTO files (id, tenant_id, key_id, filename, purpose, bytes, created_ms, \
             content, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&f.id)
        .bind(&f.tenant_id)
        .bind(&f.key_id)
        .bind(&f.filename)
        .bind(&f.purpose)
        .bind(f.bytes)
        .bind(f.created_ms)
        .bind(content)
        .bind(f.expires_ms)
        .execute(&self.pool)
        .await
        .map_err(Error::db(format!("storing file {}", f.filename)))?;
        if id.is_some() {
            return self.file(tenant_id, &f.id).await;
        }
        Ok(f)
    }

    /// A file of `tenant_id` (another tenant's file, or an expired one, is not found).
    pub async fn file(&self, tenant_id: &str, id: &str) -> Result<StoredFile> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE id = $1 AND tenant_id = $2 AND {}",
            not_expired(3)
        )))
        .bind(id)
        .bind(tenant_id)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::db("reading a file"))?;
        file_from_row(&Error::found(row, "file", id)?)
    }

    /// A file's content (expired or not: the API checks [`Store::file`] first; a running
    /// batch still reads its input, which [`Store::purge_expired_files`] keeps).
    pub async fn file_content(&self, tenant_id: &str, id: &str) -> Result<String> {
        let row = sqlx::query("SELECT content FROM files WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db("reading a file"))?;
        Error::found(row, "file", id)?
            .try_get("content")
            .map_err(Error::db("reading files.content"))
    }

    /// The files of `tenant_id` not expired, newest first, optionally of one purpose.
    pub async fn files(
        &self,
        tenant_id: &str,
        purpose: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredFile>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE tenant_id = $1 AND ($2 = '' OR purpose = $2) \
             AND {} ORDER BY created_ms DESC, id DESC LIMIT $3",
            not_expired(4)
        )))
        .bind(tenant_id)
        .bind(purpose.unwrap_or(""))
        .bind(limit)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db("listing files"))?;
        rows.iter().map(file_from_row).collect()
    }

    /// Deletes the files expired at `now_ms`, except the input of a batch still running
    /// (it is deleted by the first sweep after the batch ends). Returns how many went.
    pub async fn purge_expired_files(&self, now_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM files WHERE expires_ms IS NOT NULL AND expires_ms <= $1 AND id NOT IN \
             (SELECT input_file_id FROM batches WHERE status IN \
             ('validating', 'in_progress', 'finalizing', 'cancelling'))",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(Error::db("deleting expired files"))?;
        Ok(r.rows_affected())
    }

    /// Deletes a file.
    pub async fn delete_file(&self, tenant_id: &str, id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM files WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant_id)
            .execute(&self.pool)
            .await
            .map_err(Error::db("deleting a file"))?;
        if r.rows_affected() == 0 {
            return Err(Error::NotFound {
                what: "file",
                id: id.into(),
            });
        }
        Ok(())
    }

    /// Creates a batch of `total` lines in state `validating`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_batch(
        &self,
        tenant_id: &str,
        key_id: &str,
        endpoint: &str,
        input_file_id: &str,
        window_ms: i64,
        total: i64,
        metadata: Option<&serde_json::Value>,
    ) -> Result<Batch> {
        let id = new_id("batch");
        let now = now_ms();
        sqlx::query(
            "INSERT INTO batches (id, tenant_id, key_id, endpoint, input_file_id, \
             completion_window, status, created_ms, expires_ms, total, completed, failed, \
             metadata, lease_until) VALUES ($1, $2, $3, $4, $5, $6, 'validating', $7, $8, $9, \
             0, 0, $10, 0)",
        )
        .bind(&id)
        .bind(tenant_id)
        .bind(key_id)
        .bind(endpoint)
        .bind(input_file_id)
        .bind(format!("{}h", window_ms / 3_600_000))
        .bind(now)
        .bind(now + window_ms)
        .bind(total)
        .bind(metadata.map(|m| m.to_string()))
        .execute(&self.pool)
        .await
        .map_err(Error::db("creating a batch"))?;
        self.batch(None, &id).await
    }

    /// A batch (of `tenant_id` when given).
    pub async fn batch(&self, tenant_id: Option<&str>, id: &str) -> Result<Batch> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND ($2 = '' OR tenant_id = $2)"
        )))
        .bind(id)
        .bind(tenant_id.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::db("reading a batch"))?;
        batch_from_row(&Error::found(row, "batch", id)?)
    }

    /// The batches of `tenant_id`, newest first, those older than `after` (an id) when given.
    pub async fn batches(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Batch>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE tenant_id = $1 AND ($2 = '' OR id < $2) \
             ORDER BY id DESC LIMIT $3"
        )))
        .bind(tenant_id)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db("listing batches"))?;
        rows.iter().map(batch_from_row).collect()
    }

    /// Asks for a batch to stop: `cancelling` (its runner finishes it as `cancelled`);
    /// a final batch is returned unchanged.
    pub async fn cancel_batch(&self, tenant_id: &str, id: &str) -> Result<Batch> {
        sqlx::query(
            "UPDATE batches SET status = 'cancelling', cancelling_ms = $3 WHERE id = $1 \
             AND tenant_id = $2 AND status IN ('validating', 'in_progress')",
        )
        .bind(id)
        .bind(tenant_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(Error::db("cancelling a batch"))?;
        self.batch(Some(tenant_id), id).await
    }

    /// Claims the oldest unfinished batch whose lease has lapsed, for `lease_ms`.
    pub async fn claim_batch(&self, owner: &str, lease_ms: i64) -> Result<Option<Batch>> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', \
             'cancelling') AND lease_until < $1 ORDER BY created_ms LIMIT 4",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db("looking for batches to run"))?;
        for r in rows {
            let id: String = r.try_get("id").map_err(Error::db("reading batches.id"))?;
            let claimed = sqlx::query(
                "UPDATE batches SET lease_owner = $2, lease_until = $3 WHERE id = $1 \
                 AND lease_until < $4",
            )
            .bind(&id)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(Error::db("claiming a batch"))?;
            if claimed.rows_affected() == 1 {
                return self.batch(None, &id).await.map(Some);
            }
        }
        Ok(None)
    }

    /// Extends `owner`'s lease (or releases it with `lease_ms` = 0); false when the lease
    /// was lost to another runner.
    pub async fn renew_batch(&self, id: &str, owner: &str, lease_ms: i64) -> Result<bool> {
        let until = if lease_ms == 0 {
            0
        } else {
            now_ms() + lease_ms
        };
        let r =
            sqlx::query("UPDATE batches SET lease_until = $3 WHERE id = $1 AND lease_owner = $2")
                .bind(id)
                .bind(owner)
                .bind(until)
                .execute(&self.pool)
                .await
                .map_err(Error::db("renewing a batch lease"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Moves a batch to `state` (stamping its time), with the files and errors when given.
    pub async fn set_batch_status(
        &self,
        id: &str,
        state: BatchState,
        files: Option<(Option<&str>, Option<&str>)>,
        errors: Option<&serde_json::Value>,
    ) -> Result<()> {
        let (status, col) = state.column();
        let (out, err) = files.unwrap_or((None, None));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE batches SET status = $2, {col} = $3, \
             output_file_id = COALESCE($4, output_file_id), \
             error_file_id = COALESCE($5, error_file_id), errors = COALESCE($6, errors) \
             WHERE id = $1"
        )))
        .bind(id)
        .bind(status)
        .bind(now_ms())
        .bind(out)
        .bind(err)
        .bind(errors.map(|e| e.to_string()))
        .execute(&self.pool)
        .await
        .map_err(Error::db(format!("setting batch {id} {status}")))?;
        Ok(())
    }

    /// Records input line `line`'s result (once; a repeat is ignored) and counts it.
    pub async fn record_batch_result(
        &self,
        id: &str,
        line: i64,
        ok: bool,
        output: &str,
    ) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::db("recording a batch result"))?;
        let r = sqlx::query(
            "INSERT INTO batch_results (batch_id, line, ok, output) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(line)
        .bind(i64::from(ok))
        .bind(output)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("recording a batch result"))?;
        if r.rows_affected() == 1 {
            let col = if ok { "completed" } else { "failed" };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE batches SET {col} = {col} + 1 WHERE id = $1"
            )))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("counting a batch result"))?;
        }
        tx.commit()
            .await
            .map_err(Error::db("recording a batch result"))?;
        Ok(())
    }

    /// The results recorded for a batch, by input line: `(line, ok, output JSON line)`.
    pub async fn batch_results(&self, id: &str) -> Result<Vec<(i64, bool, String)>> {
        let rows = sqlx::query(
            "SELECT line, ok, output FROM batch_results WHERE batch_id = $1 ORDER BY line",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db("reading batch results"))?;
        rows.iter()
            .map(|r| {
                let g = |c: &str| Error::db(format!("reading batch_results.{c}"));
                let ok: i64 = r.try_get("ok").map_err(g("ok"))?;
                Ok((
                    r.try_get("line").map_err(g("line"))?,
                    ok != 0,
                    r.try_get("output").map_err(g("output"))?,
                ))
            })
            .collect()
    }
}
