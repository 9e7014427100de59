//! Token selection: greedy, or sampling with repetition penalty → temperature → top-k → top-p →
//! min-p (the order of transformers' logits processors), from a seeded ChaCha8 stream so that
//! the same seed gives the same tokens on every platform and kernel.
//!
//! Nothing is sorted: the softmax weights come from the vectorized `exp` of `bitnet-kernels`
//! (bit-identical on every kernel), top-k is a selection, top-p a selection by mass (the
//! smallest set of most likely tokens whose probability reaches p, found by halving the
//! candidates around a median, O(vocab) expected), min-p a threshold, and the draw walks the
//! survivors in whatever order they are. A full sort of a 128k vocabulary per token took
//! ~5 ms, a quarter of a 2B-4T decode step.

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
    /// Softmax weights `e^(l/T − max)` of the whole vocabulary (unnormalized, max 1).
    probs: Vec<f32>,
    /// Surviving `(id, weight)` pairs when a filter is on.
    cand: Vec<(u32, f32)>,
}

/// Descending by weight.
fn by_weight(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1)
}

/// `Σ f(x)` in eight independent chains (a sequential sum of 128k values is bound by the add
/// latency).
fn sum_by<T>(v: &[T], f: impl Fn(&T) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(&f).sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The sum of the weights of `(id, weight)` pairs.
fn weight_sum(c: &[(u32, f32)]) -> f32 {
    sum_by(c, |x| x.1)
}

/// Top-p by mass: the smallest `k` such that the `k` largest weights of `c` sum to at least
/// `need`, with those `k` moved to `c[..k]` (in no particular order); all of `c` when even the
/// whole sum falls short by rounding. The undecided range halves around its median each round
/// (`select_nth_unstable`), so the work is O(len) expected; the last ≤ 32 are sorted and walked.
fn nucleus(c: &mut [(u32, f32)], need: f32) -> usize {
    // Invariant: c[..lo] are the lo largest weights, summing to acc < need; k is in (lo, hi].
    let (mut lo, mut hi, mut acc) = (0usize, c.len(), 0f32);
    while hi - lo > 32 {
        let mid = lo + (hi - lo) / 2;
        c[lo..hi].select_nth_unstable_by(mid - lo, by_weight);
        let m: f32 = weight_sum(&c[lo..mid]);
        if acc + m >= need {
            hi = mid;
        } else {
            acc += m;
            lo = mid;
        }
    }
    c[lo..hi].sort_unstable_by(by_weight);
    for (i, x) in c[lo..hi].iter().enumerate() {
        acc += x.1;
        if acc >= need {
            return lo + i + 1;
        }
    }
    hi
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
            probs: Vec::new(),
            cand: Vec::new(),
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

    /// Whether this sampler is greedy (`temperature` 0: an argmax, no softmax).
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0
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
        if !self.weigh(logits) {
            // No finite maximum (every logit −∞ or NaN, or one +∞): the argmax decides.
            return crate::compare::argmax(logits) as u32;
        }
        let filtered = self.filter();
        let u = self.rng.random::<f32>();
        if filtered {
            let total: f32 = weight_sum(&self.cand);
            let mut r = u * total;
            for &(id, w) in &self.cand {
                r -= w;
                if r <= 0.0 {
                    return id;
                }
            }
            // Rounding left a remainder: the last survivor.
            self.cand.last().map_or(0, |c| c.0)
        } else {
            let mut r = u * sum_by(&self.probs, |&w| w);
            let mut last = 0;
            for (id, &w) in self.probs.iter().enumerate() {
                if w > 0.0 {
                    r -= w;
                    last = id;
                    if r <= 0.0 {
                        break;
                    }
                }
            }
            last as u32
        }
    }

    /// Fills `probs` with the softmax weights `e^(l/T − max)` (NaN logits count as −∞; a
    /// weight below 2⁻¹²⁵, where the vectorized `exp` clamps, counts as 0). False when the
    /// scaled logits have no finite maximum.
    fn weigh(&mut self, logits: &[f32]) -> bool {
        let inv_t = 1.0 / self.params.temperature;
        self.probs.clear();
        self.probs.extend(logits.iter().map(|&l| {
            let s = l * inv_t;
            if s.is_nan() {
                f32::NEG_INFINITY
            } else {
                s
            }
        }));
        let max = self.probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return false;
        }
        bitnet_kernels::glu::exp_shifted(&mut self.probs, max);
        const TINY: f32 = 1.0 / (1u128 << 125) as f32;
        for w in &mut self.probs {
            if *w < TINY {
                *w = 0.0;
            }
        }
        true
    }

    /// Applies top-k, top-p and min-p (in that order) to the weights: the survivors go to
    /// `cand` (true), or every token stays (false: no filter is on).
    fn filter(&mut self) -> bool {
        let p = &self.params;
        let top_k = (p.top_k > 0 && p.top_k < self.probs.len()).then_some(p.top_k);
        if top_k.is_none() && p.top_p >= 1.0 && p.min_p <= 0.0 {
            return false;
        }
        self.cand.clear();
        self.cand.extend(
            self.probs
                .iter()
                .enumerate()
                .filter(|(_, &w)| w > 0.0)
                .map(|(i, &w)| (i as u32, w)),
        );
        if let Some(k) = top_k.filter(|&k| k < self.cand.len()) {
            self.cand.select_nth_unstable_by(k - 1, by_weight);
            self.cand.truncate(k);
        }
        if p.top_p < 1.0 {
            // The mass is that of the survivors of top-k (softmax after top-k).
            let mass = weight_sum(&self.cand);
            let k = nucleus(&mut self.cand, p.top_p * mass);
            self.cand.truncate(k);
        }
        if p.min_p > 0.0 {
            // The most likely token has weight 1 and survives every filter above, so
            // `p ≥ min_p · p_max` is `w ≥ min_p`.
            let floor = p.min_p;
            self.cand.retain(|c| c.1 >= floor);
        }
        true
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

    /// Uniform values in [0, 1) from the crate's seeded ChaCha8 stream.
    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        move || rng.random::<f32>()
    }

    /// The softmax of `logits / t` in f64.
    fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
        let m = logits.iter().fold(f64::MIN, |m, &l| m.max(l as f64 / t));
        let e: Vec<f64> = logits.iter().map(|&l| (l as f64 / t - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn nucleus_is_the_smallest_top_set_reaching_the_mass() {
        let mut next = uniform(0x5EED);
        for (n, peak) in [
            (1usize, 1.0f32),
            (7, 1.0),
            (33, 4.0),
            (1000, 1.0),
            (1000, 12.0),
        ] {
            for frac in [0.01f32, 0.3, 0.5, 0.9, 0.95, 0.999, 1.0] {
                // Weights e^(peak·u): flat for peak 1, a few dominant ones for peak 12.
                let mut c: Vec<(u32, f32)> =
                    (0..n).map(|i| (i as u32, (peak * next()).exp())).collect();
                let total: f64 = c.iter().map(|x| x.1 as f64).sum();
                let need = frac * total as f32;
                let k = nucleus(&mut c, need);
                assert!((1..=n).contains(&k), "n {n}, frac {frac}: k {k}");
                let (kept, rest) = c.split_at(k);
                let min_kept = kept.iter().fold(f32::MAX, |m, x| m.min(x.1));
                assert!(rest.iter().all(|x| x.1 <= min_kept), "not a top set");
                let mass: f64 = kept.iter().map(|x| x.1 as f64).sum();
                let tol = 1e-5 * total;
                assert!(
                    k == n || mass >= need as f64 - tol,
                    "n {n}, frac {frac}: short"
                );
                assert!(
                    mass - (min_kept as f64) < need as f64 + tol,
                    "n {n}, frac {frac}: k {k} is not the smallest"
                );
            }
        }
    }

    #[test]
    fn draws_follow_the_filtered_softmax() {
        let logits = [2.0f32, 1.5, 1.0, 0.0, -1.0, -2.0, -30.0, f32::NEG_INFINITY];
        let draws = 200_000;
        for (t, top_k, top_p, min_p) in [
            (1.0f32, 0usize, 1.0f32, 0.0f32),
            (0.5, 0, 1.0, 0.0),
            (1.0, 0, 0.8, 0.0),
            (1.0, 3, 1.0, 0.0),
            (1.0, 4, 0.7, 0.0),
            (1.0, 0, 1.0, 0.3),
            (2.0, 0, 0.9, 0.1),
        ] {
            // The reference: sorted (the logits already are), top-k, softmax, top-p walk, min-p.
            let k = if top_k == 0 { logits.len() } else { top_k };
            let mut want = softmax(&logits[..k], t as f64);
            let mut cum = 0.0;
            let keep = want
                .iter()
                .position(|&q| {
                    cum += q;
                    cum >= top_p as f64
                })
                .map_or(want.len(), |i| i + 1);
            want.truncate(keep);
            let floor = want[0] * min_p as f64;
            want.retain(|&q| q >= floor);
            let z: f64 = want.iter().sum();
            let mut s = Sampler::new(
                params(|p| {
                    p.temperature = t;
                    p.top_k = top_k;
                    p.top_p = top_p;
                    p.min_p = min_p;
                }),
                logits.len(),
            )
            .unwrap();
            let mut count = [0usize; 8];
            for _ in 0..draws {
                count[s.sample(&mut logits.clone()) as usize] += 1;
            }
            for (id, &c) in count.iter().enumerate() {
                let q = want.get(id).map_or(0.0, |q| q / z);
                let got = c as f64 / draws as f64;
                assert!(
                    (got - q).abs() < 0.005 && (q > 0.0 || c == 0),
                    "T {t}, top_k {top_k}, top_p {top_p}, min_p {min_p}: token {id} drawn {got}, want {q}"
                );
            }
        }
    }

    #[test]
    fn large_vocabularies_and_bad_logits() {
        // 128k tokens, one far ahead: top-p 0.5 keeps it alone.
        let mut next = uniform(9);
        let mut logits: Vec<f32> = (0..128_256).map(|_| next()).collect();
        logits[77_777] = 40.0;
        let mut s = Sampler::new(params(|p| p.top_p = 0.5), logits.len()).unwrap();
        assert_eq!(s.sample(&mut logits.clone()), 77_777);
        // Flat: every draw is some token, and seeds repeat.
        let flat: Vec<f32> = (0..128_256).map(|_| next()).collect();
        let draw = |top_p: f32| {
            let mut s = Sampler::new(params(|p| p.top_p = top_p), flat.len()).unwrap();
            (0..20)
                .map(|_| s.sample(&mut flat.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(0.9), draw(0.9));
        assert_eq!(draw(1.0), draw(1.0));
        // NaN and −∞ logits are never drawn; all of them: the argmax (no panic).
        let mut s = Sampler::new(params(|_| {}), 4).unwrap();
        for _ in 0..1000 {
            let id = s.sample(&mut [f32::NAN, 0.0, f32::NEG_INFINITY, 0.5]);
            assert!(id == 1 || id == 3, "{id}");
        }
        let id = s.sample(&mut [f32::NEG_INFINITY; 4]);
        assert!(id < 4);
        let id = s.sample(&mut [0.0, f32::INFINITY, 1.0, 2.0]);
        assert_eq!(id, 1);
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
