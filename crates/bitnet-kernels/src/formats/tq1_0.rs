//! TQ1_0 (llama.cpp): 256 ternary values as `{ u8 qs[48]; u8 qh[4]; f16 d }` (54 bytes), five
//! trits per byte, first trit most significant, stored as `ceil(q · 256 / 243)`. `qs[0..32]` hold
//! elements `m + 32n` (n < 5), `qs[32..48]` hold `160 + m + 16n`, `qh[0..4]` hold `240 + j + 4m`
//! (four trits, then ×3). Trit n of byte b: `((u8)(b · 3ⁿ) · 3) >> 8`.

use super::QK_K;
use crate::quant::{ternary_to_float, QuantBlock, TernaryBlock};
use crate::ternary::BlockI2;
use half::f16;

/// One TQ1_0 block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockTQ1_0 {
    /// Five trits per byte.
    pub qs: [u8; 48],
    /// Four trits per byte.
    pub qh: [u8; 4],
    /// Scale (f16 bits): the block absmax.
    pub d: u16,
}

const _: () = assert!(std::mem::size_of::<BlockTQ1_0>() == 54);

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// `TRITS[b][n]`: trit `n` of byte `b` ([`trit`] for every byte, at compile time).
const TRITS: [[u8; 5]; 256] = {
    let mut t = [[0u8; 5]; 256];
    let mut b = 0;
    while b < 256 {
        let mut n = 0;
        while n < 5 {
            t[b][n] = (((b as u8).wrapping_mul(POW3[n]) as u16 * 3) >> 8) as u8;
            n += 1;
        }
        b += 1;
    }
    t
};

#[inline]
fn trit(b: u8, n: usize) -> u8 {
    ((b.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as u8
}

/// Base-3 number of the trits (first most significant) times `mul`, as the ceiling of
/// `q · 256 / 243` (the byte whose trit decode gives the trits back).
#[inline]
fn pack(trits: impl Iterator<Item = u8>, mul: u16) -> u8 {
    let q = trits.fold(0u16, |q, t| q * 3 + t as u16) * mul;
    (q * 256).div_ceil(243) as u8
}

impl QuantBlock for BlockTQ1_0 {
    const BLOCK: usize = QK_K;
    const NAME: &'static str = "TQ1_0";

    fn to_float(&self, out: &mut [f32]) {
        ternary_to_float(self, out);
    }

    /// `quantize_row_tq1_0_ref`: `d = absmax`, trit = `lroundf(x / d) + 1`.
    fn from_float(x: &[f32]) -> Self {
        let d = x[..QK_K].iter().fold(0f32, |m, v| m.max(v.abs()));
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut codes = [0u8; QK_K];
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = ((v * id).round() as i32 + 1).clamp(0, 2) as u8;
        }
        Self::from_codes(&codes, d)
    }
}

impl TernaryBlock for BlockTQ1_0 {
    fn codes(&self, out: &mut [u8]) {
        for m in 0..32 {
            for n in 0..5 {
                out[m + 32 * n] = trit(self.qs[m], n);
            }
        }
        for m in 0..16 {
            for n in 0..5 {
                out[160 + m + 16 * n] = trit(self.qs[32 + m], n);
            }
        }
        for j in 0..4 {
            for m in 0..4 {
                out[240 + j + 4 * m] = trit(self.qh[j], m);
            }
        }
    }
    fn d(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
    fn push_i2(&self, out: &mut Vec<BlockI2>) {
        out.extend_from_slice(&self.to_i2());
    }
    fn from_codes(codes: &[u8], d: f32) -> Self {
        let c = |i: usize| codes[i].min(2);
        let mut b = BlockTQ1_0 {
            qs: [0; 48],
            qh: [0; 4],
            d: f16::from_f32(d).to_bits(),
        };
        for m in 0..32 {
            b.qs[m] = pack((0..5).map(|n| c(m + 32 * n)), 1);
        }
        for m in 0..16 {
            b.qs[32 + m] = pack((0..5).map(|n| c(160 + m + 16 * n)), 1);
        }
        for j in 0..4 {
            // Four trits, shifted to the most significant positions (×3).
            b.qh[j] = pack((0..4).map(|m| c(240 + j + 4 * m)), 3);
        }
        b
    }
}

impl BlockTQ1_0 {
    /// The 256 codes in the engine's layout, two [`BlockI2`] of 128 (same codes as
    /// [`TernaryBlock::codes`] followed by [`BlockI2::from_codes`], a byte at a time from a
    /// table of every byte's trits). [`BlockI2`] byte `m` holds elements `m + 32g` at bit
    /// `6 − 2g`: in the first block trits 0–3 of `qs[m]`; in the second trit 4 of `qs[m]`
    /// (element 128 + m), trits `m/16` and `2 + m/16` of `qs[32 + m%16]` (160 + m, 192 + m) and,
    /// for element 224 + m, trit 4 of `qs[32 + m]` (m < 16) or trit `(m−16)/4` of
    /// `qh[(m−16)%4]`.
    pub fn to_i2(&self) -> [BlockI2; 2] {
        let mut out = [BlockI2::ZERO; 2];
        for m in 0..32 {
            let t = &TRITS[self.qs[m] as usize];
            out[0].qs[m] = (t[0] << 6) | (t[1] << 4) | (t[2] << 2) | t[3];
            let h = &TRITS[self.qs[32 + m % 16] as usize];
            let last = if m < 16 {
                h[4]
            } else {
                TRITS[self.qh[(m - 16) % 4] as usize][(m - 16) / 4]
            };
            out[1].qs[m] = (t[4] << 6) | (h[m / 16] << 4) | (h[2 + m / 16] << 2) | last;
        }
        out
    }
}
