//! Fused ops for training, each replacing a chain of candle broadcast ops (and their backward
//! graphs) with one pass:
//!
//! - attention softmax `softmax(scale · S + causal mask)` over the last dimension of scores `S`
//!   `[.., t, t]` (row `i` of each `t × t` block sees columns `0..=i`); backward
//!   `dS = scale · y ⊙ (g − Σ_j g_j y_j)`;
//! - half-split RoPE over `[.., t, d]` rows (position = row index mod `t`), `y₁ = x₁cos − x₂sin`,
//!   `y₂ = x₂cos + x₁sin`; backward: the same rotation with `−sin`;
//! - RMSNorm `y = w ⊙ x · r`, `r = 1 / sqrt(mean(x²) + eps)` over the last dimension; backward
//!   `dx = r · (g ⊙ w) − x · r³ / h · Σ_j g_j w_j x_j`, `dw = Σ_rows g ⊙ x · r`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// Causal, scaled softmax over the last dimension (which must equal the one before it).
#[derive(Clone, Copy, Debug)]
pub struct CausalSoftmax {
    /// Multiplier of the scores (`head_dim^-1/2`).
    pub scale: f64,
}

/// One row: `y_j = exp(scale·x_j − m) / Σ` for `j ≤ last`, 0 after (computed in `T`).
macro_rules! softmax_rows {
    ($v:expr, $t:expr, $scale:expr, $ty:ty) => {{
        let t = $t;
        let scale = $scale as $ty;
        let mut out = vec![0 as $ty; $v.len()];
        for (r, (row, o)) in $v.chunks(t).zip(out.chunks_mut(t)).enumerate() {
            let last = r % t;
            let m = row[..=last]
                .iter()
                .fold(<$ty>::NEG_INFINITY, |m, &x| m.max(x * scale));
            let mut sum = 0 as $ty;
            for (y, &x) in o[..=last].iter_mut().zip(&row[..=last]) {
                *y = (x * scale - m).exp();
                sum += *y;
            }
            let inv = 1 as $ty / sum;
            for y in &mut o[..=last] {
                *y *= inv;
            }
        }
        out
    }};
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "bitnet-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let n = dims.len();
        if n < 2 || dims[n - 1] != dims[n - 2] || dims[n - 1] == 0 {
            return Err(candle_core::Error::Msg(format!(
                "{}: expected [.., t, t] scores, got {:?}",
                self.name(),
                dims
            )));
        }
        let t = dims[n - 1];
        let Some((a, b)) = layout.contiguous_offsets() else {
            return Err(candle_core::Error::RequiresContiguous { op: self.name() });
        };
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(softmax_rows!(&v[a..b], t, self.scale, f32)),
            CpuStorage::F64(v) => CpuStorage::F64(softmax_rows!(&v[a..b], t, self.scale, f64)),
            _ => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    storage.dtype(),
                    self.name(),
                ))
            }
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        let g = (res * grad_res.broadcast_sub(&dot)?)?;
        Ok(Some((g * self.scale)?))
    }
}

/// `softmax(scale · scores + causal mask)` over the last dimension of `[.., t, t]` scores.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { scale })
}

/// Half-split rotary embedding with precomputed `[t, d/2]` tables (the engine's f32 angles).
#[derive(Clone, Debug)]
pub struct Rope {
    /// `cos` per position and frequency, `[t · d/2]`.
    pub cos: std::sync::Arc<Vec<f32>>,
    /// `sin` per position and frequency (negated for the backward rotation).
    pub sin: std::sync::Arc<Vec<f32>>,
    /// Positions.
    pub t: usize,
}

macro_rules! rope_rows {
    ($x:expr, $cos:expr, $sin:expr, $t:expr, $ty:ty) => {{
        let half = $cos.len() / $t;
        let d = 2 * half;
        let mut out = vec![0 as $ty; $x.len()];
        for (r, (row, o)) in $x.chunks(d).zip(out.chunks_mut(d)).enumerate() {
            let p = r % $t;
            let (c, s) = (
                &$cos[p * half..(p + 1) * half],
                &$sin[p * half..(p + 1) * half],
            );
            for i in 0..half {
                let (x1, x2) = (row[i], row[i + half]);
                let (c, s) = (c[i] as $ty, s[i] as $ty);
                o[i] = x1 * c - x2 * s;
                o[i + half] = x2 * c + x1 * s;
            }
        }
        out
    }};
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "bitnet-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let n = dims.len();
        let half = self.cos.len() / self.t.max(1);
        if n < 2 || dims[n - 2] != self.t || dims[n - 1] != 2 * half || half == 0 {
            return Err(candle_core::Error::Msg(format!(
                "{}: expected [.., {}, {}], got {:?}",
                self.name(),
                self.t,
                2 * half,
                dims
            )));
        }
        let Some((a, b)) = layout.contiguous_offsets() else {
            return Err(candle_core::Error::RequiresContiguous { op: self.name() });
        };
        let out = match storage {
            CpuStorage::F32(v) => {
                CpuStorage::F32(rope_rows!(&v[a..b], self.cos, self.sin, self.t, f32))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(rope_rows!(&v[a..b], self.cos, self.sin, self.t, f64))
            }
            _ => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    storage.dtype(),
                    self.name(),
                ))
            }
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let back = Rope {
            cos: self.cos.clone(),
            sin: std::sync::Arc::new(self.sin.iter().map(|s| -s).collect()),
            t: self.t,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1(back)?))
    }
}

/// RMSNorm over the last dimension with a weight vector (transformers' `BitNetRMSNorm`).
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    /// ε added to the mean square.
    pub eps: f64,
}

/// Forward rows: `y = w ⊙ x · r` (in `T`).
macro_rules! rms_rows {
    ($x:expr, $w:expr, $eps:expr, $ty:ty) => {{
        let h = $w.len();
        let eps = $eps as $ty;
        let mut out = Vec::with_capacity($x.len());
        for row in $x.chunks(h) {
            let ms = row.iter().map(|v| v * v).sum::<$ty>() / h as $ty;
            let r = 1 as $ty / (ms + eps).sqrt();
            out.extend(row.iter().zip($w).map(|(v, w)| w * (v * r)));
        }
        out
    }};
}

/// Backward rows: `(dx, dw)` from `x`, `w`, `g` (in `T`).
macro_rules! rms_bwd_rows {
    ($x:expr, $w:expr, $g:expr, $eps:expr, $ty:ty) => {{
        let h = $w.len();
        let eps = $eps as $ty;
        let mut dx = Vec::with_capacity($x.len());
        let mut dw = vec![0 as $ty; h];
        for (row, grow) in $x.chunks(h).zip($g.chunks(h)) {
            let ms = row.iter().map(|v| v * v).sum::<$ty>() / h as $ty;
            let r = 1 as $ty / (ms + eps).sqrt();
            let dot: $ty = row
                .iter()
                .zip(grow)
                .zip($w)
                .map(|((x, g), w)| g * w * x)
                .sum();
            let k = r * r * r * dot / h as $ty;
            for (((x, g), w), d) in row.iter().zip(grow).zip($w).zip(&mut dw) {
                dx.push(r * g * w - x * k);
                *d += g * x * r;
            }
        }
        (dx, dw)
    }};
}

/// A tensor's values as a contiguous vector of `T`.
fn values<T: candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "bitnet-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = xl.shape().dims().last().copied().unwrap_or(0);
        if wl.shape().dims() != [h] || h == 0 {
            return Err(candle_core::Error::Msg(format!(
                "{}: weight {:?} does not fit input {:?}",
                self.name(),
                wl.shape(),
                xl.shape()
            )));
        }
        let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            return Err(candle_core::Error::RequiresContiguous { op: self.name() });
        };
        let out = match (xs, ws) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(rms_rows!(&x[xa..xb], &w[wa..wb], self.eps, f32))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                CpuStorage::F64(rms_rows!(&x[xa..xb], &w[wa..wb], self.eps, f64))
            }
            _ => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    xs.dtype(),
                    self.name(),
                ))
            }
        };
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        macro_rules! grads {
            ($ty:ty) => {{
                let (dx, dw) = rms_bwd_rows!(
                    values::<$ty>(x)?,
                    &values::<$ty>(w)?,
                    values::<$ty>(g)?,
                    self.eps,
                    $ty
                );
                (
                    Tensor::from_vec(dx, x.shape(), x.device())?,
                    Tensor::from_vec(dw, w.shape(), w.device())?,
                )
            }};
        }
        let (dx, dw) = match x.dtype() {
            DType::F32 => grads!(f32),
            DType::F64 => grads!(f64),
            d => return Err(candle_core::Error::UnsupportedDTypeForOp(d, self.name())),
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// `w ⊙ x / sqrt(mean(x²) + eps)` over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Asserts `ours` equals `reference` and that `Σ w ⊙ ·` of both has the same gradient with
    /// respect to each of `vars` (all within 1e-12, f64).
    fn assert_same_value_and_grads(ours: Tensor, reference: Tensor, w: &Tensor, vars: &[&Tensor]) {
        let close = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f64>().unwrap() < 1e-12);
        };
        close(&ours, &reference);
        let g1 = (ours * w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (reference * w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in vars {
            close(g1.get(v).unwrap(), g2.get(v).unwrap());
        }
    }

    #[test]
    fn matches_candles_masked_softmax_and_its_gradient() {
        let dev = Device::Cpu;
        let t = 5;
        let vals: Vec<f64> = (0..2 * 3 * t * t)
            .map(|i| ((i * 37 % 17) as f64 - 8.0) * 0.31)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(vals, (2, 3, t, t), &dev).unwrap()).unwrap();
        let w = Tensor::from_vec(
            (0..2 * 3 * t * t)
                .map(|i| (i % 7) as f64 - 3.0)
                .collect::<Vec<_>>(),
            (2, 3, t, t),
            &dev,
        )
        .unwrap();
        let mask: Vec<f64> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f64::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
        let scale = 0.125;

        let ours = causal_softmax(x.as_tensor(), scale).unwrap();
        let reference = candle_nn::ops::softmax(
            &(x.as_tensor() * scale)
                .unwrap()
                .broadcast_add(&mask)
                .unwrap(),
            D::Minus1,
        )
        .unwrap();
        assert_same_value_and_grads(ours, reference, &w, &[x.as_tensor()]);
    }

    #[test]
    fn rope_matches_the_composite_rotation_and_its_gradient() {
        let dev = Device::Cpu;
        let (t, d) = (4, 6);
        let cos: Vec<f32> = (0..t * d / 2).map(|i| (i as f32 * 0.3).cos()).collect();
        let sin: Vec<f32> = (0..t * d / 2).map(|i| (i as f32 * 0.3).sin()).collect();
        let x = Var::from_tensor(
            &Tensor::from_vec(
                (0..2 * t * d)
                    .map(|i| ((i * 7 % 13) as f64 - 6.0) * 0.2)
                    .collect::<Vec<_>>(),
                (2, t, d),
                &dev,
            )
            .unwrap(),
        )
        .unwrap();
        let full = |v: &[f32]| -> Tensor {
            let rows: Vec<f64> = (0..t)
                .flat_map(|p| {
                    let r = &v[p * d / 2..(p + 1) * d / 2];
                    r.iter().chain(r).map(|&c| c as f64).collect::<Vec<_>>()
                })
                .collect();
            Tensor::from_vec(rows, (t, d), &dev).unwrap()
        };
        let (c, s) = (full(&cos), full(&sin));
        let xt = x.as_tensor();
        let x1 = xt.narrow(D::Minus1, 0, d / 2).unwrap();
        let x2 = xt.narrow(D::Minus1, d / 2, d / 2).unwrap();
        let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        let reference = (xt.broadcast_mul(&c).unwrap() + rot.broadcast_mul(&s).unwrap()).unwrap();
        let op = Rope {
            cos: std::sync::Arc::new(cos),
            sin: std::sync::Arc::new(sin),
            t,
        };
        let ours = xt.apply_op1(op).unwrap();
        let w = Tensor::from_vec(
            (0..2 * t * d)
                .map(|i| (i % 5) as f64 - 2.0)
                .collect::<Vec<_>>(),
            (2, t, d),
            &dev,
        )
        .unwrap();
        assert_same_value_and_grads(ours, reference, &w, &[xt]);
    }

    #[test]
    fn rms_norm_matches_candles_composite_and_its_gradient() {
        let dev = Device::Cpu;
        let (n, h) = (6, 10);
        let x = Var::from_tensor(
            &Tensor::from_vec(
                (0..n * h)
                    .map(|i| ((i * 13 % 11) as f64 - 5.0) * 0.7)
                    .collect::<Vec<_>>(),
                (2, 3, h),
                &dev,
            )
            .unwrap(),
        )
        .unwrap();
        let w = Var::from_tensor(
            &Tensor::from_vec(
                (0..h).map(|i| 0.5 + i as f64 * 0.1).collect::<Vec<_>>(),
                h,
                &dev,
            )
            .unwrap(),
        )
        .unwrap();
        let c = Tensor::from_vec(
            (0..n * h).map(|i| (i % 5) as f64 - 2.0).collect::<Vec<_>>(),
            (2, 3, h),
            &dev,
        )
        .unwrap();
        let eps = 1e-5;
        let ours = rms_norm(x.as_tensor(), w.as_tensor(), eps).unwrap();
        let ms = x
            .as_tensor()
            .sqr()
            .unwrap()
            .mean_keepdim(D::Minus1)
            .unwrap();
        let reference = x
            .as_tensor()
            .broadcast_div(&(ms + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(w.as_tensor())
            .unwrap();
        assert_same_value_and_grads(ours, reference, &c, &[x.as_tensor(), w.as_tensor()]);
    }
}
