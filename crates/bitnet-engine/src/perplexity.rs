//! Perplexity the way llama.cpp's `llama-perplexity` measures it: the text is tokenized once,
//! cut into consecutive chunks of `n_ctx` tokens (the first token of each replaced by BOS when
//! the model adds one), each chunk runs from an empty cache, and only the second half of each
//! chunk is scored (every scored token has at least `n_ctx/2` tokens of context).

use crate::error::{Error, Result};
use crate::forward::{KvCache, RunState, DEFAULT_MAX_BATCH};
use crate::model::Model;
use bitnet_kernels::ops::log_sum_exp;

/// Result of a perplexity run.
#[derive(Clone, Debug)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub ppl: f64,
    /// Standard error of the perplexity estimate (delta method on the mean NLL).
    pub ppl_stderr: f64,
    /// Chunks scored.
    pub chunks: usize,
    /// Tokens scored.
    pub tokens_scored: usize,
    /// Perplexity after each chunk.
    pub running: Vec<f64>,
}

/// Scores `tokens` in chunks of `n_ctx`; at most `max_chunks` chunks when given.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    let limit = model.config.max_position_embeddings;
    if n_ctx < 4 || n_ctx > limit {
        return Err(Error::InvalidField {
            path: "--ctx".into(),
            field: "ctx".into(),
            message: format!("{n_ctx} must be between 4 and the model's context of {limit} tokens"),
        });
    }
    let available = tokens.len() / n_ctx;
    let chunks = max_chunks.map_or(available, |m| m.min(available));
    if chunks == 0 {
        return Err(Error::InvalidField {
            path: "--file".into(),
            field: "file".into(),
            message: format!(
                "the text has {} tokens: at least one chunk of --ctx {n_ctx} tokens is needed",
                tokens.len()
            ),
        });
    }
    let vocab = model.config.vocab_size;
    let first = n_ctx / 2;
    let mut cache = KvCache::new(&model.config, n_ctx);
    let mut state = RunState::new(&model.config, DEFAULT_MAX_BATCH, n_ctx);
    let mut logits = Vec::with_capacity((n_ctx - first) * vocab);
    let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0usize);
    let mut running = Vec::with_capacity(chunks);
    let mut chunk = vec![0u32; n_ctx];
    for c in 0..chunks {
        chunk.copy_from_slice(&tokens[c * n_ctx..(c + 1) * n_ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        cache.truncate(0);
        model.forward_last(&chunk[..first], &mut cache, &mut state)?;
        logits.clear();
        model.forward_all(
            &chunk[first..n_ctx - 1],
            &mut cache,
            &mut state,
            &mut logits,
        )?;
        for (k, row) in logits.chunks_exact(vocab).enumerate() {
            let target = tokens[c * n_ctx + first + k + 1] as usize;
            let nll = log_sum_exp(row) - row[target] as f64;
            sum += nll;
            sum2 += nll * nll;
            count += 1;
        }
        running.push((sum / count as f64).exp());
        progress(c + 1, chunks);
    }
    let mean = sum / count as f64;
    let var = (sum2 / count as f64 - mean * mean).max(0.0);
    let se_mean = (var / (count.max(2) - 1) as f64).sqrt();
    let ppl = mean.exp();
    Ok(Perplexity {
        ppl,
        ppl_stderr: ppl * se_mean,
        chunks,
        tokens_scored: count,
        running,
    })
}
