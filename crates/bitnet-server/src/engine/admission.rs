//! The queue side of the engine: deadlines and departures of waiting jobs, and admission into
//! the running batch against the sequence and KV-cache budgets.

use super::{Engine, Event, Job, JobState, Seq};
use crate::error::ApiError;
use bitnet_engine::sampling::Sampler;
use bitnet_engine::tokenizer::StreamDecoder;
use bitnet_engine::{KvCache, StopMatcher};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Engine {
    /// Gives back a job's place and prompt tokens in the queue's counters.
    pub(super) fn unqueue(&self, job: &Job) {
        let tokens: usize = job.seqs.iter().map(|(_, p)| p.len()).sum();
        self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        self.shared
            .waiting_tokens
            .fetch_sub(tokens, Ordering::SeqCst);
    }

    /// Drops waiting jobs whose client left, and refuses those past their deadline.
    pub(super) fn expire_waiting(&mut self, now: Instant) {
        let timeout = self.config.queue_timeout;
        let mut i = 0;
        while i < self.waiting.len() {
            let (job, at) = &self.waiting[i];
            let gone = job.events.is_closed();
            let late = now.duration_since(*at) > timeout;
            if gone || late {
                if let Some((job, _)) = self.waiting.remove(i) {
                    self.unqueue(&job);
                    if late && !gone {
                        self.metrics.rejected("queue_timeout");
                        let _ = job.events.send(Event::Rejected(ApiError::overloaded(
                            format!(
                                "The request waited {:.0} s in the queue without being served",
                                timeout.as_secs_f64()
                            ),
                            timeout.as_secs().clamp(1, 30),
                        )));
                    } else {
                        self.metrics.rejected("client_gone");
                    }
                }
            } else {
                i += 1;
            }
        }
    }

    /// Admits waiting jobs in order while sequences and KV positions allow.
    pub(super) fn admit(&mut self, now: Instant) {
        while let Some((job, _)) = self.waiting.front() {
            let need: usize = job
                .seqs
                .iter()
                .map(|(_, p)| p.len() + job.params.max_tokens)
                .sum();
            let used = self.shared.kv_used.load(Ordering::SeqCst);
            if self.running.len() + job.seqs.len() > self.config.max_batch
                || used + need > self.config.kv_tokens
            {
                break;
            }
            let Some((job, arrived)) = self.waiting.pop_front() else {
                break;
            };
            self.unqueue(&job);
            self.metrics
                .queue_time
                .record(now.duration_since(arrived).as_secs_f64());
            let vocab = self.model.config.vocab_size;
            let key = self.next_key;
            self.next_key += 1;
            let mut seqs = Vec::with_capacity(job.seqs.len());
            let mut bad = None;
            for (index, prompt) in &job.seqs {
                let mut sp = job.params.sampling.clone();
                sp.seed = sp.seed.map(|s| s.wrapping_add(*index as u64));
                let mut sampler = match Sampler::new(sp, vocab) {
                    Ok(s) => s,
                    Err(e) => {
                        bad = Some(e.to_string());
                        break;
                    }
                };
                sampler.observe(prompt);
                let reserved = prompt.len() + job.params.max_tokens;
                seqs.push(Seq {
                    job: key,
                    index: *index,
                    prompt: prompt.clone(),
                    fed: 0,
                    pending: 0,
                    cache: KvCache::with_type(&self.model.config, reserved, self.config.kv_type),
                    reserved,
                    sampler,
                    decoder: StreamDecoder::new(prompt),
                    logits_copy: Vec::new(),
                    stops: StopMatcher::new(&job.params.stop),
                    generated: 0,
                    admitted: now,
                    first_token: None,
                    last_token: now,
                });
            }
            if let Some(msg) = bad {
                let _ = job.events.send(Event::Failed(msg));
                continue;
            }
            self.shared.kv_used.fetch_add(need, Ordering::SeqCst);
            let _ = job.events.send(Event::Admitted);
            self.jobs.insert(
                key,
                JobState {
                    events: job.events,
                    params: job.params,
                    arrived,
                    first_token: None,
                    live: seqs.len(),
                    finish: Vec::new(),
                },
            );
            self.running.extend(seqs);
        }
    }
}
