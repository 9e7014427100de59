//! The forward pass: embedding → N × (attention, FFN) → norm → logits, over a KV cache.
//!
//! Per layer (BITNET.md): `h = x + o(attn_sub_norm(Attn(input_norm(x))))`,
//! `out = h + down(ffn_sub_norm(act(gate(n)) · up(n)))`, `n = post_norm(h)`. Every projection is
//! ternary × per-token int8 through [`bitnet_kernels::ops::ternary_matmul`]; all buffers live in
//! [`RunState`], allocated once.

use crate::config::{Activation, ModelConfig};
use crate::error::{Error, Result};
use crate::model::Model;
use bitnet_kernels::ops::{
    dense_matmul, rmsnorm, rmsnorm_rows, ternary_matmul, ternary_matmul_each,
};
use bitnet_kernels::QuantizedActs;
use rayon::prelude::*;

/// Tokens per prefill chunk: prompts longer than this are processed in several batches (exactly
/// equivalent, since attention reads earlier chunks from the cache).
pub const DEFAULT_MAX_BATCH: usize = 256;

pub use crate::kv_cache::{KvCache, KvType};

/// Scratch buffers for up to `max_batch` tokens per step.
pub struct RunState {
    max_batch: usize,
    pub(crate) x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// The longest context these buffers serve.
    n_ctx: usize,
    /// Attention scores of one key/value head's query heads (`gqa_group · n_ctx`).
    scores: Vec<f32>,
    acts: QuantizedActs,
    logits: Vec<f32>,
    /// Per token of the current chunk: (index of its sequence's cache, position).
    slots: Vec<(usize, usize)>,
    /// Device buffers, when the model runs on a GPU (allocated at first use).
    #[cfg(feature = "cuda")]
    pub(crate) dev: Option<crate::cuda::DevState>,
}

impl RunState {
    /// Buffers for batches of up to `max_batch` tokens and contexts up to `n_ctx` positions.
    pub fn new(config: &ModelConfig, max_batch: usize, n_ctx: usize) -> Self {
        let b = max_batch.max(1);
        let c = config;
        let width = c.hidden_size.max(c.q_dim()).max(c.intermediate_size);
        RunState {
            max_batch: b,
            x: vec![0.0; b * c.hidden_size],
            xn: vec![0.0; b * width],
            q: vec![0.0; b * c.q_dim()],
            k: vec![0.0; b * c.kv_dim()],
            v: vec![0.0; b * c.kv_dim()],
            att: vec![0.0; b * c.q_dim()],
            proj: vec![0.0; b * c.hidden_size],
            gate: vec![0.0; b * c.intermediate_size],
            up: vec![0.0; b * c.intermediate_size],
            n_ctx,
            scores: vec![0.0; n_ctx * c.gqa_group()],
            acts: QuantizedActs::new(),
            logits: vec![0.0; c.vocab_size],
            slots: Vec::with_capacity(b),
            #[cfg(feature = "cuda")]
            dev: None,
        }
    }
    /// Logits of the last token of the last [`Model::forward_last`] call.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
    /// Most tokens one step can run ([`Model::forward_batch`] takes at most this many).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
}

/// One sequence's share of a batched step ([`Model::forward_batch`]).
pub struct SeqStep<'a> {
    /// The sequence's cache; `tokens` are appended after its contents.
    pub cache: &'a mut KvCache,
    /// Tokens to run (a whole or partial prompt, or the one token sampled last).
    pub tokens: &'a [u32],
    /// Whether the last token's logits are wanted (false while a prompt is still being fed).
    pub want_logits: bool,
}

impl Model {
    /// Runs `tokens` after the cache's contents and returns the last token's logits.
    pub fn forward_last<'s>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        state: &'s mut RunState,
    ) -> Result<&'s [f32]> {
        self.forward(tokens, cache, state, None)?;
        Ok(&state.logits)
    }

    /// Runs `tokens` after the cache's contents and appends every position's logits
    /// (`tokens.len() × vocab`) to `out`.
    pub fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        state: &mut RunState,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.forward(tokens, cache, state, Some(out))
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        state: &mut RunState,
        all: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        self.awake(|| self.forward_inner(tokens, cache, state, all))
    }

    /// Runs `f` (a forward pass) with the CPU pool's workers kept spinning between its
    /// parallel regions ([`bitnet_kernels::pool::keep_workers_awake`]), for models whose
    /// one-token projections already go parallel (decode is then a long run of short regions).
    /// As is on the GPU, and for smaller models: there a pass has few parallel regions, and the
    /// spinning core would be taken from the server's HTTP threads.
    fn awake<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        #[cfg(feature = "cuda")]
        if self.cuda.is_some() {
            return f();
        }
        let c = &self.config;
        let per_token = c.hidden_size * c.intermediate_size.max(c.hidden_size);
        if per_token < bitnet_kernels::ops::PAR_THRESHOLD {
            return f();
        }
        bitnet_kernels::pool::keep_workers_awake(f)
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        state: &mut RunState,
        mut all: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let vocab = self.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        self.check_cache_device(cache)?;
        let end = cache.len + tokens.len();
        let limit = cache.capacity().min(self.rope.max_pos()).min(state.n_ctx);
        if end > limit {
            return Err(Error::ContextOverflow {
                prompt_tokens: end,
                max_tokens: 0,
                n_ctx: limit,
            });
        }
        let chunks = tokens.chunks(state.max_batch);
        let n_chunks = chunks.len();
        for (ci, chunk) in chunks.enumerate() {
            let pos0 = cache.len;
            state.slots.clear();
            state.slots.extend((0..chunk.len()).map(|t| (0, pos0 + t)));
            let n = chunk.len();
            #[cfg(feature = "cuda")]
            if let Some(gpu) = &self.cuda {
                let slots = std::mem::take(&mut state.slots);
                let req = |slots, logit_rows| crate::cuda::StepRequest {
                    tokens: chunk,
                    slots,
                    logit_rows,
                };
                let mut one = &mut *cache;
                let caches = std::slice::from_mut(&mut one);
                let done = match all.as_deref_mut() {
                    Some(out) => {
                        let start = out.len();
                        out.resize(start + n * vocab, 0.0);
                        let rows: Vec<usize> = (0..n).collect();
                        gpu.step(self, req(&slots, &rows), caches, state, &mut out[start..])
                    }
                    None if ci + 1 == n_chunks => {
                        let mut logits = std::mem::take(&mut state.logits);
                        let r = gpu.step(self, req(&slots, &[n - 1]), caches, state, &mut logits);
                        state.logits = logits;
                        r
                    }
                    None => gpu.step(self, req(&slots, &[]), caches, state, &mut []),
                };
                state.slots = slots;
                done?;
                continue;
            }
            self.forward_chunk(chunk, std::slice::from_mut(&mut &mut *cache), state);
            let h = self.config.hidden_size;
            match all.as_deref_mut() {
                Some(out) => {
                    for t in 0..n {
                        rmsnorm(
                            &state.x[t * h..],
                            &self.norm,
                            self.config.rms_norm_eps,
                            &mut state.xn[t * h..],
                        );
                    }
                    let start = out.len();
                    out.resize(start + n * vocab, 0.0);
                    dense_matmul(self.head(), &state.xn, n, &mut out[start..]);
                }
                None if ci + 1 == n_chunks => {
                    let last = &state.x[(n - 1) * h..n * h];
                    rmsnorm(
                        last,
                        &self.norm,
                        self.config.rms_norm_eps,
                        &mut state.xn[..h],
                    );
                    dense_matmul(self.head(), &state.xn[..h], 1, &mut state.logits);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// One step for several sequences at once (continuous batching): every sequence's tokens
    /// run after its own cache in a single pass over the weights (each weight row is read once
    /// for all tokens). For each sequence with `want_logits`, in order, its last token's logits
    /// are written to `logits` (`wanted × vocab`). Takes at most [`RunState::max_batch`] tokens.
    pub fn forward_batch(
        &self,
        seqs: &mut [SeqStep<'_>],
        state: &mut RunState,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        self.awake(|| self.forward_batch_inner(seqs, state, logits))
    }

    fn forward_batch_inner(
        &self,
        seqs: &mut [SeqStep<'_>],
        state: &mut RunState,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let vocab = self.config.vocab_size;
        let h = self.config.hidden_size;
        let total: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if total > state.max_batch {
            return Err(Error::BatchTooLarge {
                tokens: total,
                max: state.max_batch,
            });
        }
        for s in seqs.iter() {
            if s.tokens.is_empty() {
                return Err(Error::EmptyPrompt);
            }
            if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::TokenOutOfRange { id, vocab });
            }
            self.check_cache_device(s.cache)?;
            let end = s.cache.len + s.tokens.len();
            let limit = s.cache.capacity().min(self.rope.max_pos()).min(state.n_ctx);
            if end > limit {
                return Err(Error::ContextOverflow {
                    prompt_tokens: end,
                    max_tokens: 0,
                    n_ctx: limit,
                });
            }
        }
        logits.clear();
        if seqs.is_empty() {
            return Ok(());
        }
        let mut tokens = Vec::with_capacity(total);
        state.slots.clear();
        for (i, s) in seqs.iter().enumerate() {
            tokens.extend_from_slice(s.tokens);
            let pos0 = s.cache.len;
            state
                .slots
                .extend((0..s.tokens.len()).map(|j| (i, pos0 + j)));
        }
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.cuda {
            // Logits of each wanted sequence's last token, in order.
            let mut rows = Vec::with_capacity(seqs.len());
            let mut end = 0;
            for s in seqs.iter() {
                end += s.tokens.len();
                if s.want_logits {
                    rows.push(end - 1);
                }
            }
            let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
            logits.resize(rows.len() * vocab, 0.0);
            let slots = std::mem::take(&mut state.slots);
            let req = crate::cuda::StepRequest {
                tokens: &tokens,
                slots: &slots,
                logit_rows: &rows,
            };
            let r = gpu.step(self, req, &mut caches, state, logits);
            state.slots = slots;
            return r;
        }
        let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
        self.forward_chunk(&tokens, &mut caches, state);
        let mut wanted = 0;
        let mut end = 0;
        for s in seqs.iter() {
            end += s.tokens.len();
            if s.want_logits {
                let last = &state.x[(end - 1) * h..end * h];
                rmsnorm(
                    last,
                    &self.norm,
                    self.config.rms_norm_eps,
                    &mut state.xn[wanted * h..(wanted + 1) * h],
                );
                wanted += 1;
            }
        }
        if wanted > 0 {
            logits.resize(wanted * vocab, 0.0);
            dense_matmul(self.head(), &state.xn[..wanted * h], wanted, logits);
        }
        Ok(())
    }

    /// A cache's contents live where they were computed (host vectors or GPU memory): one
    /// filled on the other device cannot be continued.
    fn check_cache_device(&self, cache: &KvCache) -> Result<()> {
        #[cfg(feature = "cuda")]
        if cache.len > 0 && cache.dev.is_some() != self.on_gpu() {
            let (had, now) = if self.on_gpu() {
                ("the CPU", "a GPU")
            } else {
                ("a GPU", "the CPU")
            };
            return Err(Error::Device(format!(
                "this KV cache holds {} positions computed on {had}, but the model now runs on \
                 {now}: start a new cache after Model::use_device",
                cache.len
            )));
        }
        #[cfg(not(feature = "cuda"))]
        let _ = cache;
        Ok(())
    }

    /// One batch of at most `max_batch` tokens; token `t` belongs to `caches[st.slots[t].0]` at
    /// position `st.slots[t].1` (a sequence's tokens in order, following its cached positions).
    /// Leaves the final hidden states in `state.x`.
    fn forward_chunk(&self, tokens: &[u32], caches: &mut [&mut KvCache], st: &mut RunState) {
        let c = &self.config;
        let n = tokens.len();
        let (h, qd, kvd, inter, hd) = (
            c.hidden_size,
            c.q_dim(),
            c.kv_dim(),
            c.intermediate_size,
            c.head_dim,
        );
        let eps = c.rms_norm_eps;
        let group = c.gqa_group();
        let scale = (hd as f32).powf(-0.5);

        for (t, &id) in tokens.iter().enumerate() {
            self.embed
                .row_to_f32(id as usize, &mut st.x[t * h..(t + 1) * h]);
        }
        for (li, l) in self.layers.iter().enumerate() {
            // Attention block.
            rmsnorm_rows(&st.x, &l.input_norm, eps, n, &mut st.xn);
            st.acts.quantize(&st.xn, n, h, l.q.cols_padded());
            ternary_matmul_each(
                &[&l.q, &l.k, &l.v],
                &st.acts,
                &mut [&mut st.q, &mut st.k, &mut st.v],
            );
            for t in 0..n {
                let (si, pos) = st.slots[t];
                let cache = &mut *caches[si];
                self.rope.apply(&mut st.q[t * qd..(t + 1) * qd], pos);
                self.rope.apply(&mut st.k[t * kvd..(t + 1) * kvd], pos);
                for j in 0..c.num_key_value_heads {
                    let at = t * kvd + j * hd;
                    cache.write(li, j, pos, &st.k[at..at + hd], &st.v[at..at + hd]);
                }
            }
            let heads = c.num_attention_heads;
            // The query heads that share a key/value head attend together (each cached row is
            // loaded once for all of them; same bits as one head at a time). Prefill, batches,
            // and single-token decode over a long enough context: every (token, heads) task in
            // parallel, scratch per worker, a task being the whole group — or halves of it
            // while there would be fewer than four tasks per thread (decode).
            let positions: usize = st.slots[..n].iter().map(|s| s.1 + 1).sum();
            let threads = rayon::current_num_threads();
            if threads > 1 && (n > 1 || positions * heads >= 1024) {
                let mut sub = group;
                while sub.is_multiple_of(2) && n * heads / sub < 4 * threads {
                    sub /= 2;
                }
                let (q, slots, caches_ref) = (&st.q, &st.slots, &*caches);
                let longest = slots.iter().map(|s| s.1 + 1).max().unwrap_or(0);
                let per_token = heads / sub;
                st.att[..n * qd]
                    .par_chunks_mut(sub * hd)
                    .enumerate()
                    .for_each_init(
                        || vec![0f32; sub * longest],
                        |scores, (i, out)| {
                            let (t, h0) = (i / per_token, i % per_token * sub);
                            let (si, pos) = slots[t];
                            let cache_ref = &*caches_ref[si];
                            cache_ref.attend(
                                li,
                                h0 / group,
                                pos + 1,
                                &q[t * qd + h0 * hd..][..sub * hd],
                                scale,
                                scores,
                                out,
                            );
                        },
                    );
            } else {
                for t in 0..n {
                    let (si, pos) = st.slots[t];
                    let cache = &*caches[si];
                    for kvh in 0..c.num_key_value_heads {
                        let heads_at = t * qd + kvh * group * hd..t * qd + (kvh + 1) * group * hd;
                        cache.attend(
                            li,
                            kvh,
                            pos + 1,
                            &st.q[heads_at.clone()],
                            scale,
                            &mut st.scores,
                            &mut st.att[heads_at],
                        );
                    }
                }
            }
            rmsnorm_rows(&st.att, &l.attn_sub_norm, eps, n, &mut st.xn);
            st.acts.quantize(&st.xn, n, qd, l.o.cols_padded());
            ternary_matmul(&l.o, &st.acts, &mut st.proj);
            for (x, p) in st.x[..n * h].iter_mut().zip(&st.proj) {
                *x += p;
            }

            // FFN block.
            rmsnorm_rows(&st.x, &l.post_norm, eps, n, &mut st.xn);
            st.acts.quantize(&st.xn, n, h, l.gate.cols_padded());
            ternary_matmul_each(&[&l.gate, &l.up], &st.acts, &mut [&mut st.gate, &mut st.up]);
            let act = |gate: &mut [f32], up: &[f32]| match c.hidden_act {
                Activation::Relu2 => gate.iter_mut().zip(up).for_each(|(g, &u)| {
                    let r = g.max(0.0);
                    *g = r * r * u;
                }),
                Activation::Silu => bitnet_kernels::glu::silu_mul(gate, up),
            };
            let (gate, up) = (&mut st.gate[..n * inter], &st.up[..n * inter]);
            if n >= 8 && rayon::current_num_threads() > 1 {
                // Prefill and batches: token rows in parallel (SiLU's `exp` was a serial ~4 %
                // of a two-thread prefill).
                gate.par_chunks_mut(inter)
                    .zip(up.par_chunks(inter))
                    .for_each(|(g, u)| act(g, u));
            } else {
                act(gate, up);
            }
            rmsnorm_rows(&st.gate, &l.ffn_sub_norm, eps, n, &mut st.xn);
            st.acts.quantize(&st.xn, n, inter, l.down.cols_padded());
            ternary_matmul(&l.down, &st.acts, &mut st.proj);
            for (x, p) in st.x[..n * h].iter_mut().zip(&st.proj) {
                *x += p;
            }
        }
        for &(si, pos) in &st.slots[..n] {
            let cache = &mut *caches[si];
            cache.len = cache.len.max(pos + 1);
        }
    }
}
