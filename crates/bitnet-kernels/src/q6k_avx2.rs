//! The Q6_K output head on AVX2, on int16 activations. Every path computes, per token, half
//! block and 32-bit lane, the same exact integer `E = Σ (q − 32)·sc·x` over the lane's 16
//! quants (4 consecutive quants of each of the half's four 32-quant groups), then
//! `acc = fma(f32(E), d, acc)` half block after half block and one horizontal sum: so a token's
//! logit has the same bits whatever the batch. `E` fits i32: `16 · 32·128 · 32767 < 2³¹` with
//! `|x| ≤ 32767` (the quantizer's range).
//!
//! * One token (decode, bound by memory): the int16 activations split into bytes,
//!   `x = 256·hi + lo` (hi signed, lo unsigned), so the 6-bit quants need no widening:
//!   `vpmaddubsw(q, hi) − 32·(hi pair sums)` and `vpmaddubsw(lo, q − 32)` give i16 pair sums that
//!   `vpmaddwd` multiplies by the two sub-block scales of the 32 quants; `E = 256·HI + LO` in
//!   wrapping i32 (exact, as the true value fits).
//! * Batches (bound by multiplies): a tile of rows is unpacked and scale-folded once per block,
//!   `w = (q − 32)·sc` in i16 (`|w| ≤ 4096`), split into even and odd quants (`slli`/`srai`), and
//!   every token of the batch takes one `vpmaddwd` per 16 quants against its even/odd-reordered
//!   int16 activations, two rows × four tokens per register block: twice the multiply-adds per
//!   instruction of the byte split, with the tile's quants and the tokens' activations read
//!   from L1.
//!
//! Layout: llama.cpp's `block_q6_K` (`formats::q6_k`). Scalar twin: the Q6_K `to_float` dot.

#![cfg(target_arch = "x86_64")]

use crate::formats::BlockQ6K;
use crate::x86::{hsum_ps, prefetch_ahead, q6k_half, q6k_half_unsigned};
use std::arch::x86_64::*;

/// One token's int16 activations prepared for [`q6k_split_rows`] (`|x| ≤ 32767`, a length that
/// is a multiple of 32):
/// * `hi`, `lo`: `x = 256·hi + lo` in element order (the one-token path);
/// * `c2h`: `32·(hi[2i] + hi[2i+1])` for every pair, the `− 32` of the quants against `hi`;
/// * `eo`: the values with every 32-value group reordered as its 16 even-position values, then
///   its 16 odd-position ones (the batch path's i16 quant vectors).
#[derive(Clone, Debug, Default)]
pub struct SplitActs {
    hi: Vec<i8>,
    lo: Vec<u8>,
    c2h: Vec<i16>,
    eo: Vec<i16>,
}

impl SplitActs {
    /// No values.
    pub const EMPTY: SplitActs = SplitActs {
        hi: Vec::new(),
        lo: Vec::new(),
        c2h: Vec::new(),
        eo: Vec::new(),
    };

    /// Prepares `x16` (see [`SplitActs::set`]).
    pub fn new(x16: &[i16]) -> SplitActs {
        let mut s = SplitActs::default();
        s.set(x16);
        s
    }

    /// [`SplitActs::new`] into this one's buffers (no allocation once they are large enough).
    ///
    /// # Panics
    /// If the length is not a multiple of 32 or a value is −32768 (outside the quantizer's
    /// range, where the exactness bound above would not hold).
    pub fn set(&mut self, x16: &[i16]) {
        assert!(
            x16.len().is_multiple_of(32),
            "SplitActs: length not a multiple of 32"
        );
        assert!(
            !x16.contains(&i16::MIN),
            "SplitActs: -32768 is outside the int16 quantizer's range"
        );
        self.hi.clear();
        self.lo.clear();
        self.c2h.clear();
        self.eo.clear();
        self.hi.extend(x16.iter().map(|&v| (v >> 8) as i8));
        self.lo.extend(x16.iter().map(|&v| v as u8));
        self.c2h.extend(
            x16.chunks_exact(2)
                .map(|p| 32 * ((p[0] >> 8) + (p[1] >> 8))),
        );
        for g in x16.chunks_exact(32) {
            self.eo.extend(g.iter().step_by(2));
            self.eo.extend(g.iter().skip(1).step_by(2));
        }
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

/// The scale-pair vectors of a block (vector j: words 0–7 `scales[2j]`, words 8–15
/// `scales[2j+1]`, the sub-blocks of quants 32j..32j+16 and 32j+16..32j+32) and `d`.
#[inline(always)]
unsafe fn scales(b: &BlockQ6K, picks: &[__m256i; 4]) -> ([__m256i; 8], __m256) {
    // SAFETY: reads the block's 16 scale bytes; callers enable AVX2/F16C.
    unsafe {
        let sc8 = _mm_loadu_si128(b.scales.as_ptr() as *const __m128i);
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        let lo8 = _mm256_permute4x64_epi64::<0b01_00_01_00>(sc16); // scales 0-7 in both halves
        let hi8 = _mm256_permute4x64_epi64::<0b11_10_11_10>(sc16); // scales 8-15
        let sc = std::array::from_fn(|j| {
            _mm256_shuffle_epi8(if j < 4 { lo8 } else { hi8 }, picks[j % 4])
        });
        // F16C: `half` converts in software unless the whole build targets F16C.
        let d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(b.d as i32)));
        (sc, d)
    }
}

/// One token, one half block (quants `qu`, unsigned; the half's four scale vectors `sc`; its
/// first value at `at`): the lane sums `E` from the byte-split activations.
#[inline(always)]
unsafe fn half_split(qu: &[__m256i; 4], sc: &[__m256i], x: &SplitActs, at: usize) -> __m256i {
    // SAFETY: the caller enables AVX2 and checked that `x` holds values `at..at + 128`; `sc`
    // holds four vectors (indexing checks).
    unsafe {
        let c32 = _mm256_set1_epi8(32);
        let (mut hi, mut lo) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for k in 0..4 {
            let at = at + 32 * k;
            let xh = _mm256_loadu_si256(x.hi.as_ptr().add(at) as *const __m256i);
            let xl = _mm256_loadu_si256(x.lo.as_ptr().add(at) as *const __m256i);
            let c2 = _mm256_loadu_si256(x.c2h.as_ptr().add(at / 2) as *const __m256i);
            // |pair| ≤ 2·32·128 after the correction (≤ 2·63·128 before: no saturation).
            let ph = _mm256_sub_epi16(_mm256_maddubs_epi16(qu[k], xh), c2);
            // |pair| ≤ 2·255·32.
            let pl = _mm256_maddubs_epi16(xl, _mm256_sub_epi8(qu[k], c32));
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(ph, sc[k]));
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(pl, sc[k]));
        }
        // Wrapping i32: exact, because the true 256·HI + LO fits.
        _mm256_add_epi32(_mm256_slli_epi32::<8>(hi), lo)
    }
}

/// One token against block `bi` of a row: `acc` after both halves.
#[inline(always)]
unsafe fn block_split(
    b: &BlockQ6K,
    picks: &[__m256i; 4],
    x: &SplitActs,
    bi: usize,
    acc: __m256,
) -> __m256 {
    // 210-byte blocks: four lines cover one.
    prefetch_ahead(b, 4);
    // SAFETY: forwarded from the callers (AVX2/FMA/F16C enabled, `x` holds block `bi`).
    unsafe {
        let (sc, d) = scales(b, picks);
        let e0 = half_split(&q6k_half_unsigned(b, 0), &sc[..4], x, 256 * bi);
        let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e0), d, acc);
        let e1 = half_split(&q6k_half_unsigned(b, 1), &sc[4..], x, 256 * bi + 128);
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(e1), d, acc)
    }
}

/// A block unpacked for a batch: `w[2j]` and `w[2j+1]` are the even- and odd-position quants
/// of group j (quants 32j..32j+32) as `(q − 32)·sc` in i16 (word k: quant 32j + 2k, or + 1),
/// and `d`.
#[inline(always)]
unsafe fn widen(b: &BlockQ6K, picks: &[__m256i; 4]) -> ([__m256i; 16], __m256) {
    prefetch_ahead(b, 4);
    // SAFETY: reads inside the block; the callers enable AVX2/F16C.
    unsafe {
        let (sc, d) = scales(b, picks);
        let mut w = [_mm256_setzero_si256(); 16];
        for h in 0..2 {
            for (k, s) in q6k_half(b, h).into_iter().enumerate() {
                let j = 4 * h + k;
                let even = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(s));
                let odd = _mm256_srai_epi16::<8>(s);
                w[2 * j] = _mm256_mullo_epi16(even, sc[j]);
                w[2 * j + 1] = _mm256_mullo_epi16(odd, sc[j]);
            }
        }
        (w, d)
    }
}

/// `R` rows (widened blocks `w`, scales `d`) × `G` tokens (`xs[t0..]`), half `h` of the block whose
/// first value is `at`: per (row, token) the lane sums `E` of `vpmaddwd` against the token's
/// even/odd-reordered values, then `acc[r][t] = fma(f32(E), d_r, acc[r][t])`.
#[inline(always)]
unsafe fn group<const R: usize, const G: usize>(
    w: &[[__m256i; 16]],
    d: &[__m256],
    xs: &[&SplitActs],
    t0: usize,
    at: usize,
    h: usize,
    acc: &mut [[__m256; 16]],
) {
    // SAFETY: the caller enables AVX2/FMA and checked that every `xs[t]` holds values
    // `at..at + 128`; `w`, `d`, `acc` hold `R` rows and `acc` rows ≥ G tokens (indexing
    // checks, outside the inner loop).
    unsafe {
        let xp: [*const i16; G] = std::array::from_fn(|t| xs[t0 + t].eo.as_ptr().add(at));
        let mut e = [[_mm256_setzero_si256(); G]; R];
        // The half's eight i16 vectors (four groups × even/odd) in a loop that is not
        // unrolled: unrolled, the compiler hoisted every activation load and spilled them.
        let nv = std::hint::black_box(8usize);
        for v in 0..nv.min(8) {
            let mut wv = [_mm256_setzero_si256(); R];
            for r in 0..R {
                wv[r] = w[r][8 * h + v];
            }
            for t in 0..G {
                let x = _mm256_loadu_si256(xp[t].add(16 * v) as *const __m256i);
                for r in 0..R {
                    e[r][t] = _mm256_add_epi32(e[r][t], _mm256_madd_epi16(wv[r], x));
                }
            }
        }
        for r in 0..R {
            for t in 0..G {
                acc[r][t0 + t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e[r][t]), d[r], acc[r][t0 + t]);
            }
        }
    }
}

/// Rows per tile of the batch path: the tile's widened blocks (512 B per row) and f32
/// accumulators (16 tokens · 32 B per row) stay in L1 next to the tokens' block values.
const TILE_ROWS: usize = 8;

/// `R` rows of a tile against every token of `xs`: tokens in fours, then a pair, then one.
#[inline(always)]
unsafe fn tokens<const R: usize>(
    w: &[[__m256i; 16]],
    d: &[__m256],
    xs: &[&SplitActs],
    at: usize,
    h: usize,
    acc: &mut [[__m256; 16]],
) {
    // SAFETY: forwarded from `rows_batch`.
    unsafe {
        let mut t = 0;
        while t + 4 <= xs.len() {
            group::<R, 4>(w, d, xs, t, at, h, acc);
            t += 4;
        }
        if t + 2 <= xs.len() {
            group::<R, 2>(w, d, xs, t, at, h, acc);
            t += 2;
        }
        if t < xs.len() {
            group::<R, 1>(w, d, xs, t, at, h, acc);
        }
    }
}

/// The batch path of [`q6k_split_rows`] (2 ≤ n ≤ 16 tokens): tiles of [`TILE_ROWS`] rows; per
/// block, the tile's rows are widened once, then every (row pair, token group) of each half
/// block goes through [`group`].
#[inline(always)]
unsafe fn rows_batch(blocks: &[BlockQ6K], bpr: usize, xs: &[&SplitActs], out: &mut [f32]) {
    let n = xs.len();
    let rows = out.len() / n;
    // SAFETY (whole block): forwarded from `q6k_split_rows` (features enabled, shapes asserted).
    unsafe {
        let picks = pair_picks();
        let mut w = [[_mm256_setzero_si256(); 16]; TILE_ROWS];
        let mut d = [_mm256_setzero_ps(); TILE_ROWS];
        let mut acc = [[_mm256_setzero_ps(); 16]; TILE_ROWS];
        for r0 in (0..rows).step_by(TILE_ROWS) {
            let rt = (rows - r0).min(TILE_ROWS);
            for a in &mut acc[..rt] {
                *a = [_mm256_setzero_ps(); 16];
            }
            for bi in 0..bpr {
                for i in 0..rt {
                    (w[i], d[i]) = widen(&blocks[(r0 + i) * bpr + bi], &picks);
                }
                for h in 0..2 {
                    let at = 256 * bi + 128 * h;
                    let mut i = 0;
                    while i + 2 <= rt {
                        tokens::<2>(&w[i..], &d[i..], xs, at, h, &mut acc[i..]);
                        i += 2;
                    }
                    if i < rt {
                        tokens::<1>(&w[i..], &d[i..], xs, at, h, &mut acc[i..]);
                    }
                }
            }
            // The sums leave four tokens at a time ([`hsum4_ps`] has `hsum_ps`'s bits).
            for (i, a) in acc[..rt].iter().enumerate() {
                let o = &mut out[(r0 + i) * n..(r0 + i + 1) * n];
                let mut t = 0;
                while t + 4 <= n {
                    let v = [a[t], a[t + 1], a[t + 2], a[t + 3]];
                    _mm_storeu_ps(o[t..t + 4].as_mut_ptr(), hsum4_ps(&v));
                    t += 4;
                }
                for (o, v) in o[t..].iter_mut().zip(&a[t..]) {
                    *o = hsum_ps(*v);
                }
            }
        }
    }
}

/// The Q6_K head for consecutive rows of `bpr` blocks each (`blocks` holds them back to back)
/// and `n = xs.len()` tokens: `out[r·n + t] = Σ w_r·x_t` (to be divided by the int16 scale).
/// One token takes the byte-split path, rows in fours; a batch the scale-folded i16 path (see
/// the module). Both compute the same exact lane sums and combine them with the same f32
/// operations in the same order, so a token's result is bit-identical to its one-token run.
/// Error: f32 rounding of the half-block sums (relative ~2⁻²⁴), far below the int16
/// quantization of the activations.
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
            && xs.iter().all(|x| x.len() >= bpr * 256)
            && blocks.len() >= out.len() / n * bpr,
        "q6k_split_rows: shapes"
    );
    // SAFETY (whole block): AVX2/FMA/F16C enabled; the kernels read each block inside it and
    // token data inside the lengths asserted above.
    unsafe {
        if n > 1 {
            rows_batch(blocks, bpr, xs, out);
            return;
        }
        let picks = pair_picks();
        let x = xs[0];
        // Decode: rows in fours, the accumulators in registers and the four horizontal sums in
        // one pass (short rows — 512 columns: two blocks — spent ~10 % of the head in one sum
        // per row).
        let full = out.len() / 4 * 4;
        for r0 in (0..full).step_by(4) {
            let mut acc = [_mm256_setzero_ps(); 4];
            for bi in 0..bpr {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = block_split(&blocks[(r0 + i) * bpr + bi], &picks, x, bi, *a);
                }
            }
            _mm_storeu_ps(out[r0..r0 + 4].as_mut_ptr(), hsum4_ps(&acc));
        }
        for r in full..out.len() {
            let mut acc = _mm256_setzero_ps();
            for (bi, b) in blocks[r * bpr..(r + 1) * bpr].iter().enumerate() {
                acc = block_split(b, &picks, x, bi, acc);
            }
            out[r] = hsum_ps(acc);
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
