//! The run: pre-flight (connection, model), the shared arrival schedule, the workers, and
//! the aggregation of their measurements into a [`Report`].

use crate::client::{self, Conn, Failure, FailureKind, Success, Template};
use crate::report::Report;
use crate::stats::Summary;
use crate::{Endpoint, LoadtestConfig, LoadtestError, Target};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, Uri};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How many failure messages the report keeps.
const FAILURE_EXAMPLES: usize = 5;

/// SplitMix64: a small seeded generator for the arrival gaps.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An exponential gap with mean `1 / rate` seconds.
    fn exp_gap(&mut self, rate: f64) -> Duration {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        Duration::from_secs_f64(-(1.0 - u).ln() / rate)
    }
}

/// The arrival schedule shared by the workers: who may send next, and when.
struct Schedule {
    issued: usize,
    limit: usize,
    deadline: Option<Instant>,
    rate: Option<f64>,
    next_arrival: Instant,
    rng: SplitMix64,
}

impl Schedule {
    /// Claims the next request: `Some(arrival time)` (`None` inside: send now), or `None`
    /// when the run is over.
    fn claim(&mut self) -> Option<Option<Instant>> {
        if self.issued >= self.limit {
            return None;
        }
        let at = match self.rate {
            None => {
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
                None
            }
            Some(rate) => {
                let at = self.next_arrival;
                if self.deadline.is_some_and(|d| at >= d) {
                    return None;
                }
                self.next_arrival = at + self.rng.exp_gap(rate);
                Some(at)
            }
        };
        self.issued += 1;
        Some(at)
    }
}

/// One worker's measurements (times in ms).
#[derive(Default)]
struct Acc {
    sent: usize,
    completed: usize,
    input_tokens: u64,
    output_tokens: u64,
    ttft: Vec<f64>,
    tpot: Vec<f64>,
    itl: Vec<f64>,
    e2e: Vec<f64>,
    by_status: BTreeMap<u16, usize>,
    connection_errors: usize,
    timeouts: usize,
    stream_errors: usize,
    examples: Vec<String>,
}

impl Acc {
    fn success(&mut self, s: &Success, itl: &[f64]) {
        self.completed += 1;
        self.input_tokens += s.prompt_tokens;
        self.output_tokens += s.completion_tokens;
        self.ttft.push(s.ttft * 1e3);
        self.e2e.push(s.e2e * 1e3);
        self.itl.extend(itl.iter().map(|x| x * 1e3));
        if s.completion_tokens > 1 {
            self.tpot
                .push((s.e2e - s.ttft) * 1e3 / (s.completion_tokens - 1) as f64);
        }
    }

    fn failure(&mut self, f: Failure) {
        match f.kind {
            FailureKind::Status(code) => *self.by_status.entry(code).or_insert(0) += 1,
            FailureKind::Connection => self.connection_errors += 1,
            FailureKind::Timeout => self.timeouts += 1,
            FailureKind::Stream => self.stream_errors += 1,
        }
        if self.examples.len() < FAILURE_EXAMPLES && !self.examples.contains(&f.message) {
            self.examples.push(f.message);
        }
    }

    fn merge(&mut self, o: Acc) {
        self.sent += o.sent;
        self.completed += o.completed;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.ttft.extend(o.ttft);
        self.tpot.extend(o.tpot);
        self.itl.extend(o.itl);
        self.e2e.extend(o.e2e);
        for (k, v) in o.by_status {
            *self.by_status.entry(k).or_insert(0) += v;
        }
        self.connection_errors += o.connection_errors;
        self.timeouts += o.timeouts;
        self.stream_errors += o.stream_errors;
        for e in o.examples {
            if self.examples.len() < FAILURE_EXAMPLES && !self.examples.contains(&e) {
                self.examples.push(e);
            }
        }
    }

    fn failed(&self) -> usize {
        self.by_status.values().sum::<usize>()
            + self.connection_errors
            + self.timeouts
            + self.stream_errors
    }
}

/// Connects to the first address that accepts, for the pre-flight and the workers.
async fn first_reachable(
    target: &Target,
) -> Result<(SocketAddr, SendRequest<Full<Bytes>>), LoadtestError> {
    let mut errors = Vec::new();
    for &addr in &target.addrs {
        match client::connect(addr).await {
            Ok(s) => return Ok((addr, s)),
            Err(e) => errors.push(format!("{addr}: {}", e.message)),
        }
    }
    Err(LoadtestError::Connect {
        url: target.url.clone(),
        message: errors.join("; "),
    })
}

/// The first model of `GET {base}/v1/models`.
async fn discover_model(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &Target,
    auth: Option<&HeaderValue>,
    timeout: Duration,
) -> Result<String, LoadtestError> {
    let path = format!("{}/v1/models", target.base_path);
    let url = format!("http://{}{path}", target.host_header.trim_end_matches('/'));
    let err = |message: String| LoadtestError::Models {
        url: url.clone(),
        message,
    };
    let mut req = Request::get(path.as_str())
        .header(HOST, target.host_header.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(|e| err(e.to_string()))?;
    if let Some(a) = auth {
        req.headers_mut().insert(AUTHORIZATION, a.clone());
    }
    let fetch = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let mut buf = Vec::new();
        client::read_body(&mut resp.into_body(), &mut buf, 16 << 20)
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok::<_, LoadtestError>((status, buf))
    };
    let (status, buf) = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| err(format!("no answer within {timeout:?}")))??;
    if !status.is_success() {
        return Err(err(format!("{status}: {}", client::error_message(&buf))));
    }
    #[derive(Deserialize)]
    struct Models {
        data: Vec<Model>,
    }
    #[derive(Deserialize)]
    struct Model {
        id: String,
    }
    let models: Models =
        serde_json::from_slice(&buf).map_err(|e| err(format!("bad model list: {e}")))?;
    models
        .data
        .into_iter()
        .next()
        .map(|m| m.id)
        .ok_or_else(|| err("the server lists no model".to_string()))
}

/// The JSON body every request sends.
fn request_body(cfg: &LoadtestConfig, model: &str) -> Bytes {
    let mut body = match cfg.endpoint {
        Endpoint::Chat => serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": cfg.prompt}],
        }),
        Endpoint::Completions => serde_json::json!({"model": model, "prompt": cfg.prompt}),
    };
    if let Some(o) = body.as_object_mut() {
        o.insert("max_tokens".into(), cfg.max_tokens.into());
        o.insert("temperature".into(), cfg.temperature.into());
        if let Some(p) = cfg.top_p {
            o.insert("top_p".into(), p.into());
        }
        if cfg.ignore_eos {
            o.insert("ignore_eos".into(), true.into());
        }
        if cfg.stream {
            o.insert("stream".into(), true.into());
            o.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
    }
    Bytes::from(body.to_string())
}

/// One worker: claims requests from the schedule until it says stop or `stop` is set.
async fn worker(
    addr: SocketAddr,
    template: Arc<Template>,
    schedule: Arc<Mutex<Schedule>>,
    mut stop: watch::Receiver<bool>,
) -> Acc {
    let mut conn = Conn::new(addr);
    let mut acc = Acc::default();
    loop {
        if *stop.borrow() {
            break;
        }
        let claim = schedule.lock().unwrap_or_else(|e| e.into_inner()).claim();
        let Some(at) = claim else {
            break;
        };
        if let Some(at) = at {
            let stopped = async {
                // A dropped sender never stops the run.
                if stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = stopped => break,
            }
        }
        acc.sent += 1;
        match conn.request(&template).await {
            Ok(s) => acc.success(&s, &conn.itl),
            Err(f) => acc.failure(f),
        }
    }
    acc
}

/// Runs a validated config against a resolved target.
pub(crate) async fn run(
    cfg: &LoadtestConfig,
    target: &Target,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, LoadtestError> {
    let auth = match &cfg.api_key {
        Some(k) => Some(HeaderValue::try_from(format!("Bearer {k}")).map_err(|_| {
            LoadtestError::InvalidConfig(
                "the API key has characters not allowed in a header".into(),
            )
        })?),
        None => None,
    };
    let host = HeaderValue::try_from(target.host_header.as_str()).map_err(|_| {
        LoadtestError::InvalidUrl {
            url: target.url.clone(),
            reason: "the host is not a valid Host header".into(),
        }
    })?;
    let (addr, mut sender) = first_reachable(target).await?;
    let model = match &cfg.model {
        Some(m) => m.clone(),
        None => discover_model(&mut sender, target, auth.as_ref(), cfg.timeout).await?,
    };
    drop(sender);
    let path = format!("{}{}", target.base_path, cfg.endpoint.path());
    let uri = Uri::try_from(path.as_str()).map_err(|e| LoadtestError::InvalidUrl {
        url: target.url.clone(),
        reason: format!("bad path {path:?}: {e}"),
    })?;
    let template = Arc::new(Template {
        uri,
        host,
        auth,
        body: request_body(cfg, &model),
        stream: cfg.stream,
        timeout: cfg.timeout,
    });

    let start = Instant::now();
    let schedule = Arc::new(Mutex::new(Schedule {
        issued: 0,
        limit: cfg.requests.unwrap_or(usize::MAX),
        deadline: cfg.duration.and_then(|d| start.checked_add(d)),
        rate: cfg.rate,
        next_arrival: start,
        rng: SplitMix64(cfg.seed),
    }));
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = cfg.concurrency.min(cfg.requests.unwrap_or(usize::MAX));
    let mut set = JoinSet::new();
    for _ in 0..workers {
        set.spawn(worker(
            addr,
            template.clone(),
            schedule.clone(),
            stop_rx.clone(),
        ));
    }
    let mut total = Acc::default();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(acc)) => total.merge(acc),
                Some(Err(e)) => return Err(LoadtestError::Worker(e.to_string())),
            },
            () = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                stop_tx.send_replace(true);
            }
        }
    }
    let duration_s = start.elapsed().as_secs_f64();
    Ok(build_report(cfg, target, model, duration_s, total))
}

fn build_report(
    cfg: &LoadtestConfig,
    target: &Target,
    model: String,
    duration_s: f64,
    mut a: Acc,
) -> Report {
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };
    let failed = a.failed();
    let ttft = Summary::of(&mut a.ttft);
    let tpot = Summary::of(&mut a.tpot);
    let itl = Summary::of(&mut a.itl);
    let e2el = Summary::of(&mut a.e2e);
    Report {
        url: target.url.clone(),
        endpoint: cfg.endpoint,
        model,
        concurrency: cfg.concurrency,
        request_rate: cfg.rate,
        max_tokens: cfg.max_tokens,
        stream: cfg.stream,
        ignore_eos: cfg.ignore_eos,
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        duration_s,
        issued: a.sent,
        completed: a.completed,
        failed,
        failures_by_status: a.by_status,
        connection_errors: a.connection_errors,
        timeouts: a.timeouts,
        stream_errors: a.stream_errors,
        failure_examples: a.examples,
        total_input_tokens: a.input_tokens,
        total_output_tokens: a.output_tokens,
        request_throughput: per_s(a.completed as f64),
        output_throughput: per_s(a.output_tokens as f64),
        total_token_throughput: per_s((a.input_tokens + a.output_tokens) as f64),
        mean_ttft_ms: ttft.mean,
        median_ttft_ms: ttft.median,
        std_ttft_ms: ttft.std,
        p90_ttft_ms: ttft.p90,
        p99_ttft_ms: ttft.p99,
        max_ttft_ms: ttft.max,
        mean_tpot_ms: tpot.mean,
        median_tpot_ms: tpot.median,
        std_tpot_ms: tpot.std,
        p90_tpot_ms: tpot.p90,
        p99_tpot_ms: tpot.p99,
        max_tpot_ms: tpot.max,
        mean_itl_ms: itl.mean,
        median_itl_ms: itl.median,
        std_itl_ms: itl.std,
        p90_itl_ms: itl.p90,
        p99_itl_ms: itl.p99,
        max_itl_ms: itl.max,
        mean_e2el_ms: e2el.mean,
        median_e2el_ms: e2el.median,
        std_e2el_ms: e2el.std,
        p90_e2el_ms: e2el.p90,
        p99_e2el_ms: e2el.p99,
        max_e2el_ms: e2el.max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_have_the_right_mean_and_are_seeded() {
        let mut a = SplitMix64(7);
        let n = 200_000;
        let mean: f64 = (0..n).map(|_| a.exp_gap(50.0).as_secs_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.02).abs() < 0.0005, "{mean}");
        let (mut x, mut y) = (SplitMix64(3), SplitMix64(3));
        assert!((0..100).all(|_| x.exp_gap(1.0) == y.exp_gap(1.0)));
    }

    #[test]
    fn schedule_stops_at_the_limit_and_the_deadline() {
        let now = Instant::now();
        let mut s = Schedule {
            issued: 0,
            limit: 3,
            deadline: None,
            rate: None,
            next_arrival: now,
            rng: SplitMix64(0),
        };
        assert_eq!(
            (s.claim(), s.claim(), s.claim(), s.claim()),
            (Some(None), Some(None), Some(None), None)
        );
        let mut s = Schedule {
            limit: usize::MAX,
            deadline: Some(now + Duration::from_secs(1)),
            rate: Some(100.0),
            issued: 0,
            next_arrival: now,
            rng: SplitMix64(1),
        };
        let mut times = Vec::new();
        while let Some(at) = s.claim() {
            times.push(at.unwrap());
        }
        assert_eq!(times[0], now);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!((70..130).contains(&times.len()), "{}", times.len());
        assert!(times.iter().all(|&t| t < now + Duration::from_secs(1)));
    }

    #[test]
    fn bodies() {
        let mut cfg = LoadtestConfig::new("http://127.0.0.1:1", Endpoint::Chat);
        cfg.stream = true;
        cfg.max_tokens = 8;
        let v: serde_json::Value = serde_json::from_slice(&request_body(&cfg, "m")).unwrap();
        assert_eq!(v["messages"][0]["content"], cfg.prompt.as_str());
        assert_eq!(v["model"], "m");
        assert_eq!(v["max_tokens"], 8);
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["temperature"], 0.0);
        assert!(v.get("top_p").is_none());
        cfg.temperature = 1.0;
        cfg.top_p = Some(0.5);
        let v: serde_json::Value = serde_json::from_slice(&request_body(&cfg, "m")).unwrap();
        assert_eq!(
            (v["temperature"].as_f64(), v["top_p"].as_f64()),
            (Some(1.0), Some(0.5))
        );
        cfg.endpoint = Endpoint::Completions;
        cfg.stream = false;
        cfg.ignore_eos = false;
        let v: serde_json::Value = serde_json::from_slice(&request_body(&cfg, "m")).unwrap();
        assert_eq!(v["prompt"], cfg.prompt.as_str());
        assert!(v.get("stream").is_none() && v.get("ignore_eos").is_none());
    }
}
