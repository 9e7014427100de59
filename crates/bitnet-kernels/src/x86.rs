//! x86-64 ternary dot products over [`BlockI2`] (I2_S x86 layout: byte m of a block holds the
//! 2-bit codes of elements m, m+32, m+64, m+96 at shifts 6, 4, 2, 0). Each computes `Σ c·q` over
//! whole blocks; callers subtract `Σ q`. Scalar twin: [`BlockI2::vec_dot_i8`].

#![cfg(target_arch = "x86_64")]

use crate::ternary::BlockI2;
use std::arch::x86_64::*;

/// Unpacks a block's 32 code bytes into four vectors of 32 codes (elements 0-31 … 96-127).
#[inline(always)]
pub(crate) unsafe fn unpack(qs: &[u8; 32]) -> [__m256i; 4] {
    // SAFETY: `qs` is 32 readable bytes; unaligned load.
    let b = unsafe { _mm256_loadu_si256(qs.as_ptr() as *const __m256i) };
    let m = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(_mm256_srli_epi16(b, 6), m),
        _mm256_and_si256(_mm256_srli_epi16(b, 4), m),
        _mm256_and_si256(_mm256_srli_epi16(b, 2), m),
        _mm256_and_si256(b, m),
    ]
}

/// How far ahead of the current read the streaming kernels prefetch weights, in bytes. Rows are
/// short (640 bytes of I2_S for a 2560-wide row) and the hardware prefetchers stop at page
/// boundaries, so without this a decode step waits on DRAM latency at half the machine's read
/// bandwidth (measured on a 2-core Xeon: 2B-4T decode 6.0 → 10.8 tokens/s at 1 thread). Weights are
/// laid out row after row, so the address ahead is the next rows' data; past a tensor's end the
/// prefetch is a hint that cannot fault. The lines go to L2 (`prefetcht1`), not L1: a `prefetcht0`
/// holds one of L1's few miss buffers for a whole DRAM round trip, which capped a Zen 4 host at
/// ~12 GB/s of its ~23 GB/s (2B-4T decode 12.6 → 23 tokens/s at 1 thread); from L2 the loads
/// themselves are short. 16 KiB ahead measured a little better than 8 KiB there at 2 threads.
const PREFETCH_AHEAD: usize = 16384;

/// Prefetches `lines` cache lines into L2 starting [`PREFETCH_AHEAD`] bytes after `p` (no memory access
/// is made through `p`; `wrapping_add` keeps the pointer arithmetic defined).
#[inline(always)]
pub(crate) fn prefetch_ahead<T>(p: *const T, lines: usize) {
    let p = (p as *const i8).wrapping_add(PREFETCH_AHEAD);
    for l in 0..lines {
        // SAFETY: SSE is part of the x86-64 baseline, and a prefetch never faults, whatever the
        // address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(64 * l)) };
    }
}

#[inline(always)]
pub(crate) unsafe fn load32(q: &[i8], at: usize) -> __m256i {
    debug_assert!(at + 32 <= q.len());
    // SAFETY: callers pass `at + 32 <= q.len()` (whole blocks of the activation row).
    unsafe { _mm256_loadu_si256(q.as_ptr().add(at) as *const __m256i) }
}

#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256i) -> i32 {
    let lo = _mm256_castsi256_si128(v);
    let hi = _mm256_extracti128_si256(v, 1);
    let s = _mm_add_epi32(lo, hi);
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// `Σ c·q` for each activation row against one weight row (AVX-512 VNNI, 256-bit `vpdpbusd`:
/// u8 × i8 summed straight into i32 lanes, no intermediate i16). Codes of a block are unpacked
/// once and reused for every activation row.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI; `q` must hold
/// `(out.len() − 1)·stride + blocks.len()·128` values.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_vnni(blocks: &[BlockI2], q: &[i8], stride: usize, out: &mut [i32]) {
    if out.len() == 1 {
        // Decode: one accumulator per 32-lane segment, so the four `vpdpbusd` of a block do not
        // wait on each other (latency ≈ 5 cycles each).
        // SAFETY: features enabled for this function; loads stay in bounds.
        unsafe {
            let mut acc = [_mm256_setzero_si256(); 4];
            for (bi, b) in blocks.iter().enumerate() {
                prefetch_ahead(b, 1);
                let c = unpack(&b.qs);
                let base = bi * 128;
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_dpbusd_epi32(*a, c[k], load32(q, base + 32 * k));
                }
            }
            let s = _mm256_add_epi32(
                _mm256_add_epi32(acc[0], acc[1]),
                _mm256_add_epi32(acc[2], acc[3]),
            );
            out[0] = hsum(s);
        }
        return;
    }
    // Batches: tokens in register blocks of 8/4/2/1, two accumulators per token (16
    // independent `vpdpbusd` chains at N = 8, in the 32 ymm registers AVX-512VL provides), so
    // the chains cover the instruction's latency and a block is unpacked once per 8 tokens.
    let mut t0 = 0;
    while t0 < out.len() {
        let left = out.len() - t0;
        let q = &q[t0 * stride..];
        let o = &mut out[t0..];
        // SAFETY: the features are enabled for this function; `q` holds the rows (caller).
        let n = unsafe {
            match left {
                8.. => vnni_block::<8>(blocks, q, stride, o),
                4..=7 => vnni_block::<4>(blocks, q, stride, o),
                2 | 3 => vnni_block::<2>(blocks, q, stride, o),
                _ => vnni_block::<1>(blocks, q, stride, o),
            }
        };
        t0 += n;
    }
}

/// Decode GEMV: `out[r] = Σ c·q` for `out.len()` consecutive weight rows of `bpr` blocks each
/// (`blocks` holds them back to back) against one activation row, four rows at a time on
/// 512-bit vectors: a block's codes unpack to two vectors of 64 ([`unpack512`]), each taken by
/// its own accumulator (eight independent `vpdpbusd` chains for the four rows), and one
/// combined horizontal sum for the four rows, so short rows (512 columns: four blocks) do not
/// pay a call and a reduction each. Scalar twin: [`BlockI2::vec_dot_i8`] summed over a row.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI; `blocks.len() >= out.len()·bpr` and
/// `q.len() >= bpr·128` (asserted).
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemv_vnni(blocks: &[BlockI2], bpr: usize, q: &[i8], out: &mut [i32]) {
    assert!(
        blocks.len() >= out.len() * bpr && q.len() >= bpr * 128,
        "gemv_vnni: shapes"
    );
    let full = out.len() / 4 * 4;
    for r0 in (0..full).step_by(4) {
        // SAFETY: features enabled; rows r0..r0+4 are inside `blocks` and every activation
        // load reads 64 values inside a whole 128-value block of `q` (asserted above).
        unsafe {
            let mut acc = [[_mm512_setzero_si512(); 2]; 4];
            let rows = &blocks[r0 * bpr..(r0 + 4) * bpr];
            for bi in 0..bpr {
                let x0 = _mm512_loadu_si512(q.as_ptr().add(bi * 128) as *const __m512i);
                let x1 = _mm512_loadu_si512(q.as_ptr().add(bi * 128 + 64) as *const __m512i);
                for (i, a) in acc.iter_mut().enumerate() {
                    let b = rows.get_unchecked(i * bpr + bi);
                    prefetch_ahead(b, 1);
                    let c = unpack512(&b.qs);
                    a[0] = _mm512_dpbusd_epi32(a[0], c[0], x0);
                    a[1] = _mm512_dpbusd_epi32(a[1], c[1], x1);
                }
            }
            let r = acc.map(|a| {
                let s = _mm512_add_epi32(a[0], a[1]);
                _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s))
            });
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]), _mm256_hadd_epi32(r[2], r[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            _mm_storeu_si128(out.as_mut_ptr().add(r0) as *mut __m128i, s);
        }
    }
    for r in full..out.len() {
        // SAFETY: features enabled; row r is inside `blocks`.
        unsafe { dot_vnni(&blocks[r * bpr..(r + 1) * bpr], q, 0, &mut out[r..r + 1]) };
    }
}

/// `N` activation rows against one weight row with `vpdpbusd` (see [`dot_vnni`]); returns `N`.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn vnni_block<const N: usize>(
    blocks: &[BlockI2],
    q: &[i8],
    stride: usize,
    out: &mut [i32],
) -> usize {
    // SAFETY: features enabled (only `dot_vnni` calls this); `q` holds N rows of
    // `blocks.len()·128` values at `stride` (caller contract), so every load is in bounds.
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); 2]; N];
        for (bi, b) in blocks.iter().enumerate() {
            prefetch_ahead(b, 1);
            let c = unpack(&b.qs);
            let base = bi * 128;
            for (k, a) in acc.iter_mut().enumerate() {
                let at = k * stride + base;
                a[0] = _mm256_dpbusd_epi32(a[0], c[0], load32(q, at));
                a[1] = _mm256_dpbusd_epi32(a[1], c[1], load32(q, at + 32));
                a[0] = _mm256_dpbusd_epi32(a[0], c[2], load32(q, at + 64));
                a[1] = _mm256_dpbusd_epi32(a[1], c[3], load32(q, at + 96));
            }
        }
        for (k, a) in acc.iter().enumerate() {
            out[k] = hsum(_mm256_add_epi32(a[0], a[1]));
        }
    }
    N
}

/// Unpacks a block's 32 code bytes into two 512-bit vectors of 64 codes (elements 0-63 and
/// 64-127): the bytes are broadcast to both halves and shifted per half (6|4, then 2|0).
#[inline(always)]
pub(crate) unsafe fn unpack512(qs: &[u8; 32]) -> [__m512i; 2] {
    // SAFETY: `qs` is 32 readable bytes; callers enable AVX-512 F/BW.
    unsafe {
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(qs.as_ptr() as *const __m256i));
        let m = _mm512_set1_epi8(3);
        let hi = _mm512_inserti64x4::<1>(_mm512_set1_epi16(6), _mm256_set1_epi16(4));
        let lo = _mm512_inserti64x4::<1>(_mm512_set1_epi16(2), _mm256_set1_epi16(0));
        [
            _mm512_and_si512(_mm512_srlv_epi16(v, hi), m),
            _mm512_and_si512(_mm512_srlv_epi16(v, lo), m),
        ]
    }
}

/// [`dot_vnni`] for two weight rows at once, on 512-bit vectors: tokens in blocks of 8 against
/// both rows (16 zmm accumulators, one per (row, token) pair, plus four code vectors and the
/// activation vector), so each activation vector is loaded once per two rows and a block costs
/// two `vpdpbusd` per (row, token) instead of four 256-bit ones. Tokens past the last 8 go
/// through [`dot_vnni`] per row.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI; both rows have the same number of blocks;
/// `outa.len() == outb.len()`; `q` holds `(outa.len() − 1)·stride + blocks·128` values.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_vnni_2rows(
    rows: [&[BlockI2]; 2],
    q: &[i8],
    stride: usize,
    outa: &mut [i32],
    outb: &mut [i32],
) {
    let n = outa.len();
    let full = n / 8 * 8;
    for t0 in (0..full).step_by(8) {
        // SAFETY: features enabled for this function; rows t0..t0+8 of `q` are in bounds
        // (caller contract), and every load below reads 64 values inside one 128-value block
        // of one row.
        unsafe {
            let (mut acc_a, mut acc_b) = ([_mm512_setzero_si512(); 8], [_mm512_setzero_si512(); 8]);
            for (bi, (ra, rb)) in rows[0].iter().zip(rows[1]).enumerate() {
                prefetch_ahead(ra, 1);
                prefetch_ahead(rb, 1);
                let (ca, cb) = (unpack512(&ra.qs), unpack512(&rb.qs));
                let base = bi * 128;
                for (k, (sa, sb)) in acc_a.iter_mut().zip(acc_b.iter_mut()).enumerate() {
                    let at = (t0 + k) * stride + base;
                    debug_assert!(at + 128 <= q.len());
                    for seg in 0..2 {
                        let x = _mm512_loadu_si512(q.as_ptr().add(at + 64 * seg) as *const __m512i);
                        *sa = _mm512_dpbusd_epi32(*sa, ca[seg], x);
                        *sb = _mm512_dpbusd_epi32(*sb, cb[seg], x);
                    }
                }
            }
            let mut v = [_mm512_setzero_ps(); 16];
            for k in 0..8 {
                v[k] = _mm512_castsi512_ps(acc_a[k]);
                v[8 + k] = _mm512_castsi512_ps(acc_b[k]);
            }
            let s = _mm512_castps_si512(reduce16::<true>(&v));
            _mm256_storeu_si256(
                outa[t0..t0 + 8].as_mut_ptr() as *mut __m256i,
                _mm512_castsi512_si256(s),
            );
            _mm256_storeu_si256(
                outb[t0..t0 + 8].as_mut_ptr() as *mut __m256i,
                _mm512_extracti64x4_epi64::<1>(s),
            );
        }
    }
    if full < n {
        let q = &q[full * stride..];
        // SAFETY: features enabled; the remaining rows are in bounds (caller contract).
        unsafe {
            dot_vnni(rows[0], q, stride, &mut outa[full..]);
            dot_vnni(rows[1], q, stride, &mut outb[full..]);
        }
    }
}

/// The lane sums of 16 vectors as one vector (lane i: Σ lanes of `v[i]`) by a transposing tree
/// (15 shuffle pairs and adds instead of a dependent reduction per vector) with exactly the
/// pairings of `_mm512_reduce_add_ps`: lane i + lane i+8, then + 4, + 2, + 1. The lanes are f32,
/// or i32 (wrapping adds, as `_mm512_reduce_add_epi32`) when `INT`; the shuffles only move bits.
#[inline(always)]
pub(crate) unsafe fn reduce16<const INT: bool>(v: &[__m512; 16]) -> __m512 {
    #[inline(always)]
    unsafe fn add<const INT: bool>(a: __m512, b: __m512) -> __m512 {
        // SAFETY: register operations only; callers enable AVX-512 F.
        unsafe {
            if INT {
                let s = _mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b));
                _mm512_castsi512_ps(s)
            } else {
                _mm512_add_ps(a, b)
            }
        }
    }
    // SAFETY: register operations only; callers enable AVX-512 F.
    unsafe {
        // Lane i + lane i+8: halves of two vectors side by side.
        let mut s1 = [_mm512_setzero_ps(); 8];
        for (m, s) in s1.iter_mut().enumerate() {
            let (a, b) = (v[2 * m], v[2 * m + 1]);
            let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
            let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
            *s = add::<INT>(lo, hi);
        }
        // Lane j + lane j+4 of each 8-lane half: 128-bit chunk c of s2[p] belongs to v[4p+c].
        let mut s2 = [_mm512_setzero_ps(); 4];
        for (p, s) in s2.iter_mut().enumerate() {
            let (x, y) = (s1[2 * p], s1[2 * p + 1]);
            let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y);
            let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y);
            *s = add::<INT>(lo, hi);
        }
        // Lane k + lane k+2 in each chunk: chunk c of s3[q] holds v[8q+c] (lanes 0-1) and
        // v[8q+4+c] (lanes 2-3).
        let mut s3 = [_mm512_setzero_ps(); 2];
        for (q, s) in s3.iter_mut().enumerate() {
            let (x, y) = (_mm512_castps_pd(s2[2 * q]), _mm512_castps_pd(s2[2 * q + 1]));
            let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
            *s = add::<INT>(lo, hi);
        }
        // Lane 0 + lane 1: lane 4c + j of the result is the sum of v[4j + c].
        let lo = _mm512_shuffle_ps::<0b10_00_10_00>(s3[0], s3[1]);
        let hi = _mm512_shuffle_ps::<0b11_01_11_01>(s3[0], s3[1]);
        let r = add::<INT>(lo, hi);
        // Back to input order: sum i sits in lane 4·(i mod 4) + i / 4.
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(idx, r)
    }
}

/// Σ w·x over f32 rows with AVX2 + FMA (four 8-lane accumulators). Scalar twin: `dense::dot8`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x.len() >= w.len()`.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    // SAFETY: `dot_wide` only calls `load(i)` with `i + 8 <= w.len()`; AVX2 is enabled here.
    dot_wide(
        w.len(),
        [x],
        |i| prefetch_ahead(w.as_ptr().wrapping_add(i), 2),
        |i| unsafe { _mm256_loadu_ps(w.as_ptr().add(i)) },
        |i| w[i],
    )[0]
}

/// Σ w·x over bf16 weights (bits) with AVX2 + FMA: bf16 → f32 is a 16-bit left shift.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x.len() >= w.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_bf16(w: &[u16], x: &[f32]) -> f32 {
    // SAFETY: `dot_wide` only calls `load(i)` with `i + 8 <= w.len()`; AVX2 is enabled here.
    dot_wide(
        w.len(),
        [x],
        |i| prefetch_ahead(w.as_ptr().wrapping_add(i), 1),
        |i| unsafe {
            let h = _mm_loadu_si128(w.as_ptr().add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        },
        |i| f32::from_bits((w[i] as u32) << 16),
    )[0]
}

/// f16 (bits) to f32 with F16C, eight at a time (the conversion is exact, as `half`'s, which
/// is a software loop unless the whole build targets F16C).
///
/// # Safety
/// The CPU must support AVX and F16C; `out.len() >= src.len()` (asserted).
#[target_feature(enable = "avx,f16c")]
pub unsafe fn f16_to_f32(src: &[u16], out: &mut [f32]) {
    assert!(out.len() >= src.len(), "f16_to_f32: output too short");
    let n8 = src.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 <= src.len() <= out.len(); unaligned loads and stores.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    for i in n8..src.len() {
        out[i] = half::f16::from_bits(src[i]).to_f32();
    }
}

/// Σ w·x over f16 weights (bits) with AVX2 + FMA + F16C.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x.len() >= w.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(w: &[u16], x: &[f32]) -> f32 {
    // SAFETY: `dot_wide` only calls `load(i)` with `i + 8 <= w.len()`; F16C is enabled here.
    dot_wide(
        w.len(),
        [x],
        |i| prefetch_ahead(w.as_ptr().wrapping_add(i), 1),
        |i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(i) as *const __m128i)) },
        |i| half::f16::from_bits(w[i]).to_f32(),
    )[0]
}

/// The shared FMA loop, for `T` activation rows at once: `load(i)` gives 8 weights at `i` as
/// f32 (loaded once for the `T` rows), `scalar(i)` one (tail); `prefetch(i)` is called once per
/// 32 weights. Each row gets its own four accumulators and exactly the operations it gets alone
/// (`T = 1`), so a token's dot product has the same bits whatever it is computed with.
#[inline(always)]
unsafe fn dot_wide<const T: usize>(
    n: usize,
    x: [&[f32]; T],
    prefetch: impl Fn(usize),
    load: impl Fn(usize) -> __m256,
    scalar: impl Fn(usize) -> f32,
) -> [f32; T] {
    assert!(
        x.iter().all(|x| x.len() >= n),
        "dot: activation shorter than the weight row"
    );
    // SAFETY (whole block): callers enabled AVX2/FMA; every load reads i..i+8 < n ≤ x.len().
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 4]; T];
        let mut i = 0;
        while i + 32 <= n {
            prefetch(i);
            for k in 0..4 {
                let j = i + 8 * k;
                let w = load(j);
                for (a, x) in acc.iter_mut().zip(&x) {
                    a[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(j)), a[k]);
                }
            }
            i += 32;
        }
        while i + 8 <= n {
            let w = load(i);
            for (a, x) in acc.iter_mut().zip(&x) {
                a[0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(i)), a[0]);
            }
            i += 8;
        }
        let mut out = [0f32; T];
        for ((o, a), x) in out.iter_mut().zip(&acc).zip(&x) {
            let s = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
            *o = hsum_ps(s);
            for j in i..n {
                *o += scalar(j) * x[j];
            }
        }
        out
    }
}

/// One f32 weight row against two activation rows, each with exactly [`dot_f32`]'s operations
/// (so the bits of [`dot_bf16`] and [`dot_f16`] too, whose conversions to f32 are exact): the
/// batched output head's kernel for 16-bit weights dequantized once into f32, which keeps every
/// token's logits bit-identical to its one-token ones. Scalar twin: `dense::dot_f32_x2`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x[k].len() >= w.len()` (asserted).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_x2(w: &[f32], x: [&[f32]; 2]) -> [f32; 2] {
    // SAFETY: `dot_wide` only calls `load(i)` with `i + 8 <= w.len()`; AVX2 is enabled here.
    unsafe {
        dot_wide(
            w.len(),
            x,
            |_| {},
            |i| _mm256_loadu_ps(w.as_ptr().add(i)),
            |i| w[i],
        )
    }
}

/// The 128 quants of half `h` of a Q6_K block as four vectors of 32 signed bytes (`q − 32`,
/// elements `128h + 32k ..`): low nibbles from `ql`, two high bits from `qh`.
#[inline(always)]
pub(crate) unsafe fn q6k_half(b: &crate::formats::BlockQ6K, h: usize) -> [__m256i; 4] {
    // SAFETY: as `q6k_half_unsigned`; the callers enable AVX2.
    unsafe {
        let c32 = _mm256_set1_epi8(32);
        q6k_half_unsigned(b, h).map(|q| _mm256_sub_epi8(q, c32))
    }
}

/// [`q6k_half`] without the `− 32`: the stored 6-bit quants, 0..=63.
#[inline(always)]
pub(crate) unsafe fn q6k_half_unsigned(b: &crate::formats::BlockQ6K, h: usize) -> [__m256i; 4] {
    // SAFETY: loads read `ql[64h..64h+64]` and `qh[32h..32h+32]` inside the block (h < 2); the
    // callers enable AVX2.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let m3 = _mm256_set1_epi8(3);
        let ql0 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * h) as *const __m256i);
        let ql1 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * h + 32) as *const __m256i);
        let qh = _mm256_loadu_si256(b.qh.as_ptr().add(32 * h) as *const __m256i);
        let hi0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
        let hi2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
        let hi4 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
        let hi6 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
        let lo = |v: __m256i| _mm256_and_si256(v, m4);
        let up = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        [
            _mm256_or_si256(lo(ql0), hi0),
            _mm256_or_si256(lo(ql1), hi2),
            _mm256_or_si256(up(ql0), hi4),
            _mm256_or_si256(up(ql1), hi6),
        ]
    }
}

/// Σ w·x over Q6_K blocks (`x.len() >= blocks.len()·256`), AVX2 + FMA: the 6-bit quants are
/// unpacked 32 at a time (low nibbles from `ql`, two high bits from `qh`, minus 32), widened to
/// f32, scaled by `d · scale` as the scalar dequantizer does, and accumulated with FMA. Layout:
/// llama.cpp's `block_q6_K` (see `formats::q6_k`).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q6k(blocks: &[crate::formats::BlockQ6K], x: &[f32]) -> f32 {
    assert!(
        x.len() >= blocks.len() * 256,
        "dot_q6k: activation too short"
    );
    // SAFETY (whole block): AVX2/FMA enabled by the caller's contract; every load reads inside
    // a block's arrays or inside `x` (length asserted above).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (bi, b) in blocks.iter().enumerate() {
            prefetch_ahead(b, 4);
            let d = half::f16::from_bits(b.d).to_f32();
            let xb = x.as_ptr().add(bi * 256);
            for h in 0..2 {
                let q = q6k_half(b, h);
                for (k, qk) in q.iter().enumerate() {
                    let base = 128 * h + 32 * k;
                    let sc0 = d * b.scales[8 * h + 2 * k] as f32;
                    let sc1 = d * b.scales[8 * h + 2 * k + 1] as f32;
                    let lo = _mm256_castsi256_si128(*qk);
                    let up = _mm256_extracti128_si256(*qk, 1);
                    let parts = [lo, _mm_srli_si128(lo, 8), up, _mm_srli_si128(up, 8)];
                    for (j, p) in parts.iter().enumerate() {
                        let s = _mm256_set1_ps(if j < 2 { sc0 } else { sc1 });
                        let w = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(*p)));
                        acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xb.add(base + 8 * j)), acc[j]);
                    }
                }
            }
        }
        hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}

/// Σ w·x over Q8_0 blocks (`x.len() >= blocks.len()·32`), AVX2 + FMA, `w = d · q`. Its
/// operations are [`dot_f32`]'s on the dequantized row (`to_float`'s `q·d`; values `8j..8j+8` of
/// every 32 into accumulator `j`; the same final sum), which the batched output head relies on
/// to give a token the bits of its one-token logits.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q8_0(blocks: &[crate::formats::BlockQ8_0], x: &[f32]) -> f32 {
    assert!(
        x.len() >= blocks.len() * 32,
        "dot_q8_0: activation too short"
    );
    // SAFETY (whole block): AVX2/FMA enabled; loads stay inside each block and `x`.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (bi, b) in blocks.iter().enumerate() {
            prefetch_ahead(b, 1);
            let d = _mm256_set1_ps(half::f16::from_bits(b.d).to_f32());
            let q = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
            let lo = _mm256_castsi256_si128(q);
            let up = _mm256_extracti128_si256(q, 1);
            let parts = [lo, _mm_srli_si128(lo, 8), up, _mm_srli_si128(up, 8)];
            for (j, p) in parts.iter().enumerate() {
                let w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(*p)), d);
                acc[j] =
                    _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(bi * 32 + 8 * j)), acc[j]);
            }
        }
        hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}

/// The horizontal sum that ends [`dot_f32`] (lanes `i + (i+4)`, then `+ 2`, then `+ 1`); the
/// grouped attention kernels (`attention.rs`) end with it too, so their sums are bit-identical.
#[inline(always)]
pub(crate) unsafe fn hsum_ps(s: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(s);
    let hi = _mm256_extractf128_ps(s, 1);
    let q = _mm_add_ps(lo, hi);
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    _mm_cvtss_f32(q)
}

/// Dequantizes Q6_K blocks into `out` (`blocks.len()·256` values) with AVX2, bit-identical to
/// the scalar `to_float` (`(d·scale)·q` in f32). Layout: llama.cpp's `block_q6_K`.
///
/// # Safety
/// The CPU must support AVX2; `out.len() >= blocks.len()·256` (asserted).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dequant_q6k(blocks: &[crate::formats::BlockQ6K], out: &mut [f32]) {
    assert!(
        out.len() >= blocks.len() * 256,
        "dequant_q6k: output too short"
    );
    // SAFETY (whole block): AVX2 enabled; stores write out[bi·256 + base + 8j ..+8] inside
    // the asserted length; `q6k_half` reads inside the block.
    unsafe {
        for (bi, b) in blocks.iter().enumerate() {
            prefetch_ahead(b, 4);
            let d = half::f16::from_bits(b.d).to_f32();
            let ob = out.as_mut_ptr().add(bi * 256);
            for h in 0..2 {
                let q = q6k_half(b, h);
                for (k, qk) in q.iter().enumerate() {
                    let base = 128 * h + 32 * k;
                    let sc0 = d * b.scales[8 * h + 2 * k] as f32;
                    let sc1 = d * b.scales[8 * h + 2 * k + 1] as f32;
                    let lo = _mm256_castsi256_si128(*qk);
                    let up = _mm256_extracti128_si256(*qk, 1);
                    let parts = [lo, _mm_srli_si128(lo, 8), up, _mm_srli_si128(up, 8)];
                    for (j, p) in parts.iter().enumerate() {
                        let s = _mm256_set1_ps(if j < 2 { sc0 } else { sc1 });
                        let w = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(*p)));
                        _mm256_storeu_ps(ob.add(base + 8 * j), w);
                    }
                }
            }
        }
    }
}

/// Per-token absmax int8 quantization of one row (BITNET.md): `s = 127 / max(max|x|, 1e-5)`,
/// `q = clamp(round_half_even(x·s), −128, 127)`, zero padding past `x.len()`; returns `(s, Σq)`.
/// Bit-identical to [`crate::act::quantize_row_scalar`], NaN and infinities included: the max is
/// order-independent and skips NaN, `x·s` is the same f32 product, `vroundps` with
/// `_MM_FROUND_TO_NEAREST_INT` rounds half to even, and NaN products become 0.
///
/// # Safety
/// The CPU must support AVX2; `out.len() >= x.len()` (asserted).
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_row_avx2(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    assert!(out.len() >= x.len(), "quantize_row_avx2: output too short");
    let n = x.len();
    let full = n / 32 * 32;
    // SAFETY (whole block): AVX2 enabled; loads read x[i..i+32] with i + 32 <= full <= n and
    // stores write out[i..i+32] within `out` (asserted above).
    unsafe {
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut m = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // Operand order: `maxps` returns its second operand when the first is NaN, so a
            // NaN input is skipped, as `f32::max` skips it in the scalar twin.
            m = _mm256_max_ps(
                _mm256_and_ps(_mm256_loadu_ps(x.as_ptr().add(i)), abs_mask),
                m,
            );
            i += 8;
        }
        let hi = _mm256_extractf128_ps(m, 1);
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), hi);
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1));
        let mut amax = _mm_cvtss_f32(m1);
        for &v in &x[i..] {
            amax = amax.max(v.abs());
        }
        let s = 127.0f32 / amax.max(1e-5);
        let sv = _mm256_set1_ps(s);
        let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        let quant = |p: *const f32| {
            let v = _mm256_mul_ps(_mm256_loadu_ps(p), sv);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            // NaN (a NaN input, or ±inf · 0) becomes 0, as `NaN as i8` does in the scalar twin.
            let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
        };
        let mut acc = _mm256_setzero_si256();
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut i = 0;
        while i < full {
            let p = x.as_ptr().add(i);
            let (a, b, c, d) = (
                quant(p),
                quant(p.add(8)),
                quant(p.add(16)),
                quant(p.add(24)),
            );
            acc = _mm256_add_epi32(
                acc,
                _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)),
            );
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
            let packed = _mm256_permutevar8x32_epi32(packed, order);
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, packed);
            i += 32;
        }
        let mut sum = hsum(acc);
        for (o, &v) in out[full..n].iter_mut().zip(&x[full..]) {
            let q = crate::act::round_half_even_small(v * s).clamp(-128.0, 127.0) as i8;
            sum += q as i32;
            *o = q;
        }
        out[n..].fill(0);
        (s, sum)
    }
}
