//! The BitNet b1.58 architecture of the engine (`BitNetForCausalLM`) as a differentiable candle
//! graph: BitLinear projections with fake quantization ([`crate::quant`]), RMSNorm sub-norms,
//! half-split RoPE, grouped-query attention, relu² or SiLU FFN, tied or untied head.
//!
//! Parameters are f32 master weights named as in a Hugging Face checkpoint, so a trainer
//! checkpoint's `model.safetensors` is itself a runnable `quantization_mode: online` model.

use crate::error::{Error, Result};
use crate::ops::causal_softmax;
use crate::quant::{bit_linear, QuantMode};
use bitnet_engine::config::{Activation, Architecture, ModelConfig};
use bitnet_engine::weights::Checkpoint;
use candle_core::{DType, Device, Tensor, Var};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// The projections of one layer, in Hugging Face naming.
pub const PROJ: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// One named parameter.
#[derive(Clone, Debug)]
pub struct Param {
    /// Hugging Face tensor name.
    pub name: String,
    /// The trainable variable.
    pub var: Var,
    /// Whether AdamW's weight decay applies (matrices, not norms).
    pub decay: bool,
}

/// A trainable BitNet model.
#[derive(Debug)]
pub struct TrainModel {
    /// Hyper-parameters (the engine's own type).
    pub config: ModelConfig,
    /// Parameters in a fixed order (checkpoints and the optimizer follow it).
    pub params: Vec<Param>,
}

/// The names and shapes of every parameter of `c`, in [`TrainModel::params`] order.
pub fn param_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, v, i) = (c.hidden_size, c.vocab_size, c.intermediate_size);
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, h]));
    }
    out.push(("model.norm.weight".into(), vec![h]));
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        let shapes = [
            vec![qd, h],
            vec![kvd, h],
            vec![kvd, h],
            vec![h, qd],
            vec![i, h],
            vec![i, h],
            vec![h, i],
        ];
        out.push((format!("{p}input_layernorm.weight"), vec![h]));
        out.push((format!("{p}post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}self_attn.attn_sub_norm.weight"), vec![qd]));
        out.push((format!("{p}mlp.ffn_sub_norm.weight"), vec![i]));
        for (name, shape) in PROJ.iter().zip(shapes) {
            out.push((format!("{p}{name}.weight"), shape));
        }
    }
    out
}

/// The tensor name a checkpoint of `arch` uses for our (BitNet-named) parameter `name`.
fn source_name(arch: Architecture, name: &str) -> String {
    match arch {
        Architecture::BitNet => name.to_string(),
        Architecture::Bitnet1bitLlm => name
            .replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln")
            .replace("mlp.ffn_sub_norm", "mlp.ffn_layernorm"),
    }
}

impl TrainModel {
    /// A freshly initialized model: matrices ~ N(0, `init_std`²), norms 1 (deterministic in `seed`).
    pub fn new_random(config: ModelConfig, init_std: f32, seed: u64, dtype: DType) -> Result<Self> {
        let device = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        for (name, shape) in param_shapes(&config) {
            let n: usize = shape.iter().product();
            let decay = shape.len() == 2;
            let data: Vec<f32> = if decay {
                (0..n).map(|_| normal(&mut rng) * init_std).collect()
            } else {
                vec![1.0; n]
            };
            let t = Tensor::from_vec(data, shape, &device)?.to_dtype(dtype)?;
            params.push(Param {
                name,
                var: Var::from_tensor(&t)?,
                decay,
            });
        }
        Ok(TrainModel { config, params })
    }

    /// Master weights from a Hugging Face checkpoint with float weights (`quantization_mode:
    /// online`, e.g. the `-bf16` releases), or from a trainer checkpoint.
    pub fn from_checkpoint(config: ModelConfig, ckpt: &Checkpoint, dtype: DType) -> Result<Self> {
        if config.weight_format != bitnet_engine::WeightFormat::Online {
            return Err(Error::Config {
                path: ckpt.dir().join("config.json"),
                message: format!(
                    "training needs float master weights (quantization_mode online); this \
                     checkpoint stores {}. Fine-tune from the -bf16 release instead",
                    config.weight_format.describe()
                ),
            });
        }
        let device = Device::Cpu;
        let mut params = Vec::new();
        for (name, shape) in param_shapes(&config) {
            let src = source_name(config.architecture, &name);
            let t = ckpt.get(&src)?;
            t.expect_shape(&shape)?;
            let data = t.to_f32()?;
            let t = Tensor::from_vec(data, shape.clone(), &device)?.to_dtype(dtype)?;
            params.push(Param {
                name,
                var: Var::from_tensor(&t)?,
                decay: shape.len() == 2,
            });
        }
        let mut config = config;
        config.architecture = Architecture::BitNet;
        Ok(TrainModel { config, params })
    }

    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Result<&Tensor> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.var.as_tensor())
            .ok_or_else(|| Error::Internal(format!("no parameter {name}")))
    }

    /// Number of scalar parameters.
    pub fn n_params(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.var.as_tensor().elem_count())
            .sum()
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (u32), every position attending
    /// to itself and the positions before it.
    pub fn forward(&self, ids: &Tensor, mode: QuantMode) -> Result<Tensor> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let (h, nh, nkv, hd) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        let emb = self.param("model.embed_tokens.weight")?;
        let mut x = emb
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let rope_op = self.rope_op(t);
        let scale = (hd as f64).powf(-0.5);
        for l in 0..c.num_hidden_layers {
            let p = |n: &str| self.param(&format!("model.layers.{l}.{n}"));
            let w = |n: &str| p(&format!("{n}.weight"));
            let hn = self.rms_norm(&x, p("input_layernorm.weight")?)?;
            let q = bit_linear(&hn, w(PROJ[0])?, mode)?
                .reshape((b, t, nh, hd))?
                .transpose(1, 2)?;
            let k = bit_linear(&hn, w(PROJ[1])?, mode)?
                .reshape((b, t, nkv, hd))?
                .transpose(1, 2)?;
            let v = bit_linear(&hn, w(PROJ[2])?, mode)?
                .reshape((b, t, nkv, hd))?
                .transpose(1, 2)?;
            let q = q.contiguous()?.apply_op1(rope_op.clone())?;
            let k = repeat_kv(&k.contiguous()?.apply_op1(rope_op.clone())?, nh / nkv)?;
            let v = repeat_kv(&v, nh / nkv)?;
            let att = causal_softmax(&q.matmul(&k.t()?.contiguous()?)?, scale)?;
            let o = att
                .matmul(&v.contiguous()?)?
                .transpose(1, 2)?
                .reshape((b, t, nh * hd))?;
            let o = self.rms_norm(&o, p("self_attn.attn_sub_norm.weight")?)?;
            x = (x + bit_linear(&o, w(PROJ[3])?, mode)?)?;

            let hn = self.rms_norm(&x, p("post_attention_layernorm.weight")?)?;
            let g = bit_linear(&hn, w(PROJ[4])?, mode)?;
            let u = bit_linear(&hn, w(PROJ[5])?, mode)?;
            let a = match c.hidden_act {
                Activation::Relu2 => g.relu()?.sqr()?,
                Activation::Silu => candle_nn::ops::silu(&g)?,
            };
            let m = self.rms_norm(&(a * u)?, p("mlp.ffn_sub_norm.weight")?)?;
            x = (x + bit_linear(&m, w(PROJ[6])?, mode)?)?;
        }
        let x = self.rms_norm(&x, self.param("model.norm.weight")?)?;
        let head = if c.tie_word_embeddings {
            emb
        } else {
            self.param("lm_head.weight")?
        };
        Ok(crate::quant::linear(&x, head)?)
    }

    /// `w · x / sqrt(mean(x²) + eps)` over the last dimension (transformers' `BitNetRMSNorm`),
    /// fused ([`crate::ops::rms_norm`]).
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(crate::ops::rms_norm(x, w, self.config.rms_norm_eps as f64)?)
    }

    /// The rotary op for `t` positions, on the engine's own tables (`RopeTable`: f32 angles).
    fn rope_op(&self, t: usize) -> crate::ops::Rope {
        let c = &self.config;
        let table = bitnet_kernels::ops::RopeTable::new(c.head_dim, c.rope_theta, t);
        crate::ops::Rope {
            cos: std::sync::Arc::new(table.cos().to_vec()),
            sin: std::sync::Arc::new(table.sin().to_vec()),
            t,
        }
    }

    /// Mean next-token cross-entropy of `tokens` `[batch, seq + 1]`: inputs are all but the last
    /// column, targets all but the first.
    pub fn loss(&self, tokens: &Tensor, mode: QuantMode) -> Result<Tensor> {
        let (b, t1) = tokens.dims2()?;
        let t = t1 - 1;
        let inp = tokens.narrow(1, 0, t)?;
        let tgt = tokens.narrow(1, 1, t)?.flatten_all()?;
        let logits = self.forward(&inp, mode)?;
        let logits = logits.reshape((b * t, self.config.vocab_size))?;
        Ok(candle_nn::loss::cross_entropy(&logits, &tgt)?)
    }

    /// Writes the master weights as `dir/model.safetensors` (f32, Hugging Face names).
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|p| Ok((p.name.clone(), p.var.as_tensor().to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        crate::checkpoint::write_safetensors(path, &tensors)
    }
}

/// `[b, kv, t, d]` → `[b, kv·n, t, d]`, each KV head repeated for its `n` query heads.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n, t, d))?
        .reshape((b, kv * n, t, d))?)
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
