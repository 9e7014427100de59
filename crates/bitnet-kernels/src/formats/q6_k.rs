//! Q6_K (llama.cpp): 256 values as `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }` (210 bytes):
//! 6-bit quants (low 4 bits in `ql`, high 2 in `qh`) minus 32, sixteen 8-bit sub-block scales,
//! value = `d · scale · q`.

use super::QK_K;
use crate::quant::{nearest_int, QuantBlock};
use half::f16;

/// One Q6_K block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; 128],
    /// High 2 bits of the quants.
    pub qh: [u8; 64],
    /// Sub-block scales.
    pub scales: [i8; 16],
    /// Super-block scale (f16 bits).
    pub d: u16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

const GROUP_MAX_EPS: f32 = 1e-15;

/// llama.cpp's `make_qx_quants` with `rmse_type = 1` and no importance weights: the scale of
/// `x` (length n) for quants in `−nmax..nmax`, writing `L = q + nmax`.
fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (&v, o) in x.iter().zip(l_out.iter_mut()) {
        let l = quant(iscale, v);
        *o = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * (l * l) as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut slx, mut sl2) = (0f32, 0f32);
        for &v in x {
            let l = quant(iscale, v);
            let w = v * v;
            slx += w * v * l as f32;
            sl2 += w * (l * l) as f32;
        }
        if sl2 > 0.0 && slx * slx > best * sl2 {
            for (&v, o) in x.iter().zip(l_out.iter_mut()) {
                *o = (nmax + quant(iscale, v)) as i8;
            }
            scale = slx / sl2;
            best = scale * slx;
        }
    }
    scale
}

impl QuantBlock for BlockQ6K {
    const BLOCK: usize = QK_K;
    const NAME: &'static str = "Q6_K";

    fn to_float(&self, out: &mut [f32]) {
        let d = f16::from_bits(self.d).to_f32();
        for (e, (o, &q)) in out[..QK_K].iter_mut().zip(&self.quants()).enumerate() {
            *o = d * self.scales[e / 16] as f32 * (i32::from(q) - 32) as f32;
        }
    }

    /// `quantize_row_q6_K_ref`.
    fn from_float(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for (ib, sc) in scales.iter_mut().enumerate() {
            let s = make_qx_quants(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
            *sc = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        let mut y = BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d: 0,
        };
        if max_abs_scale < GROUP_MAX_EPS {
            return y;
        }
        let iscale = -128.0 / max_scale;
        y.d = f16::from_f32(1.0 / iscale).to_bits();
        for (ys, &s) in y.scales.iter_mut().zip(&scales) {
            *ys = nearest_int(iscale * s).min(127) as i8;
        }
        let dd = f16::from_bits(y.d).to_f32();
        for j in 0..16 {
            let d = dd * y.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        y.set_quants(&l.map(|v| v as u8));
        y
    }
}

impl BlockQ6K {
    /// The 256 stored quants (0..=63, the value is `q − 32`) in element order.
    pub fn quants(&self) -> [u8; QK_K] {
        let mut q = [0u8; QK_K];
        for half in 0..2 {
            let (ql, qh) = (&self.ql[64 * half..], &self.qh[32 * half..]);
            let y = &mut q[128 * half..];
            for l in 0..32 {
                y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        q
    }

    /// Packs 256 stored quants (0..=63, element order) into `ql` and `qh` (the inverse of
    /// [`BlockQ6K::quants`]; bits above the sixth are dropped).
    pub fn set_quants(&mut self, l: &[u8; QK_K]) {
        for half in 0..2 {
            let j = 128 * half;
            for i in 0..32 {
                let li = |k: usize| l[j + i + k] & 63;
                self.ql[64 * half + i] = (li(0) & 0xF) | ((li(64) & 0xF) << 4);
                self.ql[64 * half + i + 32] = (li(32) & 0xF) | ((li(96) & 0xF) << 4);
                self.qh[32 * half + i] = (li(0) >> 4)
                    | ((li(32) >> 4) << 2)
                    | ((li(64) >> 4) << 4)
                    | ((li(96) >> 4) << 6);
            }
        }
    }
}
