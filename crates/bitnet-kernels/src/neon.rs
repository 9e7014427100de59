//! NEON ternary kernels for aarch64: the GEMV of decode and the dot of batches and prompts.
//! Two variants, chosen at run time:
//!
//! - [`crate::Kernel::Neon`], baseline ARMv8 Advanced SIMD: the codes (0..=2, read as i8) times
//!   the int8 activations with `smlal`/`smlal2` into i16 lanes (two chains per block, each lane
//!   ≤ 8 products of |c·q| ≤ 256: no overflow), widened into i32 with `sadalp` once per block;
//! - [`crate::Kernel::NeonDot`], the ARMv8.2 dot-product extension (`FEAT_DotProd`, detected
//!   with `is_aarch64_feature_detected!("dotprod")`): `sdot` sums four i8 × i8 products straight
//!   into each i32 lane. Rust's `vdotq_s32` is still unstable, so `sdot` is inline assembly.
//!
//! Layout: I2_S x86 ([`BlockI2`]: byte m of a block holds the 2-bit codes of elements m, m+32,
//! m+64, m+96 at shifts 6, 4, 2, 0), so a 16-byte load and one shift (and mask) give 16
//! consecutive codes. Each kernel computes `Σ c·q` over whole blocks (callers subtract `Σ q`),
//! in integers: bit-identical to the scalar twin [`BlockI2::vec_dot_i8`].
//!
//! No ARM machine was at hand: these kernels are built with a cross toolchain and tested under
//! `qemu-aarch64` (`scripts/test-aarch64.sh`); they have no performance measurement yet.

#![cfg(target_arch = "aarch64")]

use crate::ternary::BlockI2;
use std::arch::aarch64::*;
use std::arch::asm;

/// A block's 128 codes as eight vectors of 16 (vector j: elements 16j..16j+16).
#[inline(always)]
unsafe fn unpack(qs: &[u8; 32]) -> [int8x16_t; 8] {
    // SAFETY: `qs` is 32 readable bytes (two unaligned 16-byte loads); NEON is part of the
    // aarch64 baseline.
    unsafe {
        let b0 = vld1q_u8(qs.as_ptr());
        let b1 = vld1q_u8(qs.as_ptr().add(16));
        let m = vdupq_n_u8(3);
        [
            vreinterpretq_s8_u8(vshrq_n_u8::<6>(b0)),
            vreinterpretq_s8_u8(vshrq_n_u8::<6>(b1)),
            vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(b0), m)),
            vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(b1), m)),
            vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(b0), m)),
            vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(b1), m)),
            vreinterpretq_s8_u8(vandq_u8(b0, m)),
            vreinterpretq_s8_u8(vandq_u8(b1, m)),
        ]
    }
}

/// `acc + Σ_4 a·b` per i32 lane (`sdot`). The assembler is told about the extension in the
/// template itself, so the instruction assembles wherever this is inlined; it only runs where
/// [`crate::Kernel::NeonDot`] was detected.
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only arithmetic; callers run it only on CPUs with FEAT_DotProd.
    unsafe {
        asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// One block: `acc` plus `Σ c·q` of the codes `c` with the 128 activations at `q`, in two i32
/// accumulators (two independent chains).
#[inline(always)]
unsafe fn block<const DOT: bool>(
    c: &[int8x16_t; 8],
    q: *const i8,
    acc: [int32x4_t; 2],
) -> [int32x4_t; 2] {
    // SAFETY: callers pass `q` with 128 readable values; `sdot` only when DOT (FEAT_DotProd
    // detected by the caller's kernel choice).
    unsafe {
        if DOT {
            let mut a = acc;
            for (j, &cj) in c.iter().enumerate() {
                a[j % 2] = sdot(a[j % 2], cj, vld1q_s8(q.add(16 * j)));
            }
            a
        } else {
            // Lane bound: chain j%2 takes four vectors, two products each per lane, |c·q| ≤
            // 2·128: ≤ 2048 < 2¹⁵.
            let mut s = [vdupq_n_s16(0); 2];
            for (j, &cj) in c.iter().enumerate() {
                let x = vld1q_s8(q.add(16 * j));
                s[j % 2] = vmlal_s8(s[j % 2], vget_low_s8(cj), vget_low_s8(x));
                s[j % 2] = vmlal_high_s8(s[j % 2], cj, x);
            }
            [vpadalq_s16(acc[0], s[0]), vpadalq_s16(acc[1], s[1])]
        }
    }
}

/// The lane sums of four rows' accumulator pairs as one vector (lane i: row i).
#[inline(always)]
unsafe fn hsum4(a: &[[int32x4_t; 2]; 4]) -> int32x4_t {
    // SAFETY: register-only NEON arithmetic.
    unsafe {
        let v: [int32x4_t; 4] = [
            vaddq_s32(a[0][0], a[0][1]),
            vaddq_s32(a[1][0], a[1][1]),
            vaddq_s32(a[2][0], a[2][1]),
            vaddq_s32(a[3][0], a[3][1]),
        ];
        vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]))
    }
}

/// `N` activation rows (at `q[k·stride..]`) against one weight row; returns `N`. A block's
/// codes are unpacked once for the `N` tokens.
#[inline(always)]
unsafe fn tokens<const N: usize, const DOT: bool>(
    blocks: &[BlockI2],
    q: &[i8],
    stride: usize,
    out: &mut [i32],
) -> usize {
    // SAFETY: `q` holds N rows of `blocks.len()·128` values at `stride` (caller contract,
    // asserted by `dot`).
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 2]; N];
        for (bi, b) in blocks.iter().enumerate() {
            let c = unpack(&b.qs);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = block::<DOT>(&c, q.as_ptr().add(k * stride + bi * 128), *a);
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = vaddvq_s32(vaddq_s32(a[0], a[1]));
        }
    }
    N
}

#[inline(always)]
unsafe fn dot<const DOT: bool>(blocks: &[BlockI2], q: &[i8], stride: usize, out: &mut [i32]) {
    let need = out.len().saturating_sub(1) * stride + blocks.len() * 128;
    assert!(q.len() >= need, "neon dot: activation rows too short");
    let mut t0 = 0;
    while t0 < out.len() {
        let (q, o) = (&q[t0 * stride..], &mut out[t0..]);
        // SAFETY: the rows from t0 on lie inside `q` (asserted above).
        t0 += unsafe {
            match o.len() {
                4.. => tokens::<4, DOT>(blocks, q, stride, o),
                2 | 3 => tokens::<2, DOT>(blocks, q, stride, o),
                _ => tokens::<1, DOT>(blocks, q, stride, o),
            }
        };
    }
}

/// `out[t] = Σ c·q` of one weight row with the activation rows `q[t·stride..]`, baseline NEON;
/// tokens in register blocks of 4/2/1.
///
/// # Safety
/// The CPU must support NEON (every aarch64 Linux CPU does). `q` must hold
/// `(out.len() − 1)·stride + blocks.len()·128` values (asserted).
#[target_feature(enable = "neon")]
pub unsafe fn dot_neon(blocks: &[BlockI2], q: &[i8], stride: usize, out: &mut [i32]) {
    // SAFETY: the caller's contract; the length is asserted inside.
    unsafe { dot::<false>(blocks, q, stride, out) }
}

/// [`dot_neon`] with `sdot`.
///
/// # Safety
/// The CPU must support NEON and FEAT_DotProd; lengths as for [`dot_neon`] (asserted).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_dotprod(blocks: &[BlockI2], q: &[i8], stride: usize, out: &mut [i32]) {
    // SAFETY: the caller's contract; the length is asserted inside.
    unsafe { dot::<true>(blocks, q, stride, out) }
}

#[inline(always)]
unsafe fn gemv<const DOT: bool>(blocks: &[BlockI2], bpr: usize, q: &[i8], out: &mut [i32]) {
    assert!(
        blocks.len() >= out.len() * bpr && q.len() >= bpr * 128,
        "neon gemv: shapes"
    );
    let full = out.len() / 4 * 4;
    // SAFETY (whole block): rows r0..r0+4 lie inside `blocks` and every activation read is
    // one whole 128-value block of `q` (asserted above).
    unsafe {
        for r0 in (0..full).step_by(4) {
            let mut acc = [[vdupq_n_s32(0); 2]; 4];
            for bi in 0..bpr {
                let x = q.as_ptr().add(bi * 128);
                for (i, a) in acc.iter_mut().enumerate() {
                    let b = blocks.get_unchecked((r0 + i) * bpr + bi);
                    *a = block::<DOT>(&unpack(&b.qs), x, *a);
                }
            }
            vst1q_s32(out.as_mut_ptr().add(r0), hsum4(&acc));
        }
        for r in full..out.len() {
            tokens::<1, DOT>(&blocks[r * bpr..(r + 1) * bpr], q, 0, &mut out[r..r + 1]);
        }
    }
}

/// Decode GEMV: `out[r] = Σ c·q` for `out.len()` consecutive weight rows of `bpr` blocks each
/// (`blocks` holds them back to back) against one activation row, four rows at a time (eight
/// independent accumulator chains, one combined reduction per four rows). Baseline NEON.
///
/// # Safety
/// The CPU must support NEON; `blocks.len() >= out.len()·bpr` and `q.len() >= bpr·128`
/// (asserted).
#[target_feature(enable = "neon")]
pub unsafe fn gemv_neon(blocks: &[BlockI2], bpr: usize, q: &[i8], out: &mut [i32]) {
    // SAFETY: the caller's contract; shapes are asserted inside.
    unsafe { gemv::<false>(blocks, bpr, q, out) }
}

/// [`gemv_neon`] with `sdot`.
///
/// # Safety
/// The CPU must support NEON and FEAT_DotProd; shapes as for [`gemv_neon`] (asserted).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn gemv_dotprod(blocks: &[BlockI2], bpr: usize, q: &[i8], out: &mut [i32]) {
    // SAFETY: the caller's contract; shapes are asserted inside.
    unsafe { gemv::<true>(blocks, bpr, q, out) }
}

/// Quantizes one row like [`crate::act::quantize_row_scalar`], bit for bit: the absolute
/// maximum with `fmaxnm` (a quiet NaN ignored, like `f32::max`), the same scale, and `fcvtns`, which
/// rounds half to even like torch; the saturating narrows equal the scalar clamp to
/// −128..=127 (and NaN converts to 0, as the scalar cast does).
///
/// # Safety
/// The CPU must support NEON; `out.len() >= x.len()` (asserted).
#[target_feature(enable = "neon")]
pub unsafe fn quantize_row_neon(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    assert!(out.len() >= x.len(), "quantize_row_neon: output too short");
    let n16 = x.len() / 16 * 16;
    // SAFETY: every vector access below lies inside `x[..n16]` / `out[..n16]` (the amax loop
    // reads `x[i..i + 4]` with `i + 4 <= n16`, the rest `x[i..i + 16]` and `out[i..i + 16]` with
    // `i + 16 <= n16`), and `n16 <= x.len() <= out.len()`.
    unsafe {
        let mut m = vdupq_n_f32(0.0);
        for i in (0..n16).step_by(4) {
            m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(x.as_ptr().add(i))));
        }
        let amax = x[n16..].iter().fold(vmaxnmvq_f32(m), |a, v| a.max(v.abs()));
        let s = 127.0f32 / amax.max(1e-5);
        let sv = vdupq_n_f32(s);
        let mut sum = vdupq_n_s32(0);
        for i in (0..n16).step_by(16) {
            let p = x.as_ptr().add(i);
            let r = [
                vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p), sv)),
                vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p.add(4)), sv)),
                vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p.add(8)), sv)),
                vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p.add(12)), sv)),
            ];
            let h0 = vcombine_s16(vqmovn_s32(r[0]), vqmovn_s32(r[1]));
            let h1 = vcombine_s16(vqmovn_s32(r[2]), vqmovn_s32(r[3]));
            let b = vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1));
            vst1q_s8(out.as_mut_ptr().add(i), b);
            sum = vpadalq_s16(sum, vpaddlq_s8(b));
        }
        let mut total = vaddvq_s32(sum);
        for (o, &v) in out[n16..x.len()].iter_mut().zip(&x[n16..]) {
            let q = crate::act::round_half_even_small(v * s).clamp(-128.0, 127.0) as i8;
            total += q as i32;
            *o = q;
        }
        out[x.len()..].fill(0);
        (s, total)
    }
}
