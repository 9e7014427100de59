//! Rate limits (requests and tokens per minute), parallel requests and token budgets, checked
//! and charged atomically: in process for one replica, or in Redis with one Lua script so that
//! a limit holds across replicas.
//!
//! Windows are fixed minutes (by the Redis server's clock with Redis). Token limits charge
//! the prompt at admission and the completion when the request ends.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;

/// Limits of one key (`None`: unlimited).
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<i64>,
    /// Tokens per minute.
    pub tpm: Option<i64>,
    /// Requests at once.
    pub max_parallel: Option<i64>,
    /// `(tokens, period start ms, period end ms)`.
    pub budget: Option<(i64, i64, i64)>,
}

/// What the limiter answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Admitted; counters charged.
    Granted(RateInfo),
    /// Over the requests per minute.
    Requests(RateInfo),
    /// Over the tokens per minute.
    Tokens(RateInfo),
    /// Too many requests at once.
    Parallel(RateInfo),
    /// The budget is spent: `(budget, spent, period end ms)`.
    Budget(i64, i64, i64),
    /// The budget counter of this period is not known yet: seed it and ask again.
    SeedBudget,
}

/// Counter state for the `x-ratelimit-*` headers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RateInfo {
    /// RPM limit.
    pub limit_requests: Option<i64>,
    /// Requests left this window.
    pub remaining_requests: Option<i64>,
    /// TPM limit.
    pub limit_tokens: Option<i64>,
    /// Tokens left this window.
    pub remaining_tokens: Option<i64>,
    /// Until the window resets, ms.
    pub reset_ms: i64,
}

const WINDOW_MS: i64 = 60_000;

const ADMIT_LUA: &str = r#"
-- KEYS[1]: key prefix; KEYS[2]: budget counter ('' when none)
-- ARGV: rpm, tpm, max_parallel, prompt tokens, budget (-1: none), lease id, lease ttl ms,
--       budget counter ttl ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = math.floor(now / 60000)
local reset = 60000 - (now % 60000)
local rk = KEYS[1] .. ':r:' .. win
local tk = KEYS[1] .. ':t:' .. win
local pk = KEYS[1] .. ':p'
local rpm, tpm, par = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local need, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local used_r = tonumber(redis.call('GET', rk) or '0')
local used_t = tonumber(redis.call('GET', tk) or '0')
if rpm >= 0 and used_r + 1 > rpm then return {1, used_r, used_t, reset, 0} end
if tpm >= 0 and used_t + need > tpm then return {2, used_r, used_t, reset, 0} end
if par >= 0 then
  redis.call('ZREMRANGEBYSCORE', pk, '-inf', now)
  if redis.call('ZCARD', pk) >= par then return {3, used_r, used_t, reset, 0} end
end
local spent = 0
if budget >= 0 then
  local b = redis.call('GET', KEYS[2])
  if not b then return {5, used_r, used_t, reset, 0} end
  spent = tonumber(b)
  if spent >= budget then return {4, used_r, used_t, reset, spent} end
end
redis.call('INCR', rk)
redis.call('PEXPIRE', rk, 120000)
redis.call('INCRBY', tk, need)
redis.call('PEXPIRE', tk, 120000)
if par >= 0 then
  local ttl = tonumber(ARGV[7])
  redis.call('ZADD', pk, now + ttl, ARGV[6])
  redis.call('PEXPIRE', pk, ttl + 60000)
end
if budget >= 0 then
  redis.call('INCRBY', KEYS[2], need)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[8]))
end
return {0, used_r + 1, used_t + need, reset, spent + need}
"#;

const FINISH_LUA: &str = r#"
-- KEYS[1]: key prefix; KEYS[2]: budget counter ('' when none)
-- ARGV: completion tokens (negative: a refund of prompt tokens), lease id ('' when none)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tk = KEYS[1] .. ':t:' .. math.floor(now / 60000)
local n = tonumber(ARGV[1])
if n > 0 then
  redis.call('INCRBY', tk, n)
  redis.call('PEXPIRE', tk, 120000)
end
-- A refund (n < 0: a request the engine refused after admission) goes back to this minute's
-- window only if it is still the window that was charged.
if n < 0 and redis.call('EXISTS', tk) == 1 then redis.call('INCRBY', tk, n) end
if n ~= 0 and KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], n)
end
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[1] .. ':p', ARGV[2]) end
return 0
"#;

/// One key's counters in process.
#[derive(Default)]
pub struct LocalState {
    win: i64,
    requests: i64,
    tokens: i64,
    parallel: i64,
    /// `(period start, spent)`.
    budget: Option<(i64, i64)>,
}

/// The counters: in this process, or in Redis.
pub enum Limiter {
    /// One replica: counters in memory.
    Local(Mutex<HashMap<String, LocalState>>),
    /// Several replicas: counters in Redis.
    Redis {
        /// The connection (multiplexed, cheap to clone).
        conn: redis::aio::MultiplexedConnection,
        /// Check-and-charge.
        admit: redis::Script,
        /// Completion tokens and lease release.
        finish: redis::Script,
        /// Key name prefix.
        prefix: String,
    },
}

impl LocalState {
    /// Starts the counters of minute window `win` if it is a new one.
    fn roll(&mut self, win: i64) {
        if self.win != win {
            self.win = win;
            self.requests = 0;
            self.tokens = 0;
        }
    }
}

/// How long a Redis budget counter lives: a day past its period (400 days for a total budget).
fn budget_ttl_ms(l: &Limits) -> i64 {
    match l.budget {
        Some((_, _, end)) if end < i64::MAX => {
            (end - crate::now_ms()).max(0).saturating_add(86_400_000)
        }
        _ => 400 * 86_400_000,
    }
}

fn info(l: &Limits, used_r: i64, used_t: i64, reset: i64) -> RateInfo {
    RateInfo {
        limit_requests: l.rpm,
        remaining_requests: l.rpm.map(|x| (x - used_r).max(0)),
        limit_tokens: l.tpm,
        remaining_tokens: l.tpm.map(|x| (x - used_t).max(0)),
        reset_ms: reset,
    }
}

impl Limiter {
    /// In-process counters.
    pub fn local() -> Limiter {
        Limiter::Local(Mutex::new(HashMap::new()))
    }

    /// Counters in the Redis at `url` (`redis://host:port/db`); `prefix` namespaces the keys.
    pub async fn redis(url: &str, prefix: &str) -> Result<Limiter> {
        let client = redis::Client::open(url).map_err(Error::redis(format!(
            "URL {}",
            crate::error::redact_url(url)
        )))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(Error::redis(format!(
                "connecting to {}",
                crate::error::redact_url(url)
            )))?;
        Ok(Limiter::Redis {
            conn,
            admit: redis::Script::new(ADMIT_LUA),
            finish: redis::Script::new(FINISH_LUA),
            prefix: prefix.to_string(),
        })
    }

    fn budget_key(prefix: &str, key_id: &str, l: &Limits) -> String {
        match l.budget {
            Some((_, start, _)) => format!("{prefix}:{key_id}:b:{start}"),
            None => String::new(),
        }
    }

    /// Checks every limit of `key_id` and, when all pass, charges one request, the prompt
    /// tokens, a parallel slot (`lease`) and the budget, atomically.
    pub async fn admit(
        &self,
        key_id: &str,
        l: &Limits,
        prompt_tokens: i64,
        lease: &str,
        lease_ttl_ms: i64,
    ) -> Result<Verdict> {
        match self {
            Limiter::Local(m) => {
                let now = crate::now_ms();
                let win = now.div_euclid(WINDOW_MS);
                let reset = WINDOW_MS - now.rem_euclid(WINDOW_MS);
                let mut map = m
                    .lock()
                    .map_err(|_| Error::invalid("limiter", "the limiter lock is poisoned"))?;
                if !map.contains_key(key_id) {
                    map.insert(key_id.to_string(), LocalState::default());
                }
                let Some(s) = map.get_mut(key_id) else {
                    return Err(Error::invalid("limiter", "counter missing"));
                };
                s.roll(win);
                let i = info(l, s.requests, s.tokens, reset);
                if l.rpm.is_some_and(|x| s.requests + 1 > x) {
                    return Ok(Verdict::Requests(i));
                }
                if l.tpm.is_some_and(|x| s.tokens + prompt_tokens > x) {
                    return Ok(Verdict::Tokens(i));
                }
                if l.max_parallel.is_some_and(|x| s.parallel >= x) {
                    return Ok(Verdict::Parallel(i));
                }
                if let Some((budget, start, end)) = l.budget {
                    match s.budget {
                        Some((st, spent)) if st == start => {
                            if spent >= budget {
                                return Ok(Verdict::Budget(budget, spent, end));
                            }
                        }
                        _ => return Ok(Verdict::SeedBudget),
                    }
                }
                s.requests += 1;
                s.tokens += prompt_tokens;
                if l.max_parallel.is_some() {
                    s.parallel += 1;
                }
                if let Some((_, spent)) = s.budget.as_mut() {
                    *spent += prompt_tokens;
                }
                Ok(Verdict::Granted(info(l, s.requests, s.tokens, reset)))
            }
            Limiter::Redis {
                conn,
                admit,
                prefix,
                ..
            } => {
                let mut conn = conn.clone();
                let budget_key = Self::budget_key(prefix, key_id, l);
                let ttl = budget_ttl_ms(l);
                let r: Vec<i64> = admit
                    .key(format!("{prefix}:{key_id}"))
                    .key(&budget_key)
                    .arg(l.rpm.unwrap_or(-1))
                    .arg(l.tpm.unwrap_or(-1))
                    .arg(l.max_parallel.unwrap_or(-1))
                    .arg(prompt_tokens)
                    .arg(l.budget.map(|b| b.0).unwrap_or(-1))
                    .arg(lease)
                    .arg(lease_ttl_ms)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(Error::redis("checking rate limits"))?;
                let [code, used_r, used_t, reset, spent] = r[..] else {
                    return Err(Error::invalid(
                        "limiter",
                        "the rate-limit script answered oddly",
                    ));
                };
                let i = info(l, used_r, used_t, reset);
                Ok(match code {
                    0 => Verdict::Granted(i),
                    1 => Verdict::Requests(i),
                    2 => Verdict::Tokens(i),
                    3 => Verdict::Parallel(i),
                    4 => {
                        let (b, _, end) = l.budget.unwrap_or((0, 0, 0));
                        Verdict::Budget(b, spent, end)
                    }
                    _ => Verdict::SeedBudget,
                })
            }
        }
    }

    /// Sets the budget counter of the current period of `key_id` to `spent` unless it is
    /// already set (by another replica).
    pub async fn seed_budget(&self, key_id: &str, l: &Limits, spent: i64) -> Result<()> {
        let Some((_, start, _)) = l.budget else {
            return Ok(());
        };
        match self {
            Limiter::Local(m) => {
                let mut map = m
                    .lock()
                    .map_err(|_| Error::invalid("limiter", "the limiter lock is poisoned"))?;
                let s = map.entry(key_id.to_string()).or_default();
                if s.budget.is_none_or(|(st, _)| st != start) {
                    s.budget = Some((start, spent));
                }
                Ok(())
            }
            Limiter::Redis { conn, prefix, .. } => {
                let mut conn = conn.clone();
                let ttl = budget_ttl_ms(l);
                let _: Option<String> = redis::cmd("SET")
                    .arg(Self::budget_key(prefix, key_id, l))
                    .arg(spent)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut conn)
                    .await
                    .map_err(Error::redis("seeding a budget counter"))?;
                Ok(())
            }
        }
    }

    /// [`Limiter::finish`] for in-process counters (synchronous; a no-op for Redis).
    pub fn finish_local(
        &self,
        key_id: &str,
        _l: &Limits,
        completion_tokens: i64,
        leased: bool,
    ) -> Result<()> {
        let Limiter::Local(m) = self else {
            return Ok(());
        };
        let now = crate::now_ms();
        let win = now.div_euclid(WINDOW_MS);
        let mut map = m
            .lock()
            .map_err(|_| Error::invalid("limiter", "the limiter lock is poisoned"))?;
        let Some(s) = map.get_mut(key_id) else {
            return Ok(());
        };
        if completion_tokens >= 0 {
            s.roll(win);
            s.tokens += completion_tokens;
        } else if s.win == win {
            // A refund counts only in the window that was charged.
            s.tokens = (s.tokens + completion_tokens).max(0);
        }
        if leased {
            s.parallel = (s.parallel - 1).max(0);
        }
        if let Some((_, spent)) = s.budget.as_mut() {
            *spent = (*spent + completion_tokens).max(0);
        }
        Ok(())
    }

    /// Charges the completion tokens and frees the parallel slot of a finished request.
    pub async fn finish(
        &self,
        key_id: &str,
        l: &Limits,
        completion_tokens: i64,
        lease: Option<&str>,
    ) -> Result<()> {
        match self {
            Limiter::Local(_) => self.finish_local(key_id, l, completion_tokens, lease.is_some()),
            Limiter::Redis {
                conn,
                finish,
                prefix,
                ..
            } => {
                let mut conn = conn.clone();
                let _: i64 = finish
                    .key(format!("{prefix}:{key_id}"))
                    .key(Self::budget_key(prefix, key_id, l))
                    .arg(completion_tokens)
                    .arg(lease.unwrap_or(""))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(Error::redis("charging completion tokens"))?;
                Ok(())
            }
        }
    }
}
