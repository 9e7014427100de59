//! I2_S (microsoft/BitNet, GGML type 36): the flattened tensor as 2-bit codes in 128-value blocks
//! of 32 bytes (byte j holds values j, 32+j, 64+j, 96+j at bits 7-6, 5-4, 3-2, 1-0; code 0 → −1,
//! 1 → 0, 2 → +1), then one f32 scale in a 32-byte tail: `n/4 + 32` bytes. The block layout is
//! [`crate::BlockI2`]'s.

use crate::ternary::QK_I2;

/// Bytes of an I2_S tensor of `n` values.
pub fn i2_s_nbytes(n: usize) -> usize {
    n / 4 + 32
}

/// Codes (0, 1, 2) of all `n` values and the scale, from I2_S bytes (`data.len() >= n/4 + 4`).
pub fn dequantize_i2_s(data: &[u8], n: usize, codes: &mut [u8]) -> f32 {
    for (i, c) in codes[..n].iter_mut().enumerate() {
        let b = data[(i / QK_I2) * 32 + i % 32];
        *c = (b >> (6 - 2 * ((i % QK_I2) / 32))) & 3;
    }
    let s = &data[n / 4..n / 4 + 4];
    f32::from_le_bytes([s[0], s[1], s[2], s[3]])
}

/// bitnet.cpp's `quantize_i2_s`: scale = max|x|; |x| < 1e-6 → 0, else the sign. Returns the
/// `n/4 + 32` bytes (the 28 tail bytes after the scale are zero).
pub fn quantize_i2_s(x: &[f32]) -> Vec<u8> {
    let n = x.len();
    let max = x.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let mut out = vec![0u8; i2_s_nbytes(n)];
    for (i, &v) in x.iter().enumerate() {
        let code: u8 = if (v as f64).abs() < 1e-6 {
            1
        } else if (v as f64) * max > 0.0 {
            2
        } else {
            0
        };
        out[(i / QK_I2) * 32 + i % 32] |= code << (6 - 2 * ((i % QK_I2) / 32));
    }
    out[n / 4..n / 4 + 4].copy_from_slice(&(max as f32).to_le_bytes());
    out
}
