//! Timing of prompt processing and token generation (what `bitnet bench` reports), on random
//! token ids from an empty cache, as llama-bench measures `pp` and `tg`.

use crate::error::Result;
use crate::forward::{KvCache, KvType, RunState, DEFAULT_MAX_BATCH};
use crate::model::Model;
use std::time::Instant;

fn tokens(model: &Model, n: usize, seed: u64) -> Vec<u32> {
    let v = model.config.vocab_size as u64;
    (0..n as u64)
        .map(|i| {
            let z = (seed ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((z >> 33) % v) as u32
        })
        .collect()
}

/// Seconds to process an `n`-token prompt in one batch, into a cache of type `kv`.
pub fn time_prompt(model: &Model, n: usize, seed: u64, kv: KvType) -> Result<f64> {
    let ids = tokens(model, n, seed);
    let mut cache = KvCache::with_type(&model.config, n, kv);
    let mut state = RunState::new(&model.config, DEFAULT_MAX_BATCH, n);
    let t = Instant::now();
    model.forward_last(&ids, &mut cache, &mut state)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds to generate `n` tokens one at a time from an empty cache of type `kv`.
pub fn time_generation(model: &Model, n: usize, seed: u64, kv: KvType) -> Result<f64> {
    let ids = tokens(model, n, seed);
    let mut cache = KvCache::with_type(&model.config, n, kv);
    let mut state = RunState::new(&model.config, 1, n);
    let t = Instant::now();
    for id in ids {
        model.forward_last(&[id], &mut cache, &mut state)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds for `streams` sequences to generate `n` tokens each, decoding together (one
/// [`Model::forward_batch`] step per token: continuous batching's decode), from empty caches
/// of type `kv`.
pub fn time_generation_streams(
    model: &Model,
    n: usize,
    streams: usize,
    seed: u64,
    kv: KvType,
) -> Result<f64> {
    if streams <= 1 {
        return time_generation(model, n, seed, kv);
    }
    let c = &model.config;
    let ids: Vec<Vec<u32>> = (0..streams as u64)
        .map(|s| tokens(model, n, seed.wrapping_mul(1000) + s))
        .collect();
    let mut caches: Vec<KvCache> = (0..streams).map(|_| KvCache::with_type(c, n, kv)).collect();
    let mut state = RunState::new(c, streams, n);
    let mut logits = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        let mut steps: Vec<crate::forward::SeqStep> = caches
            .iter_mut()
            .zip(&ids)
            .map(|(cache, seq)| crate::forward::SeqStep {
                cache,
                tokens: std::slice::from_ref(&seq[i]),
                want_logits: true,
            })
            .collect();
        model.forward_batch(&mut steps, &mut state, &mut logits)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Weight bytes one decode step reads: every projection, the output head and the norms.
pub fn bytes_per_token(model: &Model) -> usize {
    let (ternary, _) = model.weight_bytes();
    let norms: usize = model
        .layers
        .iter()
        .map(|l| {
            4 * (l.input_norm.len()
                + l.attn_sub_norm.len()
                + l.post_norm.len()
                + l.ffn_sub_norm.len())
        })
        .sum();
    // On a GPU, Q8_0 and Q4_K heads are held expanded to f32 (crate::cuda).
    let h = model.head();
    let head = match h.data() {
        bitnet_kernels::DenseData::Q8_0(_) | bitnet_kernels::DenseData::Q4K(_)
            if model.on_gpu() =>
        {
            4 * h.rows() * h.cols()
        }
        _ => h.nbytes(),
    };
    ternary + head + norms + 4 * model.norm.len()
}

/// Mean and sample standard deviation.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}
