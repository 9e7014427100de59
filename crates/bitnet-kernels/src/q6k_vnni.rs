//! The Q6_K output head on int16 activations with AVX-512 VNNI, on blocks in the lane order of
//! [`BlockQ6KLanes`] (a Q6_K block whose quants are reordered so that lane `l` of each of the
//! four unpacked 64-quant vectors holds four quants of sub-block `l`): one token (decode) or up
//! to 16 (batched decode, prefill's last tokens). Scalar twin: the Q6_K `to_float` dot; parity
//! tests in `tests/parity.rs` and `tests/q6k_lanes.rs`.
//!
//! Lane `l` of a block sums all 16 quants of sub-block `l`, whose scale is the lane's in every
//! vector. Two formulations give the same exact i32 lane sums `sc_l · Σ (q − 32)·x`, so a
//! token's logit is bit-identical whether it runs alone or in a batch:
//! * **several tokens** ([`q6k_scaled`], [`q6k_tokens`]): a block's quants are widened to i16
//!   and multiplied by their lane's scale once, then every token takes eight `vpdpwssd`
//!   (i16 pairs) per block;
//! * **one token** ([`q6k_split_block`]): no widening; the activations are split into bytes
//!   (`x = 256·hi + lo`) and each 64-quant vector takes two `vpdpbusd` (u8 × s8, four products
//!   per lane), `Σ q·hi` and `Σ q·lo` over the lane's 16 quants; then `256·H + L`, with the
//!   `− 32` of the quants as one precomputed `−32 · Σ x` per lane, times the lane's scale
//!   (one `vpmulld` per block). Ten multiply-port µops per block instead of the 17 of the
//!   element order (whose lanes change sub-block, hence scale, from vector to vector: one
//!   `vpdpwssd` per vector and half): the decode head is bound by them.
//!
//! The i16 path takes the even and the odd quants of a vector as two vectors, and its
//! activations are reordered to match ([`VnniActs`]).

#![cfg(target_arch = "x86_64")]

use crate::formats::q6_k_lanes::lane_element;
use crate::formats::BlockQ6KLanes;
use crate::x86::prefetch_ahead;
use std::arch::x86_64::*;

/// Horizontal sums of f32 vectors, sixteen at a time: `out[i] = Σ lanes of v_i`, each sum with
/// exactly the pairings of `_mm512_reduce_add_ps` (lane `i + (i+8)`, then `+ 4`, `+ 2`, `+ 1`),
/// so a result does not depend on which other vectors share its group. Vectors are pushed in
/// output order; every 16th push (and [`LaneSums::finish`]) reduces them with the transposing
/// tree of [`crate::x86::reduce16`] (45 shuffles and adds for 16 sums instead of ~9 dependent
/// operations per sum) and stores the sums at the next positions of `out`.
struct LaneSums<'a> {
    buf: [__m512; 16],
    len: usize,
    out: &'a mut [f32],
    pos: usize,
}

impl<'a> LaneSums<'a> {
    #[inline(always)]
    unsafe fn new(out: &'a mut [f32]) -> Self {
        // SAFETY: AVX-512 F is enabled by every caller.
        let z = unsafe { _mm512_setzero_ps() };
        Self {
            buf: [z; 16],
            len: 0,
            out,
            pos: 0,
        }
    }

    #[inline(always)]
    unsafe fn push(&mut self, v: __m512) {
        self.buf[self.len] = v;
        self.len += 1;
        if self.len == 16 {
            // SAFETY: as `push`'s callers (AVX-512 F).
            unsafe { self.flush() };
        }
    }

    /// Stores the sums of the vectors pushed since the last flush.
    #[inline(always)]
    unsafe fn finish(mut self) {
        if self.len > 0 {
            // SAFETY: as `finish`'s callers (AVX-512 F).
            unsafe { self.flush() };
        }
    }

    #[inline(always)]
    unsafe fn flush(&mut self) {
        // SAFETY: AVX-512 F is enabled by the callers; the store covers `out[pos..pos+len]`,
        // in bounds (checked by the slice index).
        unsafe {
            let r = crate::x86::reduce16::<false>(&self.buf);
            let dst = &mut self.out[self.pos..self.pos + self.len];
            _mm512_mask_storeu_ps(
                dst.as_mut_ptr(),
                (1u32 << dst.len()).wrapping_sub(1) as u16,
                r,
            );
            self.pos += self.len;
            self.len = 0;
        }
    }
}

/// The 256 stored quants of a block (0..=63, without the `− 32`) as four vectors of 64 bytes
/// in storage order (vector j: positions 64j ..), unpacked with 512-bit operations: per
/// half h, `ql[64h..64h+64]` holds the low nibbles of elements 128h + 0..64 and the high nibbles
/// of 128h + 64..128, and the two high bits come from `qh[32h + l]` at shifts 0, 2, 4, 6 for the
/// four 32-element groups (llama.cpp's `block_q6_K`). Same values as [`q6k_half_unsigned`].
///
/// [`q6k_half_unsigned`]: crate::x86::q6k_half_unsigned
#[inline(always)]
unsafe fn q6k_quants512(b: &BlockQ6KLanes) -> [__m512i; 4] {
    // SAFETY: loads read `ql[64h..64h+64]` and `qh[32h..32h+32]` inside the block; the callers
    // enable AVX-512 F/BW.
    unsafe {
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        // Per 256-bit half: high bits of groups 0|1 to bit 4 (left shifts 4|2), of 2|3 (right
        // shifts 0|2); 16-bit lane shifts are exact per byte after the 0x30 mask.
        let shl = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
        let shr = _mm512_inserti64x4::<1>(_mm512_set1_epi16(0), _mm256_set1_epi16(2));
        let mut out = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            let ql = _mm512_loadu_si512(b.raw().ql.as_ptr().add(64 * h) as *const __m512i);
            let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                b.raw().qh.as_ptr().add(32 * h) as *const __m256i
            ));
            let h01 = _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30);
            let h23 = _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30);
            out[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), h01);
            out[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), h23);
        }
        out
    }
}

/// One token's int16 activations prepared for [`q6k_i16_vnni_rows`] (`|x| ≤ 32767`, a length
/// that is a multiple of 256), each 256-value block in the storage order of [`BlockQ6KLanes`]
/// (position `p` holds value [`lane_element`]`(p)` of the block):
/// * `x16`: every 64-position chunk as its 32 even positions, then its 32 odd ones (the lane
///   order of the i16 quant vectors of [`q6k_scaled`]);
/// * `hi`, `lo`: `x = 256·hi + lo` (hi = `x >> 8`, lo = `x & 255`);
/// * `corr`: per block and lane `l`, `−32 · Σ x` over the lane's sub-block (values
///   `16l .. 16l + 16`), the `− 32` of the quants for [`q6k_split_block`]
///   (`|corr| ≤ 32·16·32767 < 2²⁴`).
#[derive(Clone, Debug, Default)]
pub struct VnniActs {
    x16: Vec<i16>,
    hi: Vec<i8>,
    lo: Vec<u8>,
    corr: Vec<i32>,
}

impl VnniActs {
    /// No values.
    pub const EMPTY: VnniActs = VnniActs {
        x16: Vec::new(),
        hi: Vec::new(),
        lo: Vec::new(),
        corr: Vec::new(),
    };

    /// Prepares `x` (its length a multiple of 256, every `|x| ≤ 32767`).
    pub fn new(x: &[i16]) -> VnniActs {
        let mut a = VnniActs::default();
        a.set(x);
        a
    }

    /// [`VnniActs::new`] into this one's buffers (no allocation once they are large enough).
    ///
    /// # Panics
    /// If the length is not a multiple of 256 or a value is −32768.
    pub fn set(&mut self, x: &[i16]) {
        assert!(
            x.len().is_multiple_of(256) && x.iter().all(|&v| v != i16::MIN),
            "VnniActs: length not a multiple of 256, or a value out of ±32767"
        );
        let (x16, hi, lo, corr) = (&mut self.x16, &mut self.hi, &mut self.lo, &mut self.corr);
        x16.clear();
        hi.clear();
        lo.clear();
        corr.clear();
        for b in x.chunks_exact(256) {
            let v: [i16; 256] = std::array::from_fn(|p| b[lane_element(p)]);
            for c in v.chunks_exact(64) {
                x16.extend(c.iter().step_by(2));
                x16.extend(c.iter().skip(1).step_by(2));
            }
            hi.extend(v.iter().map(|&v| (v >> 8) as i8));
            lo.extend(v.iter().map(|&v| v as u8));
            corr.extend(
                b.chunks_exact(16)
                    .map(|s| -32 * s.iter().map(|&v| i32::from(v)).sum::<i32>()),
            );
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

/// The Q6_K head on int16 activations with AVX-512 VNNI, for consecutive rows of `bpr` blocks
/// each in the lane order (`blocks` holds them back to back) and `n = xs.len()` activation rows:
/// `out[r·n + t] = Σ w_r·xs[t]`. The quants (`q − 32`) are widened to i16, multiplied by their
/// 16-quant sub-block scales (`|q·sc| ≤ 32·128 = 4096`, fits i16) and accumulated with `vpdpwssd`
/// (i16 pairs → i32) straight into one 16-lane i32 sum per block. Exact: a lane takes 16
/// products per block, `16 · 4096 · 32767 = 2 147 418 112 < 2³¹` with `|x16| ≤ 32767` (the
/// quantizer's range). The block sum is then scaled by `d` in f32. A block's quants are
/// unpacked and scale-folded once for all tokens, and every token goes through the same
/// operations in the same order as when alone; one token alone takes the byte-split
/// [`q6k_split_block`], which gives the same exact lane sums. So a token's result does not
/// depend on the others in the batch. Scalar twin: the Q6_K `to_float` dot.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VNNI, AVX2, FMA and F16C; `out.len()` is a multiple of `n`
/// (1 ≤ n ≤ 16), `blocks.len() >= out.len() / n · bpr` and every `xs[t].len() >= bpr·256` (the
/// shapes are asserted).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub unsafe fn q6k_i16_vnni_rows(
    blocks: &[BlockQ6KLanes],
    bpr: usize,
    xs: &[&VnniActs],
    out: &mut [f32],
) {
    let n = xs.len();
    let rows = out.len() / n.max(1);
    assert!(
        (1..=16).contains(&n)
            && bpr > 0
            && out.len().is_multiple_of(n)
            && xs.iter().all(|x| x.len() >= bpr * 256)
            && blocks.len() >= rows * bpr,
        "q6k_i16_vnni_rows: shapes"
    );
    // SAFETY (whole block): features enabled; the helpers read inside each block, and the
    // activation loads read 256 values (and 16 `corr` sums) of block bi of xs[t], in bounds by
    // the assert.
    unsafe {
        // Every (row, token) accumulator goes through `sums` in output order.
        let mut sums = LaneSums::new(out);
        if n == 1 {
            let x = xs[0];
            for row in blocks.chunks_exact(bpr).take(rows) {
                // Decode: the accumulator stays in a register (measured faster than the array).
                let mut acc = _mm512_setzero_ps();
                for (bi, b) in row.iter().enumerate() {
                    let (isum, d) = q6k_split_block(b, x, bi);
                    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, acc);
                }
                sums.push(acc);
            }
            sums.finish();
            return;
        }
        let x16: [&[i16]; 16] = std::array::from_fn(|k| &xs[k.min(n - 1)].x16[..]);
        // Several tokens: a tile of ROWS rows is unpacked and scale-folded once into `w` (`tile`
        // rows × 8 vectors per block), then the tokens go through the tile in register blocks of
        // ROWS rows × 4 tokens ([`q6k_tokens_rows`]: each activation load serves four rows, so
        // loads no longer bound the `vpdpwssd` rate). Benchmarked on Zen 4, one thread, 16
        // tokens (`benches/head.rs`, G multiply-adds/s): the small model's head (512 columns)
        // 40 with one row × 8 tokens, 52 with 2 × 4, 59 with 4 × 4; 2B-4T's width 55 → 73.
        let (tile, group) = (ROWS, 4);
        let mut w = vec![_mm512_setzero_si512(); tile * 8 * bpr];
        let mut d = vec![_mm512_setzero_ps(); tile * bpr];
        let mut acc = vec![_mm512_setzero_ps(); tile * n];
        for rows_t in blocks[..rows * bpr].chunks(tile * bpr) {
            let nr = rows_t.len() / bpr;
            for ((b, wb), db) in rows_t.iter().zip(w.chunks_exact_mut(8)).zip(d.iter_mut()) {
                let (q, s) = q6k_scaled(b);
                wb.copy_from_slice(&q);
                *db = s;
            }
            let mut t = 0;
            while t < n {
                // The register block: 4, 2 or 1 tokens.
                let g = match (n - t).min(group) {
                    4.. => 4,
                    2..=3 => 2,
                    _ => 1,
                };
                let xt = &x16[t..n];
                let mut i = 0;
                if g == 4 {
                    // Rows in fours × 4 tokens: each activation load serves four rows.
                    while i + ROWS <= nr {
                        let (wr, dr) = (&w[i * 8 * bpr..(i + ROWS) * 8 * bpr], &d[i * bpr..]);
                        q6k_tokens_rows::<ROWS>(
                            wr,
                            &dr[..ROWS * bpr],
                            xt,
                            &mut acc[i * n + t..],
                            n,
                        );
                        i += ROWS;
                    }
                }
                for i in i..nr {
                    let (wr, dr) = (
                        &w[i * 8 * bpr..(i + 1) * 8 * bpr],
                        &d[i * bpr..(i + 1) * bpr],
                    );
                    let a = &mut acc[i * n + t..];
                    match g {
                        4 => q6k_tokens::<4>(wr, dr, xt, a),
                        2 => q6k_tokens::<2>(wr, dr, xt, a),
                        _ => q6k_tokens::<1>(wr, dr, xt, a),
                    }
                }
                t += g;
            }
            for &a in &acc[..nr * n] {
                sums.push(a);
            }
        }
        sums.finish();
    }
}

/// `G` tokens against one row whose quants `w` (eight vectors per block) and block scales `d`
/// were unpacked by [`q6k_scaled`]: per block, `G` independent `vpdpwssd` chains (one per
/// token, in group order), then `acc += f32(isum) · d` in block order and a final
/// horizontal sum (by the caller) — the operations of the one-token path in the same order, so
/// a token's result is bit-identical to its decode logit. The accumulators go to `out[..G]`.
///
/// `vpdpwssd` is written as inline assembly: without a CPU tuning that marks it fast, LLVM
/// splits the intrinsic into `vpmaddwd` + `vpaddd` (twice the µops on the busy vector ports).
/// Not inlined: the decode loop of the caller keeps its own code and registers.
#[inline(never)]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
unsafe fn q6k_tokens<const G: usize>(
    w: &[__m512i],
    d: &[__m512],
    xs: &[&[i16]],
    out: &mut [__m512],
) {
    // SAFETY: the caller (`q6k_i16_vnni_rows`) enables AVX-512 F/BW/VNNI and checked that every
    // `xs[k]` holds `d.len()·256` values; the loads read `xs[k][256·bi + 32·j ..][..32]`.
    unsafe {
        // The tokens' base pointers once, in registers: the loads below then take base +
        // offset addressing, one instruction each (indexing `xs` per load reloaded each slice
        // pointer from memory: two loads and two adds per `vpdpwssd`).
        let mut base = [std::ptr::null::<i16>(); G];
        for k in 0..G {
            base[k] = xs[k].as_ptr();
        }
        let mut acc = [_mm512_setzero_ps(); G];
        for (bi, (wb, &db)) in w.chunks_exact(8).zip(d).enumerate() {
            let mut isum = [_mm512_setzero_si512(); G];
            for (j, &wj) in wb.iter().enumerate() {
                // Byte offset of values 256·bi + 32·j.
                let off = 2 * (256 * bi + 32 * j);
                for k in 0..G {
                    std::arch::asm!(
                        "vpdpwssd {acc}, {w}, zmmword ptr [{b} + {o}]",
                        acc = inout(zmm_reg) isum[k],
                        w = in(zmm_reg) wj,
                        b = in(reg) base[k],
                        o = in(reg) off,
                        options(pure, readonly, nostack, preserves_flags)
                    );
                }
            }
            for k in 0..G {
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), db, acc[k]);
            }
        }
        out[..G].copy_from_slice(&acc);
    }
}

/// Rows per register block of [`q6k_tokens_rows`].
const ROWS: usize = 4;

/// [`q6k_tokens`] for `R` rows and 4 tokens at once: the rows' unpacked quants `w` (row 0's
/// `8·bpr` vectors, then row 1's, …) and block scales `d` (likewise), every activation vector
/// loaded once for the `R` rows (`4·R` `vpdpwssd` chains). Each (row, token) pair goes through
/// the operations of [`q6k_tokens`] in the same order, so the results are bit-identical to it.
/// The accumulator of row `r`, token `k` goes to `out[r·stride + k]`.
#[inline(never)]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
unsafe fn q6k_tokens_rows<const R: usize>(
    w: &[__m512i],
    d: &[__m512],
    xs: &[&[i16]],
    out: &mut [__m512],
    stride: usize,
) {
    const G: usize = 4;
    let bpr = d.len() / R;
    assert!(
        w.len() >= 8 * bpr * R && out.len() > (R - 1) * stride + G - 1 && xs.len() >= G,
        "q6k_tokens_rows: shapes"
    );
    // SAFETY: the caller (`q6k_i16_vnni_rows`) enables AVX-512 F/BW/VNNI and checked that every
    // `xs[k]` holds `bpr·256` values; the loads read `xs[k][256·bi + 32·j ..][..32]`.
    unsafe {
        let mut base = [std::ptr::null::<i16>(); G];
        for k in 0..G {
            base[k] = xs[k].as_ptr();
        }
        let mut acc = [[_mm512_setzero_ps(); G]; R];
        for bi in 0..bpr {
            let mut s = [[_mm512_setzero_si512(); G]; R];
            for j in 0..8 {
                for k in 0..G {
                    let x = _mm512_loadu_si512(base[k].add(256 * bi + 32 * j) as *const __m512i);
                    for (r, sr) in s.iter_mut().enumerate() {
                        let wv = *w.get_unchecked(r * 8 * bpr + 8 * bi + j);
                        std::arch::asm!(
                            "vpdpwssd {a}, {w}, {x}",
                            a = inout(zmm_reg) sr[k],
                            w = in(zmm_reg) wv,
                            x = in(zmm_reg) x,
                            options(pure, nomem, nostack, preserves_flags)
                        );
                    }
                }
            }
            for r in 0..R {
                let dr = *d.get_unchecked(r * bpr + bi);
                for k in 0..G {
                    acc[r][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r][k]), dr, acc[r][k]);
                }
            }
        }
        for r in 0..R {
            out[r * stride..r * stride + G].copy_from_slice(&acc[r]);
        }
    }
}

/// Prefetches for a block's first touch: four lines (210-byte blocks) a few blocks ahead into
/// L2, and the block after next from L2 into L1 (its first loads otherwise wait for L2).
#[inline(always)]
fn prefetch_block(b: &BlockQ6KLanes) {
    prefetch_ahead(b, 4);
    let near = (b as *const BlockQ6KLanes as *const i8).wrapping_add(2 * 210);
    for l in 0..4 {
        // SAFETY: SSE is baseline; a prefetch never faults (`wrapping_add` keeps the
        // arithmetic defined).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(near.wrapping_add(64 * l)) };
    }
}

/// A block's 16 sub-block scales, lane `l` holding `scales[l]` sign-extended to i32, and `d`
/// broadcast.
#[inline(always)]
unsafe fn q6k_scales(b: &BlockQ6KLanes) -> (__m512i, __m512) {
    // SAFETY: reads the block's 16 scale bytes; the callers enable AVX-512 F/BW and F16C.
    unsafe {
        let sc8 = _mm_loadu_si128(b.raw().scales.as_ptr() as *const __m128i);
        // `d` through F16C (exact, like `half`, without its call and feature check).
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(b.raw().d))));
        (_mm512_cvtepi8_epi32(sc8), _mm512_set1_ps(d))
    }
}

/// A block's quants `q − 32` as eight vectors of 32 i16 already multiplied by their lane's
/// sub-block scale, and the block scale `d` broadcast. Vector `2j` holds the even positions of
/// 64-quant vector j, `2j + 1` the odd ones, in the order of [`VnniActs`]' `x16`, so that lane
/// `l` pairs positions `64j + 4l + {0, 2}` and `64j + 4l + {1, 3}`: the lanes of
/// [`q6k_split_block`].
#[inline(always)]
unsafe fn q6k_scaled(b: &BlockQ6KLanes) -> ([__m512i; 8], __m512) {
    prefetch_block(b);
    // SAFETY: reads inside the block (`q6k_quants512`, `q6k_scales`); the callers enable
    // AVX-512 F/BW and F16C.
    unsafe {
        let (sc32, d) = q6k_scales(b);
        // Both words of lane l: scales[l].
        let s = _mm512_or_si512(
            _mm512_and_si512(sc32, _mm512_set1_epi32(0xFFFF)),
            _mm512_slli_epi32(sc32, 16),
        );
        let q = q6k_quants512(b);
        let c32 = _mm512_set1_epi8(32);
        // A loop, not `array::from_fn`: a closure does not inherit the caller's target
        // features, so its intrinsics may not inline.
        let mut w = [_mm512_setzero_si512(); 8];
        for j in 0..4 {
            let q32 = _mm512_sub_epi8(q[j], c32);
            // Sign-extended low and high bytes of each word: the even and odd positions.
            let even = _mm512_srai_epi16(_mm512_slli_epi16(q32, 8), 8);
            let odd = _mm512_srai_epi16(q32, 8);
            w[2 * j] = _mm512_mullo_epi16(even, s);
            w[2 * j + 1] = _mm512_mullo_epi16(odd, s);
        }
        (w, d)
    }
}

/// One token's exact i32 lane sums of block `bi` of a row (and the block's `d`), without
/// widening the quants: over the four 64-quant vectors j,
/// * `H = Σ vpdpbusd(q, hi)`, i.e. `Σ q·hi` over the lane's 16 quants (q = 0..=63 unsigned);
/// * `L = corr + Σ vpdpbusd(lo, q)`, `Σ q·lo − 32·Σ x` (q fits the signed operand);
///
/// then `sc · (256·H + L)` in wrapping i32 arithmetic, which is the exact lane sum
/// `sc · Σ (q − 32)·x` because that sum fits i32 (see [`q6k_i16_vnni_rows`]), as do `256·H`
/// and `L`. So the sums equal the i16 path's bit for bit. `vpdpbusd` is inline assembly (see
/// [`q6k_tokens`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn q6k_split_block(b: &BlockQ6KLanes, x: &VnniActs, bi: usize) -> (__m512i, __m512) {
    prefetch_block(b);
    // SAFETY: the caller enables AVX-512 F/BW/VNNI and F16C and checked that `x` holds block
    // `bi` (256 `hi`/`lo` values, 16 `corr` sums); the block loads read inside the block.
    unsafe {
        let (sc, d) = q6k_scales(b);
        let q = q6k_quants512(b);
        let hi = x.hi.as_ptr().add(256 * bi);
        let lo = x.lo.as_ptr().add(256 * bi);
        let mut h = _mm512_setzero_si512();
        let mut l = _mm512_loadu_si512(x.corr.as_ptr().add(16 * bi) as *const __m512i);
        for (j, &qj) in q.iter().enumerate() {
            let xl = _mm512_loadu_si512(lo.add(64 * j) as *const __m512i);
            std::arch::asm!(
                "vpdpbusd {h}, {q}, zmmword ptr [{p}]",
                "vpdpbusd {l}, {x}, {q}",
                h = inout(zmm_reg) h,
                l = inout(zmm_reg) l,
                q = in(zmm_reg) qj,
                x = in(zmm_reg) xl,
                p = in(reg) hi.add(64 * j),
                options(pure, readonly, nostack, preserves_flags)
            );
        }
        (
            _mm512_mullo_epi32(_mm512_add_epi32(_mm512_slli_epi32(h, 8), l), sc),
            d,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `LaneSums` must give `_mm512_reduce_add_ps`'s bits for every vector, whatever the group
    /// size, its neighbours or its position: values of very different magnitudes make any other
    /// pairing order round differently.
    #[test]
    fn lane_sums_match_reduce_add_bit_for_bit() {
        if !(is_x86_feature_detected!("avx512f")) {
            eprintln!("SKIPPED: no AVX-512 F on this CPU");
            return;
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let m = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let e = ((state >> 8) % 40) as i32 - 20;
            m * 2f32.powi(e)
        };
        for count in [1usize, 2, 5, 15, 16, 17, 31, 32, 33, 100] {
            let vecs: Vec<[f32; 16]> = (0..count)
                .map(|_| std::array::from_fn(|_| next()))
                .collect();
            let mut got = vec![f32::NAN; count];
            // SAFETY: AVX-512 F detected above; loads read 16 floats of each array.
            let want: Vec<f32> = unsafe {
                let mut sums = LaneSums::new(&mut got);
                for v in &vecs {
                    sums.push(_mm512_loadu_ps(v.as_ptr()));
                }
                sums.finish();
                vecs.iter()
                    .map(|v| _mm512_reduce_add_ps(_mm512_loadu_ps(v.as_ptr())))
                    .collect()
            };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "count {count}, vector {i}: {g} vs {w}"
                );
            }
        }
    }
}
