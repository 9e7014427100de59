//! Token selection: greedy, or sampling with repetition penalty → temperature → top-k → top-p →
//! min-p (the order of transformers' logits processors), from a seeded ChaCha8 stream so that
//! the same seed gives the same tokens on every platform.

use crate::error::{Error, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling settings. `temperature == 0` is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature (0 = greedy).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p × p_max` (0 = off).
    pub min_p: f32,
    /// Repetition penalty over prompt and generated tokens (1 = off): positive logits are
    /// divided by it, negative ones multiplied.
    pub repeat_penalty: f32,
    /// RNG seed; `None` seeds from the clock.
    pub seed: Option<u64>,
    /// OpenAI presence penalty in [-2, 2]: subtracted once from the logit of every token that
    /// was already generated (0 = off).
    pub presence_penalty: f32,
    /// OpenAI frequency penalty in [-2, 2]: subtracted from a token's logit once per time it
    /// was generated (0 = off).
    pub frequency_penalty: f32,
    /// Added to the given tokens' logits before anything else (OpenAI `logit_bias`, [-100, 100]).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Checks every value; the error names the parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |param: &'static str, value: f32, reason: &'static str| {
            Err(Error::InvalidSampling {
                param,
                value: value.to_string(),
                reason,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                self.temperature,
                "must be a finite number >= 0",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "must be in (0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", self.min_p, "must be in [0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(
                "repeat_penalty",
                self.repeat_penalty,
                "must be a finite number > 0",
            );
        }
        for (param, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(param, v, "must be in [-2, 2]");
            }
        }
        if let Some(&(_, v)) = self
            .logit_bias
            .iter()
            .find(|(_, v)| !(-100.0..=100.0).contains(v))
        {
            return bad("logit_bias", v, "biases must be in [-100, 100]");
        }
        Ok(())
    }
}

impl SamplingParams {
    /// The model's defaults from `generation_config.json` (`do_sample`, `temperature`, `top_k`,
    /// `top_p`, `min_p`, `repetition_penalty`); greedy when the file is absent or says
    /// `do_sample: false`.
    pub fn from_generation_config(path: &std::path::Path) -> Result<Self> {
        let mut p = SamplingParams::default();
        if !path.is_file() {
            return Ok(p);
        }
        let v = crate::config::read_json(path)?;
        let f = crate::config::Fields { v: &v, path };
        if f.opt_bool("do_sample")?.unwrap_or(false) {
            p.temperature = f.opt_f64("temperature")?.unwrap_or(1.0) as f32;
            p.top_k = f.opt_usize("top_k")?.unwrap_or(50);
            p.top_p = f.opt_f64("top_p")?.unwrap_or(1.0) as f32;
            p.min_p = f.opt_f64("min_p")?.unwrap_or(0.0) as f32;
        }
        p.repeat_penalty = f.opt_f64("repetition_penalty")?.unwrap_or(1.0) as f32;
        Ok(p)
    }
}

/// A sampler with its RNG and scratch space (no allocation per token once warm).
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    seen: Vec<bool>,
    seen_ids: Vec<u32>,
    counts: Vec<u32>,
    generated_ids: Vec<u32>,
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab` tokens. Validates `params`.
    pub fn new(params: SamplingParams, vocab: usize) -> Result<Self> {
        params.validate()?;
        if let Some(&(id, _)) = params
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= vocab)
        {
            return Err(Error::InvalidSampling {
                param: "logit_bias",
                value: id.to_string(),
                reason: "token id outside the vocabulary",
            });
        }
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Ok(Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seen: vec![false; vocab],
            seen_ids: Vec::with_capacity(vocab),
            counts: vec![0; vocab],
            generated_ids: Vec::with_capacity(vocab),
            cand: Vec::with_capacity(vocab),
        })
    }

    /// Records tokens for the repetition penalty (the prompt, then each chosen token).
    pub fn observe(&mut self, ids: &[u32]) {
        for &id in ids {
            if let Some(s) = self.seen.get_mut(id as usize) {
                if !*s {
                    *s = true;
                    self.seen_ids.push(id);
                }
            }
        }
    }

    /// Records a generated token: for the repetition penalty (like [`Sampler::observe`]) and for
    /// the presence and frequency penalties, which count generated tokens only.
    pub fn accept(&mut self, id: u32) {
        self.observe(&[id]);
        if let Some(c) = self.counts.get_mut(id as usize) {
            if *c == 0 {
                self.generated_ids.push(id);
            }
            *c += 1;
        }
    }

    /// Forgets observed tokens (new conversation).
    pub fn reset(&mut self) {
        for &id in &self.seen_ids {
            self.seen[id as usize] = false;
        }
        self.seen_ids.clear();
        for &id in &self.generated_ids {
            self.counts[id as usize] = 0;
        }
        self.generated_ids.clear();
    }

    /// Chooses the next token from `logits` (modified in place by the penalty).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        for &(id, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += b;
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for &id in &self.generated_ids {
                if let Some(l) = logits.get_mut(id as usize) {
                    let c = self.counts[id as usize] as f32;
                    *l -= p.presence_penalty + p.frequency_penalty * c;
                }
            }
        }
        if p.repeat_penalty != 1.0 {
            for &id in &self.seen_ids {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 {
                        *l * p.repeat_penalty
                    } else {
                        *l / p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return crate::compare::argmax(logits) as u32;
        }
        let inv_t = 1.0 / p.temperature;
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            self.cand.truncate(p.top_k);
        }
        self.cand.sort_unstable_by(by_logit);
        // Softmax over the survivors (sorted, so the max is first).
        let max = self.cand[0].1;
        let mut sum = 0f32;
        for c in self.cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            sum += c.1;
        }
        for c in self.cand.iter_mut() {
            c.1 /= sum;
        }
        if p.top_p < 1.0 {
            let mut cum = 0f32;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                cum += c.1;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let floor = self.cand[0].1 * p.min_p;
            let keep = self.cand.iter().take_while(|c| c.1 >= floor).count();
            self.cand.truncate(keep.max(1));
        }
        let total: f32 = self.cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for c in &self.cand {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        self.cand[self.cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_and_penalty() {
        let mut s = Sampler::new(SamplingParams::greedy(), 4).unwrap();
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.9, -1.0]), 1);
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.repeat_penalty = 2.0
            }),
            4,
        )
        .unwrap();
        s.observe(&[1]);
        // 3.0 / 2 = 1.5 < 2.9.
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.9, -1.0]), 2);
    }

    #[test]
    fn presence_frequency_and_bias() {
        let greedy = |f: &dyn Fn(&mut SamplingParams)| {
            let mut p = SamplingParams::greedy();
            f(&mut p);
            Sampler::new(p, 4).unwrap()
        };
        // Bias flips the argmax.
        let mut s = greedy(&|p| p.logit_bias = vec![(0, 3.5)]);
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.9, -1.0]), 0);
        // Presence counts generated tokens once; the prompt (observe) does not count.
        let mut s = greedy(&|p| p.presence_penalty = 0.2);
        s.observe(&[2]);
        s.accept(1);
        s.accept(1);
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.9, -1.0]), 2);
        // Frequency counts every occurrence: 3.0 - 2×0.04 = 2.92 > 2.9, 3.0 - 3×0.04 < 2.9.
        let mut s = greedy(&|p| p.frequency_penalty = 0.04);
        s.accept(1);
        s.accept(1);
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.9, -1.0]), 1);
        s.accept(1);
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.9, -1.0]), 2);
        s.reset();
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.9, -1.0]), 1);
    }

    #[test]
    fn top_k_one_and_min_p_one_are_greedy() {
        let logits = [0.1, 0.5, 2.0, 1.9, -3.0];
        for p in [
            params(|p| p.top_k = 1),
            params(|p| p.min_p = 1.0),
            params(|p| p.top_p = 0.01),
        ] {
            let mut s = Sampler::new(p, 5).unwrap();
            for _ in 0..50 {
                assert_eq!(s.sample(&mut logits.clone()), 2);
            }
        }
    }

    #[test]
    fn top_k_restricts_support_and_seed_repeats() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.1).collect();
        let draw = |seed| {
            let mut s = Sampler::new(
                params(|p| {
                    p.top_k = 3;
                    p.seed = Some(seed)
                }),
                50,
            )
            .unwrap();
            (0..200)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        // Top-3 logits are 0.6 at ids 6, 13, 20 (ties broken arbitrarily but all 0.6).
        assert!(a.iter().all(|&t| logits[t as usize] == 0.6));
    }

    #[test]
    fn invalid_values_name_the_parameter() {
        for (p, name) in [
            (params(|p| p.temperature = -1.0), "temperature"),
            (params(|p| p.top_p = 0.0), "top_p"),
            (params(|p| p.top_p = 1.5), "top_p"),
            (params(|p| p.min_p = 2.0), "min_p"),
            (params(|p| p.repeat_penalty = 0.0), "repeat_penalty"),
            (params(|p| p.temperature = f32::NAN), "temperature"),
            (params(|p| p.presence_penalty = 2.5), "presence_penalty"),
            (params(|p| p.frequency_penalty = -3.0), "frequency_penalty"),
            (params(|p| p.logit_bias = vec![(1, 101.0)]), "logit_bias"),
            (params(|p| p.logit_bias = vec![(9, 1.0)]), "logit_bias"),
        ] {
            let e = Sampler::new(p, 4).err().expect("invalid");
            assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
        }
    }
}
