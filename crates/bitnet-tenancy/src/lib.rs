//! Multi-tenancy for `bitnet serve`: tenants and API keys (hashed, constant-time compared),
//! per-key limits (RPM, TPM, parallel requests, token budgets) enforced in process or in
//! Redis, usage metering that survives crashes (append-only journal + batched inserts), daily
//! aggregates and an audit log — on SQLite or PostgreSQL through sqlx, the same migrations.

pub mod audit;
pub mod batches;
pub mod error;
pub mod http;
pub mod keys;
pub mod limits;
pub mod meter;
pub mod oidc;
pub mod period;
pub mod priority;
mod queued;
pub mod store;
pub mod usage;
pub mod webhooks;

pub use batches::{Batch, BatchState, StoredFile};
pub use error::{Error, Result};
pub use keys::{ApiKey, AuditEntry, KeyUpdate, NewKey, Period, Role, Tenant};
pub use limits::{Limiter, Limits, RateInfo, Verdict};
pub use meter::Meter;
pub use oidc::{OidcConfig, OidcVerifier, Principal};
pub use store::{Backend, Store};
pub use usage::{DailyUsage, UsageFilter, UsageRecord, UsageRow};

use sha2::Digest;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new id with a prefix (`key_…`): a UUIDv7, so ids sort in creation order (within a process
/// strictly, across replicas to the millisecond) and listings ordered by `(ts_ms, id)` are stable
/// even when two rows share a millisecond.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Settings of [`Tenancy::open`].
#[derive(Clone, Debug)]
pub struct TenancyConfig {
    /// `sqlite://PATH`, a path, or `postgres://…`.
    pub database_url: String,
    /// `redis://…` for counters shared by replicas; `None`: in process.
    pub redis_url: Option<String>,
    /// The usage journal folder.
    pub journal_dir: PathBuf,
    /// How long a key looked up stays cached (changes made through another replica take
    /// effect within this; limits and budgets are never cached).
    pub key_cache_ttl: Duration,
    /// A parallel-request slot expires after this even if its replica died.
    pub lease_ttl: Duration,
    /// Longest a usage row waits before its batch is stored.
    pub flush: Duration,
    /// Database connections.
    pub max_connections: u32,
    /// Deliver webhook events here (`None`: events wait in the outbox).
    pub webhook: Option<webhooks::WebhookConfig>,
    /// Accept OIDC JWT bearer tokens too (`None`: API keys only).
    pub oidc: Option<OidcConfig>,
    /// Files (uploads without `expires_after`, batch results) expire this long after their
    /// creation (`None`: kept until deleted).
    pub file_retention: Option<Duration>,
}

/// Why a bearer token was refused (401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key sent.
    #[error("You didn't provide an API key. Send it as `Authorization: Bearer KEY`.")]
    Missing,
    /// Unknown key (its text is never echoed).
    #[error("Incorrect API key provided.")]
    Invalid,
    /// Blocked, expired or rotated out.
    #[error("{0}")]
    Unusable(&'static str),
    /// An OIDC token that does not verify (the reason).
    #[error("Invalid bearer token: {0}")]
    Token(String),
    /// A valid OIDC token whose tenant or policy key does not allow access (403).
    #[error("{0}")]
    Forbidden(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// Why a request was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// 403: the key may not use this model.
    Model(String),
    /// 429 `requests`: over the RPM.
    Requests(RateInfo),
    /// 429 `tokens`: over the TPM (or the prompt alone is larger than it).
    Tokens(RateInfo),
    /// 429 `requests`: too many at once.
    Parallel(RateInfo, i64),
    /// 429 `insufficient_quota`: `(budget, spent, period end ms)`.
    Budget(i64, i64, i64),
    /// The store or Redis failed (500/503).
    Store(Error),
}

/// The tenancy service shared by the server's handlers.
pub struct Tenancy {
    /// The database.
    pub store: Store,
    limiter: Limiter,
    meter: Meter,
    /// Keys looked up, by the SHA-256 of their secret.
    cache: RwLock<HashMap<[u8; 32], CachedKey>>,
    ttl: Duration,
    lease_ttl_ms: i64,
    /// `(key, period start)` whose budget event is already queued.
    budget_events: std::sync::Mutex<std::collections::HashSet<(String, i64)>>,
    oidc: Option<OidcVerifier>,
    seed_lock: tokio::sync::Mutex<()>,
    /// Tenant (as named by tokens) → its SSO policy key, or why there is none.
    sso_cache: SsoCache,
    /// [`TenancyConfig::file_retention`].
    pub file_retention: Option<Duration>,
}

/// A key looked up, and when.
type CachedKey = (Instant, Arc<ApiKey>);

type SsoCache = RwLock<HashMap<String, (Instant, std::result::Result<Arc<ApiKey>, String>)>>;

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The key whose role, models and limits apply (for an OIDC caller: the tenant's policy
    /// key, with the role the token grants).
    pub key: Arc<ApiKey>,
    /// For an OIDC caller: `oidc:SUB`.
    pub subject: Option<String>,
}

impl Tenancy {
    /// Connects to the database (and Redis), migrates, replays the journal, starts metering.
    pub async fn open(c: &TenancyConfig) -> Result<Arc<Tenancy>> {
        let store = Store::connect(&c.database_url, c.max_connections).await?;
        let limiter = match &c.redis_url {
            Some(u) => Limiter::redis(u, "bitnet:rl").await?,
            None => Limiter::local(),
        };
        let oidc = match &c.oidc {
            Some(o) => Some(OidcVerifier::new(o.clone()).await?),
            None => None,
        };
        let meter = Meter::open(store.clone(), &c.journal_dir, c.flush).await?;
        if let Some(w) = &c.webhook {
            let d = webhooks::Deliverer::new(store.clone(), w.clone())?;
            tokio::spawn(d.run(Duration::from_millis(500)));
        }
        Ok(Arc::new(Tenancy {
            store,
            limiter,
            meter,
            cache: RwLock::new(HashMap::new()),
            ttl: c.key_cache_ttl,
            lease_ttl_ms: c.lease_ttl.as_millis() as i64,
            budget_events: Default::default(),
            oidc,
            seed_lock: Default::default(),
            sso_cache: Default::default(),
            file_retention: c.file_retention,
        }))
    }

    /// The caller of a bearer token: an API key (checked usable now) or, when OIDC is on, a
    /// JWT verified against the JWKS and mapped to its tenant's policy key.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Authenticated, AuthError> {
        let token = match token.map(str::trim) {
            Some(s) if !s.is_empty() => s,
            _ => return Err(AuthError::Missing),
        };
        if let (Some(v), true) = (&self.oidc, oidc::looks_like_jwt(token)) {
            let p = v.verify(token).await.map_err(AuthError::Token)?;
            let policy = self.sso_policy(v, &p.tenant).await?;
            if let Some(why) = policy.unusable(now_ms()) {
                return Err(AuthError::Forbidden(format!(
                    "The SSO policy key of tenant `{}` is unusable: {why}",
                    p.tenant
                )));
            }
            let mut key = (*policy).clone();
            // The token grants admin only where the policy key is an admin key too.
            if !(p.admin && key.role == Role::Admin) {
                key.role = Role::User;
            }
            return Ok(Authenticated {
                key: Arc::new(key),
                subject: Some(format!("oidc:{}", p.subject)),
            });
        }
        Ok(Authenticated {
            key: self.key_of_secret(token).await?,
            subject: None,
        })
    }

    /// The policy key of the tenant named by an OIDC token (cached like keys).
    async fn sso_policy(&self, v: &OidcVerifier, tenant: &str) -> Result<Arc<ApiKey>, AuthError> {
        let cached = self.sso_cache.read().ok().and_then(|c| {
            c.get(tenant)
                .filter(|(at, _)| at.elapsed() < self.ttl)
                .map(|(_, k)| k.clone())
        });
        let found = match cached {
            Some(k) => k,
            None => {
                let alias = &v.config().policy_alias;
                let found = match self.store.tenant(tenant).await {
                    Ok(t) => self
                        .store
                        .keys(Some(&t.id))
                        .await?
                        .into_iter()
                        .find(|k| k.alias.as_deref() == Some(alias.as_str()))
                        .map(Arc::new)
                        .ok_or_else(|| {
                            format!(
                                "Tenant `{tenant}` has no SSO policy key: create one with \
                                 `bitnet admin key create --tenant {tenant} --alias {alias}`"
                            )
                        }),
                    Err(Error::NotFound { .. }) => Err(format!(
                        "The token's tenant `{tenant}` does not exist on this server"
                    )),
                    Err(e) => return Err(e.into()),
                };
                if let Ok(mut c) = self.sso_cache.write() {
                    if c.len() > 10_000 {
                        c.clear();
                    }
                    c.insert(tenant.to_string(), (Instant::now(), found.clone()));
                }
                found
            }
        };
        found.map_err(AuthError::Forbidden)
    }

    /// The key of an API key secret, checked usable now.
    async fn key_of_secret(&self, secret: &str) -> Result<Arc<ApiKey>, AuthError> {
        let hash: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
        let cached = self.cache.read().ok().and_then(|c| {
            c.get(&hash)
                .filter(|(at, _)| at.elapsed() < self.ttl)
                .map(|(_, k)| k.clone())
        });
        let key = match cached {
            Some(k) => k,
            None => {
                let k = Arc::new(
                    self.store
                        .key_by_secret(secret)
                        .await?
                        .ok_or(AuthError::Invalid)?,
                );
                if let Ok(mut c) = self.cache.write() {
                    if c.len() > 100_000 {
                        c.clear();
                    }
                    c.insert(hash, (Instant::now(), k.clone()));
                }
                k
            }
        };
        if let Some(why) = key.unusable(now_ms()) {
            return Err(AuthError::Unusable(why));
        }
        Ok(key)
    }

    /// Forgets cached keys (after an admin change through this replica).
    pub fn invalidate(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
        if let Ok(mut c) = self.sso_cache.write() {
            c.clear();
        }
    }

    fn limits(key: &ApiKey) -> Limits {
        Limits {
            rpm: key.rpm,
            tpm: key.tpm,
            max_parallel: key.max_parallel,
            budget: key.budget_tokens.map(|b| {
                let (s, e) = key.budget_period.unwrap_or(Period::Total).window(now_ms());
                (b, s, e)
            }),
        }
    }

    /// Checks the model and the limits of `key` for a request of `prompt_tokens`, charging
    /// them when it passes. The [`Admission`] must be finished (or dropped) when it ends.
    pub async fn admit(
        self: &Arc<Self>,
        key: &Arc<ApiKey>,
        model: &str,
        prompt_tokens: i64,
    ) -> Result<Admission, Refusal> {
        if !key.allows_model(model) {
            return Err(Refusal::Model(model.to_string()));
        }
        let l = Self::limits(key);
        // A Redis lease is a member of the key's sorted set of running requests; in process
        // the parallel counter needs no id (and no allocation).
        let lease = l.max_parallel.map(|_| match self.limiter {
            Limiter::Local(_) => String::new(),
            Limiter::Redis { .. } => new_id("lease"),
        });
        let mut seeded = false;
        loop {
            let v = self
                .limiter
                .admit(
                    &key.id,
                    &l,
                    prompt_tokens,
                    lease.as_deref().unwrap_or(""),
                    self.lease_ttl_ms,
                )
                .await
                .map_err(Refusal::Store)?;
            return match v {
                Verdict::Granted(info) => Ok(Admission {
                    tenancy: self.clone(),
                    key: key.clone(),
                    limits: l,
                    lease,
                    info,
                    done: false,
                }),
                Verdict::Requests(i) => Err(Refusal::Requests(i)),
                Verdict::Tokens(i) => Err(Refusal::Tokens(i)),
                Verdict::Parallel(i) => Err(Refusal::Parallel(i, l.max_parallel.unwrap_or(0))),
                Verdict::Budget(b, s, e) => {
                    self.budget_event(key, &l, b, s);
                    Err(Refusal::Budget(b, s, e))
                }
                Verdict::SeedBudget if !seeded => {
                    // One seeding query at a time (a restart meets every key's first requests
                    // at once); seeding an already seeded counter changes nothing.
                    let _one = self.seed_lock.lock().await;
                    let start = l.budget.map(|b| b.1).unwrap_or(0);
                    let spent = self
                        .store
                        .tokens_since(&key.id, start)
                        .await
                        .map_err(Refusal::Store)?;
                    self.limiter
                        .seed_budget(&key.id, &l, spent)
                        .await
                        .map_err(Refusal::Store)?;
                    seeded = true;
                    continue;
                }
                Verdict::SeedBudget => Err(Refusal::Store(Error::invalid(
                    "limiter",
                    "the budget counter could not be seeded",
                ))),
            };
        }
    }

    /// Queues the `budget.exceeded` webhook event once per key and period.
    fn budget_event(&self, key: &ApiKey, l: &Limits, budget: i64, spent: i64) {
        let start = l.budget.map(|b| b.1).unwrap_or(0);
        let first = self
            .budget_events
            .lock()
            .map(|mut s| s.insert((key.id.clone(), start)))
            .unwrap_or(false);
        if !first {
            return;
        }
        let store = self.store.clone();
        let (key_id, tenant_id) = (key.id.clone(), key.tenant_id.clone());
        tokio::spawn(async move {
            if let Err(e) = store
                .budget_exceeded(&key_id, &tenant_id, budget, spent, start)
                .await
            {
                tracing::warn!("queueing the budget event of key {key_id}: {e}");
            }
        });
    }

    /// Journals a usage row (stored in the background).
    pub fn record<'a>(&self, row: impl Into<UsageRow<'a>>) -> Result<()> {
        self.meter.record(row)
    }

    /// Stores the pending usage rows and stops metering (at most `timeout`).
    pub async fn close(&self, timeout: Duration) {
        self.meter.close(timeout).await;
        self.store.close().await;
    }
}

/// An admitted request: holds its parallel slot; [`Admission::finish`] charges the
/// completion tokens and records the usage row.
pub struct Admission {
    tenancy: Arc<Tenancy>,
    /// The key.
    pub key: Arc<ApiKey>,
    limits: Limits,
    lease: Option<String>,
    /// Counter state after admission (for the `x-ratelimit-*` headers).
    pub info: RateInfo,
    done: bool,
}

impl Admission {
    /// Records `rec` (journaled before this returns) and charges its completion tokens.
    pub fn finish(self, rec: UsageRow<'_>) {
        let completion = rec.completion_tokens;
        self.settle(rec, completion);
    }

    /// The engine refused the request after admission (queue full, deadline, shutdown):
    /// records `rec` (which should carry no tokens) and gives back the `prompt_tokens`
    /// charged at admission.
    pub fn refund(self, rec: UsageRow<'_>, prompt_tokens: i64) {
        self.settle(rec, -prompt_tokens.max(0));
    }

    fn settle(mut self, rec: UsageRow<'_>, charge: i64) {
        self.done = true;
        if let Err(e) = self.tenancy.record(rec) {
            tracing::error!("recording usage: {e}");
        }
        self.release(charge);
    }

    fn release(&mut self, completion_tokens: i64) {
        let lease = self.lease.take();
        if completion_tokens == 0 && lease.is_none() {
            return;
        }
        let t = &self.tenancy;
        if let Limiter::Local(_) = &t.limiter {
            // In process: no I/O, no task, no copies.
            if let Err(e) = t.limiter.finish_local(
                &self.key.id,
                &self.limits,
                completion_tokens,
                lease.is_some(),
            ) {
                tracing::warn!("releasing the limits of key {}: {e}", self.key.id);
            }
            return;
        }
        let t = t.clone();
        let key_id = self.key.id.clone();
        let limits = self.limits.clone();
        let work = async move {
            if let Err(e) = t
                .limiter
                .finish(&key_id, &limits, completion_tokens, lease.as_deref())
                .await
            {
                tracing::warn!("releasing the limits of key {key_id}: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(work);
            }
            Err(_) => tracing::warn!("no runtime to release the limits of key {}", self.key.id),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.release(0);
        }
    }
}

/// Where the SQLite database and the journal live by default: `$BITNET_DATA_DIR`, else
/// `$XDG_DATA_HOME/bitnet`, else `~/.local/share/bitnet`, else `./bitnet-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BITNET_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("bitnet");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/bitnet"),
        None => PathBuf::from("bitnet-data"),
    }
}

/// The default database: `sqlite://DATA_DIR/bitnet.db`.
pub fn default_database_url(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}", data_dir.join("bitnet.db").display())
}
