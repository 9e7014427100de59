//! Webhooks: key created / rotated / blocked / unblocked / deleted and budget exceeded.
//!
//! Events go to an outbox table (`webhook_events`) in the same transaction as the change they
//! report, so a change made with `bitnet admin` while no server runs is still delivered. A
//! [`Deliverer`] (any replica; a claim is one conditional UPDATE) POSTs each event as JSON with
//! `X-Bitnet-Signature: sha256=HEX(HMAC-SHA256(secret, body))`, retries failures with
//! exponential backoff (1 s, 2 s, 4 s … up to 1 h, 12 attempts), and logs every attempt in
//! `webhook_deliveries`.

use crate::error::{Error, Result};
use crate::http::HttpUrl;
use crate::store::Store;
use crate::{new_id, now_ms};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::time::{Duration, Instant};

/// Attempts before an event is marked `failed`.
pub const MAX_ATTEMPTS: i64 = 12;

/// One delivery attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// `whd_…`.
    pub id: String,
    /// The event.
    pub event_id: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// Where it went.
    pub url: String,
    /// HTTP status, if one came back.
    pub status_code: Option<i64>,
    /// Transport error, if any.
    pub error: Option<String>,
    /// Round trip, ms.
    pub duration_ms: i64,
}

/// An outbox event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// `evt_…` (or `budget:KEY:PERIOD` for budgets: one per period).
    pub id: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// `key.created`, `key.rotated`, `key.blocked`, `key.unblocked`, `key.deleted`,
    /// `budget.exceeded`.
    pub kind: String,
    /// The JSON body sent.
    pub payload: serde_json::Value,
    /// `pending`, `sending`, `delivered`, `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Last error.
    pub last_error: Option<String>,
}

/// `sha256=HEX` of HMAC-SHA256 over `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", crate::keys::hex(&mac.finalize().into_bytes()))
}

/// Inserts an event inside `tx` (ignored when `id` exists already).
pub(crate) async fn enqueue(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: Option<String>,
    kind: &str,
    data: serde_json::Value,
) -> Result<()> {
    let id = id.unwrap_or_else(|| new_id("evt"));
    let now = now_ms();
    let payload = serde_json::json!({"id": id, "type": kind, "created": now / 1000, "data": data});
    sqlx::query(
        "INSERT INTO webhook_events (id, ts_ms, kind, payload, status, attempts, next_attempt_ms) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&id)
    .bind(now)
    .bind(kind)
    .bind(payload.to_string())
    .execute(&mut **tx)
    .await
    .map_err(Error::db(format!("queueing webhook event {kind}")))?;
    Ok(())
}

fn event_from_row(r: &AnyRow) -> Result<Event> {
    let g = |c: &str| Error::db(format!("reading webhook_events.{c}"));
    let payload: String = r.try_get("payload").map_err(g("payload"))?;
    Ok(Event {
        id: r.try_get("id").map_err(g("id"))?,
        ts_ms: r.try_get("ts_ms").map_err(g("ts_ms"))?,
        kind: r.try_get("kind").map_err(g("kind"))?,
        payload: serde_json::from_str(&payload).map_err(|e| Error::Corrupt {
            what: "webhook_events.payload".into(),
            detail: e.to_string(),
        })?,
        status: r.try_get("status").map_err(g("status"))?,
        attempts: r.try_get("attempts").map_err(g("attempts"))?,
        last_error: r.try_get("last_error").map_err(g("last_error"))?,
    })
}

impl Store {
    /// Queues a `budget.exceeded` event for `key_id`, once per budget period.
    pub async fn budget_exceeded(
        &self,
        key_id: &str,
        tenant_id: &str,
        budget: i64,
        spent: i64,
        period_start: i64,
    ) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::db("queueing a budget event"))?;
        enqueue(
            &mut tx,
            Some(format!("evt_budget_{key_id}_{period_start}")),
            "budget.exceeded",
            serde_json::json!({"key_id": key_id, "tenant_id": tenant_id, "budget_tokens": budget, "spent_tokens": spent, "period_start_ms": period_start}),
        )
        .await?;
        tx.commit()
            .await
            .map_err(Error::db("queueing a budget event"))?;
        Ok(())
    }

    /// Webhook events, newest first.
    pub async fn webhook_events(&self, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT id, ts_ms, kind, payload, status, attempts, last_error FROM webhook_events \
             ORDER BY ts_ms DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db("reading webhook events"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// Delivery attempts of `event_id`, oldest first.
    pub async fn webhook_deliveries(&self, event_id: &str) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT id, event_id, ts_ms, url, status_code, error, duration_ms FROM webhook_deliveries \
             WHERE event_id = $1 ORDER BY ts_ms, id",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db("reading webhook deliveries"))?;
        rows.iter()
            .map(|r| {
                let g = |c: &str| Error::db(format!("reading webhook_deliveries.{c}"));
                Ok(Delivery {
                    id: r.try_get("id").map_err(g("id"))?,
                    event_id: r.try_get("event_id").map_err(g("event_id"))?,
                    ts_ms: r.try_get("ts_ms").map_err(g("ts_ms"))?,
                    url: r.try_get("url").map_err(g("url"))?,
                    status_code: r.try_get("status_code").map_err(g("status_code"))?,
                    error: r.try_get("error").map_err(g("error"))?,
                    duration_ms: r.try_get("duration_ms").map_err(g("duration_ms"))?,
                })
            })
            .collect()
    }

    /// Claims due events (at most `n`): each is ours for `lease_ms` (a crashed deliverer's
    /// claim lapses and another retries it).
    async fn claim_due(&self, n: i64, lease_ms: i64) -> Result<Vec<Event>> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id, ts_ms, kind, payload, status, attempts, last_error FROM webhook_events \
             WHERE status IN ('pending', 'sending') AND next_attempt_ms <= $1 \
             ORDER BY next_attempt_ms, id LIMIT $2",
        )
        .bind(now)
        .bind(n)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db("reading due webhook events"))?;
        let mut mine = Vec::new();
        for r in &rows {
            let e = event_from_row(r)?;
            let claimed = sqlx::query(
                "UPDATE webhook_events SET status = 'sending', next_attempt_ms = $2 \
                 WHERE id = $1 AND status IN ('pending', 'sending') AND next_attempt_ms <= $3",
            )
            .bind(&e.id)
            .bind(now + lease_ms)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(Error::db("claiming a webhook event"))?;
            if claimed.rows_affected() == 1 {
                mine.push(e);
            }
        }
        Ok(mine)
    }

    async fn settle(&self, e: &Event, d: &Delivery, ok: bool) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::db("logging a webhook delivery"))?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, event_id, ts_ms, url, status_code, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&d.id)
        .bind(&d.event_id)
        .bind(d.ts_ms)
        .bind(&d.url)
        .bind(d.status_code)
        .bind(&d.error)
        .bind(d.duration_ms)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("logging a webhook delivery"))?;
        let attempts = e.attempts + 1;
        let err = d
            .error
            .clone()
            .or_else(|| d.status_code.map(|s| format!("HTTP {s}")));
        let (status, next) = if ok {
            ("delivered", now_ms())
        } else if attempts >= MAX_ATTEMPTS {
            ("failed", now_ms())
        } else {
            let backoff = 1000i64
                .saturating_mul(1 << (attempts - 1).min(12))
                .min(3_600_000);
            ("pending", now_ms() + backoff)
        };
        sqlx::query(
            "UPDATE webhook_events SET status = $2, attempts = $3, next_attempt_ms = $4, \
             last_error = $5, delivered_ms = $6 WHERE id = $1",
        )
        .bind(&e.id)
        .bind(status)
        .bind(attempts)
        .bind(next)
        .bind(if ok { None } else { err })
        .bind(ok.then(now_ms))
        .execute(&mut *tx)
        .await
        .map_err(Error::db("updating a webhook event"))?;
        tx.commit()
            .await
            .map_err(Error::db("logging a webhook delivery"))?;
        Ok(())
    }
}

/// Where and how to deliver.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// `http://host:port/path` (plain HTTP: put a TLS proxy in front for https endpoints).
    pub url: String,
    /// HMAC key.
    pub secret: Vec<u8>,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

/// Checks a webhook URL: plain `http://host[:port][/path]`.
pub fn parse_url(url: &str) -> Result<HttpUrl> {
    HttpUrl::parse("webhook-url", url)
}

/// Delivers the outbox.
pub struct Deliverer {
    store: Store,
    cfg: WebhookConfig,
    url: HttpUrl,
}

impl Deliverer {
    /// A deliverer for `cfg` (the URL is checked here).
    pub fn new(store: Store, cfg: WebhookConfig) -> Result<Deliverer> {
        let url = parse_url(&cfg.url)?;
        Ok(Deliverer { store, cfg, url })
    }

    /// One pass: delivers what is due; returns how many were attempted.
    pub async fn run_once(&self) -> Result<usize> {
        let due = self.store.claim_due(32, 60_000).await?;
        for e in &due {
            let body = e.payload.to_string();
            let t = Instant::now();
            let result =
                tokio::time::timeout(self.cfg.timeout, self.post(&e.kind, body.into_bytes())).await;
            let (status_code, error) = match result {
                Ok(Ok(s)) => (Some(i64::from(s)), None),
                Ok(Err(m)) => (None, Some(m)),
                Err(_) => (
                    None,
                    Some(format!(
                        "timed out after {:.1} s",
                        self.cfg.timeout.as_secs_f64()
                    )),
                ),
            };
            let ok = status_code.is_some_and(|s| (200..300).contains(&s));
            let d = Delivery {
                id: new_id("whd"),
                event_id: e.id.clone(),
                ts_ms: now_ms(),
                url: self.cfg.url.clone(),
                status_code,
                error,
                duration_ms: t.elapsed().as_millis() as i64,
            };
            if !ok {
                tracing::warn!(
                    "webhook {} ({}) attempt {} failed: {}",
                    e.id,
                    e.kind,
                    e.attempts + 1,
                    d.error
                        .clone()
                        .unwrap_or_else(|| format!("HTTP {}", status_code.unwrap_or(0)))
                );
            }
            self.store.settle(e, &d, ok).await?;
        }
        Ok(due.len())
    }

    async fn post(&self, kind: &str, body: Vec<u8>) -> std::result::Result<u16, String> {
        let sig = signature(&self.cfg.secret, &body);
        let headers = [
            ("content-type", "application/json"),
            ("x-bitnet-event", kind),
            ("x-bitnet-signature", sig.as_str()),
        ];
        let (status, _, _) = self.url.send("POST", &headers, body).await?;
        Ok(status)
    }

    /// Delivers forever, every `every` (a failed pass is logged and retried).
    pub async fn run(self, every: Duration) {
        loop {
            match self.run_once().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!("webhook delivery pass failed: {e}"),
            }
            tokio::time::sleep(every).await;
        }
    }
}
