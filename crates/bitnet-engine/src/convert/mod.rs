//! `bitnet convert`: read a model from any supported source into [`Parts`] (float tensors and
//! exact ternary codes with their scale), then write GGUF ([`gguf_out`]) or a Hugging Face
//! checkpoint in the 2B-4T packed convention ([`hf_out`]).

pub mod gguf_out;
pub mod hf_out;
pub mod random;
pub mod tokenizer_meta;
pub mod torch_mean;

use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::gguf_model::{config_from_gguf, Loader};
use crate::model::{ternary_codes_with, AbsMean, TernaryCodes};
use crate::weights::Checkpoint;
use bitnet_formats::gguf::{GgufFile, MetaValue};
use std::path::{Path, PathBuf};

/// The seven projections: (Hugging Face suffix, GGUF name).
pub const PROJECTIONS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// `(rows, cols)` of projection `i` of [`PROJECTIONS`].
pub fn projection_shape(c: &ModelConfig, i: usize) -> (usize, usize) {
    let (h, qd, kvd, inter) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    [
        (qd, h),
        (kvd, h),
        (kvd, h),
        (h, qd),
        (inter, h),
        (inter, h),
        (h, inter),
    ][i]
}

/// One layer's tensors.
#[derive(Clone, Debug)]
pub struct LayerParts {
    /// `input_layernorm` / `attn_norm`.
    pub attn_norm: Vec<f32>,
    /// `attn_sub_norm` (`inner_attn_ln`).
    pub attn_sub_norm: Vec<f32>,
    /// `post_attention_layernorm` / `ffn_norm`.
    pub ffn_norm: Vec<f32>,
    /// `ffn_sub_norm` (`ffn_layernorm`).
    pub ffn_sub_norm: Vec<f32>,
    /// The projections in [`PROJECTIONS`] order.
    pub proj: Vec<TernaryCodes>,
}

/// Tokenizer data to carry into the output.
#[derive(Clone, Debug, Default)]
pub struct TokenizerSource {
    /// GGUF `tokenizer.*` metadata (built from tokenizer.json / tokenizer.model, or copied).
    pub gguf: Vec<(String, MetaValue)>,
    /// Tokenizer files of a Hugging Face source directory, copied into HF outputs.
    pub hf_files: Vec<PathBuf>,
}

/// A whole model, format-neutral.
#[derive(Clone, Debug)]
pub struct Parts {
    /// Hyper-parameters.
    pub config: ModelConfig,
    /// `[vocab, hidden]` embedding.
    pub embed: Vec<f32>,
    /// Separate output head, `[vocab, hidden]`.
    pub lm_head: Option<Vec<f32>>,
    /// Final norm.
    pub output_norm: Vec<f32>,
    /// Layers.
    pub layers: Vec<LayerParts>,
    /// Tokenizer.
    pub tokenizer: TokenizerSource,
    /// Where it came from.
    pub source: PathBuf,
}

impl Parts {
    /// Reads a Hugging Face checkpoint directory (packed or master weights).
    pub fn from_hf_dir(dir: &Path, mean: AbsMean) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::NotFound {
                path: dir.to_path_buf(),
                what: "model directory",
            });
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        let tokenizer = tokenizer_meta::from_hf_dir(dir, &config)?;
        Self::from_checkpoint(config, &ckpt, tokenizer, dir, mean)
    }

    /// Reads tensors with Hugging Face names from an opened checkpoint.
    pub fn from_checkpoint(
        config: ModelConfig,
        ckpt: &Checkpoint,
        tokenizer: TokenizerSource,
        source: &Path,
        mean: AbsMean,
    ) -> Result<Self> {
        let c = &config;
        let h = c.hidden_size;
        let vec = |name: &str, n: usize| -> Result<Vec<f32>> {
            let t = ckpt.get(name)?;
            t.expect_shape(&[n])?;
            t.to_f32()
        };
        let mat = |name: &str| -> Result<Vec<f32>> {
            let t = ckpt.get(name)?;
            t.expect_shape(&[c.vocab_size, h])?;
            t.to_f32()
        };
        let (attn_sub, ffn_sub) = match c.architecture {
            Architecture::BitNet => ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"),
            Architecture::Bitnet1bitLlm => ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}.");
            let proj = PROJECTIONS
                .iter()
                .enumerate()
                .map(|(k, (hf, _))| {
                    let (r, cols) = projection_shape(c, k);
                    ternary_codes_with(ckpt, &format!("{p}{hf}"), r, cols, c.weight_format, mean)
                })
                .collect::<Result<Vec<_>>>()?;
            layers.push(LayerParts {
                attn_norm: vec(&format!("{p}input_layernorm.weight"), h)?,
                attn_sub_norm: vec(&format!("{p}{attn_sub}.weight"), c.q_dim())?,
                ffn_norm: vec(&format!("{p}post_attention_layernorm.weight"), h)?,
                ffn_sub_norm: vec(&format!("{p}{ffn_sub}.weight"), c.intermediate_size)?,
                proj,
            });
        }
        Ok(Parts {
            embed: mat("model.embed_tokens.weight")?,
            lm_head: if c.tie_word_embeddings {
                None
            } else {
                Some(mat("lm_head.weight")?)
            },
            output_norm: vec("model.norm.weight", h)?,
            layers,
            tokenizer,
            source: source.to_path_buf(),
            config,
        })
    }

    /// Reads a GGUF file (for requantizing or exporting).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let f = GgufFile::open(path)?;
        let config = config_from_gguf(&f)?;
        let c = &config;
        let ld = Loader { f: &f };
        let h = c.hidden_size;
        let dense = |name: &str| -> Result<Vec<f32>> {
            let m = ld.dense(name, c.vocab_size, h)?;
            let mut out = vec![0f32; c.vocab_size * h];
            for (r, row) in out.chunks_exact_mut(h).enumerate() {
                m.row_to_f32(r, row);
            }
            Ok(out)
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("blk.{i}.");
            let proj = PROJECTIONS
                .iter()
                .enumerate()
                .map(|(k, (_, g))| {
                    let (r, cols) = projection_shape(c, k);
                    ld.ternary_codes(&format!("{p}{g}"), r, cols)
                })
                .collect::<Result<Vec<_>>>()?;
            layers.push(LayerParts {
                attn_norm: ld.vector(&format!("{p}attn_norm.weight"), h)?,
                attn_sub_norm: ld.vector(&format!("{p}attn_sub_norm.weight"), c.q_dim())?,
                ffn_norm: ld.vector(&format!("{p}ffn_norm.weight"), h)?,
                ffn_sub_norm: ld.vector(&format!("{p}ffn_sub_norm.weight"), c.intermediate_size)?,
                proj,
            });
        }
        let tokenizer = TokenizerSource {
            gguf: f
                .metadata
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer."))
                .cloned()
                .collect(),
            hf_files: Vec::new(),
        };
        Ok(Parts {
            embed: dense("token_embd.weight")?,
            lm_head: if c.tie_word_embeddings {
                None
            } else {
                Some(dense("output.weight")?)
            },
            output_norm: ld.vector("output_norm.weight", h)?,
            layers,
            tokenizer,
            source: path.to_path_buf(),
            config,
        })
    }

    /// Reads any supported input: a `.gguf` file or a Hugging Face checkpoint directory, with
    /// master weights ternarized around the correctly rounded mean.
    pub fn open(input: &Path) -> Result<Self> {
        Self::open_with(input, AbsMean::Exact)
    }

    /// [`Parts::open`] with a choice of absmean reduction for master weights.
    pub fn open_with(input: &Path, mean: AbsMean) -> Result<Self> {
        let ext = input
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            _ if input.is_dir() => Self::from_hf_dir(input, mean),
            "bin" | "pt" | "pth" | "onnx" => Self::from_torch_or_onnx(input, mean),
            _ if input.is_file() => Self::from_gguf(input),
            _ => Err(Error::NotFound {
                path: input.to_path_buf(),
                what: "input (checkpoint directory, .gguf, .bin/.pt/.pth or .onnx file)",
            }),
        }
    }

    /// A PyTorch `torch.save` file or an ONNX file with the model's parameter names;
    /// `config.json` and the tokenizer files must sit beside it.
    pub fn from_torch_or_onnx(file: &Path, mean: AbsMean) -> Result<Self> {
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let fail = Error::Input;
        let onnx = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
        let raw = if onnx {
            let t = bitnet_formats::onnx::read_onnx(file).map_err(|e| fail(e.to_string()))?;
            bitnet_formats::onnx::check_names(file, &t).map_err(|e| fail(e.to_string()))?;
            t
        } else {
            bitnet_formats::pickle::read_pytorch(file).map_err(|e| fail(e.to_string()))?
        };
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::from_raw(dir, file, raw)?;
        let tokenizer = tokenizer_meta::from_hf_dir(dir, &config)?;
        Self::from_checkpoint(config, &ckpt, tokenizer, file, mean)
    }

    /// Number of ternary tensors.
    pub fn n_ternary(&self) -> usize {
        self.layers.len() * PROJECTIONS.len()
    }
}
