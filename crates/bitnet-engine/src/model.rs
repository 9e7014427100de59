//! The BitNet b1.58 model: weights in the engine's layout, loaded from a Hugging Face checkpoint.

use crate::config::{Architecture, ModelConfig, WeightFormat};
use crate::error::{Error, Result};
use crate::weights::{Checkpoint, TensorRef};
use bitnet_kernels::ops::RopeTable;
use bitnet_kernels::{DenseData, DenseMatrix, TernaryMatrix};
use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::Dtype;
use std::path::Path;

/// One transformer block.
pub(crate) struct Layer {
    pub input_norm: Vec<f32>,
    pub q: TernaryMatrix,
    pub k: TernaryMatrix,
    pub v: TernaryMatrix,
    pub o: TernaryMatrix,
    pub attn_sub_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    pub gate: TernaryMatrix,
    pub up: TernaryMatrix,
    pub down: TernaryMatrix,
    pub ffn_sub_norm: Vec<f32>,
}

/// A loaded model, ready to run ([`crate::forward`]).
pub struct Model {
    /// Hyper-parameters.
    pub config: ModelConfig,
    pub(crate) embed: DenseMatrix,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Vec<f32>,
    /// Separate output head; `None` when tied to the embedding.
    pub(crate) lm_head: Option<DenseMatrix>,
    pub(crate) rope: RopeTable,
    /// The GPU copy and kernels when the model runs on CUDA ([`Model::use_device`]).
    #[cfg(feature = "cuda")]
    pub(crate) cuda: Option<std::sync::Arc<crate::cuda::CudaRunner>>,
}

impl Model {
    /// Loads a model: a Hugging Face checkpoint directory (`config.json` + safetensors) or a
    /// `.gguf` file.
    pub fn load(dir: &Path) -> Result<Self> {
        if dir.is_file() {
            let f = bitnet_formats::gguf::GgufFile::open(dir)?;
            return crate::gguf_model::model_from_gguf(&f);
        }
        if !dir.is_dir() {
            return Err(Error::NotFound {
                path: dir.to_path_buf(),
                what: "model directory",
            });
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::from_checkpoint(config, &ckpt)
    }

    /// Loads a model and its tokenizer ([`Model::load`] and [`crate::Tokenizer::load`]), the
    /// tokenizer first: building it (for a GGUF file, from a vocabulary of up to ~128k tokens
    /// and their merges) makes tens of MB of short-lived allocations, which are then freed
    /// before the weights are repacked instead of lingering on top of them. A GGUF file is
    /// opened and its metadata parsed once for both.
    pub fn load_with_tokenizer(dir: &Path) -> Result<(Self, crate::Tokenizer)> {
        if dir.is_file() {
            let f = bitnet_formats::gguf::GgufFile::open(dir)?;
            let config = crate::gguf_model::config_from_gguf(&f)?;
            let tok = crate::Tokenizer::from_gguf(&f, &config)?;
            return Ok((crate::gguf_model::model_from_gguf(&f)?, tok));
        }
        if !dir.is_dir() {
            return Err(Error::NotFound {
                path: dir.to_path_buf(),
                what: "model directory",
            });
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let tok = crate::Tokenizer::load(dir, &config)?;
        let ckpt = Checkpoint::open(dir)?;
        Ok((Self::from_checkpoint(config, &ckpt)?, tok))
    }

    /// Builds the model from a parsed config and an opened checkpoint.
    pub fn from_checkpoint(config: ModelConfig, ckpt: &Checkpoint) -> Result<Self> {
        let c = &config;
        let (h, inter, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let embed = dense(ckpt, "model.embed_tokens.weight", vocab, h)?;
        let (attn_sub, ffn_sub) = match c.architecture {
            Architecture::BitNet => ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"),
            Architecture::Bitnet1bitLlm => ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
        };
        // Layers load in parallel: unpacking/ternarizing is the bulk of load time.
        let layers = (0..c.num_hidden_layers)
            .into_par_iter()
            .map(|i| {
                let p = format!("model.layers.{i}.");
                let lin = |name: &str, out: usize, inp: usize| {
                    ternary(ckpt, &format!("{p}{name}"), out, inp, c.weight_format)
                };
                let nrm = |name: &str, n: usize| vector(ckpt, &format!("{p}{name}.weight"), n);
                Ok(Layer {
                    input_norm: nrm("input_layernorm", h)?,
                    q: lin("self_attn.q_proj", qd, h)?,
                    k: lin("self_attn.k_proj", kvd, h)?,
                    v: lin("self_attn.v_proj", kvd, h)?,
                    o: lin("self_attn.o_proj", h, qd)?,
                    attn_sub_norm: nrm(attn_sub, qd)?,
                    post_norm: nrm("post_attention_layernorm", h)?,
                    gate: lin("mlp.gate_proj", inter, h)?,
                    up: lin("mlp.up_proj", inter, h)?,
                    down: lin("mlp.down_proj", h, inter)?,
                    ffn_sub_norm: nrm(ffn_sub, inter)?,
                })
            })
            .collect::<Result<Vec<Layer>>>()?;
        let norm = vector(ckpt, "model.norm.weight", h)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(dense(ckpt, "lm_head.weight", vocab, h)?)
        };
        Ok(Model::assemble(config, embed, layers, norm, lm_head))
    }

    /// A model from its parts (any file format), with the RoPE tables of its config.
    pub(crate) fn assemble(
        config: ModelConfig,
        embed: DenseMatrix,
        layers: Vec<Layer>,
        norm: Vec<f32>,
        lm_head: Option<DenseMatrix>,
    ) -> Self {
        let rope = RopeTable::new(
            config.head_dim,
            config.rope_theta,
            config.max_position_embeddings,
        );
        Model {
            config,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            #[cfg(feature = "cuda")]
            cuda: None,
        }
    }

    /// The output head (the embedding when tied).
    pub(crate) fn head(&self) -> &DenseMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Projections used in place from a memory-mapped file (zero-copy), out of all of them.
    pub fn zero_copy_projections(&self) -> (usize, usize) {
        let all: Vec<&TernaryMatrix> = self
            .layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .collect();
        (all.iter().filter(|m| m.is_shared()).count(), all.len())
    }

    /// Whether the embedding (and output head) are used in place from a memory-mapped file.
    pub fn zero_copy_embedding(&self) -> bool {
        self.embed.is_shared() && self.lm_head.as_ref().is_none_or(|h| h.is_shared())
    }

    /// Bytes held by ternary projections and by float tensors.
    pub fn weight_bytes(&self) -> (usize, usize) {
        let mut tern = 0;
        let mut float = self.embed.nbytes() + self.norm.len() * 4;
        if let Some(hd) = &self.lm_head {
            float += hd.nbytes();
        }
        for l in &self.layers {
            for m in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                tern += m.nbytes();
            }
            float += 4
                * (l.input_norm.len()
                    + l.attn_sub_norm.len()
                    + l.post_norm.len()
                    + l.ffn_sub_norm.len());
        }
        (tern, float)
    }
}

/// A float vector (norm weight) of length `n`.
fn vector(ckpt: &Checkpoint, name: &str, n: usize) -> Result<Vec<f32>> {
    let t = ckpt.get(name)?;
    t.expect_shape(&[n])?;
    t.to_f32()
}

/// A float `[rows, cols]` matrix kept in its stored precision.
fn dense(ckpt: &Checkpoint, name: &str, rows: usize, cols: usize) -> Result<DenseMatrix> {
    let t = ckpt.get(name)?;
    t.expect_shape(&[rows, cols])?;
    let d = t.data;
    let data = match t.dtype {
        Dtype::F32 => DenseData::F32(t.to_f32()?.into()),
        // Little-endian on disk; a byte copy (any alignment) on little-endian hosts.
        Dtype::BF16 if cfg!(target_endian = "little") => {
            DenseData::Bf16(bytemuck::pod_collect_to_vec(d).into())
        }
        Dtype::F16 if cfg!(target_endian = "little") => {
            DenseData::F16(bytemuck::pod_collect_to_vec(d).into())
        }
        Dtype::BF16 => DenseData::Bf16(
            d.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>()
                .into(),
        ),
        Dtype::F16 => DenseData::F16(
            d.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>()
                .into(),
        ),
        _ => return Err(t.dtype_error("F32, BF16 or F16")),
    };
    Ok(DenseMatrix::new(rows, cols, data))
}

/// One BitLinear projection `prefix.weight` (`[out, in]` logical) in the given convention.
fn ternary(
    ckpt: &Checkpoint,
    prefix: &str,
    out: usize,
    inp: usize,
    format: WeightFormat,
) -> Result<TernaryMatrix> {
    let t = ternary_codes(ckpt, prefix, out, inp, format)?;
    Ok(TernaryMatrix::from_codes(out, inp, &t.codes, t.scale))
}

/// A ternary tensor as row-major codes `c = w + 1` (0, 1, 2) and the value `s` of its non-zero
/// magnitude (`W = (c − 1) · s`). Bit 2 of a zero code ([`NEG_ZERO`]) records that the source
/// float was negative, so float exports reproduce `−0.0` as converters write it.
#[derive(Clone, Debug)]
pub struct TernaryCodes {
    /// Row-major codes.
    pub codes: Vec<u8>,
    /// Non-zero magnitude.
    pub scale: f32,
}

/// Flag on a zero code whose source float was negative.
pub const NEG_ZERO: u8 = 4;

/// How the absmean of master weights is reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbsMean {
    /// Accumulated in f64, then rounded: the correctly rounded mean.
    Exact,
    /// As PyTorch's float32 CPU reduction with this many threads (what the Python converters of
    /// llama.cpp and bitnet.cpp compute): see [`crate::convert::torch_mean`].
    Torch {
        /// torch's intra-op thread count.
        threads: usize,
    },
}

/// Reads a projection's ternary codes and scale from a Hugging Face checkpoint.
pub fn ternary_codes(
    ckpt: &Checkpoint,
    prefix: &str,
    out: usize,
    inp: usize,
    format: WeightFormat,
) -> Result<TernaryCodes> {
    ternary_codes_with(ckpt, prefix, out, inp, format, AbsMean::Exact)
}

/// [`ternary_codes`] with a choice of absmean reduction for master weights.
pub fn ternary_codes_with(
    ckpt: &Checkpoint,
    prefix: &str,
    out: usize,
    inp: usize,
    format: WeightFormat,
    mean: AbsMean,
) -> Result<TernaryCodes> {
    let wname = format!("{prefix}.weight");
    let w = ckpt.get(&wname)?;
    match format {
        WeightFormat::Online => {
            if w.dtype == Dtype::U8 {
                return Err(w.dtype_error(
                    "F32, BF16 or F16 (quantization_mode online expects float master weights)",
                ));
            }
            w.expect_shape(&[out, inp])?;
            let vals = w.to_f32()?;
            Ok(match mean {
                AbsMean::Exact => ternarize_absmean(&vals),
                AbsMean::Torch { threads } => {
                    let m = crate::convert::torch_mean::torch_abs_mean(&vals, threads);
                    ternarize_with_mean(&vals, m)
                }
            })
        }
        WeightFormat::Gguf => Err(Error::UnsupportedQuantization {
            path: w.path.to_path_buf(),
            message: "GGUF weight format in a safetensors checkpoint".into(),
        }),
        WeightFormat::PackedMultiply | WeightFormat::PackedDivide => {
            if w.dtype != Dtype::U8 {
                return Err(w.dtype_error(
                    "U8 (packed ternary; quantization_mode offline — use online for float weights)",
                ));
            }
            w.expect_shape(&[out.div_ceil(4), inp])?;
            let ws = ckpt.get(&format!("{prefix}.weight_scale"))?.scalar_f32()?;
            if !(ws.is_finite() && ws > 0.0) {
                return Err(Error::InvalidField {
                    path: w.path.to_path_buf(),
                    field: format!("{prefix}.weight_scale"),
                    message: format!("weight scale must be positive and finite, found {ws}"),
                });
            }
            let scale = if format == WeightFormat::PackedMultiply {
                ws
            } else {
                1.0 / ws
            };
            Ok(TernaryCodes {
                codes: unpack_hf(&w, out, inp)?,
                scale,
            })
        }
    }
}

/// Absmean ternarization (transformers `WeightQuant`, llama.cpp's and bitnet.cpp's converters):
/// `s = mean|W|` (f32), `is = 1 / max(s, 1e-5)`, `T = clamp(round_half_even(W·is), −1, 1)`;
/// the stored magnitude is `1 / is`, the value `T / is` those tools compute.
pub fn ternarize_absmean(vals: &[f32]) -> TernaryCodes {
    let mean = (vals.iter().map(|v| v.abs() as f64).sum::<f64>() / vals.len().max(1) as f64) as f32;
    ternarize_with_mean(vals, mean)
}

/// Absmean ternarization with a given `mean|W|`.
pub fn ternarize_with_mean(vals: &[f32], mean: f32) -> TernaryCodes {
    let is = 1.0f32 / mean.max(1e-5);
    let codes = vals
        .iter()
        .map(|&v| {
            let q = (v * is).round_ties_even().clamp(-1.0, 1.0) as i8;
            let c = (q + 1) as u8;
            if q == 0 && v.is_sign_negative() {
                c | NEG_ZERO
            } else {
                c
            }
        })
        .collect();
    TernaryCodes {
        codes,
        scale: 1.0 / is,
    }
}

/// Unpacks the Hugging Face 2-bit layout: `packed[r, c]` holds rows `i·R + r` (i = 0..3, low
/// bits first, R = ceil(out/4)) as codes `w + 1`.
fn unpack_hf(w: &TensorRef<'_>, out: usize, inp: usize) -> Result<Vec<u8>> {
    let r_rows = out.div_ceil(4);
    let mut codes = vec![1u8; out * inp];
    for o in 0..out {
        let (i, r) = (o / r_rows, o % r_rows);
        let src = &w.data[r * inp..(r + 1) * inp];
        for (c, (dst, &b)) in codes[o * inp..(o + 1) * inp]
            .iter_mut()
            .zip(src)
            .enumerate()
        {
            let code = (b >> (2 * i)) & 3;
            if code == 3 {
                return Err(Error::Safetensors {
                    path: w.path.to_path_buf(),
                    message: format!(
                        "tensor `{}`: invalid 2-bit code 3 at packed row {r}, column {c} (codes are 0, 1, 2)",
                        w.name
                    ),
                });
            }
            *dst = code;
        }
    }
    Ok(codes)
}
