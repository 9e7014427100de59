//! `config.json` of a Hugging Face BitNet checkpoint.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Which tensor naming / class family the checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// transformers' `BitNetForCausalLM` (`model_type: bitnet`; Microsoft's 2B-4T):
    /// sub-norms `self_attn.attn_sub_norm`, `mlp.ffn_sub_norm`.
    BitNet,
    /// The 1bitLLM reproductions (`BitnetForCausalLM`, `model_type: llama`):
    /// sub-norms `self_attn.inner_attn_ln`, `mlp.ffn_layernorm`.
    Bitnet1bitLlm,
}

impl Architecture {
    /// The class name as written in `config.json`.
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::BitNet => "BitNetForCausalLM",
            Architecture::Bitnet1bitLlm => "BitnetForCausalLM (1bitLLM, model_type llama)",
        }
    }
}

/// FFN activation (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `relu(x)²` (2B-4T).
    Relu2,
    /// `x · sigmoid(x)` (1bitLLM, llama.cpp arch `bitnet`).
    Silu,
}

/// How the seven projections' weights are stored and scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// Packed uint8 + `weight_scale = mean|W|`, output multiplied (`linear_class: autobitlinear`,
    /// `quantization_mode: offline`: Microsoft's 2B-4T release).
    PackedMultiply,
    /// Packed uint8 + `weight_scale = 1/mean|W|`, output divided (`linear_class: bitlinear`).
    PackedDivide,
    /// Float master weights, ternarized at load (absmean; `quantization_mode: online`).
    Online,
    /// Ternary tensors of a GGUF file (TQ1_0, TQ2_0, I2_S, or floats holding `{−s, 0, +s}`).
    Gguf,
}

impl WeightFormat {
    /// Human-readable description.
    pub fn describe(self) -> &'static str {
        match self {
            WeightFormat::PackedMultiply => {
                "packed 2-bit uint8 + weight_scale (autobitlinear: multiply)"
            }
            WeightFormat::PackedDivide => "packed 2-bit uint8 + weight_scale (bitlinear: divide)",
            WeightFormat::Online => "float master weights, ternarized at load (online absmean)",
            WeightFormat::Gguf => "GGUF ternary tensors",
        }
    }
}

/// The model hyper-parameters the engine needs.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Tensor naming family.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// FFN activation.
    pub hidden_act: Activation,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Context window.
    pub max_position_embeddings: usize,
    /// Output head shares the embedding.
    pub tie_word_embeddings: bool,
    /// Weight storage convention.
    pub weight_format: WeightFormat,
    /// BOS id, if the config names one.
    pub bos_token_id: Option<u32>,
    /// EOS ids (one or several).
    pub eos_token_ids: Vec<u32>,
}

const SUPPORTED_ARCH: &str = "BitNetForCausalLM (model_type bitnet, hidden_act relu2 or silu) and \
     BitnetForCausalLM (1bitLLM, model_type llama)";

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        Self::from_value(&v, path)
    }

    /// Validates a parsed `config.json` (`path` is used in error messages).
    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let f = Fields { v, path };
        let model_type = f.opt_str("model_type")?.unwrap_or_default();
        let archs: Vec<String> = match v.get("architectures") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Some(_) => return Err(f.invalid("architectures", "expected a list of class names")),
            None => Vec::new(),
        };
        let architecture = if archs.iter().any(|a| a == "BitNetForCausalLM") {
            Architecture::BitNet
        } else if archs.iter().any(|a| a == "BitnetForCausalLM") {
            Architecture::Bitnet1bitLlm
        } else if archs.is_empty() && model_type == "bitnet" {
            Architecture::BitNet
        } else {
            let found = if archs.is_empty() {
                format!("model_type {model_type:?} with no `architectures`")
            } else {
                format!("{archs:?} (model_type {model_type:?})")
            };
            return Err(Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found,
                supported: SUPPORTED_ARCH,
            });
        };

        let hidden_act = match f.opt_str("hidden_act")?.as_deref() {
            Some("relu2") => Activation::Relu2,
            Some("silu") | Some("swish") => Activation::Silu,
            None if architecture == Architecture::BitNet => Activation::Relu2,
            None => Activation::Silu,
            Some(other) => {
                return Err(Error::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    found: format!("hidden_act {other:?}"),
                    supported: "hidden_act relu2 or silu",
                })
            }
        };

        let hidden_size = f.req_usize("hidden_size")?;
        let num_attention_heads = f.req_usize("num_attention_heads")?;
        let num_key_value_heads = f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || hidden_size == 0 {
            return Err(f.invalid("num_attention_heads", "must be positive"));
        }
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.invalid(
                "num_key_value_heads",
                &format!(
                    "{num_key_value_heads} must divide num_attention_heads {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(f.invalid(
                        "hidden_size",
                        &format!("{hidden_size} is not divisible by num_attention_heads {num_attention_heads}"),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.invalid(
                "head_dim",
                &format!("{head_dim} must be even and positive (RoPE)"),
            ));
        }

        let rope_theta = match f.opt_f64("rope_theta")? {
            Some(t) => t,
            None => match v.get("rope_parameters") {
                Some(p) if p.is_object() => {
                    let pf = Fields { v: p, path };
                    if let Some(t) = pf.opt_str("rope_type")? {
                        if t != "default" {
                            return Err(f.invalid(
                                "rope_parameters.rope_type",
                                &format!("{t:?} is not supported (only \"default\")"),
                            ));
                        }
                    }
                    pf.opt_f64("rope_theta")?
                        .ok_or_else(|| Error::MissingField {
                            path: path.to_path_buf(),
                            field: "rope_parameters.rope_theta".into(),
                        })?
                }
                _ if architecture == Architecture::BitNet => 500000.0,
                _ => 10000.0,
            },
        };
        if let Some(s) = v.get("rope_scaling") {
            if !s.is_null() {
                return Err(f.invalid("rope_scaling", "RoPE scaling is not supported"));
            }
        }

        let weight_format = parse_quant(v, path, architecture)?;
        let (bos_token_id, eos_token_ids) = token_ids(v, path)?;

        let cfg = ModelConfig {
            architecture,
            vocab_size: f.req_usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.req_usize("intermediate_size")?,
            num_hidden_layers: f.req_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            hidden_act,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta: rope_theta as f32,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            weight_format,
            bos_token_id,
            eos_token_ids,
        };
        for (name, val) in [
            ("vocab_size", cfg.vocab_size),
            ("intermediate_size", cfg.intermediate_size),
            ("num_hidden_layers", cfg.num_hidden_layers),
            ("max_position_embeddings", cfg.max_position_embeddings),
        ] {
            if val == 0 {
                return Err(f.invalid(name, "must be positive"));
            }
        }
        Ok(cfg)
    }

    /// Query heads per key/value head.
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

fn parse_quant(v: &Value, path: &Path, arch: Architecture) -> Result<WeightFormat> {
    let unsupported = |message: String| Error::UnsupportedQuantization {
        path: path.to_path_buf(),
        message,
    };
    let q = match v.get("quantization_config") {
        None | Some(Value::Null) => {
            // No quantization config: float weights, quantized as the architecture trains them.
            if arch == Architecture::BitNet {
                tracing::warn!(
                    "{}: no quantization_config; treating weights as float masters (online)",
                    path.display()
                );
            }
            return Ok(WeightFormat::Online);
        }
        Some(q) if q.is_object() => q,
        Some(_) => {
            return Err(unsupported(
                "`quantization_config` must be an object".into(),
            ))
        }
    };
    let qf = Fields { v: q, path };
    let method = qf.opt_str("quant_method")?;
    if method.as_deref() != Some("bitnet") {
        return Err(unsupported(format!(
            "quant_method {method:?}; supported: \"bitnet\" (linear_class autobitlinear or bitlinear, \
             quantization_mode offline or online)"
        )));
    }
    // transformers' BitNetQuantConfig defaults: linear_class bitlinear, quantization_mode offline.
    let class = qf
        .opt_str("linear_class")?
        .unwrap_or_else(|| "bitlinear".into());
    let mode = qf
        .opt_str("quantization_mode")?
        .unwrap_or_else(|| "offline".into());
    match (class.as_str(), mode.as_str()) {
        ("autobitlinear", "offline") => Ok(WeightFormat::PackedMultiply),
        ("bitlinear", "offline") => Ok(WeightFormat::PackedDivide),
        ("autobitlinear", "online") => Ok(WeightFormat::Online),
        _ => Err(unsupported(format!(
            "linear_class {class:?} with quantization_mode {mode:?}; supported: autobitlinear/offline \
             (packed, multiply), bitlinear/offline (packed, divide), autobitlinear/online (float master weights)"
        ))),
    }
}

fn token_ids(v: &Value, path: &Path) -> Result<(Option<u32>, Vec<u32>)> {
    let f = Fields { v, path };
    let bos = f.opt_usize("bos_token_id")?.map(|x| x as u32);
    Ok((bos, id_list(v.get("eos_token_id"), path, "eos_token_id")?))
}

/// Parses an id field that may be a single integer or a list of integers.
pub(crate) fn id_list(v: Option<&Value>, path: &Path, field: &str) -> Result<Vec<u32>> {
    let bad = || Error::InvalidField {
        path: path.to_path_buf(),
        field: field.into(),
        message: "expected a token id or a list of token ids".into(),
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Number(n)) => Ok(vec![n.as_u64().ok_or_else(bad)? as u32]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().map(|n| n as u32).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Reads a JSON file with file-naming errors.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                path: path.to_path_buf(),
                what: "file",
            }
        } else {
            Error::io(path, e)
        }
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Typed field access with errors that name the file and field.
pub(crate) struct Fields<'a> {
    pub v: &'a Value,
    pub path: &'a Path,
}

impl Fields<'_> {
    fn p(&self) -> PathBuf {
        self.path.to_path_buf()
    }
    pub fn invalid(&self, field: &str, message: &str) -> Error {
        Error::InvalidField {
            path: self.p(),
            field: field.into(),
            message: message.into(),
        }
    }
    fn get(&self, field: &str) -> Option<&Value> {
        self.v.get(field).filter(|x| !x.is_null())
    }
    pub fn req_usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?.ok_or_else(|| Error::MissingField {
            path: self.p(),
            field: field.into(),
        })
    }
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.invalid(
                    field,
                    &format!("expected a non-negative integer, found {x}"),
                )
            }),
        }
    }
    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| self.invalid(field, &format!("expected a number, found {x}"))),
        }
    }
    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(x) => x
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(field, &format!("expected true or false, found {x}"))),
        }
    }
    pub fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            None => Ok(None),
            Some(x) => x
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.invalid(field, &format!("expected a string, found {x}"))),
        }
    }
}
