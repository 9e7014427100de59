//! The key/value cache of one sequence: `[layer][kv_head][position][head_dim]`, in f32 (the
//! default: the fixture criteria hold with it) or f16 (half the memory, and half the bytes
//! attention reads per cached position; `--kv-type f16`).
//!
//! An f16 cache rounds each key and value to nearest (ties to even) when it is written and
//! widens it exactly when it is read, so attention over it computes what the f32 kernels
//! compute on the rounded values. That rounding moves the logits: on the fixtures it stays
//! within the engine's bound on most prompts and misses it on one (README, "KV cache").

use crate::config::ModelConfig;
use bitnet_kernels::attention::attend_group;
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::str::FromStr;

/// The element type of a [`KvCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// 4 bytes per value (the default).
    #[default]
    F32,
    /// 2 bytes per value, rounded to nearest (ties to even) when written.
    F16,
}

impl KvType {
    /// The name `--kv-type` takes.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

impl FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!("unknown KV cache type {s:?} (f32 or f16)")),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Keys and values, one vector each, in the cache's element type.
enum Store {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
}

/// Keys and values of every layer, `[layer][kv_head][position][head_dim]`.
pub struct KvCache {
    n_layers: usize,
    n_kv: usize,
    hd: usize,
    capacity: usize,
    pub(crate) len: usize,
    store: Store,
    /// The cache on the GPU, when the model runs there (allocated at first use; the host
    /// vectors are then never touched, and their zeroed pages are never committed).
    #[cfg(feature = "cuda")]
    pub(crate) dev: Option<crate::cuda::DevCache>,
}

impl KvCache {
    /// An f32 cache for `capacity` positions.
    pub fn new(config: &ModelConfig, capacity: usize) -> Self {
        Self::with_type(config, capacity, KvType::F32)
    }

    /// A cache of element type `ty` for `capacity` positions. (On a GPU the device cache's
    /// type is `BITNET_CUDA_KV`'s; `ty` is the host cache's.)
    pub fn with_type(config: &ModelConfig, capacity: usize, ty: KvType) -> Self {
        let n = config.num_hidden_layers * config.num_key_value_heads * capacity * config.head_dim;
        let store = match ty {
            KvType::F32 => Store::F32 {
                k: vec![0.0; n],
                v: vec![0.0; n],
            },
            KvType::F16 => Store::F16 {
                k: vec![f16::ZERO; n],
                v: vec![f16::ZERO; n],
            },
        };
        KvCache {
            n_layers: config.num_hidden_layers,
            n_kv: config.num_key_value_heads,
            hd: config.head_dim,
            capacity,
            len: 0,
            store,
            #[cfg(feature = "cuda")]
            dev: None,
        }
    }
    /// The element type.
    pub fn kv_type(&self) -> KvType {
        match self.store {
            Store::F32 { .. } => KvType::F32,
            Store::F16 { .. } => KvType::F16,
        }
    }
    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions available.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets positions `len..` (keeps a common prefix for reuse).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    /// Grows the cache to hold `capacity` positions, keeping its contents.
    pub fn reserve(&mut self, capacity: usize) {
        if capacity <= self.capacity {
            return;
        }
        let (old, len, hd, heads) = (self.capacity, self.len, self.hd, self.n_layers * self.n_kv);
        fn grow<T: Copy + Default>(
            x: &[T],
            heads: usize,
            old: usize,
            new: usize,
            len: usize,
            hd: usize,
        ) -> Vec<T> {
            let mut y = vec![T::default(); heads * new * hd];
            for lh in 0..heads {
                let src = lh * old * hd..lh * old * hd + len * hd;
                y[lh * new * hd..][..len * hd].copy_from_slice(&x[src]);
            }
            y
        }
        match &mut self.store {
            Store::F32 { k, v } => {
                *k = grow(k, heads, old, capacity, len, hd);
                *v = grow(v, heads, old, capacity, len, hd);
            }
            Store::F16 { k, v } => {
                *k = grow(k, heads, old, capacity, len, hd);
                *v = grow(v, heads, old, capacity, len, hd);
            }
        }
        self.capacity = capacity;
    }
    #[inline]
    fn base(&self, layer: usize, kvh: usize) -> usize {
        (layer * self.n_kv + kvh) * self.capacity * self.hd
    }

    /// Stores key and value head `kvh` of `layer` at position `pos` (`k`, `v`: `head_dim`
    /// values each; rounded to f16 in an f16 cache).
    #[inline]
    pub(crate) fn write(&mut self, layer: usize, kvh: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = self.base(layer, kvh) + pos * self.hd;
        let span = at..at + self.hd;
        match &mut self.store {
            Store::F32 { k: ck, v: cv } => {
                ck[span.clone()].copy_from_slice(k);
                cv[span].copy_from_slice(v);
            }
            Store::F16 { k: ck, v: cv } => {
                ck[span.clone()].convert_from_f32_slice(k);
                cv[span].convert_from_f32_slice(v);
            }
        }
    }

    /// The query heads `qs` (`qs.len() / head_dim` of them, all of key/value head `kvh`)
    /// attending over positions `0..npos` of `layer`: [`attend_group`] on this cache's rows.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn attend(
        &self,
        layer: usize,
        kvh: usize,
        npos: usize,
        qs: &[f32],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let base = self.base(layer, kvh);
        let span = base..base + npos * self.hd;
        let hd = self.hd;
        match &self.store {
            Store::F32 { k, v } => {
                attend_group(qs, hd, &k[span.clone()], &v[span], npos, scale, scores, out)
            }
            Store::F16 { k, v } => {
                attend_group(qs, hd, &k[span.clone()], &v[span], npos, scale, scores, out)
            }
        }
    }
}
