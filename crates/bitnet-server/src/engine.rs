//! The engine thread: a bounded queue in front of continuous batching. Every step runs one
//! [`Model::forward_batch`] over all running sequences — one token each for those decoding, a
//! piece of the prompt for those just admitted — so the weights are read once per step for the
//! whole batch. New requests join between steps, finished ones leave at once, a request whose
//! client went away is cancelled at the next step, and admission reserves KV-cache positions
//! against a fixed budget so memory is bounded.

use crate::error::ApiError;
use crate::metrics::EngineMetrics;
use bitnet_engine::sampling::Sampler;
use bitnet_engine::tokenizer::StreamDecoder;
use bitnet_engine::{KvCache, Model, RunState, SamplingParams, SeqStep, StopMatcher, Tokenizer};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

mod admission;

/// Limits of the scheduler.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoding at once.
    pub max_batch: usize,
    /// Tokens per step (decode tokens plus prompt pieces).
    pub step_tokens: usize,
    /// KV-cache budget in token positions, summed over running sequences.
    pub kv_tokens: usize,
    /// KV-cache element type of every sequence's cache.
    pub kv_type: bitnet_engine::KvType,
    /// Requests waiting at most.
    pub max_queue: usize,
    /// Prompt tokens waiting at most.
    pub max_queue_tokens: usize,
    /// Longest wait in the queue before a 503.
    pub queue_timeout: Duration,
    /// Context window per sequence.
    pub ctx: usize,
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Cancelled: the client went away, or the server shut down.
    Abort,
}

impl Finish {
    /// The OpenAI `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Abort => "abort",
        }
    }
}

/// What one job asks for (shared by its sequences).
#[derive(Clone, Debug)]
pub struct JobParams {
    /// Tokens to generate at most per sequence.
    pub max_tokens: usize,
    /// Sampling; sequence `i` of a seeded job uses `seed + i`.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Keep going through EOS.
    pub ignore_eos: bool,
    /// Report log probabilities with this many alternatives.
    pub logprobs: Option<usize>,
}

/// One request: one sequence per (prompt, choice).
pub struct Job {
    /// Request id (for logs).
    pub id: String,
    /// `(choice index, prompt)` per sequence.
    pub seqs: Vec<(usize, Arc<Vec<u32>>)>,
    /// Parameters.
    pub params: JobParams,
    /// Where events go; dropping the receiver cancels the job.
    pub events: UnboundedSender<Event>,
}

/// Log probability of one chosen token, with the most likely alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    /// The chosen token.
    pub id: u32,
    /// Its log probability under the model (raw logits).
    pub logprob: f32,
    /// `(id, logprob)` of the most likely tokens, best first.
    pub top: Vec<(u32, f32)>,
}

/// Engine → request events.
#[derive(Debug)]
pub enum Event {
    /// The job left the queue; prefill starts.
    Admitted,
    /// New text for choice `index` (may be empty while a stop string is being matched).
    Token {
        /// Choice index.
        index: usize,
        /// The token id.
        id: u32,
        /// New text (whole UTF-8 characters).
        text: String,
        /// With `logprobs`.
        logprob: Option<TokenLogprob>,
    },
    /// Choice `index` ended.
    Done {
        /// Choice index.
        index: usize,
        /// Why.
        finish: Finish,
        /// Tokens generated.
        completion_tokens: usize,
    },
    /// The job was not admitted (deadline passed, shutting down).
    Rejected(ApiError),
    /// The engine failed while running the job.
    Failed(String),
}

enum Msg {
    Job(Job, Instant),
    Drain(Instant),
}

/// Counters shared with the request handlers (queue admission happens on their side).
struct Shared {
    waiting: AtomicUsize,
    waiting_tokens: AtomicUsize,
    running: AtomicUsize,
    kv_used: AtomicUsize,
    draining: AtomicBool,
    alive: AtomicBool,
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    config: Arc<EngineConfig>,
    metrics: Arc<EngineMetrics>,
}

impl EngineHandle {
    /// Starts the engine thread.
    pub fn start(
        model: Arc<Model>,
        tok: Arc<Tokenizer>,
        config: EngineConfig,
        metrics: EngineMetrics,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            waiting_tokens: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            kv_used: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        });
        let config = Arc::new(config);
        let metrics = Arc::new(metrics);
        let handle = EngineHandle {
            tx,
            shared: shared.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
        };
        let state = RunState::new(&model.config, config.step_tokens, config.ctx);
        let mut engine = Engine {
            model,
            tok,
            config,
            shared,
            metrics,
            rx,
            state,
            waiting: VecDeque::new(),
            jobs: HashMap::new(),
            running: Vec::new(),
            next_key: 0,
            abort_at: None,
            logits: Vec::new(),
        };
        // The engine loop runs on a worker of a rayon pool of its own (as many threads as the
        // global pool), not beside the pool: the kernels' parallel loops then start from
        // inside the pool (the loop's worker takes a share of the chunks, the others steal the
        // rest) instead of injecting every operation from outside and sleeping until a worker
        // has run it — two thread switches per operation, which on a small model cost more
        // than the work. A pool per engine: an engine never waits for another's worker.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("bitnet-engine-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        std::thread::Builder::new()
            .name("bitnet-engine".into())
            .spawn(move || {
                pool.install(|| engine.run());
                engine.shared.alive.store(false, Ordering::SeqCst);
            })?;
        Ok(handle)
    }

    /// The limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether the engine thread is running and accepting work.
    pub fn is_ready(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst) && !self.shared.draining.load(Ordering::SeqCst)
    }

    /// Queues a job, or refuses it at once with a 503 when the queue (requests or prompt
    /// tokens) is full or the server is shutting down, or a 400 when it could never fit.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let cfg = &self.config;
        let need: usize = job
            .seqs
            .iter()
            .map(|(_, p)| p.len() + job.params.max_tokens)
            .sum();
        if need > cfg.kv_tokens {
            return Err(ApiError::param(
                "n",
                format!(
                    "The request needs {need} KV-cache positions (prompt + max_tokens for each \
                     of {} sequences), more than this server's budget of {}",
                    job.seqs.len(),
                    cfg.kv_tokens
                ),
            ));
        }
        if job.seqs.len() > cfg.max_batch {
            return Err(ApiError::param(
                "n",
                format!(
                    "The request asks for {} sequences; this server runs at most {} at once",
                    job.seqs.len(),
                    cfg.max_batch
                ),
            ));
        }
        if self.shared.draining.load(Ordering::SeqCst) || !self.shared.alive.load(Ordering::SeqCst)
        {
            self.metrics.rejected("shutting_down");
            return Err(ApiError::overloaded("The server is shutting down", 5));
        }
        let tokens: usize = job.seqs.iter().map(|(_, p)| p.len()).sum();
        let took = self
            .shared
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < cfg.max_queue).then_some(w + 1)
            });
        if took.is_err() {
            self.metrics.rejected("queue_full");
            return Err(ApiError::overloaded(
                format!(
                    "The server is overloaded: {} requests are already waiting",
                    cfg.max_queue
                ),
                1,
            ));
        }
        let took =
            self.shared
                .waiting_tokens
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                    (w + tokens <= cfg.max_queue_tokens || w == 0).then_some(w + tokens)
                });
        if took.is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.metrics.rejected("queue_tokens");
            return Err(ApiError::overloaded(
                format!(
                    "The server is overloaded: more than {} prompt tokens are waiting",
                    cfg.max_queue_tokens
                ),
                1,
            ));
        }
        self.metrics
            .set_waiting(self.shared.waiting.load(Ordering::SeqCst));
        if self.tx.send(Msg::Job(job, Instant::now())).is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.shared
                .waiting_tokens
                .fetch_sub(tokens, Ordering::SeqCst);
            return Err(ApiError::internal("The engine thread has stopped"));
        }
        Ok(())
    }

    /// Stops admitting (waiting requests get a 503); running sequences may finish until
    /// `grace` has passed, then they are cancelled with `finish_reason: "abort"`.
    pub fn drain(&self, grace: Duration) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Drain(Instant::now() + grace));
    }

    /// Sequences running now.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }
}

struct JobState {
    events: UnboundedSender<Event>,
    params: JobParams,
    arrived: Instant,
    first_token: Option<Instant>,
    live: usize,
    finish: Vec<Finish>,
}

/// A sequence's next token and its log-probabilities.
type Pick = (u32, Option<TokenLogprob>);

struct Seq {
    job: u64,
    index: usize,
    prompt: Arc<Vec<u32>>,
    fed: usize,
    pending: u32,
    cache: KvCache,
    reserved: usize,
    sampler: Sampler,
    decoder: StreamDecoder,
    /// The logits before the sampler's penalties, for log-probabilities (grown on first use).
    logits_copy: Vec<f32>,
    stops: StopMatcher,
    generated: usize,
    admitted: Instant,
    first_token: Option<Instant>,
    last_token: Instant,
}

struct Engine {
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    config: Arc<EngineConfig>,
    shared: Arc<Shared>,
    metrics: Arc<EngineMetrics>,
    rx: mpsc::Receiver<Msg>,
    state: RunState,
    waiting: VecDeque<(Job, Instant)>,
    jobs: HashMap<u64, JobState>,
    running: Vec<Seq>,
    next_key: u64,
    abort_at: Option<Instant>,
    logits: Vec<f32>,
}

impl Engine {
    fn run(&mut self) {
        loop {
            let idle = self.running.is_empty();
            if idle {
                let wait = if self.waiting.is_empty() {
                    Duration::from_millis(200)
                } else {
                    Duration::from_millis(5)
                };
                match self.rx.recv_timeout(wait) {
                    Ok(m) => self.on_msg(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if self.waiting.is_empty() {
                            return;
                        }
                    }
                }
            }
            while let Ok(m) = self.rx.try_recv() {
                self.on_msg(m);
            }
            let now = Instant::now();
            self.expire_waiting(now);
            self.cancel_gone();
            if self.abort_at.is_some_and(|t| now >= t) {
                let keys: Vec<u64> = self.jobs.keys().copied().collect();
                for k in keys {
                    self.abort_job(k);
                }
            }
            self.admit(now);
            self.publish_gauges();
            if self.running.is_empty() {
                continue;
            }
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            if let Err(p) = step {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                tracing::error!("engine step panicked: {msg}");
                self.fail_all(&format!("internal error in the engine: {msg}"));
            }
        }
    }

    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Job(job, at) => self.waiting.push_back((job, at)),
            Msg::Drain(at) => {
                self.abort_at = Some(at);
                while let Some((job, _)) = self.waiting.pop_front() {
                    self.unqueue(&job);
                    self.metrics.rejected("shutting_down");
                    let _ = job.events.send(Event::Rejected(ApiError::overloaded(
                        "The server is shutting down",
                        5,
                    )));
                }
            }
        }
    }

    /// Cancels jobs whose client went away.
    fn cancel_gone(&mut self) {
        let gone: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.events.is_closed())
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            self.abort_job(k);
        }
    }

    fn abort_job(&mut self, key: u64) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].job == key {
                let s = self.running.swap_remove(i);
                self.finish_seq(s, Finish::Abort);
            } else {
                i += 1;
            }
        }
    }

    fn fail_all(&mut self, msg: &str) {
        let seqs: Vec<Seq> = self.running.drain(..).collect();
        for s in seqs {
            self.shared.kv_used.fetch_sub(s.reserved, Ordering::SeqCst);
        }
        for (_, j) in self.jobs.drain() {
            let _ = j.events.send(Event::Failed(msg.to_string()));
        }
        self.metrics.failed();
    }

    fn publish_gauges(&self) {
        self.shared
            .running
            .store(self.running.len(), Ordering::SeqCst);
        self.metrics.set_running(self.running.len());
        self.metrics
            .set_waiting(self.shared.waiting.load(Ordering::SeqCst));
        self.metrics.set_kv_usage(
            self.shared.kv_used.load(Ordering::SeqCst) as f64 / self.config.kv_tokens as f64,
        );
    }

    /// One forward pass for the batch, then sampling for every sequence that got logits.
    fn step(&mut self) {
        let budget = self.state.max_batch();
        // Decoding sequences first (one token each), then prompt pieces in admission order.
        let mut take = vec![0usize; self.running.len()];
        let mut used = 0;
        for (i, s) in self.running.iter().enumerate() {
            if s.fed == s.prompt.len() && used < budget {
                take[i] = 1;
                used += 1;
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            if s.fed < s.prompt.len() && used < budget {
                let n = (s.prompt.len() - s.fed).min(budget - used);
                take[i] = n;
                used += n;
            }
        }
        let mut steps: Vec<SeqStep> = Vec::with_capacity(self.running.len());
        let mut wanted = Vec::with_capacity(self.running.len());
        for (i, s) in self.running.iter_mut().enumerate() {
            if take[i] == 0 {
                continue;
            }
            let prefill = s.fed < s.prompt.len();
            let want = !prefill || s.fed + take[i] == s.prompt.len();
            if want {
                wanted.push(i);
            }
            let tokens = if prefill {
                &s.prompt[s.fed..s.fed + take[i]]
            } else {
                std::slice::from_ref(&s.pending)
            };
            steps.push(SeqStep {
                cache: &mut s.cache,
                tokens,
                want_logits: want,
            });
        }
        let t0 = Instant::now();
        let res = self
            .model
            .forward_batch(&mut steps, &mut self.state, &mut self.logits);
        drop(steps);
        if let Err(e) = res {
            tracing::error!("forward_batch failed: {e}");
            self.fail_all(&format!("the forward pass failed: {e}"));
            return;
        }
        let now = Instant::now();
        let prefill_tokens: usize = self
            .running
            .iter()
            .zip(&take)
            .filter(|(s, _)| s.fed < s.prompt.len())
            .map(|(_, &t)| t)
            .sum();
        self.metrics.prompt_tokens(prefill_tokens);
        self.metrics
            .step_time(used, now.duration_since(t0).as_secs_f64());
        for (i, s) in self.running.iter_mut().enumerate() {
            if s.fed < s.prompt.len() {
                s.fed += take[i];
            }
        }
        let vocab = self.model.config.vocab_size;
        let picks = self.pick_tokens(&wanted, vocab);
        let mut finished = Vec::new();
        for (&i, pick) in wanted.iter().zip(picks) {
            let s = &mut self.running[i];
            let (Some(job), Some((id, logprob))) = (self.jobs.get_mut(&s.job), pick) else {
                continue;
            };
            if s.first_token.is_none() {
                s.first_token = Some(now);
                self.metrics
                    .prefill_time
                    .record(now.duration_since(s.admitted).as_secs_f64());
            } else {
                self.metrics
                    .itl
                    .record(now.duration_since(s.last_token).as_secs_f64());
            }
            s.last_token = now;
            if job.first_token.is_none() {
                job.first_token = Some(now);
                self.metrics
                    .ttft
                    .record(now.duration_since(job.arrived).as_secs_f64());
            }
            if !job.params.ignore_eos && self.tok.eos_ids().contains(&id) {
                finished.push((i, Finish::Stop));
                continue;
            }
            s.generated += 1;
            self.metrics.generation_tokens(1);
            s.sampler.accept(id);
            let mut text = String::new();
            let mut stop = false;
            match s.decoder.push(&self.tok, id) {
                Ok(Some(piece)) => stop = s.stops.push(&piece, &mut |t| text.push_str(t)),
                Ok(None) => {}
                Err(e) => tracing::warn!("detokenizing {id}: {e}"),
            }
            let mut finish = None;
            if stop {
                finish = Some(Finish::Stop);
            } else if s.generated >= job.params.max_tokens {
                if let Ok(Some(rest)) = s.decoder.flush(&self.tok) {
                    stop = s.stops.push(&rest, &mut |t| text.push_str(t));
                }
                if !stop {
                    s.stops.finish(&mut |t| text.push_str(t));
                }
                finish = Some(if stop { Finish::Stop } else { Finish::Length });
            }
            if !text.is_empty() || logprob.is_some() {
                let _ = job.events.send(Event::Token {
                    index: s.index,
                    id,
                    text,
                    logprob,
                });
            }
            match finish {
                Some(f) => finished.push((i, f)),
                None => s.pending = id,
            }
        }
        finished.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, f) in finished {
            let s = self.running.swap_remove(i);
            self.finish_seq(s, f);
        }
    }

    /// The next token of each sequence in `wanted` (ascending indices into `running`, whose
    /// logits are the consecutive rows of `self.logits`), with its log-probabilities when the
    /// job asks for them; `None` for a sequence whose job is gone. Each sequence has its own
    /// sampler and row, so when any of them samples (a softmax over the whole vocabulary) or
    /// wants log-probabilities, they run in parallel on the engine's pool; greedy picks (an
    /// argmax) stay on this thread.
    fn pick_tokens(&mut self, wanted: &[usize], vocab: usize) -> Vec<Option<Pick>> {
        let jobs = &self.jobs;
        let mut rows = self.logits.chunks_exact_mut(vocab);
        let mut next = wanted.iter().copied().peekable();
        let mut tasks = Vec::with_capacity(wanted.len());
        for (i, s) in self.running.iter_mut().enumerate() {
            if next.peek() != Some(&i) {
                continue;
            }
            next.next();
            let Some(row) = rows.next() else { break };
            let top = jobs.get(&s.job).map(|j| j.params.logprobs);
            tasks.push((s, row, top));
        }
        let pick = |(s, row, top): &mut (&mut Seq, &mut [f32], Option<Option<usize>>)| {
            let top = (*top)?;
            // Log-probabilities of the logits before the sampler's penalties (a copy kept in
            // the sequence: no allocation per token once grown).
            let lp = top.map(|k| {
                s.logits_copy.clear();
                s.logits_copy.extend_from_slice(row);
                top_logprobs(&s.logits_copy, k)
            });
            let id = s.sampler.sample(row);
            let logprob = lp.map(|(lse, top)| TokenLogprob {
                id,
                logprob: s.logits_copy[id as usize] - lse,
                top,
            });
            Some((id, logprob))
        };
        let heavy = tasks.len() > 1
            && tasks
                .iter()
                .any(|(s, _, top)| !s.sampler.is_greedy() || matches!(top, Some(Some(_))));
        if heavy {
            use rayon::prelude::*;
            tasks.par_iter_mut().map(pick).collect()
        } else {
            tasks.iter_mut().map(pick).collect()
        }
    }

    fn finish_seq(&mut self, s: Seq, finish: Finish) {
        self.shared.kv_used.fetch_sub(s.reserved, Ordering::SeqCst);
        let now = Instant::now();
        if let Some(t) = s.first_token {
            self.metrics
                .decode_time
                .record(now.duration_since(t).as_secs_f64());
        }
        let Some(job) = self.jobs.get_mut(&s.job) else {
            return;
        };
        job.finish.push(finish);
        job.live -= 1;
        let last = job.live == 0;
        if last {
            // Counted before the last event goes out: a client that has its answer finds the
            // request in /metrics.
            self.metrics
                .e2e
                .record(now.duration_since(job.arrived).as_secs_f64());
            let reason = if job.finish.contains(&Finish::Abort) {
                Finish::Abort
            } else if job.finish.contains(&Finish::Length) {
                Finish::Length
            } else {
                Finish::Stop
            };
            self.metrics.finished(reason.as_str());
        }
        let _ = job.events.send(Event::Done {
            index: s.index,
            finish,
            completion_tokens: s.generated,
        });
        if last {
            self.jobs.remove(&s.job);
        }
    }
}

/// `(log Σ exp, top-k (id, logprob))` of a logits row.
fn top_logprobs(row: &[f32], k: usize) -> (f32, Vec<(u32, f32)>) {
    let lse = bitnet_kernels::ops::log_sum_exp(row) as f32;
    let mut idx: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        idx = row
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by);
            idx.truncate(k);
        }
        idx.sort_by(by);
        for e in idx.iter_mut() {
            e.1 -= lse;
        }
    }
    (lse, idx)
}
