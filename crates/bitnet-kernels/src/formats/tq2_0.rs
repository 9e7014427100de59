//! TQ2_0 (llama.cpp): 256 ternary values as `{ u8 qs[64]; f16 d }` (66 bytes). Byte `j + m`
//! (j ∈ {0, 32}, m < 32) holds elements `(j/32)·128 + m + 32n` at bits `2n`; value `(code−1)·d`.

use super::QK_K;
use crate::quant::{ternary_to_float, QuantBlock, TernaryBlock};
use half::f16;

/// One TQ2_0 block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockTQ2_0 {
    /// 2-bit codes.
    pub qs: [u8; 64],
    /// Scale (f16 bits): the block absmax.
    pub d: u16,
}

const _: () = assert!(std::mem::size_of::<BlockTQ2_0>() == 66);

#[inline]
fn index(byte: usize, n: usize) -> usize {
    (byte / 32) * 128 + byte % 32 + 32 * n
}

impl QuantBlock for BlockTQ2_0 {
    const BLOCK: usize = QK_K;
    const NAME: &'static str = "TQ2_0";

    fn to_float(&self, out: &mut [f32]) {
        ternary_to_float(self, out);
    }

    /// `quantize_row_tq2_0_ref`: `d = absmax`, code = `lroundf(x / d) + 1`.
    fn from_float(x: &[f32]) -> Self {
        let d = x[..QK_K].iter().fold(0f32, |m, v| m.max(v.abs()));
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut codes = [0u8; QK_K];
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = (((v * id).round() as i32 + 1) & 3) as u8;
        }
        Self::from_codes(&codes, d)
    }
}

impl TernaryBlock for BlockTQ2_0 {
    fn codes(&self, out: &mut [u8]) {
        for (byte, &q) in self.qs.iter().enumerate() {
            for n in 0..4 {
                out[index(byte, n)] = (q >> (2 * n)) & 3;
            }
        }
    }
    fn d(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
    fn from_codes(codes: &[u8], d: f32) -> Self {
        let mut qs = [0u8; 64];
        for (byte, q) in qs.iter_mut().enumerate() {
            for n in 0..4 {
                *q |= (codes[index(byte, n)] & 3) << (2 * n);
            }
        }
        BlockTQ2_0 {
            qs,
            d: f16::from_f32(d).to_bits(),
        }
    }
}
