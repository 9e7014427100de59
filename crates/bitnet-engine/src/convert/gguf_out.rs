//! Writing [`Parts`] as GGUF: llama.cpp's `bitnet` arch for SiLU models, microsoft/BitNet's
//! `bitnet-b1.58` for relu² models, with the projections in I2_S, TQ1_0, TQ2_0 or F16 and the
//! embedding in F16, Q8_0 or Q6_K; metadata as llama.cpp's converter writes it.

use super::{projection_shape, Parts, PROJECTIONS};
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::gguf_model::Loader;
use crate::model::{TernaryCodes, NEG_ZERO};
use bitnet_formats::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};
use bitnet_kernels::formats::{quantize_i2_s, BlockQ6K, BlockQ8_0, BlockTQ1_0, BlockTQ2_0, QK_K};
use bitnet_kernels::{QuantBlock, TernaryBlock};
use half::f16;
use std::path::Path;

/// Output types.
#[derive(Clone, Copy, Debug)]
pub struct GgufOptions {
    /// Projection type: `I2S`, `TQ1_0`, `TQ2_0` or `F16`.
    pub ternary: GgmlType,
    /// Embedding / output head type: `F16`, `Q8_0` or `Q6K`.
    pub embedding: GgmlType,
}

/// Projection types a GGUF can be written in.
pub const TERNARY_TYPES: [GgmlType; 4] = [
    GgmlType::I2S,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::F16,
];
/// Embedding / output-head types a GGUF can be written in.
pub const EMBEDDING_TYPES: [GgmlType; 3] = [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q6K];

/// What a conversion wrote.
#[derive(Clone, Debug, Default)]
pub struct ConvertReport {
    /// Tensors written, by type name.
    pub tensors: Vec<(String, String)>,
    /// Projections written as F16 because their rows are not whole blocks of the asked type.
    pub fallbacks: Vec<String>,
    /// Ternary tensors re-read from the output and found equal to the input.
    pub verified: usize,
}

/// `general.file_type` (llama.cpp's `llama_ftype`; I2_S is bitnet.cpp's 40).
fn file_type(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::TQ1_0 => 36,
        GgmlType::TQ2_0 => 37,
        GgmlType::I2S => 40,
        _ => 1,
    }
}

/// The magnitude a float export stores: llama.cpp writes ternary weights as f16.
fn f16_scale(s: f32) -> f16 {
    f16::from_f32(s)
}

fn ternary_bytes(t: &TernaryCodes, rows: usize, cols: usize, ty: GgmlType) -> Vec<u8> {
    match ty {
        GgmlType::F16 => {
            let s = f16_scale(t.scale);
            let (pos, neg) = (s.to_bits(), (-s).to_bits());
            let mut out = Vec::with_capacity(rows * cols * 2);
            for &c in &t.codes {
                let bits = match c & 3 {
                    0 => neg,
                    2 => pos,
                    _ if c & NEG_ZERO != 0 => 0x8000,
                    _ => 0,
                };
                out.extend_from_slice(&bits.to_le_bytes());
            }
            out
        }
        GgmlType::TQ2_0 => tq_blocks::<BlockTQ2_0>(t),
        GgmlType::TQ1_0 => tq_blocks::<BlockTQ1_0>(t),
        GgmlType::I2S => {
            let vals: Vec<f32> = t
                .codes
                .iter()
                .map(|&c| ((c & 3) as f32 - 1.0) * t.scale)
                .collect();
            quantize_i2_s(&vals)
        }
        other => unreachable!("ternary output type {other:?} is validated by convert"),
    }
}

/// Blocks whose non-zero values are `±f16(s)`: `d = f16(s)`, or 0 for an all-zero block (as
/// llama-quantize gives from the F16 file).
fn tq_blocks<B: TernaryBlock>(t: &TernaryCodes) -> Vec<u8> {
    let d = f16_scale(t.scale).to_f32();
    let mut codes = [0u8; QK_K];
    let mut out = Vec::with_capacity(t.codes.len() / QK_K * std::mem::size_of::<B>());
    for chunk in t.codes.chunks_exact(QK_K) {
        for (o, &c) in codes.iter_mut().zip(chunk) {
            *o = c & 3;
        }
        let bd = if codes.iter().any(|&c| c != 1) {
            d
        } else {
            0.0
        };
        out.extend_from_slice(bytemuck::bytes_of(&B::from_codes(&codes, bd)));
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Embedding bytes. Like llama-quantize run on an F16 file, the values pass through f16 first.
fn embedding_bytes(v: &[f32], ty: GgmlType) -> Vec<u8> {
    let via_f16: Vec<f32> = v.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    match ty {
        GgmlType::F16 => v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => blocks::<BlockQ8_0>(&via_f16),
        GgmlType::Q6K => blocks::<BlockQ6K>(&via_f16),
        other => unreachable!("embedding type {other:?} is validated by convert"),
    }
}

/// Quantizes in parallel (rows of 64 blocks per task); the bytes do not depend on threads.
fn blocks<B: QuantBlock>(v: &[f32]) -> Vec<u8> {
    use rayon::prelude::*;
    let per = 64 * B::BLOCK;
    let parts: Vec<Vec<u8>> = v
        .par_chunks(per)
        .map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len() / B::BLOCK * std::mem::size_of::<B>());
            for c in chunk.chunks_exact(B::BLOCK) {
                out.extend_from_slice(bytemuck::bytes_of(&B::from_float(c)));
            }
            out
        })
        .collect();
    parts.concat()
}

/// Writes `parts` to `path`; `progress(done, total, tensor)` is called per tensor. Ends by
/// re-reading every ternary tensor of the output and checking it equals the input exactly.
pub fn write_gguf(
    parts: &Parts,
    opts: GgufOptions,
    path: &Path,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<ConvertReport> {
    let c = &parts.config;
    let bad = |m: String| Error::InvalidField {
        path: path.to_path_buf(),
        field: "--type".into(),
        message: m,
    };
    if !matches!(
        opts.ternary,
        GgmlType::I2S | GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::F16
    ) {
        return Err(bad(format!(
            "{} is not a ternary output type (i2_s, tq1_0, tq2_0, f16)",
            opts.ternary.name()
        )));
    }
    if !matches!(
        opts.embedding,
        GgmlType::F16 | GgmlType::Q8_0 | GgmlType::Q6K
    ) {
        return Err(bad(format!(
            "{} is not an embedding type (f16, q8_0, q6_k)",
            opts.embedding.name()
        )));
    }
    let arch = match c.hidden_act {
        Activation::Silu => "bitnet",
        Activation::Relu2 => "bitnet-b1.58",
    };
    let mut w = GgufWriter::new();
    let k = |s: &str| format!("{arch}.{s}");
    w.set("general.architecture", MetaValue::String(arch.into()));
    w.set("general.type", MetaValue::String("model".into()));
    let name = parts
        .source
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    w.set("general.name", MetaValue::String(name));
    w.set(&k("vocab_size"), MetaValue::U32(c.vocab_size as u32));
    w.set(
        &k("block_count"),
        MetaValue::U32(c.num_hidden_layers as u32),
    );
    w.set(
        &k("context_length"),
        MetaValue::U32(c.max_position_embeddings as u32),
    );
    w.set(&k("embedding_length"), MetaValue::U32(c.hidden_size as u32));
    w.set(
        &k("feed_forward_length"),
        MetaValue::U32(c.intermediate_size as u32),
    );
    w.set(
        &k("attention.head_count"),
        MetaValue::U32(c.num_attention_heads as u32),
    );
    w.set(
        &k("attention.head_count_kv"),
        MetaValue::U32(c.num_key_value_heads as u32),
    );
    w.set(&k("rope.freq_base"), MetaValue::F32(c.rope_theta));
    w.set(
        &k("rope.dimension_count"),
        MetaValue::U32(c.head_dim as u32),
    );
    w.set(
        &k("attention.layer_norm_rms_epsilon"),
        MetaValue::F32(c.rms_norm_eps),
    );
    w.set(
        &k("attention.key_length"),
        MetaValue::U32(c.head_dim as u32),
    );
    w.set(
        &k("attention.value_length"),
        MetaValue::U32(c.head_dim as u32),
    );
    w.set("general.file_type", MetaValue::U32(file_type(opts.ternary)));
    w.set("general.quantization_version", MetaValue::U32(2));
    for (key, v) in &parts.tokenizer.gguf {
        w.set(key, v.clone());
    }

    let total = 3 + parts.lm_head.is_some() as usize + parts.layers.len() * 11;
    let mut done = 0;
    let mut report = ConvertReport::default();
    let (h, vocab) = (c.hidden_size as u64, c.vocab_size as u64);
    let emb_type = if (h as usize).is_multiple_of(opts.embedding.block_size()) {
        opts.embedding
    } else {
        GgmlType::F16
    };
    let mut add =
        |w: &mut GgufWriter, name: &str, t: GgmlType, dims: &[u64], data: Vec<u8>| -> Result<()> {
            w.add_tensor(name, t, dims, data)?;
            report
                .tensors
                .push((name.to_string(), t.name().to_string()));
            done += 1;
            progress(done, total, name);
            Ok(())
        };
    add(
        &mut w,
        "token_embd.weight",
        emb_type,
        &[h, vocab],
        embedding_bytes(&parts.embed, emb_type),
    )?;
    if let Some(head) = &parts.lm_head {
        add(
            &mut w,
            "output.weight",
            emb_type,
            &[h, vocab],
            embedding_bytes(head, emb_type),
        )?;
    }
    add(
        &mut w,
        "output_norm.weight",
        GgmlType::F32,
        &[h],
        f32_bytes(&parts.output_norm),
    )?;
    let mut fallbacks = Vec::new();
    for (i, l) in parts.layers.iter().enumerate() {
        let p = format!("blk.{i}.");
        for (name, v) in [
            ("attn_norm", &l.attn_norm),
            ("attn_sub_norm", &l.attn_sub_norm),
            ("ffn_norm", &l.ffn_norm),
            ("ffn_sub_norm", &l.ffn_sub_norm),
        ] {
            add(
                &mut w,
                &format!("{p}{name}.weight"),
                GgmlType::F32,
                &[v.len() as u64],
                f32_bytes(v),
            )?;
        }
        for (j, (_, g)) in PROJECTIONS.iter().enumerate() {
            let (rows, cols) = projection_shape(c, j);
            let fits = match opts.ternary {
                GgmlType::I2S => (rows * cols) % 128 == 0,
                t => cols % t.block_size() == 0,
            };
            let ty = if fits { opts.ternary } else { GgmlType::F16 };
            let tname = format!("{p}{g}.weight");
            if !fits {
                fallbacks.push(tname.clone());
            }
            let bytes = ternary_bytes(&l.proj[j], rows, cols, ty);
            add(&mut w, &tname, ty, &[cols as u64, rows as u64], bytes)?;
        }
    }
    w.write(path)?;
    report.fallbacks = fallbacks;
    report.verified = verify(parts, path, opts)?;
    Ok(report)
}

/// Re-reads the written file: every projection's codes must equal the input's, and its scale
/// the value the format stores (f16 for F16/TQ, exact f32 for I2_S).
fn verify(parts: &Parts, path: &Path, opts: GgufOptions) -> Result<usize> {
    let f = GgufFile::open(path)?;
    let ld = Loader { f: &f };
    let c = &parts.config;
    let mut n = 0;
    for (i, l) in parts.layers.iter().enumerate() {
        for (j, (_, g)) in PROJECTIONS.iter().enumerate() {
            let (rows, cols) = projection_shape(c, j);
            let name = format!("blk.{i}.{g}");
            let back = ld.ternary_codes(&name, rows, cols)?;
            let src = &l.proj[j];
            let same_codes = back
                .codes
                .iter()
                .zip(&src.codes)
                .all(|(a, b)| a & 3 == b & 3);
            let stored_i2s =
                f.tensor(&format!("{name}.weight")).map(|t| t.ggml_type) == Some(GgmlType::I2S);
            let want = if stored_i2s {
                src.scale
            } else {
                f16_scale(src.scale).to_f32()
            };
            let all_zero = src.codes.iter().all(|&x| x & 3 == 1);
            if !same_codes || (!all_zero && back.scale != want) {
                return Err(Error::InvalidField {
                    path: path.to_path_buf(),
                    field: format!("tensor {name}.weight"),
                    message: format!(
                        "verification failed: the written tensor differs from the input (codes equal: {same_codes}, scale {} vs {want}); opts {:?}",
                        back.scale, opts
                    ),
                });
            }
            n += 1;
        }
    }
    Ok(n)
}
