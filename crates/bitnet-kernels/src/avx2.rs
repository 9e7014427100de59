//! AVX2 ternary kernels (no AVX-512): the GEMV of decode and the GEMM of batches and prompts,
//! for CPUs such as AMD Zen 1–3 or Intel client parts, where AVX2 is the best path (the Q6_K
//! head for them is [`crate::q6k_avx2`]). Layout: I2_S x86 (see [`crate::x86`]: byte m of a
//! [`BlockI2`] holds the 2-bit codes of elements m, m+32, m+64, m+96 at shifts 6, 4, 2, 0).
//! Scalar twin: [`BlockI2::vec_dot_i8`].

#![cfg(target_arch = "x86_64")]

use crate::ternary::BlockI2;
use crate::x86::{hsum, load32, prefetch_ahead, unpack};
use std::arch::x86_64::*;

/// Blocks whose i16 sums [`block_dot16`] adds up before they are widened to i32: a block adds at
/// most 4·512 = 2048 to a lane, so 15 blocks stay ≤ 30720 < 2¹⁵.
const I16_BLOCKS: usize = 15;

/// `Σ c·q` of one block's four code vectors with the 128 activations at `at`, as 16 i16 pair
/// sums: `vpmaddubsw` (u8 codes ≤ 2 × i8 → i16 pairs, |pair| ≤ 2·2·128 = 512), the four summed
/// in i16 (≤ 2048: no saturation). Callers add up to [`I16_BLOCKS`] of these in i16, then widen
/// with [`widen`].
#[inline(always)]
unsafe fn block_dot16(c: &[__m256i; 4], q: &[i8], at: usize) -> __m256i {
    // SAFETY: callers enable AVX2 and pass `at + 128 <= q.len()`.
    unsafe {
        let p0 = _mm256_maddubs_epi16(c[0], load32(q, at));
        let p1 = _mm256_maddubs_epi16(c[1], load32(q, at + 32));
        let p2 = _mm256_maddubs_epi16(c[2], load32(q, at + 64));
        let p3 = _mm256_maddubs_epi16(c[3], load32(q, at + 96));
        _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3))
    }
}

/// `acc + (i16 pairs of s summed to i32)` (`vpmaddwd` with ones).
#[inline(always)]
unsafe fn widen(acc: __m256i, s: __m256i) -> __m256i {
    // SAFETY: callers enable AVX2.
    unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1))) }
}

/// `Σ c·q` of one weight row with `out.len()` activation rows `q[t·stride..]` (AVX2). Tokens go
/// in register blocks of 8/4/2/1: a block's codes are unpacked once per register block instead
/// of once per token (the unpack is half of the work of one token).
///
/// # Safety
/// The CPU must support AVX2; `q` must hold `(out.len() − 1)·stride + blocks.len()·128` values.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_avx2(blocks: &[BlockI2], q: &[i8], stride: usize, out: &mut [i32]) {
    let mut t0 = 0;
    while t0 < out.len() {
        let (q, o) = (&q[t0 * stride..], &mut out[t0..]);
        // SAFETY: AVX2 is enabled for this function; `q` holds the rows (caller contract).
        t0 += unsafe {
            match o.len() {
                8.. => tokens::<8>(blocks, q, stride, o),
                4..=7 => tokens::<4>(blocks, q, stride, o),
                2 | 3 => tokens::<2>(blocks, q, stride, o),
                _ => tokens::<1>(blocks, q, stride, o),
            }
        };
    }
}

/// `N` activation rows against one weight row; returns `N`. Per token, blocks are summed in
/// i16 ([`I16_BLOCKS`] at a time), then widened: four `vpmaddubsw` and four adds per block and
/// token.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tokens<const N: usize>(
    blocks: &[BlockI2],
    q: &[i8],
    stride: usize,
    out: &mut [i32],
) -> usize {
    // SAFETY: AVX2 enabled (the callers, `dot_avx2` and `gemv_avx2`, enable it); `q` holds N
    // rows of `blocks.len()·128` values at `stride` (caller contract).
    unsafe {
        let mut acc = [_mm256_setzero_si256(); N];
        for (ci, chunk) in blocks.chunks(I16_BLOCKS).enumerate() {
            let mut s16 = [_mm256_setzero_si256(); N];
            for (j, b) in chunk.iter().enumerate() {
                prefetch_ahead(b, 1);
                let c = unpack(&b.qs);
                let base = (ci * I16_BLOCKS + j) * 128;
                for (k, s) in s16.iter_mut().enumerate() {
                    *s = _mm256_add_epi16(*s, block_dot16(&c, q, k * stride + base));
                }
            }
            for (a, s) in acc.iter_mut().zip(&s16) {
                *a = widen(*a, *s);
            }
        }
        // The sums of 8 or 4 tokens leave in one vector store: the epilogue then reads them
        // with one vector load, which a store forwards to (eight scalar stores did not: the
        // stall was ~4 % of an AVX2 prefill).
        match N {
            8 => _mm256_storeu_si256(out[..8].as_mut_ptr() as *mut __m256i, hsum8(&acc)),
            4 => _mm_storeu_si128(out[..4].as_mut_ptr() as *mut __m128i, hsum4(&acc)),
            _ => {
                for (o, a) in out.iter_mut().zip(&acc) {
                    *o = hsum(*a);
                }
            }
        }
    }
    N
}

/// The lane sums of `a[0..4]` as four i32 (an `hadd` tree).
#[inline(always)]
unsafe fn hsum4(a: &[__m256i]) -> __m128i {
    // SAFETY: callers enable AVX2 and pass at least four vectors (slice indexing checks).
    unsafe {
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
    }
}

/// The lane sums of `a[0..8]` as eight i32: per 128-bit half, `hadd` twice gives the partial
/// sums of four vectors; the halves of the two results are then added across.
#[inline(always)]
unsafe fn hsum8(a: &[__m256i]) -> __m256i {
    // SAFETY: callers enable AVX2 and pass at least eight vectors (slice indexing checks).
    unsafe {
        let t0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
        let t1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(t0, t1),
            _mm256_permute2x128_si256::<0x31>(t0, t1),
        )
    }
}

/// Decode GEMV: `out[r] = Σ c·q` for `out.len()` consecutive weight rows of `bpr` blocks each
/// (`blocks` holds them back to back) against one activation row, four rows at a time: four
/// independent accumulator chains and one combined horizontal sum for the four rows, so short
/// rows (512 columns: four blocks) do not pay a call and a reduction each.
///
/// # Safety
/// The CPU must support AVX2; `blocks.len() >= out.len()·bpr` and `q.len() >= bpr·128`
/// (asserted).
#[target_feature(enable = "avx2")]
pub unsafe fn gemv_avx2(blocks: &[BlockI2], bpr: usize, q: &[i8], out: &mut [i32]) {
    assert!(
        blocks.len() >= out.len() * bpr && q.len() >= bpr * 128,
        "gemv_avx2: shapes"
    );
    let full = out.len() / 4 * 4;
    // SAFETY (whole block): AVX2 enabled; rows r0..r0+4 lie inside `blocks` and every
    // activation load reads one whole 128-value block of `q` (asserted above).
    unsafe {
        for r0 in (0..full).step_by(4) {
            let mut acc = [_mm256_setzero_si256(); 4];
            for c0 in (0..bpr).step_by(I16_BLOCKS) {
                let mut s16 = [_mm256_setzero_si256(); 4];
                for bi in c0..(c0 + I16_BLOCKS).min(bpr) {
                    for (i, s) in s16.iter_mut().enumerate() {
                        let b = blocks.get_unchecked((r0 + i) * bpr + bi);
                        prefetch_ahead(b, 1);
                        let c = unpack(&b.qs);
                        *s = _mm256_add_epi16(*s, block_dot16(&c, q, bi * 128));
                    }
                }
                for (a, s) in acc.iter_mut().zip(&s16) {
                    *a = widen(*a, *s);
                }
            }
            _mm_storeu_si128(out.as_mut_ptr().add(r0) as *mut __m128i, hsum4(&acc));
        }
        for r in full..out.len() {
            tokens::<1>(&blocks[r * bpr..(r + 1) * bpr], q, 0, &mut out[r..r + 1]);
        }
    }
}
