//! Prometheus metrics (SERVING.md names, `bitnet_` prefix): latency histograms, running and
//! waiting gauges, KV-cache usage, token and request counters. One process-wide recorder.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Latency buckets in seconds (1 ms … 5 min).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 300.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; returns its handle (None if another
/// recorder was installed first by the embedding program).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "bitnet_time_to_first_token_seconds",
        Unit::Seconds,
        "Arrival to first generated token"
    );
    describe_histogram!(
        "bitnet_inter_token_latency_seconds",
        Unit::Seconds,
        "Time between consecutive tokens of a sequence"
    );
    describe_histogram!(
        "bitnet_e2e_request_latency_seconds",
        Unit::Seconds,
        "Arrival to last token"
    );
    describe_histogram!(
        "bitnet_request_queue_time_seconds",
        Unit::Seconds,
        "Time waiting in the queue"
    );
    describe_histogram!(
        "bitnet_request_prefill_time_seconds",
        Unit::Seconds,
        "Admission to first token"
    );
    describe_histogram!(
        "bitnet_request_decode_time_seconds",
        Unit::Seconds,
        "First token to last token"
    );
    describe_histogram!(
        "bitnet_engine_step_seconds",
        Unit::Seconds,
        "Duration of one batched forward step"
    );
    describe_gauge!(
        "bitnet_num_requests_running",
        "Sequences in the running batch"
    );
    describe_gauge!("bitnet_num_requests_waiting", "Requests in the queue");
    describe_gauge!(
        "bitnet_kv_cache_usage_ratio",
        "Reserved KV-cache positions over the budget"
    );
    describe_counter!("bitnet_prompt_tokens_total", "Prompt tokens run");
    describe_counter!("bitnet_generation_tokens_total", "Tokens generated");
    describe_counter!(
        "bitnet_request_success_total",
        "Finished requests by finish reason (abort = cancelled)"
    );
    describe_counter!(
        "bitnet_requests_rejected_total",
        "Requests refused by reason"
    );
}

/// A request refused before the engine saw it: `unauthorized` (401), `forbidden` (403 on
/// /admin), and with the key's `tenant` `model_forbidden`, `rate_limited_requests`,
/// `rate_limited_tokens`, `rate_limited_parallel`, `insufficient_quota`, `store_unavailable`.
pub fn rejected_by_tenancy(model: &str, tenant: Option<&str>, reason: &'static str) {
    match tenant {
        Some(t) => counter!("bitnet_requests_rejected_total", "model" => model.to_string(),
            "reason" => reason, "tenant" => t.to_string()),
        None => counter!("bitnet_requests_rejected_total", "model" => model.to_string(),
            "reason" => reason),
    }
    .increment(1);
}

/// Handles to the engine's metrics, labelled with the model.
pub struct EngineMetrics {
    model: String,
    /// Time to first token.
    pub ttft: Histogram,
    /// Inter-token latency.
    pub itl: Histogram,
    /// End-to-end latency.
    pub e2e: Histogram,
    /// Queue time.
    pub queue_time: Histogram,
    /// Prefill time.
    pub prefill_time: Histogram,
    /// Decode time.
    pub decode_time: Histogram,
    step: Histogram,
    running: Gauge,
    waiting: Gauge,
    kv: Gauge,
    prompt: Counter,
    generation: Counter,
}

impl EngineMetrics {
    /// Registers the metrics for `model`.
    pub fn new(model: &str) -> Self {
        let m = model.to_string();
        EngineMetrics {
            ttft: histogram!("bitnet_time_to_first_token_seconds", "model" => m.clone()),
            itl: histogram!("bitnet_inter_token_latency_seconds", "model" => m.clone()),
            e2e: histogram!("bitnet_e2e_request_latency_seconds", "model" => m.clone()),
            queue_time: histogram!("bitnet_request_queue_time_seconds", "model" => m.clone()),
            prefill_time: histogram!("bitnet_request_prefill_time_seconds", "model" => m.clone()),
            decode_time: histogram!("bitnet_request_decode_time_seconds", "model" => m.clone()),
            step: histogram!("bitnet_engine_step_seconds", "model" => m.clone()),
            running: gauge!("bitnet_num_requests_running", "model" => m.clone()),
            waiting: gauge!("bitnet_num_requests_waiting", "model" => m.clone()),
            kv: gauge!("bitnet_kv_cache_usage_ratio", "model" => m.clone()),
            prompt: counter!("bitnet_prompt_tokens_total", "model" => m.clone()),
            generation: counter!("bitnet_generation_tokens_total", "model" => m.clone()),
            model: m,
        }
    }

    /// A request refused (`queue_full`, `queue_tokens`, `queue_timeout`, `shutting_down`,
    /// `client_gone`, …).
    pub fn rejected(&self, reason: &'static str) {
        counter!("bitnet_requests_rejected_total", "model" => self.model.clone(), "reason" => reason)
            .increment(1);
    }

    /// A request finished (`stop`, `length`, `abort`).
    pub fn finished(&self, reason: &'static str) {
        counter!("bitnet_request_success_total", "model" => self.model.clone(), "finished_reason" => reason)
            .increment(1);
    }

    /// Requests failed by an engine error.
    pub fn failed(&self) {
        counter!("bitnet_request_success_total", "model" => self.model.clone(), "finished_reason" => "error")
            .increment(1);
    }

    pub(crate) fn set_running(&self, n: usize) {
        self.running.set(n as f64);
    }
    pub(crate) fn set_waiting(&self, n: usize) {
        self.waiting.set(n as f64);
    }
    pub(crate) fn set_kv_usage(&self, r: f64) {
        self.kv.set(r);
    }
    pub(crate) fn prompt_tokens(&self, n: usize) {
        self.prompt.increment(n as u64);
    }
    pub(crate) fn generation_tokens(&self, n: usize) {
        self.generation.increment(n as u64);
    }
    pub(crate) fn step_time(&self, _tokens: usize, secs: f64) {
        self.step.record(secs);
    }
}
