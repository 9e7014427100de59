//! The Q6_K output head on AVX2 with int16 activations split into bytes, so that the 6-bit
//! quants never need widening to i16: `x = 256·hi + lo` (hi signed, lo unsigned), and per 32
//! quants `vpmaddubsw(q, hi)` and `vpmaddubsw(lo, q)` (q = the stored quant, 0..=63) give i16
//! pair sums that `vpmaddwd` multiplies by the two sub-block scales of the 32 quants. The `− 32`
//! of Q6_K is applied once per sub-block from the activations' 16-value sums. Layout: llama.cpp's
//! `block_q6_K` (`formats::q6_k`). Scalar twin: the Q6_K `to_float` dot.

#![cfg(target_arch = "x86_64")]

use crate::formats::BlockQ6K;
use crate::x86::{hsum_ps, prefetch_ahead, q6k_half_unsigned};
use std::arch::x86_64::*;

/// One token's int16 activations split for [`q6k_split_rows`]: `x = 256·hi + lo` for every
/// value, and the sum of every 16 consecutive values (exact in f32: |Σ| ≤ 16·32768 < 2²⁴).
#[derive(Clone, Debug, Default)]
pub struct SplitActs {
    hi: Vec<i8>,
    lo: Vec<u8>,
    gsum: Vec<f32>,
}

impl SplitActs {
    /// No values.
    pub const EMPTY: SplitActs = SplitActs {
        hi: Vec::new(),
        lo: Vec::new(),
        gsum: Vec::new(),
    };

    /// Splits `x16` (its length a multiple of 16).
    pub fn new(x16: &[i16]) -> SplitActs {
        let mut s = SplitActs::default();
        s.set(x16);
        s
    }

    /// [`SplitActs::new`] into this one's buffers.
    pub fn set(&mut self, x16: &[i16]) {
        assert!(
            x16.len().is_multiple_of(16),
            "SplitActs: length not a multiple of 16"
        );
        self.hi.clear();
        self.lo.clear();
        self.gsum.clear();
        self.hi.extend(x16.iter().map(|&v| (v >> 8) as i8));
        self.lo.extend(x16.iter().map(|&v| v as u8));
        self.gsum.extend(
            x16.chunks_exact(16)
                .map(|g| g.iter().map(|&v| v as i32).sum::<i32>() as f32),
        );
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.hi.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hi.is_empty()
    }
}

/// `vpshufb` selectors for the scale pairs: selector m puts i16 word 2m of its source's low
/// 128-bit half in every word of the low half, and word 2m + 1 of the high half in every word
/// of the high half.
#[inline(always)]
fn pair_picks() -> [__m256i; 4] {
    std::array::from_fn(|m| {
        let w = |k: u8| i16::from_le_bytes([2 * k, 2 * k + 1]);
        let (lo, hi) = (w(2 * m as u8), w(2 * m as u8 + 1));
        // SAFETY: AVX is part of the callers' enabled features (AVX2); no memory access.
        unsafe { _mm256_setr_m128i(_mm_set1_epi16(lo), _mm_set1_epi16(hi)) }
    })
}

/// A block unpacked for every token: the 256 stored quants as eight vectors of 32 bytes
/// (0..=63), the scale-pair vectors (vector j: words 0–7 `scales[2j]`, words 8–15
/// `scales[2j+1]`, the sub-blocks of quants 32j..32j+16 and 32j+16..32j+32), the 16 scales in
/// f32 (two vectors) and `d`.
struct Unpacked {
    q: [__m256i; 8],
    sc: [__m256i; 8],
    scf: [__m256; 2],
    d: __m256,
}

#[inline(always)]
unsafe fn unpack(b: &BlockQ6K, picks: &[__m256i; 4]) -> Unpacked {
    // 210-byte blocks: four lines cover one.
    prefetch_ahead(b, 4);
    // SAFETY: reads inside the block (quants, 16 scale bytes); callers enable AVX2/FMA/F16C.
    unsafe {
        let (h0, h1) = (q6k_half_unsigned(b, 0), q6k_half_unsigned(b, 1));
        let sc8 = _mm_loadu_si128(b.scales.as_ptr() as *const __m128i);
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        let lo8 = _mm256_permute4x64_epi64::<0b01_00_01_00>(sc16); // scales 0-7 in both halves
        let hi8 = _mm256_permute4x64_epi64::<0b11_10_11_10>(sc16); // scales 8-15
        Unpacked {
            q: [h0[0], h0[1], h0[2], h0[3], h1[0], h1[1], h1[2], h1[3]],
            sc: std::array::from_fn(|j| {
                _mm256_shuffle_epi8(if j < 4 { lo8 } else { hi8 }, picks[j % 4])
            }),
            scf: [
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc8)),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(sc8))),
            ],
            // F16C: `half` converts in software unless the whole build targets F16C.
            d: _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(b.d as i32))),
        }
    }
}

/// Block `bi` for `G` tokens: per token `acc + d · (256·Σhi + Σlo − 32·Σ_g sc_g·Σx_g)`
/// lane-wise, each quant and scale vector loaded once for the `G` tokens. The i32 lane sums are
/// exact (hi pairs ≤ 2·63·128, lo pairs ≤ 2·255·63 < 2¹⁵, then ≤ 8 `vpmaddwd` of two pairs ×
/// |sc| ≤ 128: < 2²⁷); the combination is f32, the same operations for every token whatever `G`.
#[inline(always)]
unsafe fn block<const G: usize>(
    u: &Unpacked,
    xs: [&SplitActs; G],
    bi: usize,
    acc: [__m256; G],
) -> [__m256; G] {
    // SAFETY: the caller enables AVX2/FMA and checked that every `xs[k]` holds block `bi` (256
    // values, 16 group sums).
    unsafe {
        let mut hi = [_mm256_setzero_si256(); G];
        let mut lo = [_mm256_setzero_si256(); G];
        for j in 0..8 {
            let (q, sc) = (u.q[j], u.sc[j]);
            for k in 0..G {
                let at = 256 * bi + 32 * j;
                let xh = _mm256_loadu_si256(xs[k].hi.as_ptr().add(at) as *const __m256i);
                let xl = _mm256_loadu_si256(xs[k].lo.as_ptr().add(at) as *const __m256i);
                hi[k] = _mm256_add_epi32(hi[k], _mm256_madd_epi16(_mm256_maddubs_epi16(q, xh), sc));
                lo[k] = _mm256_add_epi32(lo[k], _mm256_madd_epi16(_mm256_maddubs_epi16(xl, q), sc));
            }
        }
        // A loop, not `array::from_fn`: a closure would not inherit the caller's target
        // features, and its intrinsics would become calls.
        let mut out = acc;
        for k in 0..G {
            let g = xs[k].gsum.as_ptr().add(16 * bi);
            let corr = _mm256_fmadd_ps(
                u.scf[0],
                _mm256_loadu_ps(g),
                _mm256_mul_ps(u.scf[1], _mm256_loadu_ps(g.add(8))),
            );
            let v = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(hi[k]),
                _mm256_set1_ps(256.0),
                _mm256_cvtepi32_ps(lo[k]),
            );
            let v = _mm256_fnmadd_ps(_mm256_set1_ps(32.0), corr, v);
            out[k] = _mm256_fmadd_ps(v, u.d, acc[k]);
        }
        out
    }
}

/// The Q6_K head for consecutive rows of `bpr` blocks each (`blocks` holds them back to back)
/// and `n = xs.len()` tokens: `out[r·n + t] = Σ w_r·x_t` (to be divided by the int16 scale).
/// A block is unpacked once for all tokens, and every token goes through the same operations
/// in the same order whatever the batch, so a token's result is bit-identical to its
/// one-token run. Error: f32 rounding of the block combination (relative ~2⁻²⁴), far below
/// the int16 quantization of the activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `out.len()` is a multiple of `n` (1 ≤ n ≤ 16),
/// `blocks.len() >= out.len() / n · bpr` and every `xs[t].len() >= bpr·256` (asserted).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6k_split_rows(blocks: &[BlockQ6K], bpr: usize, xs: &[&SplitActs], out: &mut [f32]) {
    let n = xs.len();
    assert!(
        (1..=16).contains(&n)
            && out.len().is_multiple_of(n)
            && xs
                .iter()
                .all(|x| x.len() >= bpr * 256 && x.gsum.len() >= bpr * 16)
            && blocks.len() >= out.len() / n * bpr,
        "q6k_split_rows: shapes"
    );
    // SAFETY (whole block): AVX2/FMA enabled; `unpack` reads inside each block and `block`
    // reads token data inside the lengths asserted above.
    unsafe {
        let picks = pair_picks();
        if n == 1 {
            // Decode: rows in fours, the accumulators in registers and the four horizontal
            // sums in one pass (short rows — 512 columns: two blocks — spent ~10 % of the
            // head in one sum per row).
            let full = out.len() / 4 * 4;
            for r0 in (0..full).step_by(4) {
                let mut acc = [_mm256_setzero_ps(); 4];
                for bi in 0..bpr {
                    for (i, a) in acc.iter_mut().enumerate() {
                        let b = &blocks[(r0 + i) * bpr + bi];
                        [*a] = block::<1>(&unpack(b, &picks), [xs[0]], bi, [*a]);
                    }
                }
                _mm_storeu_ps(out[r0..r0 + 4].as_mut_ptr(), hsum4_ps(&acc));
            }
            for r in full..out.len() {
                let mut acc = _mm256_setzero_ps();
                for (bi, b) in blocks[r * bpr..(r + 1) * bpr].iter().enumerate() {
                    [acc] = block::<1>(&unpack(b, &picks), [xs[0]], bi, [acc]);
                }
                out[r] = hsum_ps(acc);
            }
            return;
        }
        let mut acc = [_mm256_setzero_ps(); 16];
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            acc[..n].fill(_mm256_setzero_ps());
            for (bi, b) in blocks[r * bpr..(r + 1) * bpr].iter().enumerate() {
                let u = unpack(b, &picks);
                // Tokens in fours (eight i32 accumulators, the quant and scale vector and two
                // activation vectors: 12 of the 16 registers), then a pair, then one: a quant
                // and scale vector serve four tokens per load.
                let mut t = 0;
                while t + 4 <= n {
                    let a = [acc[t], acc[t + 1], acc[t + 2], acc[t + 3]];
                    let x = [xs[t], xs[t + 1], xs[t + 2], xs[t + 3]];
                    [acc[t], acc[t + 1], acc[t + 2], acc[t + 3]] = block::<4>(&u, x, bi, a);
                    t += 4;
                }
                while t + 2 <= n {
                    [acc[t], acc[t + 1]] =
                        block::<2>(&u, [xs[t], xs[t + 1]], bi, [acc[t], acc[t + 1]]);
                    t += 2;
                }
                if t < n {
                    [acc[t]] = block::<1>(&u, [xs[t]], bi, [acc[t]]);
                }
            }
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = hsum_ps(*a);
            }
        }
    }
}

/// [`hsum_ps`] of four vectors at once, each sum added in the same order as `hsum_ps` adds it
/// (`(q0 + q2) + (q1 + q3)` with `q_i = v_i + v_{i+4}`), so a row's logit has the same bits
/// whether it was summed alone or in a group of four.
#[inline(always)]
unsafe fn hsum4_ps(a: &[__m256; 4]) -> __m128 {
    // SAFETY: callers enable AVX2 (hence AVX); no memory access.
    unsafe {
        let mut q = [_mm_setzero_ps(); 4];
        for (q, v) in q.iter_mut().zip(a) {
            *q = _mm_add_ps(_mm256_castps256_ps128(*v), _mm256_extractf128_ps(*v, 1));
        }
        // s0 = [q00 + q02, q10 + q12, q01 + q03, q11 + q13], s1 the same for rows 2 and 3.
        let s0 = _mm_add_ps(_mm_unpacklo_ps(q[0], q[1]), _mm_unpackhi_ps(q[0], q[1]));
        let s1 = _mm_add_ps(_mm_unpacklo_ps(q[2], q[3]), _mm_unpackhi_ps(q[2], q[3]));
        _mm_add_ps(_mm_movelh_ps(s0, s1), _mm_movehl_ps(s1, s0))
    }
}
