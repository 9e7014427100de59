//! `bitnet inspect`: what a checkpoint holds, read from its config and tensor headers only.

use crate::chat::{ChatTemplate, TemplateSource};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::Checkpoint;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Names of the seven BitLinear projections.
const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// A human-readable report on the checkpoint in `dir` or the GGUF file `dir` (no weights are
/// loaded).
pub fn inspect(dir: &Path) -> Result<String> {
    if dir.is_file() {
        return inspect_gguf(dir);
    }
    if !dir.is_dir() {
        return Err(Error::NotFound {
            path: dir.to_path_buf(),
            what: "model directory",
        });
    }
    let c = ModelConfig::from_file(&dir.join("config.json"))?;
    let ck = Checkpoint::open(dir)?;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "model:         {}", dir.display());
    let _ = writeln!(w, "architecture:  {}", c.architecture.class_name());
    describe(w, &c);
    let _ = writeln!(w, "weights:       {}", c.weight_format.describe());

    let mut float_params = 0usize;
    let mut by_dtype: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (name, dtype, shape) in ck.list() {
        let numel: usize = shape.iter().product();
        let bytes = numel * dtype.bitsize() / 8;
        let e = by_dtype.entry(format!("{dtype:?}")).or_default();
        e.0 += 1;
        e.1 += bytes;
        let is_proj = PROJECTIONS
            .iter()
            .any(|p| name.ends_with(&format!("{p}.weight")));
        if !is_proj && !name.ends_with("weight_scale") {
            float_params += numel;
        }
    }
    params_and_bytes(w, &c, float_params, &by_dtype, ck.total_bytes());
    tokenizer_lines(w, Tokenizer::load(dir, &c), &c);
    Ok(out)
}

/// The report for a GGUF file.
fn inspect_gguf(path: &Path) -> Result<String> {
    let f = bitnet_formats::gguf::GgufFile::open(path)?;
    let c = crate::gguf_model::config_from_gguf(&f)?;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "model:         {} (GGUF v{}, alignment {})",
        path.display(),
        f.version,
        f.alignment
    );
    let _ = writeln!(
        w,
        "architecture:  {} ({})",
        f.get_str("general.architecture").unwrap_or_default(),
        f.get_str("general.name").unwrap_or("unnamed")
    );
    describe(w, &c);
    let mut by_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut float_params = 0usize;
    let mut total = 0usize;
    for t in &f.tensors {
        let e = by_type.entry(t.ggml_type.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.nbytes;
        total += t.nbytes;
        let is_proj = [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ]
        .iter()
        .any(|p| t.name.ends_with(&format!("{p}.weight")));
        if !is_proj && !t.name.ends_with(".scale") {
            float_params += t.numel() as usize;
        }
    }
    let ft = f
        .get_u64("general.file_type")
        .map_or("unknown".into(), |v| v.to_string());
    let _ = writeln!(w, "weights:       general.file_type {ft}");
    params_and_bytes(w, &c, float_params, &by_type, total);
    tokenizer_lines(w, Tokenizer::from_gguf(&f, &c), &c);
    Ok(out)
}

fn describe(w: &mut String, c: &ModelConfig) {
    let _ = writeln!(
        w,
        "shape:         {} layers, hidden {}, intermediate {}, heads {} (kv {}, head_dim {}, GQA {}:1), vocab {}",
        c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
        c.num_key_value_heads, c.head_dim, c.gqa_group(), c.vocab_size
    );
    let _ = writeln!(
        w,
        "activation:    {:?}; RMSNorm eps {}; RoPE theta {} (half-split)",
        c.hidden_act, c.rms_norm_eps, c.rope_theta
    );
    let _ = writeln!(w, "context:       {} tokens", c.max_position_embeddings);
    let head = if c.tie_word_embeddings {
        "tied to the embedding"
    } else {
        "separate lm_head"
    };
    let _ = writeln!(w, "output head:   {head}");
}

fn params_and_bytes(
    w: &mut String,
    c: &ModelConfig,
    float_params: usize,
    by_type: &BTreeMap<String, (usize, usize)>,
    total: usize,
) {
    // Logical ternary weights from the shapes (packed tensors hold ceil(out/4) byte rows).
    let (h, qd, kvd, inter) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let ternary_params = c.num_hidden_layers * (h * qd + 2 * h * kvd + qd * h + 3 * h * inter);
    let _ = writeln!(
        w,
        "parameters:    {} ternary + {} float = {}",
        human(ternary_params),
        human(float_params),
        human(ternary_params + float_params)
    );
    let files = by_type
        .iter()
        .map(|(d, (n, b))| format!("{d}: {n} tensors, {}", bytes(*b)))
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(w, "tensor data:   {} ({files})", bytes(total));
    let _ = writeln!(
        w,
        "in memory:     ternary {} at 2 bits/weight",
        bytes(ternary_params / 4)
    );
}

fn tokenizer_lines(w: &mut String, t: Result<Tokenizer>, c: &ModelConfig) {
    match t {
        Ok(t) => {
            let tok_name = |id: Option<u32>| id.map_or("none".to_string(), |i| i.to_string());
            let _ = writeln!(
                w,
                "tokenizer:     {} ({}), vocab {}, BOS {}, EOS {:?}",
                t.kind(),
                t.path().display(),
                t.vocab_size(),
                tok_name(t.bos_id()),
                t.eos_ids()
            );
            let tmpl = match ChatTemplate::for_model(c, &t) {
                Ok(ct) => match ct.source {
                    TemplateSource::TokenizerConfig => {
                        let src = t.chat_template().unwrap_or_default();
                        format!("from the model ({} chars)", src.len())
                    }
                    TemplateSource::BitNetTrained => {
                        "none in the model; using BitNet's trained format".to_string()
                    }
                },
                Err(e) => format!("unusable: {e}"),
            };
            let _ = writeln!(w, "chat template: {tmpl}");
        }
        Err(e) => {
            let _ = writeln!(w, "tokenizer:     unusable: {e}");
        }
    }
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
