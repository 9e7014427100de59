//! Writing [`Parts`] as a Hugging Face checkpoint in the 2B-4T packed convention
//! (`BitNetForCausalLM`, uint8 weights four rows per byte row, `weight_scale` multiplied,
//! `linear_class: autobitlinear`, `quantization_mode: offline`).

use super::{projection_shape, Parts, PROJECTIONS};
use crate::config::{Activation, ModelConfig};
use crate::error::{Error, Result};
use half::bf16;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use std::path::Path;

/// Float tensor bytes: bf16 when every value is exactly representable, else f32.
fn float_tensor(v: &[f32]) -> (Dtype, Vec<u8>) {
    if v.iter()
        .all(|&x| bf16::from_f32(x).to_f32() == x || x.is_nan())
    {
        (
            Dtype::BF16,
            v.iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
        )
    } else {
        (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// Packs row-major codes `[out, in]` into `[ceil(out/4), in]`: row `i·R + r` at bits `2i`.
pub fn pack_hf(codes: &[u8], out: usize, inp: usize) -> Vec<u8> {
    let r_rows = out.div_ceil(4);
    let mut packed = vec![0u8; r_rows * inp];
    for o in 0..out {
        let (i, r) = (o / r_rows, o % r_rows);
        for c in 0..inp {
            packed[r * inp + c] |= (codes[o * inp + c] & 3) << (2 * i);
        }
    }
    packed
}

/// Writes `dir/config.json`, `dir/model.safetensors` and the source's tokenizer files.
pub fn write_hf(parts: &Parts, dir: &Path) -> Result<()> {
    let io = |e| Error::io(dir, e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let c = &parts.config;
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let (h, vocab) = (c.hidden_size, c.vocab_size);
    fn float(
        t: &mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
        name: String,
        v: &[f32],
        shape: Vec<usize>,
    ) {
        let (dt, b) = float_tensor(v);
        t.push((name, dt, shape, b));
    }
    float(
        &mut tensors,
        "model.embed_tokens.weight".into(),
        &parts.embed,
        vec![vocab, h],
    );
    if let Some(head) = &parts.lm_head {
        float(&mut tensors, "lm_head.weight".into(), head, vec![vocab, h]);
    }
    float(
        &mut tensors,
        "model.norm.weight".into(),
        &parts.output_norm,
        vec![h],
    );
    for (i, l) in parts.layers.iter().enumerate() {
        let p = format!("model.layers.{i}.");
        float(
            &mut tensors,
            format!("{p}input_layernorm.weight"),
            &l.attn_norm,
            vec![h],
        );
        float(
            &mut tensors,
            format!("{p}self_attn.attn_sub_norm.weight"),
            &l.attn_sub_norm,
            vec![c.q_dim()],
        );
        float(
            &mut tensors,
            format!("{p}post_attention_layernorm.weight"),
            &l.ffn_norm,
            vec![h],
        );
        float(
            &mut tensors,
            format!("{p}mlp.ffn_sub_norm.weight"),
            &l.ffn_sub_norm,
            vec![c.intermediate_size],
        );
        for (j, (hf, _)) in PROJECTIONS.iter().enumerate() {
            let (rows, cols) = projection_shape(c, j);
            let t = &l.proj[j];
            tensors.push((
                format!("{p}{hf}.weight"),
                Dtype::U8,
                vec![rows.div_ceil(4), cols],
                pack_hf(&t.codes, rows, cols),
            ));
            let (dt, b) = float_tensor(&[t.scale]);
            tensors.push((format!("{p}{hf}.weight_scale"), dt, vec![1], b));
        }
    }
    let views = tensors
        .iter()
        .map(|(n, dt, shape, b)| {
            TensorView::new(*dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Safetensors {
                    path: dir.join("model.safetensors"),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &dir.join("model.safetensors")).map_err(
        |e| Error::Safetensors {
            path: dir.join("model.safetensors"),
            message: e.to_string(),
        },
    )?;
    let cfg = config_json(c, "offline");
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Json {
        path: dir.join("config.json"),
        source: e,
    })?;
    std::fs::write(dir.join("config.json"), text).map_err(io)?;
    if parts.tokenizer.hf_files.is_empty() {
        super::tokenizer_meta::write_hf_tokenizer_from_gguf(&parts.tokenizer.gguf, dir)?;
    }
    for f in &parts.tokenizer.hf_files {
        if let Some(name) = f.file_name() {
            let dst = dir.join(name);
            if dst.exists() {
                let _ = std::fs::remove_file(&dst);
            }
            std::fs::copy(f, &dst).map_err(|e| Error::io(f, e))?;
        }
    }
    Ok(())
}

/// `config.json` of a `BitNetForCausalLM` checkpoint with this shape, `linear_class: autobitlinear`
/// and the given `quantization_mode` (`offline`: packed weights; `online`: float master weights).
pub fn config_json(c: &ModelConfig, quantization_mode: &str) -> serde_json::Value {
    json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": match c.hidden_act { Activation::Relu2 => "relu2", Activation::Silu => "silu" },
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_ids,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": quantization_mode
        }
    })
}
