//! The engine's ternary weight layout.
//!
//! A row of `cols` ternary weights is stored as `ceil(cols / 128)` [`BlockI2`] blocks of 32 bytes.
//! Each weight is a 2-bit code `c = w + 1` (0 → −1, 1 → 0, 2 → +1). Within a block, element `i`
//! sits in byte `i % 32` at bit shift `6 − 2·(i / 32)`: the x86 I2_S layout of microsoft/BitNet
//! (BITNET.md), so that one byte load and four shifts give four 32-wide lanes. Padding weights
//! (past `cols`) are code 1 (zero), and activations are zero-padded, so padding adds nothing.

use crate::quant::{QuantBlock, TernaryBlock};

/// Weights per [`BlockI2`].
pub const QK_I2: usize = 128;

/// 128 ternary weights as 2-bit codes, I2_S x86 layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockI2 {
    /// Codes: element `i` at byte `i % 32`, shift `6 − 2·(i / 32)`.
    pub qs: [u8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockI2>() == QK_I2 / 4);

impl BlockI2 {
    /// A block of zero weights (all codes 1).
    pub const ZERO: BlockI2 = BlockI2 { qs: [0x55; 32] };

    /// Whether some 2-bit code is 3 (not a ternary value).
    #[inline]
    pub fn has_code3(&self) -> bool {
        self.qs
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                let w = u64::from_le_bytes(b);
                w & (w >> 1)
            })
            .fold(0, |a, x| a | x)
            & 0x5555_5555_5555_5555
            != 0
    }

    /// The 2-bit code of element `i` (0..128).
    #[inline]
    pub fn code(&self, i: usize) -> u8 {
        (self.qs[i % 32] >> (6 - 2 * (i / 32))) & 3
    }
}

impl BlockI2 {
    /// Builds a block from ternary values in `-1..=1` (`values.len() == 128`).
    pub fn from_ternary(values: &[i8]) -> Self {
        debug_assert_eq!(values.len(), QK_I2);
        let mut qs = [0u8; 32];
        for (i, &v) in values.iter().enumerate() {
            let code = (v.clamp(-1, 1) + 1) as u8;
            qs[i % 32] |= code << (6 - 2 * (i / 32));
        }
        BlockI2 { qs }
    }

    /// `Σ c·q` over the block (codes, not weights: callers subtract `Σ q` once per row).
    #[inline]
    pub fn vec_dot_i8(&self, q: &[i8]) -> i32 {
        let q = &q[..QK_I2];
        let mut acc = 0i32;
        for m in 0..32 {
            let b = self.qs[m] as i32;
            acc += (b >> 6) * q[m] as i32
                + ((b >> 4) & 3) * q[m + 32] as i32
                + ((b >> 2) & 3) * q[m + 64] as i32
                + (b & 3) * q[m + 96] as i32;
        }
        acc
    }
}

/// Scale-free: values are the ternary weights themselves (the scale lives in the matrix).
impl QuantBlock for BlockI2 {
    const BLOCK: usize = QK_I2;
    const NAME: &'static str = "i2 (2-bit ternary, 128/block)";

    fn to_float(&self, out: &mut [f32]) {
        for (i, o) in out[..QK_I2].iter_mut().enumerate() {
            *o = self.code(i) as f32 - 1.0;
        }
    }

    /// Sign of each value (zero stays zero).
    fn from_float(x: &[f32]) -> Self {
        let mut v = [0i8; QK_I2];
        for (o, &f) in v.iter_mut().zip(x) {
            *o = if f > 0.0 {
                1
            } else if f < 0.0 {
                -1
            } else {
                0
            };
        }
        BlockI2::from_ternary(&v)
    }
}

impl TernaryBlock for BlockI2 {
    fn codes(&self, out: &mut [u8]) {
        for (i, o) in out[..QK_I2].iter_mut().enumerate() {
            *o = self.code(i);
        }
    }
    fn d(&self) -> f32 {
        1.0
    }
    fn from_codes(codes: &[u8], _d: f32) -> Self {
        let mut qs = [0u8; 32];
        for (i, &c) in codes[..QK_I2].iter().enumerate() {
            qs[i % 32] |= (c & 3) << (6 - 2 * (i / 32));
        }
        BlockI2 { qs }
    }
}

use crate::buf::Buf;
pub use crate::buf::SharedBytes;

/// A `[rows, cols]` ternary matrix with one per-tensor scale.
///
/// The real weight matrix is `W = scale · T` with `T ∈ {−1, 0, +1}`: `scale` is `mean|W|` for
/// absmean-quantized weights (multiply convention).
#[derive(Clone, Debug)]
pub struct TernaryMatrix {
    rows: usize,
    cols: usize,
    blocks_per_row: usize,
    blocks: Buf<BlockI2>,
    scale: f32,
}

impl TernaryMatrix {
    /// A matrix of zero weights; fill it with [`TernaryMatrix::set_row`].
    pub fn zeros(rows: usize, cols: usize, scale: f32) -> Self {
        let blocks_per_row = cols.div_ceil(QK_I2);
        TernaryMatrix {
            rows,
            cols,
            blocks_per_row,
            blocks: Buf::Owned(vec![BlockI2::ZERO; rows * blocks_per_row]),
            scale,
        }
    }

    /// Builds a matrix from row-major ternary values (each in `-1..=1`).
    ///
    /// # Panics
    /// If `values.len() != rows * cols`.
    pub fn from_values(rows: usize, cols: usize, values: &[i8], scale: f32) -> Self {
        assert_eq!(values.len(), rows * cols, "ternary matrix value count");
        let mut m = TernaryMatrix::zeros(rows, cols, scale);
        for r in 0..rows {
            m.set_row(r, &values[r * cols..(r + 1) * cols]);
        }
        m
    }

    /// Sets row `r` from `cols` ternary values (each in `-1..=1`; larger values are clamped).
    pub fn set_row(&mut self, r: usize, values: &[i8]) {
        assert_eq!(values.len(), self.cols, "ternary row length");
        let bpr = self.blocks_per_row;
        let row = &mut self.blocks.to_mut()[r * bpr..(r + 1) * bpr];
        let mut tmp = [0i8; QK_I2];
        for (b, chunk) in row.iter_mut().zip(values.chunks(QK_I2)) {
            tmp[..chunk.len()].copy_from_slice(chunk);
            tmp[chunk.len()..].fill(0);
            *b = BlockI2::from_ternary(&tmp);
        }
    }

    /// Builds a matrix from row-major 2-bit codes (`c = w + 1`; bits above the low two are
    /// ignored, so callers may keep flags there).
    ///
    /// # Panics
    /// If `codes.len() != rows * cols`.
    pub fn from_codes(rows: usize, cols: usize, codes: &[u8], scale: f32) -> Self {
        assert_eq!(codes.len(), rows * cols, "ternary matrix code count");
        let mut m = TernaryMatrix::zeros(rows, cols, scale);
        let bpr = m.blocks_per_row;
        let mut tmp = [1u8; QK_I2];
        for r in 0..rows {
            let row = &codes[r * cols..(r + 1) * cols];
            for (b, chunk) in m.blocks.to_mut()[r * bpr..(r + 1) * bpr]
                .iter_mut()
                .zip(row.chunks(QK_I2))
            {
                for (t, &c) in tmp.iter_mut().zip(chunk) {
                    *t = c & 3;
                }
                tmp[chunk.len()..].fill(1);
                *b = BlockI2::from_codes(&tmp, 1.0);
            }
        }
        m
    }

    /// A matrix from its blocks in [`BlockI2`] layout, row after row (`ceil(cols / 128)` per row).
    ///
    /// # Panics
    /// If `blocks.len() != rows · ceil(cols / 128)`.
    pub fn from_blocks(rows: usize, cols: usize, blocks: Vec<BlockI2>, scale: f32) -> Self {
        let blocks_per_row = cols.div_ceil(QK_I2);
        assert_eq!(
            blocks.len(),
            rows * blocks_per_row,
            "ternary matrix block count"
        );
        TernaryMatrix {
            rows,
            cols,
            blocks_per_row,
            blocks: Buf::Owned(blocks),
            scale,
        }
    }

    /// A matrix whose blocks are `bytes[offset..]` in [`BlockI2`] layout, without copying (an
    /// I2_S tensor whose row length is a multiple of 128). `None` when the row length is not
    /// whole blocks or the range is outside the buffer.
    pub fn from_shared(
        rows: usize,
        cols: usize,
        scale: f32,
        bytes: SharedBytes,
        offset: usize,
    ) -> Option<Self> {
        if !cols.is_multiple_of(QK_I2) {
            return None;
        }
        let blocks_per_row = cols / QK_I2;
        let blocks = Buf::shared(bytes, offset, rows.checked_mul(blocks_per_row)?)?;
        Some(TernaryMatrix {
            rows,
            cols,
            blocks_per_row,
            blocks,
            scale,
        })
    }

    /// Row-major 2-bit codes of the whole matrix.
    pub fn codes(&self) -> Vec<u8> {
        let mut out = vec![1u8; self.rows * self.cols];
        let mut tmp = [0u8; QK_I2];
        for r in 0..self.rows {
            let row = &mut out[r * self.cols..(r + 1) * self.cols];
            for (b, chunk) in self.row_blocks(r).iter().zip(row.chunks_mut(QK_I2)) {
                b.codes(&mut tmp);
                chunk.copy_from_slice(&tmp[..chunk.len()]);
            }
        }
        out
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Columns rounded up to whole blocks: the activation row length kernels expect.
    pub fn cols_padded(&self) -> usize {
        self.blocks_per_row * QK_I2
    }
    /// The per-tensor scale (`W = scale · T`).
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// The blocks of row `r`.
    #[inline]
    pub fn row_blocks(&self, r: usize) -> &[BlockI2] {
        &self.blocks[r * self.blocks_per_row..(r + 1) * self.blocks_per_row]
    }
    /// The blocks of rows `r0 .. r0 + n`, back to back.
    pub fn rows_blocks(&self, r0: usize, n: usize) -> &[BlockI2] {
        &self.blocks[r0 * self.blocks_per_row..(r0 + n) * self.blocks_per_row]
    }
    /// Bytes of weight storage.
    pub fn nbytes(&self) -> usize {
        std::mem::size_of_val(&*self.blocks)
    }

    /// Whether the blocks are borrowed from a shared buffer (zero-copy).
    pub fn is_shared(&self) -> bool {
        self.blocks.is_shared()
    }
    /// Ternary value at `(r, c)`.
    pub fn get(&self, r: usize, c: usize) -> i8 {
        self.row_blocks(r)[c / QK_I2].code(c % QK_I2) as i8 - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_roundtrip_and_layout() {
        let vals: Vec<i8> = (0..128).map(|i| ((i * 7 % 3) as i8) - 1).collect();
        let b = BlockI2::from_ternary(&vals);
        let mut f = [0f32; 128];
        b.to_float(&mut f);
        for i in 0..128 {
            assert_eq!(f[i], vals[i] as f32);
        }
        // Element 0 in the top bits of byte 0, element 96 in the low bits of byte 0.
        let mut one = [0i8; 128];
        one[0] = 1;
        one[96] = -1;
        let b = BlockI2::from_ternary(&one);
        assert_eq!(b.qs[0], (2 << 6) | (1 << 4) | (1 << 2));
    }

    #[test]
    fn matrix_get_set_with_padding() {
        let vals: Vec<i8> = (0..3 * 130).map(|i| ((i % 3) as i8) - 1).collect();
        let m = TernaryMatrix::from_values(3, 130, &vals, 0.5);
        assert_eq!(m.cols_padded(), 256);
        for r in 0..3 {
            for c in 0..130 {
                assert_eq!(m.get(r, c), vals[r * 130 + c]);
            }
            // Padding is zero weight (code 1).
            assert_eq!(m.row_blocks(r)[1].code(127), 1);
        }
    }
}
