//! Q8_0: 32 values as `{ f16 d; i8 qs[32] }` (34 bytes), value = `qs · d`, `d = absmax / 127`.

use crate::quant::QuantBlock;
use half::f16;

/// One Q8_0 block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    /// Scale (f16 bits).
    pub d: u16,
    /// Quantized values.
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl QuantBlock for BlockQ8_0 {
    const BLOCK: usize = 32;
    const NAME: &'static str = "Q8_0";

    fn to_float(&self, out: &mut [f32]) {
        let d = f16::from_bits(self.d).to_f32();
        for (o, &q) in out[..32].iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    /// `quantize_row_q8_0_ref`: `roundf` (half away from zero) of `x / d`.
    fn from_float(x: &[f32]) -> Self {
        let amax = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        BlockQ8_0 {
            d: f16::from_f32(d).to_bits(),
            qs,
        }
    }
}
