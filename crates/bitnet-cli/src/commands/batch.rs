//! `bitnet batch`: runs an OpenAI Batch JSONL file against `bitnet serve` (so every request is
//! authenticated, rate-limited and metered like any other) and writes the OpenAI batch output
//! JSONL, one line per input line, in input order.
//!
//! Input lines: `{"custom_id", "method": "POST", "url": "/v1/chat/completions" |
//! "/v1/completions", "body": {…}}`. Output lines: `{"id", "custom_id", "response":
//! {"status_code", "request_id", "body"}, "error"}`. The whole file is checked before anything
//! is sent (a bad line or a repeated `custom_id` is an error naming the line). 429 and 503
//! answers are retried after their `Retry-After` (up to 8 attempts).

use anyhow::{Context, Result};
use bitnet_server::batch::{error_line, parse_jsonl, Answer, BatchLine};
use bitnet_tenancy::http::HttpUrl;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// `bitnet batch` options.
#[derive(clap::Args)]
pub struct Args {
    /// Batch input (OpenAI Batch JSONL).
    #[arg(long)]
    input: PathBuf,
    /// Batch output (written whole at the end, through a temporary file).
    #[arg(long)]
    output: PathBuf,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer API key (the requests are metered to it).
    #[arg(long, env = "BITNET_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

fn parse_input(path: &PathBuf) -> Result<Vec<BatchLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_jsonl(&text, &path.display().to_string(), None).map_err(anyhow::Error::msg)
}

struct Target {
    host: String,
    port: u16,
    prefix: String,
    auth: Option<String>,
}

fn target(url: &str, key: Option<String>) -> Result<Target> {
    let rest = url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .context("--url: expected http://host:port")?;
    let (hostport, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches("/v1").to_string()),
        None => (rest, String::new()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().context("--url: bad port")?),
        None => (hostport.to_string(), 80),
    };
    Ok(Target {
        host,
        port,
        prefix,
        auth: key.map(|k| format!("Bearer {k}")),
    })
}

/// One request, retried on 429/503 (up to 8 attempts).
async fn send(t: &Target, path: &str, body: &[u8]) -> Result<Answer, String> {
    let url = HttpUrl {
        host: t.host.clone(),
        port: t.port,
        path: format!("{}{path}", t.prefix),
    };
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &t.auth {
        headers.push(("authorization", a.as_str()));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (status, h, bytes) = url.send("POST", &headers, body.to_vec()).await?;
        let answer = Answer::new(status, &h, &bytes);
        if answer.worth_retrying() && attempt < 8 {
            tokio::time::sleep(answer.wait()).await;
            continue;
        }
        return Ok(answer);
    }
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let lines = Arc::new(parse_input(&a.input)?);
    let t = Arc::new(target(&a.url, a.api_key)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results: Vec<Value> = rt.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..a.concurrency.clamp(1, 256) {
            let (lines, t, next) = (lines.clone(), t.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(l) = lines.get(i) else { break };
                    let body = serde_json::to_vec(&l.body).unwrap_or_default();
                    let v = match send(&t, &l.url, &body).await {
                        Ok(answer) => answer.output_line(&l.custom_id),
                        Err(m) => error_line(&l.custom_id, "request_failed", &m),
                    };
                    out.push((i, v));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap_or_default());
        }
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, v)| v).collect()
    });
    let tmp = a.output.with_extension("jsonl.partial");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let (mut ok, mut failed) = (0, 0);
    for v in &results {
        if v["response"]["status_code"] == 200 {
            ok += 1;
        } else {
            failed += 1;
        }
        writeln!(f, "{v}").with_context(|| format!("writing {}", tmp.display()))?;
    }
    f.flush()?;
    drop(f);
    std::fs::rename(&tmp, &a.output).with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "bitnet batch: {} requests, {ok} succeeded, {failed} failed -> {}",
        results.len(),
        a.output.display()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
