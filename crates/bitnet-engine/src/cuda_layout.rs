//! The GPU ternary weight layout (see `cuda/kernels.cu`) and a host twin of the GPU GEMM.
//!
//! Word `j` of a row holds columns `16j..16j+15` as 2-bit codes `c = w + 1`; column
//! `16j + 4k + b` sits in byte `b` at bit shift `2k`, so `(word >> 2k) & 0x03030303` lines four
//! codes up with four consecutive int8 activations for one `dp4a`. Padding columns are code 1
//! (zero). This module needs no GPU: it is compiled and tested in every build, so the packing
//! that the CUDA kernels rely on is checked against the CPU kernels on every CI run.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use bitnet_kernels::TernaryMatrix;
use rayon::prelude::*;

/// Columns per packed word.
pub(crate) const COLS_PER_WORD: usize = 16;

/// Words per row for `cols` columns.
pub(crate) fn words(cols: usize) -> usize {
    cols.div_ceil(COLS_PER_WORD)
}

/// Packs the rows of several matrices with the same column count, one after the other (a fused
/// projection such as q|k|v), into the GPU layout; returns the words and one scale per row.
pub(crate) fn pack_rows(mats: &[&TernaryMatrix]) -> (Vec<u32>, Vec<f32>) {
    let cols = mats.first().map_or(0, |m| m.cols());
    debug_assert!(mats.iter().all(|m| m.cols() == cols));
    let wpr = words(cols);
    let rows: usize = mats.iter().map(|m| m.rows()).sum();
    let mut out = vec![0u32; rows * wpr];
    let mut scales = Vec::with_capacity(rows);
    let mut start = 0;
    for m in mats {
        scales.extend(std::iter::repeat_n(m.scale(), m.rows()));
        let dst = &mut out[start * wpr..(start + m.rows()) * wpr];
        if wpr > 0 {
            dst.par_chunks_mut(wpr)
                .enumerate()
                .for_each(|(r, row)| pack_row(m, r, row));
        }
        start += m.rows();
    }
    (out, scales)
}

/// Row `r` of `m` into `out` (`words(cols)` words).
fn pack_row(m: &TernaryMatrix, r: usize, out: &mut [u32]) {
    let blocks = m.row_blocks(r);
    for (j, word) in out.iter_mut().enumerate() {
        let mut v = 0u32;
        for k in 0..4 {
            for b in 0..4 {
                let c = COLS_PER_WORD * j + 4 * k + b;
                let code = if c < m.cols() {
                    blocks[c / 128].code(c % 128) as u32
                } else {
                    1
                };
                v |= code << (8 * b + 2 * k);
            }
        }
        *word = v;
    }
}

/// Host twin of the `ternary_gemm` kernel for one output: row `r` of packed `w` (`wpr` words per
/// row) against a zero-padded int8 row `q` (`16 · wpr` values) with its scale and sum.
#[cfg(test)]
pub(crate) fn gemm_ref(
    w: &[u32],
    wpr: usize,
    r: usize,
    scale: f32,
    q: &[i8],
    sx: f32,
    sum: i32,
) -> f32 {
    let mut acc = 0i32;
    for j in 0..wpr {
        let wv = w[r * wpr + j];
        for k in 0..4 {
            let codes = (wv >> (2 * k)) & 0x0303_0303;
            for b in 0..4 {
                let c = ((codes >> (8 * b)) & 0xff) as i32;
                acc += c * q[16 * j + 4 * k + b] as i32;
            }
        }
    }
    (acc - sum) as f32 / sx * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_kernels::ops::ternary_matmul_with;
    use bitnet_kernels::{Kernel, QuantizedActs};
    use rand::{RngExt, SeedableRng};

    fn random_matrix(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, cols: usize) -> TernaryMatrix {
        let v: Vec<i8> = (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect();
        TernaryMatrix::from_values(rows, cols, &v, rng.random_range(0.01..2.0))
    }

    /// The packed layout through the kernel's formula gives exactly the CPU engine's
    /// ternary_matmul (scalar kernel), for fused matrices, odd widths and edge activations.
    #[test]
    fn packed_gemm_matches_cpu_kernel() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(cols, n) in &[(64usize, 3usize), (100, 2), (16, 1), (129, 4), (2560, 2)] {
            let a = random_matrix(&mut rng, 5, cols);
            let b = random_matrix(&mut rng, 3, cols);
            let (w, scales) = pack_rows(&[&a, &b]);
            let wpr = words(cols);
            assert_eq!(w.len(), 8 * wpr);
            let mut x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-3.0..3.0)).collect();
            if n > 1 {
                // Edge rows: all zero, and max magnitude.
                x[..cols].fill(0.0);
                x[cols..2 * cols]
                    .iter_mut()
                    .for_each(|v| *v = 1e30 * v.signum());
            }
            let mut acts = QuantizedActs::new();
            acts.quantize(&x, n, cols, a.cols_padded());
            for (m, first) in [(&a, 0usize), (&b, 5)] {
                let mut want = vec![0f32; n * m.rows()];
                ternary_matmul_with(Kernel::Scalar, m, &acts, &mut want);
                for t in 0..n {
                    let mut q = acts.row(t)[..cols].to_vec();
                    q.resize(16 * wpr, 0);
                    for r in 0..m.rows() {
                        let got = gemm_ref(
                            &w,
                            wpr,
                            first + r,
                            scales[first + r],
                            &q,
                            acts.scale(t),
                            acts.sum(t),
                        );
                        assert_eq!(
                            got.to_bits(),
                            want[t * m.rows() + r].to_bits(),
                            "cols {cols} t {t} r {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn padding_is_zero_code() {
        let m = TernaryMatrix::from_values(1, 3, &[-1, 0, 1], 1.0);
        let (w, _) = pack_rows(&[&m]);
        assert_eq!(w.len(), 1);
        // Column 0 (code 0) in byte 0, column 1 (code 1) in byte 1, column 2 (code 2) in byte
        // 2, padding (code 1) everywhere else.
        let want = (1u32 << 8)
            | (2 << 16)
            | (1 << 24)
            | (0x0101_0101 << 2)
            | (0x0101_0101 << 4)
            | (0x0101_0101 << 6);
        assert_eq!(w[0], want);
    }
}
