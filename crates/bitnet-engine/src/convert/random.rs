//! Random ternary models of real shapes (`bitnet create-model`), so benchmarks need no
//! download. Weights are uniform ternary codes with a per-tensor scale, norms near 1, a normal
//! embedding; the vocabulary is GPT-2 byte-level (256 byte tokens, BOS/EOS, then fillers) so
//! every engine can load the file.

use super::{projection_shape, LayerParts, Parts, TokenizerSource, PROJECTIONS};
use crate::config::{Activation, Architecture, ModelConfig, WeightFormat};
use crate::error::{Error, Result};
use crate::model::TernaryCodes;
use bitnet_formats::gguf::{MetaValue, MetaValueType};
use rayon::prelude::*;

/// Named shapes.
pub const SHAPES: &str = "2b4t (bitnet-b1.58-2B-4T: 30 layers, hidden 2560, FFN 6912, 20/5 heads, vocab 128256), \
small (6 layers, hidden 512, FFN 1536, 8/8 heads, vocab 32000), tiny (2 layers, hidden 256, FFN 512, 4/4 heads, vocab 1000)";

/// The configuration of a named shape (tied embedding) with the given activation.
pub fn shape_config(name: &str, act: Activation) -> Result<ModelConfig> {
    let (layers, hidden, inter, heads, kv, vocab, ctx) = match name {
        "2b4t" => (30, 2560, 6912, 20, 5, 128256, 4096),
        "small" => (6, 512, 1536, 8, 8, 32000, 2048),
        "tiny" => (2, 256, 512, 4, 4, 1000, 256),
        other => {
            return Err(Error::InvalidField {
                path: "--shape".into(),
                field: "shape".into(),
                message: format!("unknown shape {other:?}; known: {SHAPES}"),
            })
        }
    };
    Ok(ModelConfig {
        architecture: Architecture::BitNet,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hidden / heads,
        hidden_act: act,
        rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        max_position_embeddings: ctx,
        tie_word_embeddings: true,
        weight_format: WeightFormat::Gguf,
        bos_token_id: Some(256),
        eos_token_ids: vec![257],
    })
}

/// splitmix64: a fast deterministic stream per tensor.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(seed: u64, i: u64) -> f32 {
    (mix(seed ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 40) as f32 / (1u64 << 24) as f32
}

/// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100….
fn byte_token(b: u8) -> String {
    let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable {
        char::from(b).to_string()
    } else {
        let rank = (0..=b)
            .filter(|&x| !((b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE))
            .count();
        char::from_u32(255 + rank as u32)
            .map(String::from)
            .unwrap_or_default()
    }
}

/// A random model of shape `name`. SiLU models are written as llama.cpp's `bitnet` arch (which
/// llama.cpp loads), relu² ones as `bitnet-b1.58` (bitnet.cpp); the speed is the same.
pub fn random_parts(name: &str, act: Activation, seed: u64) -> Result<Parts> {
    let config = shape_config(name, act)?;
    let c = &config;
    let h = c.hidden_size;
    let layers = (0..c.num_hidden_layers)
        .into_par_iter()
        .map(|l| {
            let s = seed ^ ((l as u64 + 1) << 32);
            let norm = |n: usize, k: u64| {
                (0..n)
                    .map(|i| 0.5 + uniform(s ^ k, i as u64))
                    .collect::<Vec<f32>>()
            };
            let proj = (0..PROJECTIONS.len())
                .map(|j| {
                    let (r, cols) = projection_shape(c, j);
                    let ts = mix(s ^ (j as u64 + 100));
                    let codes = (0..r * cols)
                        .map(|i| (mix(ts ^ i as u64) % 3) as u8)
                        .collect();
                    TernaryCodes {
                        codes,
                        scale: 0.02 + 0.01 * uniform(ts, 7),
                    }
                })
                .collect();
            LayerParts {
                attn_norm: norm(h, 1),
                attn_sub_norm: norm(c.q_dim(), 2),
                ffn_norm: norm(h, 3),
                ffn_sub_norm: norm(c.intermediate_size, 4),
                proj,
            }
        })
        .collect();
    // Embedding ~ uniform(-1.7, 1.7) (unit variance), rows in parallel.
    let mut embed = vec![0f32; c.vocab_size * h];
    embed.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
        for (i, v) in row.iter_mut().enumerate() {
            *v = (uniform(seed ^ 0xE4BE, (r * h + i) as u64) - 0.5) * 3.46;
        }
    });
    let mut tokens: Vec<String> = (0..=255u8).map(byte_token).collect();
    tokens.push("<|begin_of_text|>".into());
    tokens.push("<|end_of_text|>".into());
    let mut types = vec![1i32; 256];
    types.extend([3, 3]);
    while tokens.len() < c.vocab_size {
        types.push(5);
        tokens.push(format!("[PAD{}]", tokens.len()));
    }
    let strings = |v: Vec<String>| {
        MetaValue::Array(
            MetaValueType::String,
            v.into_iter().map(MetaValue::String).collect(),
        )
    };
    let gguf = vec![
        (
            "tokenizer.ggml.model".to_string(),
            MetaValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            MetaValue::String("llama-bpe".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), strings(tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            MetaValue::Array(
                MetaValueType::I32,
                types.into_iter().map(MetaValue::I32).collect(),
            ),
        ),
        ("tokenizer.ggml.merges".to_string(), strings(Vec::new())),
        (
            "tokenizer.ggml.bos_token_id".to_string(),
            MetaValue::U32(256),
        ),
        (
            "tokenizer.ggml.eos_token_id".to_string(),
            MetaValue::U32(257),
        ),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            MetaValue::Bool(true),
        ),
    ];
    Ok(Parts {
        output_norm: (0..h)
            .map(|i| 0.5 + uniform(seed ^ 0x404, i as u64))
            .collect(),
        embed,
        lm_head: None,
        layers,
        tokenizer: TokenizerSource {
            gguf,
            hf_files: Vec::new(),
        },
        source: format!("random-{name}").into(),
        config,
    })
}
