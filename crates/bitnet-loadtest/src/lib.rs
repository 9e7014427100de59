//! A bounded load generator for OpenAI-compatible servers, measured like vLLM's
//! `benchmarks/benchmark_serving.py` (`vllm bench serve`): a fixed number of requests in
//! flight (closed loop) or Poisson arrivals capped by that number; request and token
//! throughput; mean, median, p90, p99, standard deviation and maximum of the time to first
//! token (TTFT), time per output token (TPOT), inter-token latency (ITL) and end-to-end
//! latency; failures by HTTP status.
//!
//! It only ever targets loopback: the URL must be `http://` and every address its host
//! resolves to must be loopback ([`resolve_target`]).
//!
//! The client is lean so that one core can drive a fast server on the same machine: each of
//! the `concurrency` workers owns one keep-alive HTTP/1.1 connection (hyper, `TCP_NODELAY`),
//! the request body is serialized once and shared, responses are parsed into borrowed views
//! and the per-connection buffers are reused. Run it on a `current_thread` runtime so it
//! uses one core and leaves the others to the server:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bitnet_loadtest::{Endpoint, LoadtestConfig};
//! let cfg = LoadtestConfig {
//!     requests: Some(1000),
//!     ..LoadtestConfig::new("http://127.0.0.1:8080", Endpoint::Completions)
//! };
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let report = rt.block_on(bitnet_loadtest::run(&cfg))?;
//! print!("{}", report.to_table());
//! println!("{}", serde_json::to_string_pretty(&report)?);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod report;
mod runner;
pub mod sse;
pub mod stats;
mod target;

pub use report::Report;
pub use target::{resolve_target, Target};

use serde::Serialize;
use std::future::Future;
use std::time::Duration;

/// Which OpenAI endpoint to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/chat/completions` with the prompt as one user message.
    Chat,
    /// `POST /v1/completions` with the prompt as `prompt`.
    Completions,
}

impl Endpoint {
    /// The path after the base URL: `/v1/chat/completions` or `/v1/completions`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }

    /// `"chat"` or `"completions"`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
        }
    }
}

/// What to run. [`LoadtestConfig::new`] gives the defaults; set `requests` or `duration`.
#[derive(Clone, Debug)]
pub struct LoadtestConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080`; a trailing `/v1` (and `/`) is
    /// accepted. Plain `http://` to a loopback address only.
    pub url: String,
    /// The endpoint to load.
    pub endpoint: Endpoint,
    /// Model id to send; `None` uses the first of `GET {base}/v1/models`.
    pub model: Option<String>,
    /// Most requests in flight at once (also the number of connections); at least 1.
    pub concurrency: usize,
    /// Stop after issuing this many requests.
    pub requests: Option<usize>,
    /// Stop issuing new requests after this long. With `requests` too, whichever comes
    /// first; at least one of the two is required.
    pub duration: Option<Duration>,
    /// Poisson arrivals at this many requests per second (exponential gaps from `seed`),
    /// still capped by `concurrency`; `None` sends as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// `max_tokens` of each request; at least 1.
    pub max_tokens: u32,
    /// Stream (SSE, with `stream_options.include_usage`): measures TTFT and ITL per chunk.
    /// Without it TTFT equals the end-to-end latency and there are no ITLs.
    pub stream: bool,
    /// Prompt text (chat: the content of one user message).
    pub prompt: String,
    /// Send `"ignore_eos": true` (a vLLM extension) so every output has `max_tokens` tokens.
    pub ignore_eos: bool,
    /// `temperature` of each request: 0 (the default) is greedy; above 0 the server samples,
    /// which is what most clients ask for (OpenAI's default is 1).
    pub temperature: f32,
    /// `top_p` of each request; `None` leaves it out (the server's default, 1).
    pub top_p: Option<f32>,
    /// Sent as `Authorization: Bearer …` when set (also to `/v1/models`).
    pub api_key: Option<String>,
    /// Limit on each request, from sending to the end of the response body.
    pub timeout: Duration,
    /// Seed of the Poisson arrival process.
    pub seed: u64,
}

impl LoadtestConfig {
    /// Defaults: model from `/v1/models`, concurrency 16, closed loop, no stop condition
    /// (set `requests` or `duration`), 64 tokens, not streamed, `ignore_eos`, greedy
    /// (`temperature` 0, no `top_p`), a 300 s timeout, seed 0.
    pub fn new(url: impl Into<String>, endpoint: Endpoint) -> LoadtestConfig {
        LoadtestConfig {
            url: url.into(),
            endpoint,
            model: None,
            concurrency: 16,
            requests: None,
            duration: None,
            rate: None,
            max_tokens: 64,
            stream: false,
            prompt: "The history of the printing press".to_string(),
            ignore_eos: true,
            temperature: 0.0,
            top_p: None,
            api_key: None,
            timeout: Duration::from_secs(300),
            seed: 0,
        }
    }

    /// Checks the settings (not the URL: see [`resolve_target`]).
    ///
    /// # Errors
    ///
    /// [`LoadtestError::InvalidConfig`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), LoadtestError> {
        let bad = |m: String| Err(LoadtestError::InvalidConfig(m));
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        if self.requests.is_none() && self.duration.is_none() {
            return bad("give a number of requests or a duration (or both)".into());
        }
        if self.requests == Some(0) {
            return bad("requests must be at least 1".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return bad("duration must be positive".into());
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return bad(format!("rate {r}: must be a positive number of requests/s"));
            }
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return bad(format!(
                "temperature {}: must be in [0, 2]",
                self.temperature
            ));
        }
        if let Some(p) = self.top_p {
            if !(p.is_finite() && p > 0.0 && p <= 1.0) {
                return bad(format!("top_p {p}: must be in (0, 1]"));
            }
        }
        if self.timeout.is_zero() {
            return bad("timeout must be positive".into());
        }
        if self.model.as_deref().is_some_and(str::is_empty) {
            return bad("model must not be empty".into());
        }
        Ok(())
    }
}

/// Why a run could not start or finish. Failed requests are not errors: they are counted
/// in the [`Report`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadtestError {
    /// A setting is out of range.
    #[error("invalid load-test settings: {0}")]
    InvalidConfig(String),
    /// The URL is not a plain `http://host[:port][/path]` URL.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host does not resolve.
    #[error("cannot resolve the host of {url}: {message}")]
    Resolve {
        /// The URL given.
        url: String,
        /// The resolver's error.
        message: String,
    },
    /// The host resolves to an address that is not loopback.
    #[error(
        "refusing to load {url}: it resolves to {addr}, which is not a loopback address \
         (only loopback targets are allowed)"
    )]
    NotLoopback {
        /// The URL given.
        url: String,
        /// The first address that is not loopback.
        addr: String,
    },
    /// No connection to the server could be opened before the run.
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// The URL given.
        url: String,
        /// The connection errors.
        message: String,
    },
    /// `GET /v1/models` failed or listed no model (only asked when no model is set).
    #[error("cannot get the model from {url}: {message}")]
    Models {
        /// The models URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A worker task panicked or was cancelled (a bug).
    #[error("load-test worker failed: {0}")]
    Worker(String),
}

/// Runs the load test to the end (request count or duration reached, in-flight requests
/// finished or timed out) and reports it.
///
/// Must be polled inside a tokio runtime with IO and time enabled; workers are spawned on
/// it. A `current_thread` runtime (`Builder::new_current_thread().enable_all()`) is
/// recommended: the client then uses one core. Dropping the future aborts the workers.
///
/// # Errors
///
/// Invalid settings or URL, a non-loopback target, a server that accepts no connection,
/// or (without `model`) a failed model lookup. Failed requests only show in the report.
pub async fn run(cfg: &LoadtestConfig) -> Result<Report, LoadtestError> {
    run_until(cfg, std::future::pending()).await
}

/// Like [`run`], but stops issuing new requests once `shutdown` completes (e.g. Ctrl-C),
/// lets the in-flight ones finish (bounded by the timeout) and reports what was measured.
///
/// # Errors
///
/// As [`run`].
pub async fn run_until(
    cfg: &LoadtestConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, LoadtestError> {
    cfg.validate()?;
    let target = resolve_target(&cfg.url).await?;
    runner::run(cfg, &target, shutdown).await
}
