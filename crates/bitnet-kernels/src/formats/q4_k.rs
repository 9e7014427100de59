//! Q4_K (llama.cpp): 256 values as `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }` (144 bytes):
//! eight 32-value sub-blocks with 6-bit scales and mins, value = `d·sc·q − dmin·m`.

use super::QK_K;
use crate::quant::{nearest_int, QuantBlock};
use half::f16;

/// One Q4_K block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale for the scales (f16 bits).
    pub d: u16,
    /// Super-block scale for the mins (f16 bits).
    pub dmin: u16,
    /// 6-bit scales and mins, packed.
    pub scales: [u8; 12],
    /// 4-bit quants.
    pub qs: [u8; 128],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// llama.cpp's `get_scale_min_k4`.
fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

impl QuantBlock for BlockQ4K {
    const BLOCK: usize = QK_K;
    const NAME: &'static str = "Q4_K";

    fn to_float(&self, out: &mut [f32]) {
        let d = f16::from_bits(self.d).to_f32();
        let min = f16::from_bits(self.dmin).to_f32();
        for (k, chunk) in out[..QK_K].chunks_exact_mut(64).enumerate() {
            let q = &self.qs[32 * k..32 * k + 32];
            let (sc1, m1) = scale_min(2 * k, &self.scales);
            let (sc2, m2) = scale_min(2 * k + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            for l in 0..32 {
                chunk[l] = d1 * (q[l] & 0xF) as f32 - m1;
                chunk[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }

    /// A min/max quantizer (per 32-value sub-block: scale `(max−min)/15`, min `−min`), not
    /// llama.cpp's iterative `make_qkx2_quants` search: files we write in Q4_K read back
    /// correctly but are not byte-identical to llama-quantize's.
    fn from_float(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let mut sc = [0f32; 8];
        let mut mn = [0f32; 8];
        for j in 0..8 {
            let s = &x[32 * j..32 * j + 32];
            let lo = s.iter().fold(f32::INFINITY, |m, &v| m.min(v)).min(0.0);
            let hi = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            sc[j] = (hi - lo) / 15.0;
            mn[j] = -lo;
        }
        let max_sc = sc.iter().fold(0f32, |m, &v| m.max(v));
        let max_mn = mn.iter().fold(0f32, |m, &v| m.max(v));
        let inv_s = if max_sc > 0.0 { 63.0 / max_sc } else { 0.0 };
        let inv_m = if max_mn > 0.0 { 63.0 / max_mn } else { 0.0 };
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        for j in 0..8 {
            ls[j] = nearest_int(inv_s * sc[j]).clamp(0, 63) as u8;
            lm[j] = nearest_int(inv_m * mn[j]).clamp(0, 63) as u8;
        }
        let mut y = BlockQ4K {
            d: f16::from_f32(if inv_s > 0.0 { max_sc / 63.0 } else { 0.0 }).to_bits(),
            dmin: f16::from_f32(if inv_m > 0.0 { max_mn / 63.0 } else { 0.0 }).to_bits(),
            scales: [0; 12],
            qs: [0; 128],
        };
        for j in 0..8 {
            if j < 4 {
                y.scales[j] = ls[j];
                y.scales[j + 4] = lm[j];
            } else {
                y.scales[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
                y.scales[j - 4] |= (ls[j] >> 4) << 6;
                y.scales[j] |= (lm[j] >> 4) << 6;
            }
        }
        let d = f16::from_bits(y.d).to_f32();
        let dm = f16::from_bits(y.dmin).to_f32();
        let mut l = [0u8; QK_K];
        for j in 0..8 {
            let (s, m) = scale_min(j, &y.scales);
            let (dj, mj) = (d * s as f32, dm * m as f32);
            for ii in 0..32 {
                let q = if dj != 0.0 {
                    nearest_int((x[32 * j + ii] + mj) / dj)
                } else {
                    0
                };
                l[32 * j + ii] = q.clamp(0, 15) as u8;
            }
        }
        for k in 0..4 {
            for i in 0..32 {
                y.qs[32 * k + i] = l[64 * k + i] | (l[64 * k + 32 + i] << 4);
            }
        }
        y
    }
}
