//! Models from GGUF files: llama.cpp's `bitnet` (SiLU) and Microsoft's `bitnet-b1.58` /
//! `bitnet-25` (relu²) architectures, with TQ1_0 / TQ2_0 / I2_S or float-stored ternary
//! projections and F32/F16/BF16/Q8_0/Q6_K/Q4_K embeddings.

use crate::config::{Activation, Architecture, ModelConfig, WeightFormat};
use crate::error::{Error, Result};
use crate::model::{Layer, Model, TernaryCodes, NEG_ZERO};
use bitnet_formats::gguf::{GgmlType, GgufFile, TensorInfo};
use bitnet_kernels::formats::{
    dequantize_i2_s, BlockQ4K, BlockQ6K, BlockQ8_0, BlockTQ1_0, BlockTQ2_0, QK_K,
};
use bitnet_kernels::{BlockI2, Buf, DenseData, DenseMatrix, TernaryBlock, TernaryMatrix};
use half::{bf16, f16};
use rayon::prelude::*;

/// Architectures read from `general.architecture`.
pub const GGUF_ARCHS: &str =
    "bitnet (SiLU, llama.cpp), bitnet-b1.58 and bitnet-25 (relu², microsoft/BitNet)";

fn missing(f: &GgufFile, key: &str) -> Error {
    Error::MissingField {
        path: f.path().to_path_buf(),
        field: key.to_string(),
    }
}

/// Hyper-parameters from GGUF metadata.
pub fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let arch = f
        .get_str("general.architecture")
        .ok_or_else(|| missing(f, "general.architecture"))?;
    let hidden_act = match arch {
        "bitnet" => Activation::Silu,
        "bitnet-b1.58" | "bitnet-25" => Activation::Relu2,
        other => {
            return Err(Error::UnsupportedArchitecture {
                path: f.path().to_path_buf(),
                found: format!("general.architecture {other:?}"),
                supported: GGUF_ARCHS,
            })
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let req = |k: &str| {
        f.get_u64(&key(k))
            .map(|v| v as usize)
            .ok_or_else(|| missing(f, &key(k)))
    };
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv_heads = f
        .get_u64(&key("attention.head_count_kv"))
        .map_or(heads, |v| v as usize);
    let invalid = |field: String, message: String| Error::InvalidField {
        path: f.path().to_path_buf(),
        field,
        message,
    };
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(invalid(
            key("attention.head_count_kv"),
            format!("{kv_heads} must divide head_count {heads}"),
        ));
    }
    let head_dim = match f.get_u64(&key("attention.key_length")) {
        Some(d) => d as usize,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(invalid(
                key("embedding_length"),
                format!("{hidden} not divisible by {heads} heads"),
            ))
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(invalid(
            key("attention.key_length"),
            format!("{head_dim} must be even"),
        ));
    }
    if let Some(factor) = f.get_f64(&key("rope.scaling.factor")) {
        if factor != 1.0 && f.get_str(&key("rope.scaling.type")) != Some("none") {
            return Err(invalid(
                key("rope.scaling.factor"),
                format!("RoPE scaling {factor} is not supported"),
            ));
        }
    }
    let embd = f
        .tensor("token_embd.weight")
        .ok_or_else(|| Error::MissingTensor {
            name: "token_embd.weight".into(),
            path: f.path().to_path_buf(),
        })?;
    let vocab = f
        .get_u64(&key("vocab_size"))
        .map(|v| v as usize)
        .unwrap_or_else(|| embd.dims.get(1).copied().unwrap_or(0) as usize);
    let eos: Vec<u32> = f
        .get_u64("tokenizer.ggml.eos_token_id")
        .map(|v| v as u32)
        .into_iter()
        .collect();
    let cfg = ModelConfig {
        architecture: Architecture::BitNet,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: req("feed_forward_length")?,
        num_hidden_layers: req("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        hidden_act,
        rms_norm_eps: f
            .get_f64(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5) as f32,
        rope_theta: f
            .get_f64(&key("rope.freq_base"))
            .unwrap_or(if arch == "bitnet" { 10000.0 } else { 500000.0 })
            as f32,
        max_position_embeddings: req("context_length")?,
        tie_word_embeddings: f.tensor("output.weight").is_none(),
        weight_format: WeightFormat::Gguf,
        bos_token_id: f.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
        eos_token_ids: eos,
    };
    Ok(cfg)
}

/// Reads model tensors out of a GGUF file.
pub(crate) struct Loader<'a> {
    pub f: &'a GgufFile,
}

impl Loader<'_> {
    pub(crate) fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.f.tensor(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            path: self.f.path().to_path_buf(),
        })
    }

    fn shape(&self, t: &TensorInfo, expected: &[u64]) -> Result<()> {
        if t.dims != expected {
            return Err(Error::TensorShape {
                name: t.name.clone(),
                path: self.f.path().to_path_buf(),
                expected: expected.iter().map(|&d| d as usize).collect(),
                found: t.dims.iter().map(|&d| d as usize).collect(),
            });
        }
        Ok(())
    }

    fn dtype_err(&self, t: &TensorInfo, expected: &str) -> Error {
        Error::TensorDtype {
            name: t.name.clone(),
            path: self.f.path().to_path_buf(),
            expected: expected.into(),
            found: t.ggml_type.name().into(),
        }
    }

    pub(crate) fn floats(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let d = self.f.data(t);
        Ok(match t.ggml_type {
            GgmlType::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            GgmlType::F16 => d
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            GgmlType::BF16 => d
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => return Err(self.dtype_err(t, "F32, F16 or BF16")),
        })
    }

    pub(crate) fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        self.shape(t, &[n as u64])?;
        self.floats(t)
    }

    pub(crate) fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<DenseMatrix> {
        let t = self.tensor(name)?;
        self.shape(t, &[cols as u64, rows as u64])?;
        let d = self.f.data(t);
        let data = match t.ggml_type {
            GgmlType::F32 => DenseData::F32(self.buf(t, d)),
            GgmlType::F16 => DenseData::F16(self.buf(t, d)),
            GgmlType::BF16 => DenseData::Bf16(self.buf(t, d)),
            GgmlType::Q8_0 => DenseData::Q8_0(self.buf::<BlockQ8_0>(t, d)),
            GgmlType::Q6K => DenseData::Q6K(self.buf::<BlockQ6K>(t, d)),
            GgmlType::Q4K => DenseData::Q4K(self.buf::<BlockQ4K>(t, d)),
            _ => return Err(self.dtype_err(t, "F32, F16, BF16, Q8_0, Q6_K or Q4_K")),
        };
        let m = DenseMatrix::new(rows, cols, data);
        let shared = m.is_shared();
        let m = m.into_kernel_layout();
        if shared && !m.is_shared() {
            // Reordered for the kernels into memory of its own: the file's copy need not stay
            // resident.
            self.f.release(t);
        }
        Ok(m)
    }

    /// The tensor's values used in place from the memory map (little-endian hosts, aligned
    /// data), else copied.
    fn buf<T: bytemuck::Pod>(&self, t: &TensorInfo, d: &[u8]) -> Buf<T> {
        let n = d.len() / std::mem::size_of::<T>();
        let shared = if cfg!(target_endian = "little") {
            Buf::shared(self.f.shared(), self.f.data_offset(t), n)
        } else {
            None
        };
        shared.unwrap_or_else(|| bytemuck::pod_collect_to_vec::<u8, T>(d).into())
    }

    /// A projection stored as `[in, out]` GGML dims, as a ternary matrix with one scale. I2_S
    /// tensors with whole 128-value rows are our block layout: they are used in place (zero-copy
    /// from the memory map) after a check that no 2-bit code is 3.
    fn ternary(&self, name: &str, out: usize, inp: usize) -> Result<TernaryMatrix> {
        let t = self.tensor(&format!("{name}.weight"))?;
        if t.ggml_type == GgmlType::I2S
            && inp.is_multiple_of(128)
            && t.dims == [inp as u64, out as u64]
        {
            let data = self.f.data(t);
            let n = out * inp;
            if data[..n / 4].iter().any(|&b| b & (b >> 1) & 0x55 != 0) {
                return Err(self.bad(t, "I2_S code 3 (codes are 0, 1, 2)"));
            }
            let s = &data[n / 4..n / 4 + 4];
            let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]) * self.extra_scale(name)?;
            if let Some(m) =
                TernaryMatrix::from_shared(out, inp, scale, self.f.shared(), self.f.data_offset(t))
            {
                return Ok(m);
            }
        }
        let m = if transcodable(t, inp) {
            self.shape(t, &[inp as u64, out as u64])?;
            let mut blocks = vec![BlockI2::ZERO; out * inp / 128];
            let scale = self.transcode(t, &mut blocks)?;
            TernaryMatrix::from_blocks(out, inp, blocks, scale * self.extra_scale(name)?)
        } else {
            let c = self.ternary_codes(name, out, inp)?;
            TernaryMatrix::from_codes(out, inp, &c.codes, c.scale)
        };
        // Repacked: the file's copy need not stay resident (peak RSS ≈ file size, not twice).
        self.f.release(t);
        Ok(m)
    }

    /// A projection's codes and magnitude (times the optional `name.scale` tensor).
    pub(crate) fn ternary_codes(&self, name: &str, out: usize, inp: usize) -> Result<TernaryCodes> {
        let t = self.tensor(&format!("{name}.weight"))?;
        self.shape(t, &[inp as u64, out as u64])?;
        let data = self.f.data(t);
        let n = out * inp;
        let mut codes = vec![1u8; n];
        let scale = match t.ggml_type {
            GgmlType::I2S => {
                let s = dequantize_i2_s(data, n, &mut codes);
                if codes.contains(&3) {
                    return Err(self.bad(t, "I2_S code 3 (codes are 0, 1, 2)"));
                }
                s
            }
            GgmlType::TQ2_0 => self.block_codes::<BlockTQ2_0>(t, data, &mut codes)?,
            GgmlType::TQ1_0 => self.block_codes::<BlockTQ1_0>(t, data, &mut codes)?,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let vals = self.floats(t)?;
                let s = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (c, &v) in codes.iter_mut().zip(&vals) {
                    *c = if v == 0.0 {
                        if v.is_sign_negative() {
                            1 | NEG_ZERO
                        } else {
                            1
                        }
                    } else if v == s {
                        2
                    } else if v == -s {
                        0
                    } else {
                        return Err(self.bad(t, &format!(
                            "value {v} is not one of {{-s, 0, +s}} with s = {s}: not a ternary tensor"
                        )));
                    };
                }
                s
            }
            _ => {
                return Err(
                    self.dtype_err(t, "TQ1_0, TQ2_0, I2_S, or F32/F16/BF16 holding {-s, 0, +s}")
                )
            }
        };
        let extra = self.extra_scale(name)?;
        Ok(TernaryCodes {
            codes,
            scale: scale * extra,
        })
    }

    /// The optional per-tensor `name.scale` multiplier (llama.cpp's bitnet arch), else 1.
    fn extra_scale(&self, name: &str) -> Result<f32> {
        match self.f.tensor(&format!("{name}.scale")) {
            Some(st) => {
                let v = self.floats(st)?;
                if v.len() != 1 {
                    return Err(self.bad(st, "a per-tensor scale must hold one value"));
                }
                Ok(v[0])
            }
            None => Ok(1.0),
        }
    }

    /// A TQ1_0 / TQ2_0 tensor ([`transcodable`]) transcoded into `dst` (exactly its blocks);
    /// returns its per-tensor scale.
    fn transcode(&self, t: &TensorInfo, dst: &mut [BlockI2]) -> Result<f32> {
        if t.ggml_type == GgmlType::TQ2_0 {
            self.transcode_into::<BlockTQ2_0>(t, dst)
        } else {
            self.transcode_into::<BlockTQ1_0>(t, dst)
        }
    }

    /// A TQ1_0 / TQ2_0 tensor whose rows are whole blocks, transcoded block by block into the
    /// engine's layout ([`TernaryBlock::push_i2`]) in `dst`, which must hold exactly its blocks;
    /// returns its per-tensor scale. The check of [`Self::block_codes`] (every block with a
    /// non-zero weight has the same scale), plus a finite scale and no code 3, which is not a
    /// ternary value. At load this replaces a byte per weight and two passes over it (2B-4T:
    /// 2.1 G weights).
    fn transcode_into<B: TernaryBlock + bytemuck::Pod>(
        &self,
        t: &TensorInfo,
        dst: &mut [BlockI2],
    ) -> Result<f32> {
        let size = std::mem::size_of::<B>();
        let data = self.f.data(t);
        let per = B::BLOCK / 128;
        if data.len() / size * per != dst.len() {
            return Err(self.bad(
                t,
                &format!("{} blocks, expected {}", data.len() / size * per, dst.len()),
            ));
        }
        let mut scale: Option<f32> = None;
        let mut one = Vec::with_capacity(per);
        for (i, (chunk, out)) in data
            .chunks_exact(size)
            .zip(dst.chunks_exact_mut(per))
            .enumerate()
        {
            let b: B = bytemuck::pod_read_unaligned(chunk);
            one.clear();
            b.push_i2(&mut one);
            out.copy_from_slice(&one);
            if one.iter().any(BlockI2::has_code3) {
                return Err(self.bad(
                    t,
                    &format!(
                        "block {i}: {} code 3 (codes are 0, 1, 2: not a ternary tensor)",
                        B::NAME
                    ),
                ));
            }
            if one.iter().any(|x| *x != BlockI2::ZERO) {
                let d = b.d();
                if scale.is_none() && !d.is_finite() {
                    return Err(self.bad(
                        t,
                        &format!("block {i}: {} scale {d} is not finite", B::NAME),
                    ));
                }
                self.same_scale(t, &mut scale, d)?;
            }
        }
        Ok(scale.unwrap_or(0.0))
    }

    /// The model's ternary projections (`(name, out, in)`, transcoded in parallel), when every
    /// one is TQ2_0 or TQ1_0 with whole 256-value rows: into one anonymous mapping whose start is
    /// 2 MiB-aligned, with transparent huge pages advised before it is written, so that decode's
    /// weight stream takes one TLB entry per 2 MiB (2B-4T decode, 1 thread, on a Xeon host:
    /// ~15.1 tokens/s on huge pages, ~12.6–12.9 on 4 KiB pages), and outside the allocator's heap,
    /// whose freed blocks would otherwise sit beside them. Other formats: each projection on its
    /// own ([`Loader::ternary`]).
    fn ternary_all(&self, specs: &[(String, usize, usize)]) -> Result<Vec<TernaryMatrix>> {
        let fast = specs.iter().all(|(n, _, inp)| {
            self.f
                .tensor(&format!("{n}.weight"))
                .is_some_and(|t| transcodable(t, *inp))
        });
        if !fast {
            return specs
                .par_iter()
                .map(|(n, out, inp)| self.ternary(n, *out, *inp))
                .collect();
        }
        const HUGE: usize = 2 << 20;
        let size = std::mem::size_of::<BlockI2>();
        let bytes: Vec<usize> = specs.iter().map(|(_, o, i)| o * i / 128 * size).collect();
        let total: usize = bytes.iter().sum();
        let io = |e| Error::Io {
            path: self.f.path().to_path_buf(),
            source: e,
        };
        let mut map = memmap2::MmapOptions::new()
            .len(total + HUGE)
            .map_anon()
            .map_err(io)?;
        let pad = (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize;
        // Advice only: without THP the pages are ordinary ones.
        #[cfg(target_os = "linux")]
        let _ = map.advise_range(memmap2::Advice::HugePage, pad, total);
        let mut regions = Vec::with_capacity(specs.len());
        let mut rest: &mut [BlockI2] = bytemuck::cast_slice_mut(&mut map[pad..pad + total]);
        for &b in &bytes {
            let (dst, r) = std::mem::take(&mut rest).split_at_mut(b / size);
            regions.push(dst);
            rest = r;
        }
        let scales = specs
            .par_iter()
            .zip(regions)
            .map(|((name, out, inp), dst)| {
                let t = self.tensor(&format!("{name}.weight"))?;
                self.shape(t, &[*inp as u64, *out as u64])?;
                let scale = self.transcode(t, dst)?;
                // Repacked: the file's copy need not stay resident.
                self.f.release(t);
                Ok(scale * self.extra_scale(name)?)
            })
            .collect::<Result<Vec<f32>>>()?;
        let shared: bitnet_kernels::SharedBytes =
            std::sync::Arc::new(map.make_read_only().map_err(io)?);
        let mut offset = pad;
        let mut mats = Vec::with_capacity(specs.len());
        for (((name, out, inp), &b), scale) in specs.iter().zip(&bytes).zip(scales) {
            let m = TernaryMatrix::from_shared(*out, *inp, scale, shared.clone(), offset)
                .ok_or_else(|| Error::InvalidField {
                    path: self.f.path().to_path_buf(),
                    field: format!("tensor {name}.weight"),
                    message: "transcoded blocks out of their buffer".into(),
                })?;
            mats.push(m);
            offset += b;
        }
        Ok(mats)
    }

    /// Codes of a per-block-scaled ternary format; every block with a non-zero code must have
    /// the same scale (the per-tensor scale, as BitNet converters write it).
    fn block_codes<B: TernaryBlock>(
        &self,
        t: &TensorInfo,
        data: &[u8],
        codes: &mut [u8],
    ) -> Result<f32> {
        let blocks: Vec<B> = bytemuck::pod_collect_to_vec(data);
        let mut scale: Option<f32> = None;
        for (b, c) in blocks.iter().zip(codes.chunks_exact_mut(B::BLOCK)) {
            b.codes(c);
            if c.iter().any(|&x| x != 1) {
                self.same_scale(t, &mut scale, b.d())?;
            }
        }
        Ok(scale.unwrap_or(0.0))
    }

    /// Records the first block scale `d` of a per-tensor ternary tensor in `scale`, or checks
    /// that `d` equals the one recorded.
    fn same_scale(&self, t: &TensorInfo, scale: &mut Option<f32>, d: f32) -> Result<()> {
        match *scale {
            None => *scale = Some(d),
            Some(s) if s != d => {
                return Err(self.bad(
                    t,
                    &format!("block scales {s} and {d} differ: not a per-tensor ternary tensor"),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    fn bad(&self, t: &TensorInfo, message: &str) -> Error {
        Error::InvalidField {
            path: self.f.path().to_path_buf(),
            field: format!("tensor {}", t.name),
            message: message.to_string(),
        }
    }
}

/// Whether a projection is transcoded at load (TQ2_0 or TQ1_0 with rows of whole 256-value
/// blocks) rather than read code by code.
fn transcodable(t: &TensorInfo, inp: usize) -> bool {
    inp.is_multiple_of(QK_K) && matches!(t.ggml_type, GgmlType::TQ2_0 | GgmlType::TQ1_0)
}

/// Loads a model from an opened GGUF file.
pub fn model_from_gguf(f: &GgufFile) -> Result<Model> {
    let config = config_from_gguf(f)?;
    let c = &config;
    let ld = Loader { f };
    let (h, inter, vocab, qd, kvd) = (
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size,
        c.q_dim(),
        c.kv_dim(),
    );
    let embed = ld.dense("token_embd.weight", vocab, h)?;
    let specs: Vec<(String, usize, usize)> = (0..c.num_hidden_layers)
        .flat_map(|i| {
            [
                ("attn_q", qd, h),
                ("attn_k", kvd, h),
                ("attn_v", kvd, h),
                ("attn_output", h, qd),
                ("ffn_gate", inter, h),
                ("ffn_up", inter, h),
                ("ffn_down", h, inter),
            ]
            .map(|(n, out, inp)| (format!("blk.{i}.{n}"), out, inp))
        })
        .collect();
    let mut lin = ld.ternary_all(&specs)?.into_iter();
    let mut next = || lin.next().expect("one matrix per projection");
    let layers = (0..c.num_hidden_layers)
        .map(|i| {
            let nrm = |n: &str, len: usize| ld.vector(&format!("blk.{i}.{n}.weight"), len);
            Ok(Layer {
                input_norm: nrm("attn_norm", h)?,
                q: next(),
                k: next(),
                v: next(),
                o: next(),
                attn_sub_norm: nrm("attn_sub_norm", qd)?,
                post_norm: nrm("ffn_norm", h)?,
                gate: next(),
                up: next(),
                down: next(),
                ffn_sub_norm: nrm("ffn_sub_norm", inter)?,
            })
        })
        .collect::<Result<Vec<Layer>>>()?;
    let norm = ld.vector("output_norm.weight", h)?;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(ld.dense("output.weight", vocab, h)?)
    };
    Ok(Model::assemble(config, embed, layers, norm, lm_head))
}
