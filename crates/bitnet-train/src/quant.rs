//! Fake quantization with a straight-through estimator, exactly as transformers' `AutoBitLinear`
//! in online mode (BITNET.md):
//!
//! - weights, per tensor: `is = 1 / max(mean|W|, 1e-5)`, `W_q = clamp(round_half_even(W·is), −1, 1) / is`
//!   (the mean as the engine's loader computes it: [`bitnet_engine::model::ternarize_absmean`]);
//! - activations, per row of the last dimension: `s = 127 / max(max|x|, 1e-5)`,
//!   `x_q = clamp(round_half_even(x·s), −128, 127) / s`.
//!
//! Both pass the gradient through unchanged (`w + (q(w) − w).detach()`), so the backward pass is
//! the float layer's evaluated at the quantized values.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Per-tensor absmean ternarization (forward) with an identity gradient.
#[derive(Clone, Copy, Debug)]
pub struct WeightQuant;

/// Per-row absmax int8 fake quantization (forward) with an identity gradient.
#[derive(Clone, Copy, Debug)]
pub struct ActQuant;

/// The contiguous slice a layout describes, or an error naming the op.
fn contiguous<'a, T>(v: &'a [T], layout: &Layout, op: &'static str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(candle_core::Error::RequiresContiguous { op }),
    }
}

/// `mean|W|` accumulated in f64 and rounded to f32, as the engine's loader reduces it.
fn abs_mean(v: impl Iterator<Item = f64>, n: usize) -> f32 {
    (v.map(f64::abs).sum::<f64>() / n.max(1) as f64) as f32
}

/// Ternary values `{−1/is, 0, 1/is}` of `vals` given `is = 1 / max(mean, 1e-5)` (f32 throughout,
/// like torch's float32 `WeightQuant`).
fn ternary_value(v: f32, is: f32) -> f32 {
    (v * is).round_ties_even().clamp(-1.0, 1.0) / is
}

impl CustomOp1 for WeightQuant {
    fn name(&self) -> &'static str {
        "bitnet-weight-quant"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = layout.shape().clone();
        let out = match storage {
            CpuStorage::F32(v) => {
                let v = contiguous(v, layout, self.name())?;
                let is = 1.0f32 / abs_mean(v.iter().map(|&x| x as f64), v.len()).max(1e-5);
                CpuStorage::F32(v.iter().map(|&x| ternary_value(x, is)).collect())
            }
            CpuStorage::F64(v) => {
                // Gradient checks run in f64: the same ternarization, in f64.
                let v = contiguous(v, layout, self.name())?;
                let mean = v.iter().map(|x| x.abs()).sum::<f64>() / v.len().max(1) as f64;
                let is = 1.0 / mean.max(1e-5);
                CpuStorage::F64(
                    v.iter()
                        .map(|&x| (x * is).round_ties_even().clamp(-1.0, 1.0) / is)
                        .collect(),
                )
            }
            _ => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    storage.dtype(),
                    self.name(),
                ))
            }
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.clone()))
    }
}

impl CustomOp1 for ActQuant {
    fn name(&self) -> &'static str {
        "bitnet-act-quant"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = layout.shape().clone();
        let k = shape.dims().last().copied().unwrap_or(1).max(1);
        let out = match storage {
            CpuStorage::F32(v) => {
                let v = contiguous(v, layout, self.name())?;
                let mut out = Vec::with_capacity(v.len());
                for row in v.chunks(k) {
                    let m = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                    let s = 127.0f32 / m.max(1e-5);
                    out.extend(
                        row.iter()
                            .map(|&x| (x * s).round_ties_even().clamp(-128.0, 127.0) / s),
                    );
                }
                CpuStorage::F32(out)
            }
            CpuStorage::F64(v) => {
                let v = contiguous(v, layout, self.name())?;
                let mut out = Vec::with_capacity(v.len());
                for row in v.chunks(k) {
                    let m = row.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                    let s = 127.0 / m.max(1e-5);
                    out.extend(
                        row.iter()
                            .map(|&x| (x * s).round_ties_even().clamp(-128.0, 127.0) / s),
                    );
                }
                CpuStorage::F64(out)
            }
            _ => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    storage.dtype(),
                    self.name(),
                ))
            }
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.clone()))
    }
}

/// Whether BitLinear layers fake-quantize (training) or run in float (gradient checks of the
/// float path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMode {
    /// Ternary weights and int8 activations with the straight-through estimator.
    Ternary,
    /// Plain float linear layers.
    Float,
}

/// `y = q_act(x) · q_w(W)ᵀ` for `x` of shape `[.., in]` and `W` of shape `[out, in]`.
pub fn bit_linear(x: &Tensor, w: &Tensor, mode: QuantMode) -> Result<Tensor> {
    let (x, w) = match mode {
        QuantMode::Ternary => (
            x.contiguous()?.apply_op1(ActQuant)?,
            w.contiguous()?.apply_op1(WeightQuant)?,
        ),
        QuantMode::Float => (x.clone(), w.clone()),
    };
    x.broadcast_matmul(&w.t()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn weight_quant_matches_the_engines_ternarization() {
        let vals: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013)
            .collect();
        let t = Tensor::from_slice(&vals, (8, 12), &Device::Cpu).unwrap();
        let q: Vec<f32> = t
            .apply_op1(WeightQuant)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let codes = bitnet_engine::model::ternarize_absmean(&vals);
        for (i, (&c, &v)) in codes.codes.iter().zip(&q).enumerate() {
            let w = ((c & 3) as f32 - 1.0) * codes.scale;
            assert_eq!(w, v, "weight {i}");
        }
    }

    #[test]
    fn act_quant_rounds_half_to_even_per_row() {
        // Row max 127 → scale 1: 0.5 → 0, 1.5 → 2, 2.5 → 2, −2.5 → −2.
        let x = [127.0f32, 0.5, 1.5, 2.5, -2.5, 0.0];
        let t = Tensor::from_slice(&x, (1, 6), &Device::Cpu).unwrap();
        let q: Vec<f32> = t
            .apply_op1(ActQuant)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(q, vec![127.0, 0.0, 2.0, 2.0, -2.0, 0.0]);
    }
}
