//! The result of a run: JSON with vLLM's flat field names, and a table like vLLM's
//! "Serving Benchmark Result" block.

use crate::Endpoint;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Everything a run measured. Latencies are in milliseconds over the completed requests,
/// named like vLLM's `benchmark_serving.py` JSON (`mean_ttft_ms`, `median_ttft_ms`,
/// `p99_ttft_ms`, `mean_e2el_ms`, …) plus `p90_*`, `std_*` and `max_*`. Percentiles are
/// numpy-style linear interpolations, `std` is the population standard deviation, and an
/// empty sample gives zeros.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The target URL.
    pub url: String,
    /// The endpoint loaded (`"chat"` or `"completions"`).
    pub endpoint: Endpoint,
    /// The model id sent.
    pub model: String,
    /// Most requests in flight.
    pub concurrency: usize,
    /// Poisson arrival rate (req/s); `null` = as fast as the concurrency allows.
    pub request_rate: Option<f64>,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// Whether responses were streamed.
    pub stream: bool,
    /// Whether `ignore_eos` was sent.
    pub ignore_eos: bool,
    /// The `temperature` sent (0 = greedy).
    pub temperature: f32,
    /// The `top_p` sent; `null` when left out.
    pub top_p: Option<f32>,
    /// Wall time from the first request to the end of the last response, s.
    pub duration_s: f64,
    /// Requests sent.
    pub issued: usize,
    /// Requests that succeeded.
    pub completed: usize,
    /// Requests that failed: the sum of `failures_by_status`, `connection_errors`,
    /// `timeouts` and `stream_errors`.
    pub failed: usize,
    /// Non-2xx responses by HTTP status code (JSON keys are the codes as strings).
    pub failures_by_status: BTreeMap<u16, usize>,
    /// Requests whose connection failed (connect, send or read).
    pub connection_errors: usize,
    /// Requests that hit the per-request timeout.
    pub timeouts: usize,
    /// 2xx responses that carried an error: an SSE error event, malformed JSON or a stream
    /// without `[DONE]`.
    pub stream_errors: usize,
    /// The first few distinct failure messages.
    pub failure_examples: Vec<String>,
    /// Sum of `usage.prompt_tokens` of the completed requests.
    pub total_input_tokens: u64,
    /// Sum of `usage.completion_tokens` of the completed requests (streams without usage:
    /// content chunks).
    pub total_output_tokens: u64,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// Input plus output tokens per second.
    pub total_token_throughput: f64,
    /// Mean time to first token (non-streaming: the end-to-end latency).
    pub mean_ttft_ms: f64,
    /// Median time to first token.
    pub median_ttft_ms: f64,
    /// Standard deviation of the time to first token.
    pub std_ttft_ms: f64,
    /// 90th percentile time to first token.
    pub p90_ttft_ms: f64,
    /// 99th percentile time to first token.
    pub p99_ttft_ms: f64,
    /// Longest time to first token.
    pub max_ttft_ms: f64,
    /// Mean time per output token after the first, `(e2e − ttft) / (tokens − 1)` over the
    /// requests with more than one output token.
    pub mean_tpot_ms: f64,
    /// Median time per output token.
    pub median_tpot_ms: f64,
    /// Standard deviation of the time per output token.
    pub std_tpot_ms: f64,
    /// 90th percentile time per output token.
    pub p90_tpot_ms: f64,
    /// 99th percentile time per output token.
    pub p99_tpot_ms: f64,
    /// Longest time per output token.
    pub max_tpot_ms: f64,
    /// Mean inter-token latency: the gaps between successive content-bearing chunks of all
    /// completed streams.
    pub mean_itl_ms: f64,
    /// Median inter-token latency.
    pub median_itl_ms: f64,
    /// Standard deviation of the inter-token latency.
    pub std_itl_ms: f64,
    /// 90th percentile inter-token latency.
    pub p90_itl_ms: f64,
    /// 99th percentile inter-token latency.
    pub p99_itl_ms: f64,
    /// Longest inter-token gap.
    pub max_itl_ms: f64,
    /// Mean end-to-end latency.
    pub mean_e2el_ms: f64,
    /// Median end-to-end latency.
    pub median_e2el_ms: f64,
    /// Standard deviation of the end-to-end latency.
    pub std_e2el_ms: f64,
    /// 90th percentile end-to-end latency.
    pub p90_e2el_ms: f64,
    /// 99th percentile end-to-end latency.
    pub p99_e2el_ms: f64,
    /// Longest end-to-end latency.
    pub max_e2el_ms: f64,
}

const WIDTH: usize = 50;

fn row(s: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(s, "{key:<40} {value:<10}");
}

fn title(s: &mut String, fill: char, text: &str) {
    let text = format!(" {text} ");
    let n = WIDTH.saturating_sub(text.chars().count());
    let left = fill.to_string().repeat(n / 2);
    let right = fill.to_string().repeat(n - n / 2);
    let _ = writeln!(s, "{left}{text}{right}");
}

impl Report {
    /// A human-readable block like vLLM's "Serving Benchmark Result", with the failures
    /// by kind and status and a few failure messages.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        title(&mut s, '=', "Serving Benchmark Result");
        row(&mut s, "Endpoint:", self.endpoint.path());
        row(&mut s, "Model:", &self.model);
        row(&mut s, "Streaming:", if self.stream { "yes" } else { "no" });
        let sampling = match (self.temperature, self.top_p) {
            (0.0, _) => "greedy".to_string(),
            (t, None) => format!("temperature {t}"),
            (t, Some(p)) => format!("temperature {t}, top_p {p}"),
        };
        row(&mut s, "Sampling:", sampling);
        row(&mut s, "Maximum concurrency:", self.concurrency);
        match self.request_rate {
            Some(r) => row(&mut s, "Request rate (req/s):", format!("{r:.2}")),
            None => row(&mut s, "Request rate (req/s):", "inf"),
        }
        row(&mut s, "Successful requests:", self.completed);
        row(&mut s, "Failed requests:", self.failed);
        for (code, n) in &self.failures_by_status {
            row(&mut s, &format!("  HTTP {code}:"), n);
        }
        for (what, n) in [
            ("  Connection errors:", self.connection_errors),
            ("  Timeouts:", self.timeouts),
            ("  Errors in 2xx responses:", self.stream_errors),
        ] {
            if n > 0 {
                row(&mut s, what, n);
            }
        }
        row(
            &mut s,
            "Benchmark duration (s):",
            format!("{:.2}", self.duration_s),
        );
        row(&mut s, "Total input tokens:", self.total_input_tokens);
        row(&mut s, "Total generated tokens:", self.total_output_tokens);
        row(
            &mut s,
            "Request throughput (req/s):",
            format!("{:.2}", self.request_throughput),
        );
        row(
            &mut s,
            "Output token throughput (tok/s):",
            format!("{:.2}", self.output_throughput),
        );
        row(
            &mut s,
            "Total Token throughput (tok/s):",
            format!("{:.2}", self.total_token_throughput),
        );
        let sections = [
            (
                "Time to First Token",
                "TTFT",
                [
                    self.mean_ttft_ms,
                    self.median_ttft_ms,
                    self.std_ttft_ms,
                    self.p90_ttft_ms,
                    self.p99_ttft_ms,
                    self.max_ttft_ms,
                ],
            ),
            (
                "Time per Output Token (excl. 1st token)",
                "TPOT",
                [
                    self.mean_tpot_ms,
                    self.median_tpot_ms,
                    self.std_tpot_ms,
                    self.p90_tpot_ms,
                    self.p99_tpot_ms,
                    self.max_tpot_ms,
                ],
            ),
            (
                "Inter-token Latency",
                "ITL",
                [
                    self.mean_itl_ms,
                    self.median_itl_ms,
                    self.std_itl_ms,
                    self.p90_itl_ms,
                    self.p99_itl_ms,
                    self.max_itl_ms,
                ],
            ),
            (
                "End-to-end Latency",
                "E2EL",
                [
                    self.mean_e2el_ms,
                    self.median_e2el_ms,
                    self.std_e2el_ms,
                    self.p90_e2el_ms,
                    self.p99_e2el_ms,
                    self.max_e2el_ms,
                ],
            ),
        ];
        for (name, short, values) in sections {
            title(&mut s, '-', name);
            for (stat, v) in ["Mean", "Median", "Std", "P90", "P99", "Max"]
                .iter()
                .zip(values)
            {
                row(&mut s, &format!("{stat} {short} (ms):"), format!("{v:.2}"));
            }
        }
        if !self.failure_examples.is_empty() {
            title(&mut s, '-', "Failures (first messages)");
            for e in &self.failure_examples {
                let _ = writeln!(s, "{e}");
            }
        }
        let _ = writeln!(s, "{}", "=".repeat(WIDTH));
        s
    }
}
