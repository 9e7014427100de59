//! `bitnet loadtest`: load an OpenAI-compatible server on loopback, vLLM `bench serve` style.

use anyhow::{Context, Result};
use bitnet_loadtest::{Endpoint, LoadtestConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `bitnet loadtest`.
#[derive(clap::Args)]
pub struct Args {
    /// Server base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Total requests to issue.
    #[arg(long, required_unless_present = "duration")]
    requests: Option<usize>,
    /// Or: issue requests for this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Poisson arrival rate in requests/s (default: as fast as the concurrency allows).
    #[arg(long)]
    rate: Option<f64>,
    /// Output tokens per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Stream (SSE): measures TTFT and inter-token latency per chunk.
    #[arg(long)]
    stream: bool,
    /// `chat` or `completions`.
    #[arg(long, default_value = "completions")]
    endpoint: String,
    /// Prompt text.
    #[arg(long, default_value = "The history of the printing press")]
    prompt: String,
    /// Let EOS end outputs early (default: ignore EOS, every output has --max-tokens tokens).
    #[arg(long)]
    respect_eos: bool,
    /// Sampling temperature of every request (0 = greedy; OpenAI's default is 1).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// `top_p` of every request (default: not sent, the server's 1).
    #[arg(long)]
    top_p: Option<f32>,
    /// Model id (default: the first of GET /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Bearer API key.
    #[arg(long, env = "BITNET_API_KEY")]
    api_key: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Write the JSON report here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the arrival process.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let endpoint = match a.endpoint.as_str() {
        "chat" => Endpoint::Chat,
        "completions" => Endpoint::Completions,
        other => anyhow::bail!("--endpoint {other:?}: expected chat or completions"),
    };
    let secs = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(anyhow::anyhow!(
                "--{name} {v}: must be a positive number of seconds"
            ))
        }
    };
    let cfg = LoadtestConfig {
        url: a.url,
        endpoint,
        model: a.model,
        concurrency: a.concurrency,
        requests: a.requests,
        duration: a.duration.map(|d| secs("duration", d)).transpose()?,
        rate: a.rate,
        max_tokens: a.max_tokens,
        stream: a.stream,
        prompt: a.prompt,
        ignore_eos: !a.respect_eos,
        temperature: a.temperature,
        top_p: a.top_p,
        api_key: a.api_key,
        timeout: secs("timeout", a.timeout)?,
        seed: a.seed,
    };
    // One client thread: the server keeps the other cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(bitnet_loadtest::run(&cfg))?;
    print!("{}", report.to_table());
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &a.json {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(if report.completed == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
