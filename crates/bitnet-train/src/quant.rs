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

/// The float arithmetic the two quantizers need, in the tensor's own precision (f32 like torch's
/// float32 quantizers; f64 for gradient checks).
trait QFloat: Copy + PartialOrd + std::ops::Mul<Output = Self> + std::ops::Div<Output = Self> {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn abs(self) -> Self;
    fn round_ties_even(self) -> Self;
    fn clamp(self, lo: Self, hi: Self) -> Self;
    fn max(self, o: Self) -> Self;
}

macro_rules! qfloat {
    ($t:ty, $round:path) => {
        impl QFloat for $t {
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn round_ties_even(self) -> Self {
                $round(self)
            }
            fn clamp(self, lo: Self, hi: Self) -> Self {
                <$t>::clamp(self, lo, hi)
            }
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
        }
    };
}
// f32: the kernels' branch-free rounding (identical to `round_ties_even`, without the `rintf`
// call baseline x86-64 emits).
qfloat!(f32, bitnet_kernels::act::round_half_even_small);
qfloat!(f64, f64::round_ties_even);

/// Ternary values of `v`: `is = 1 / max(mean|v|, 1e-5)` with the mean accumulated in f64 and
/// rounded to `T` (as the engine's loader reduces it), `clamp(round_half_even(v·is), −1, 1) / is`.
fn weight_quant<T: QFloat>(v: &[T]) -> Vec<T> {
    let mean = T::from_f64(v.iter().map(|x| x.to_f64().abs()).sum::<f64>() / v.len().max(1) as f64);
    let is = T::from_f64(1.0) / mean.max(T::from_f64(1e-5));
    let (lo, hi) = (T::from_f64(-1.0), T::from_f64(1.0));
    v.iter()
        .map(|&x| (x * is).round_ties_even().clamp(lo, hi) / is)
        .collect()
}

/// Per-row absmax int8 fake quantization of rows of length `k`.
fn act_quant<T: QFloat>(v: &[T], k: usize) -> Vec<T> {
    let (lo, hi) = (T::from_f64(-128.0), T::from_f64(127.0));
    let mut out = Vec::with_capacity(v.len());
    for row in v.chunks(k) {
        let m = row.iter().fold(T::from_f64(0.0), |m, x| m.max(x.abs()));
        let s = T::from_f64(127.0) / m.max(T::from_f64(1e-5));
        out.extend(
            row.iter()
                .map(|&x| (x * s).round_ties_even().clamp(lo, hi) / s),
        );
    }
    out
}

/// Applies `f32_op` / `f64_op` to a contiguous f32 / f64 storage.
fn map_storage(
    storage: &CpuStorage,
    layout: &Layout,
    op: &'static str,
    f32_op: impl Fn(&[f32]) -> Vec<f32>,
    f64_op: impl Fn(&[f64]) -> Vec<f64>,
) -> Result<(CpuStorage, Shape)> {
    let out = match storage {
        CpuStorage::F32(v) => CpuStorage::F32(f32_op(contiguous(v, layout, op)?)),
        CpuStorage::F64(v) => CpuStorage::F64(f64_op(contiguous(v, layout, op)?)),
        _ => {
            return Err(candle_core::Error::UnsupportedDTypeForOp(
                storage.dtype(),
                op,
            ))
        }
    };
    Ok((out, layout.shape().clone()))
}

impl CustomOp1 for WeightQuant {
    fn name(&self) -> &'static str {
        "bitnet-weight-quant"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        map_storage(storage, layout, self.name(), weight_quant, weight_quant)
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
        let k = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        map_storage(
            storage,
            layout,
            self.name(),
            |v| act_quant(v, k),
            |v| act_quant(v, k),
        )
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
    linear(&x, &w)
}

/// `x · wᵀ` for `x` `[.., in]`: one 2-D matmul over all rows (a broadcast batched matmul would
/// also need a reduction of the broadcast weight's gradient in the backward pass).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else {
        return x.broadcast_matmul(&w.t()?);
    };
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, k))?.matmul(&w.t()?)?;
    let mut out = lead.to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
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
