//! Grouped-query attention: the query heads that share one key/value head attend together, so
//! each cached key and value row is loaded once for all of them instead of once per head
//! (2B-4T: 20 query heads over 5 key/value heads, four per row).
//!
//! Every head's result is bit-identical to [`attend`] for that head alone (and so to
//! its scalar twin [`attend_scalar`]): the kernels below keep, lane for lane, the
//! operations of the one-head AVX2 kernel — four 8-lane FMA accumulators per key dot product
//! (in the AVX-512 kernel the halves of two 16-lane registers), reduced in the same pairs; the
//! value sum `o + w·v` per lane and position, unfused, in position order — so prefill, batched
//! decode and single-token decode agree whichever way the heads are grouped. AVX-512 takes up to
//! four heads per block (head sizes that are multiples of 64), AVX2 two (its 16 registers hold
//! two heads' accumulators; multiples of 32); one head alone, the scalar kernel or another head
//! size goes through [`attend`].
//!
//! The cached keys and values are [`KvElem`]s: `f32`, or `f16` for half the memory and half the
//! bytes read per position. An f16 row is widened to f32 exactly as it is loaded (F16C /
//! AVX-512 F), and the arithmetic after the load is the f32 kernels', so attention over an f16
//! cache gives the bits the f32 kernels give on the rounded values — the parity tests check that.

/// The `qs.len() / hd` query heads of `qs` (head-major, `hd = out.len() / heads`) attending
/// over the same `npos` cached positions: for each head `j`,
/// `out[j·hd..][..hd] = softmax(q_j·Kᵀ·scale) · V`. `keys`/`values` are `[npos, hd]` row-major;
/// `scores` is scratch of at least `heads · npos` values (head `j`'s at `j·npos`).
///
/// # Panics
/// When `out.len() != qs.len()`, `qs.len()` is not a multiple of `hd`, or a slice is shorter
/// than the shapes need.
#[allow(clippy::too_many_arguments)]
pub fn attend_group<T: KvElem>(
    qs: &[f32],
    hd: usize,
    keys: &[T],
    values: &[T],
    npos: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let kernel = crate::dispatch::active();
    attend_group_with(kernel, qs, hd, keys, values, npos, scale, scores, out)
}

/// [`attend_group`] on a given kernel (parity tests): AVX-512 blocks for the AVX-512 and AMX
/// kernels, AVX2 pairs for the AVX2 kernel, one head at a time ([`attend`], on the
/// active kernel) otherwise; the same bits on every one.
///
/// # Panics
/// As [`attend_group`].
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut, unused_variables))]
pub fn attend_group_with<T: KvElem>(
    kernel: crate::Kernel,
    qs: &[f32],
    hd: usize,
    keys: &[T],
    values: &[T],
    npos: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    assert!(
        hd > 0
            && qs.len().is_multiple_of(hd)
            && out.len() == qs.len()
            && scores.len() >= qs.len() / hd * npos,
        "attend_group: shapes"
    );
    // One head alone takes `attend` (the AVX2 kernel): a 16-lane version of it measured no
    // faster; the gain here is sharing the loads between heads.
    let heads = qs.len() / hd;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if heads >= 2
        && kernel != crate::Kernel::Scalar
        && kernel.available()
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        if hd.is_multiple_of(64) && matches!(kernel, crate::Kernel::Avx512Vnni | crate::Kernel::Amx)
        {
            // SAFETY: the AVX-512 and AMX kernels are available only where AVX-512 F/BW/VL are
            // detected (with AVX2), FMA and F16C are checked above; the shapes are asserted above and in
            // the kernel.
            unsafe { avx512::attend_group(qs, hd, keys, values, npos, scale, scores, out) };
            return;
        }
        if hd.is_multiple_of(32) {
            // Pairs of heads with AVX2 (an odd last head alone, below).
            while done + 2 <= heads {
                let (q, s, o) = (
                    &qs[done * hd..(done + 2) * hd],
                    &mut scores[done * npos..(done + 2) * npos],
                    &mut out[done * hd..(done + 2) * hd],
                );
                // SAFETY: every x86 kernel but scalar needs AVX2 to be available, FMA and F16C
                // are checked above; the shapes are asserted in the kernel.
                unsafe { avx2::attend_pair(q, hd, keys, values, npos, scale, s, o) };
                done += 2;
            }
        }
    }
    for j in done..heads {
        attend(
            &qs[j * hd..(j + 1) * hd],
            keys,
            values,
            npos,
            scale,
            &mut scores[j * npos..(j + 1) * npos],
            &mut out[j * hd..(j + 1) * hd],
        );
    }
}

/// An element type of the key/value cache: `f32`, or `half::f16` (half the memory and half
/// the bytes read per cached position; rounded to nearest, ties to even, when written, and
/// widened to f32 exactly when read). Sealed: the SIMD kernels rely on these two layouts.
pub trait KvElem: Copy + Default + Send + Sync + 'static + sealed::Sealed {
    /// Whether this is `half::f16` (the SIMD loads then widen with F16C / AVX-512 F).
    const F16: bool;
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

impl KvElem for f32 {
    const F16: bool = false;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElem for half::f16 {
    const F16: bool = true;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// One query head attending over `npos` cached positions: `out = softmax(q·Kᵀ·scale) · V`.
/// `keys`/`values` are `[npos, head_dim]` row-major; `scores` is scratch of length ≥ `npos`.
/// AVX2 + FMA + F16C where the active kernel is a SIMD one, [`attend_scalar`] otherwise (the
/// same bits).
pub fn attend<T: KvElem>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    npos: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::dense::simd_dense() {
        // SAFETY: `simd_dense` checked AVX2, FMA and F16C; lengths are asserted inside.
        unsafe { avx2::attend(q, keys, values, npos, scale, scores, out) };
        return;
    }
    attend_scalar(q, keys, values, npos, scale, scores, out);
}

/// The portable twin of [`attend`]: the same dot products (on the active kernel, as
/// [`crate::dense::dot_f32`]: 8-lane scalar sums, or AVX2 FMAs where they run), the same
/// softmax, and the value sum `o += w·v` per lane in position order.
pub fn attend_scalar<T: KvElem>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    npos: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let scores = &mut scores[..npos];
    for (p, s) in scores.iter_mut().enumerate() {
        *s = dot_key(&keys[p * hd..(p + 1) * hd], q) * scale;
    }
    crate::ops::softmax(scores);
    out[..hd].fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let v = &values[p * hd..(p + 1) * hd];
        for (o, &x) in out[..hd].iter_mut().zip(v) {
            *o += w * x.to_f32();
        }
    }
}

/// `Σ k·q` of one cached key row, with the operations of [`crate::dense::dot_f32`] on the row
/// widened to f32.
#[inline]
fn dot_key<T: KvElem>(k: &[T], q: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::dense::simd_dense() {
        // SAFETY: `simd_dense` checked AVX2, FMA and F16C; `dot_wide` asserts the lengths.
        return unsafe { avx2::dot_row(k, q) };
    }
    crate::dense::dot8(k, q, T::to_f32)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::KvElem;
    use crate::x86::{hsum_ps, prefetch_ahead};
    use std::arch::x86_64::*;

    /// 16 cached values at `p` as f32 (f16 widened exactly).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16<T: KvElem>(p: *const T) -> __m512 {
        // SAFETY: the callers pass a pointer with 16 readable elements; a `T` with `F16` set is
        // `half::f16` (the trait is sealed), two bytes each.
        unsafe {
            if T::F16 {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
            } else {
                _mm512_loadu_ps(p.cast())
            }
        }
    }

    /// Query heads per register block (8 key accumulators or 16 value accumulators).
    const G: usize = 4;

    /// The sum of a register's two 8-lane halves (AVX-512 F only: no `vextractf32x8`).
    #[inline(always)]
    unsafe fn halves(v: __m512) -> __m256 {
        // SAFETY: the callers enable AVX-512 F.
        unsafe {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            _mm256_add_ps(_mm512_castps512_ps256(v), hi)
        }
    }

    /// [`super::attend_group`] with AVX-512 F/VL, heads in blocks of up to four.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL; `hd` is a multiple of 64 (asserted
    /// with the slice lengths).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    pub(super) unsafe fn attend_group<T: KvElem>(
        qs: &[f32],
        hd: usize,
        keys: &[T],
        values: &[T],
        npos: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let heads = qs.len() / hd;
        assert!(
            hd.is_multiple_of(64)
                && keys.len() >= npos * hd
                && values.len() >= npos * hd
                && scores.len() >= heads * npos
                && out.len() >= heads * hd,
            "attend_group (AVX-512): shapes"
        );
        let mut h0 = 0;
        while h0 < heads {
            let g = (heads - h0).min(G);
            let (q, s, o) = (
                &qs[h0 * hd..(h0 + g) * hd],
                &mut scores[h0 * npos..(h0 + g) * npos],
                &mut out[h0 * hd..(h0 + g) * hd],
            );
            // SAFETY: features as this function's; the block's slices hold `g` heads.
            unsafe {
                match g {
                    4 => block::<4, T>(q, hd, keys, values, npos, scale, s, o),
                    3 => block::<3, T>(q, hd, keys, values, npos, scale, s, o),
                    2 => block::<2, T>(q, hd, keys, values, npos, scale, s, o),
                    _ => block::<1, T>(q, hd, keys, values, npos, scale, s, o),
                }
            }
            h0 += g;
        }
    }

    /// `N` heads: scores (the key row loaded once per position for all `N`), the softmax per
    /// head, then the value sum 64 lanes at a time (the value row loaded once for all `N`).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    unsafe fn block<const N: usize, T: KvElem>(
        qs: &[f32],
        hd: usize,
        keys: &[T],
        values: &[T],
        npos: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        // SAFETY (whole block): features enabled by the caller; every load reads inside
        // `keys[p·hd..][..hd]`, `values[p·hd..][..hd]` (p < npos) or `qs[j·hd..][..hd]` (j < N),
        // every store writes `out[j·hd..][..hd]`; `hd` is a multiple of 64 (asserted by the
        // caller with the lengths).
        unsafe {
            let q = qs.as_ptr();
            for p in 0..npos {
                let k = keys.as_ptr().add(p * hd);
                prefetch_ahead(k, 2);
                // The AVX2 kernel's accumulators 0|1 (elements 32i..32i+16) and 2|3
                // (32i+16..32i+32), per head.
                let mut a = [_mm512_setzero_ps(); N];
                let mut b = [_mm512_setzero_ps(); N];
                for i in (0..hd).step_by(32) {
                    let ka = load16(k.add(i));
                    let kb = load16(k.add(i + 16));
                    for j in 0..N {
                        let qj = q.add(j * hd + i);
                        a[j] = _mm512_fmadd_ps(ka, _mm512_loadu_ps(qj), a[j]);
                        b[j] = _mm512_fmadd_ps(kb, _mm512_loadu_ps(qj.add(16)), b[j]);
                    }
                }
                for j in 0..N {
                    // (acc0 + acc1) + (acc2 + acc3), then the 128-bit tree of `dot_f32`.
                    let s = _mm256_add_ps(halves(a[j]), halves(b[j]));
                    *scores.get_unchecked_mut(j * npos + p) = hsum_ps(s) * scale;
                }
            }
            for j in 0..N {
                crate::ops::softmax(&mut scores[j * npos..(j + 1) * npos]);
            }
            let w = scores.as_ptr();
            for c in (0..hd).step_by(64) {
                let mut o = [[_mm512_setzero_ps(); 4]; N];
                for p in 0..npos {
                    let v = values.as_ptr().add(p * hd + c);
                    prefetch_ahead(v, 4);
                    let vv = [
                        load16(v),
                        load16(v.add(16)),
                        load16(v.add(32)),
                        load16(v.add(48)),
                    ];
                    for (j, oj) in o.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*w.add(j * npos + p));
                        for (oi, &x) in oj.iter_mut().zip(&vv) {
                            *oi = _mm512_add_ps(*oi, _mm512_mul_ps(wv, x));
                        }
                    }
                }
                for (j, oj) in o.iter().enumerate() {
                    for (i, oi) in oj.iter().enumerate() {
                        _mm512_storeu_ps(out.as_mut_ptr().add(j * hd + c + 16 * i), *oi);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::KvElem;
    use crate::x86::{hsum_ps, prefetch_ahead};
    use std::arch::x86_64::*;

    /// 8 cached values at `p` as f32 (f16 widened exactly).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
        // SAFETY: the callers pass a pointer with 8 readable elements; a `T` with `F16` set is
        // `half::f16` (the trait is sealed), two bytes each.
        unsafe {
            if T::F16 {
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
            } else {
                _mm256_loadu_ps(p.cast())
            }
        }
    }

    /// `Σ k·q` of one cached key row: `x86::dot_f32` (or `dot_f16` on its bits, the same
    /// operations after the exact widening).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `q.len() >= k.len()` (asserted inside).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_row<T: KvElem>(k: &[T], q: &[f32]) -> f32 {
        // SAFETY: features enabled here; a `T` with `F16` set is `half::f16`, whose bits are
        // one `u16` each (repr(transparent)), otherwise `T` is `f32`; same length and address.
        unsafe {
            if T::F16 {
                let bits = std::slice::from_raw_parts(k.as_ptr().cast::<u16>(), k.len());
                crate::x86::dot_f16(bits, q)
            } else {
                let f = std::slice::from_raw_parts(k.as_ptr().cast::<f32>(), k.len());
                crate::x86::dot_f32(f, q)
            }
        }
    }

    /// One query head over `npos` cached positions ([`super::attend`]'s SIMD path): the scores
    /// with [`dot_row`], the softmax of `ops::softmax`, and the value sum `out += p·v` eight
    /// lanes at a time with a separate multiply and add — the same two roundings as the scalar
    /// loop, so the output is bit-identical to it.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `keys`/`values` hold `npos·q.len()` values,
    /// `scores` at least `npos`, `out` at least `q.len()` (asserted).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend<T: KvElem>(
        q: &[f32],
        keys: &[T],
        values: &[T],
        npos: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = q.len();
        assert!(
            keys.len() >= npos * hd && values.len() >= npos * hd && scores.len() >= npos,
            "attend: cache shorter than npos"
        );
        let (scores, out) = (&mut scores[..npos], &mut out[..hd]);
        for (p, s) in scores.iter_mut().enumerate() {
            // The key row goes first: the dot prefetches its first argument ahead (the keys of
            // later positions); `fma(k, q)` = `fma(q, k)`, so the sum is unchanged.
            // SAFETY: features enabled; the key row has `hd` values (asserted above).
            *s = unsafe { dot_row(&keys[p * hd..(p + 1) * hd], q) } * scale;
        }
        crate::ops::softmax(scores);
        // The value sum 64 lanes at a time with the running sums in eight registers (no store
        // and reload per position); each lane still takes `+= p·v` position by position.
        let h64 = hd / 64 * 64;
        for c in (0..h64).step_by(64) {
            // SAFETY: features enabled; the loads read values[p·hd + c ..][..64] with
            // c + 64 ≤ hd, and the stores write out[c..c + 64].
            unsafe {
                let mut o = [_mm256_setzero_ps(); 8];
                for (p, &w) in scores.iter().enumerate() {
                    let wv = _mm256_set1_ps(w);
                    let v = values.as_ptr().add(p * hd + c);
                    prefetch_ahead(v, 4);
                    for (i, oi) in o.iter_mut().enumerate() {
                        *oi = _mm256_add_ps(*oi, _mm256_mul_ps(wv, load8(v.add(8 * i))));
                    }
                }
                for (i, oi) in o.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * i), *oi);
                }
            }
        }
        out[h64..].fill(0.0);
        let h8 = hd / 8 * 8;
        for (p, &w) in scores.iter().enumerate() {
            let v = &values[p * hd..(p + 1) * hd];
            // SAFETY: features enabled; loads/stores read i..i+8 ≤ h8 ≤ hd = len of `v`, `out`.
            unsafe {
                let wv = _mm256_set1_ps(w);
                let mut i = h64;
                while i < h8 {
                    let o = out.as_mut_ptr().add(i);
                    let x = _mm256_mul_ps(wv, load8(v.as_ptr().add(i)));
                    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), x));
                    i += 8;
                }
            }
            for (o, &x) in out[h8..].iter_mut().zip(&v[h8..]) {
                *o += w * x.to_f32();
            }
        }
    }

    /// Two heads over the same positions with AVX2: the key row loaded once for both (four
    /// accumulators each, as `dot_wide`), then the value sum 32 lanes at a time (four
    /// accumulators each, one value load for both heads).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `hd` is a multiple of 32 (asserted with the
    /// slice lengths).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_pair<T: KvElem>(
        qs: &[f32],
        hd: usize,
        keys: &[T],
        values: &[T],
        npos: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        assert!(
            hd.is_multiple_of(32)
                && qs.len() >= 2 * hd
                && keys.len() >= npos * hd
                && values.len() >= npos * hd
                && scores.len() >= 2 * npos
                && out.len() >= 2 * hd,
            "attend_pair: shapes"
        );
        // SAFETY (whole block): AVX2/FMA enabled by the caller; every load reads inside
        // `keys[p·hd..][..hd]`, `values[p·hd..][..hd]` (p < npos) or `qs[j·hd..][..hd]` (j < 2),
        // every store writes `out[j·hd..][..hd]` (asserted lengths, `hd` a multiple of 32).
        unsafe {
            let q = qs.as_ptr();
            for p in 0..npos {
                let k = keys.as_ptr().add(p * hd);
                prefetch_ahead(k, 2);
                let mut acc = [[_mm256_setzero_ps(); 4]; 2];
                for i in (0..hd).step_by(32) {
                    for m in 0..4 {
                        let kv = load8(k.add(i + 8 * m));
                        for (j, a) in acc.iter_mut().enumerate() {
                            let x = _mm256_loadu_ps(q.add(j * hd + i + 8 * m));
                            a[m] = _mm256_fmadd_ps(kv, x, a[m]);
                        }
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    // `dot_f32`'s reduction.
                    let s = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
                    *scores.get_unchecked_mut(j * npos + p) = hsum_ps(s) * scale;
                }
            }
            crate::ops::softmax(&mut scores[..npos]);
            crate::ops::softmax(&mut scores[npos..2 * npos]);
            let w = scores.as_ptr();
            for c in (0..hd).step_by(32) {
                let mut o = [[_mm256_setzero_ps(); 4]; 2];
                for p in 0..npos {
                    let v = values.as_ptr().add(p * hd + c);
                    prefetch_ahead(v, 2);
                    let vv = [
                        load8(v),
                        load8(v.add(8)),
                        load8(v.add(16)),
                        load8(v.add(24)),
                    ];
                    for (j, oj) in o.iter_mut().enumerate() {
                        let wv = _mm256_set1_ps(*w.add(j * npos + p));
                        for (oi, &x) in oj.iter_mut().zip(&vv) {
                            *oi = _mm256_add_ps(*oi, _mm256_mul_ps(wv, x));
                        }
                    }
                }
                for (j, oj) in o.iter().enumerate() {
                    for (i, oi) in oj.iter().enumerate() {
                        _mm256_storeu_ps(out.as_mut_ptr().add(j * hd + c + 8 * i), *oi);
                    }
                }
            }
        }
    }
}
