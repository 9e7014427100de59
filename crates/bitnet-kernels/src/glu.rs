//! A vectorized `exp` and its two users: the SiLU-gated FFN activation,
//! `gate ← gate / (1 + e^(−gate)) · up` (SwiGLU), and the exponentials of the attention
//! softmax, `x ← e^(x − shift)`. The SIMD kernels (AVX2 + FMA, eight lanes) and their scalar
//! twins do the same operations in the same order — fused multiply-adds where the twin calls
//! `mul_add` — so the results are bit-identical on every kernel and every CPU.
//!
//! `exp(x)` (Cody–Waite range reduction and the degree-7 polynomial of the Cephes `expf`):
//! `x` is clamped to `[−87.33, 88.37]` (so `n` stays in the normal exponent range),
//! `n = round_half_even(x · log₂e)`, `r = x − n·C1 − n·C2` with `C1 + C2 = ln 2` (two fused
//! steps), `e^r ≈ 1 + r + r²·P(r)`, and `2ⁿ` enters through the exponent bits. Within 3
//! ulp of the exact value (tested below); libm's `expf`, which this replaces in the
//! activation and the softmax, was a scalar call per element (SiLU alone ~4 % of a prefill).

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n·C1` is exact for `|n| ≤ 128`.
const C1: f32 = 0.693_359_4;
const C2: f32 = -2.121_944_4e-4;
/// Cephes `expf` polynomial, constant term first.
const P: [f32; 6] = [
    0.5,
    1.666_666_5e-1,
    4.166_579_6e-2,
    8.333_452e-3,
    1.398_2e-3,
    1.987_569_1e-4,
];
/// The clamp bounds: `2ⁿ` for `n = round(x·log₂e)` stays a normal float.
const HI: f32 = 88.376_26;
const LO: f32 = -87.336_55;

/// `e^x` as the SIMD kernel computes it, one lane (the scalar twin). A `NaN` comes back
/// unchanged, so it shows in whatever uses the result.
#[inline]
pub fn exp_approx(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    // `_mm256_min_ps(x, HI)` and `_mm256_max_ps(x, LO)`.
    let x = if x < HI { x } else { HI };
    let x = if x > LO { x } else { LO };
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-C1, x);
    let r = n.mul_add(-C2, r);
    let r2 = r * r;
    let mut p = P[5];
    for &c in P[..5].iter().rev() {
        p = p.mul_add(r, c);
    }
    let e = p.mul_add(r2, r + 1.0);
    // n ∈ [−126, 127] after the clamps: a normal power of two.
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Whether `kernel` takes the AVX2 + FMA path here: every kernel but scalar (all of them need
/// AVX2) on a CPU that has FMA.
#[cfg(target_arch = "x86_64")]
fn simd(kernel: crate::Kernel) -> bool {
    kernel != crate::Kernel::Scalar && kernel.available() && std::is_x86_feature_detected!("fma")
}

/// `gate[i] ← gate[i] / (1 + exp(−gate[i])) · up[i]` on the scalar path.
pub fn silu_mul_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_approx(-*g)) * u;
    }
}

/// `gate[i] ← gate[i] / (1 + exp(−gate[i])) · up[i]` for `i < min(len)`, on the kernel
/// chosen at start ([`crate::dispatch::active`]).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    silu_mul_with(crate::dispatch::active(), gate, up)
}

/// [`silu_mul`] on a given kernel (parity tests); every kernel but scalar takes the AVX2 path.
pub fn silu_mul_with(kernel: crate::Kernel, gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd(kernel) {
        // SAFETY: `simd` checked AVX2 and FMA.
        unsafe { silu_mul_avx2(gate, up) };
        return;
    }
    let _ = kernel;
    silu_mul_scalar(gate, up);
}

/// `x[i] ← exp(x[i] − shift)` (the softmax's exponentials) on the scalar path.
pub fn exp_shifted_scalar(x: &mut [f32], shift: f32) {
    for v in x {
        *v = exp_approx(*v - shift);
    }
}

/// `x[i] ← exp(x[i] − shift)` on the kernel chosen at start ([`crate::dispatch::active`]).
pub fn exp_shifted(x: &mut [f32], shift: f32) {
    exp_shifted_with(crate::dispatch::active(), x, shift)
}

/// [`exp_shifted`] on a given kernel (parity tests); every kernel but scalar takes the AVX2
/// path.
pub fn exp_shifted_with(kernel: crate::Kernel, x: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd(kernel) {
        // SAFETY: `simd` checked AVX2 and FMA.
        unsafe { exp_shifted_avx2(x, shift) };
        return;
    }
    let _ = kernel;
    exp_shifted_scalar(x, shift);
}

/// [`exp_shifted_scalar`] eight lanes at a time, the tail through the scalar twin.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(x: &mut [f32], shift: f32) {
    use std::arch::x86_64::*;
    let body = x.len() / 8 * 8;
    let s = _mm256_set1_ps(shift);
    let mut i = 0;
    while i < body {
        // SAFETY: i + 8 ≤ body ≤ x.len(); unaligned load and store; AVX2 and FMA are enabled
        // by the caller's contract.
        unsafe {
            let v = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), s);
            _mm256_storeu_ps(x.as_mut_ptr().add(i), exp8(v));
        }
        i += 8;
    }
    exp_shifted_scalar(&mut x[body..], shift);
}

/// Eight lanes of [`exp_approx`]: the same operations in the same order.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(input: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(input, _mm256_set1_ps(HI));
    let x = _mm256_max_ps(x, _mm256_set1_ps(LO));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(LOG2E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C1), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C2), r);
    let r2 = _mm256_mul_ps(r, r);
    let mut p = _mm256_set1_ps(P[5]);
    for &c in P[..5].iter().rev() {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let y = _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
    // A NaN lane comes back unchanged (the clamps above turned it into a bound).
    _mm256_blendv_ps(y, input, _mm256_cmp_ps::<_CMP_UNORD_Q>(input, input))
}

/// [`silu_mul_scalar`] eight lanes at a time, the tail through the scalar twin.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let len = gate.len().min(up.len());
    let body = len / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < body {
        // SAFETY: i + 8 ≤ body ≤ len of both slices; unaligned loads and stores; AVX2 and FMA
        // are enabled by the caller's contract.
        unsafe {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let neg = _mm256_xor_ps(g, _mm256_set1_ps(-0.0));
            let s = _mm256_div_ps(g, _mm256_add_ps(one, exp8(neg)));
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
        }
        i += 8;
    }
    silu_mul_scalar(&mut gate[body..len], &up[body..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_approx_is_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_approx(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_7;
        }
        // 2⁻²³ ≈ 1.19e-7 is one ulp at the bottom of a binade.
        assert!(worst < 3.0 * 1.19e-7, "worst relative error {worst:e}");
        assert_eq!(exp_approx(0.0), 1.0);
        assert!(exp_approx(-1000.0) > 0.0 && exp_approx(-1000.0) < 1e-37);
        assert!(exp_approx(1000.0).is_finite() && exp_approx(1000.0) > 1e38);
        assert!(exp_approx(f32::NAN).is_nan());
    }

    #[test]
    fn silu_matches_its_definition() {
        let g: Vec<f32> = (0..200).map(|i| (i as f32 - 100.0) * 0.37).collect();
        let u: Vec<f32> = (0..200).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut out = g.clone();
        silu_mul_scalar(&mut out, &u);
        for ((&o, &g), &u) in out.iter().zip(&g).zip(&u) {
            let want = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
            assert!(
                (o as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{g}: {o} vs {want}"
            );
        }
        // A NaN input stays NaN; +∞ gives +∞.
        let mut e = [f32::NAN, f32::INFINITY];
        silu_mul_scalar(&mut e, &[1.0; 2]);
        assert!(e[0].is_nan());
        assert_eq!(e[1], f32::INFINITY);
    }

    #[test]
    fn shifted_exp_is_identical_on_every_kernel() {
        let mut x: Vec<f32> = (0..203).map(|i| (i as f32 - 150.0) * 0.61).collect();
        x[13] = f32::NAN;
        x[200] = f32::NEG_INFINITY;
        for kernel in crate::Kernel::all_available() {
            for len in (0..=17).chain([x.len()]) {
                for shift in [0.0, 3.5, -2.25, 40.0] {
                    let mut want = x[..len].to_vec();
                    exp_shifted_scalar(&mut want, shift);
                    let mut got = x[..len].to_vec();
                    exp_shifted_with(kernel, &mut got, shift);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{} len {len} shift {shift}",
                        kernel.name()
                    );
                }
            }
        }
    }

    /// Every kernel gives the scalar twin's bits: random values over the whole clamp range and
    /// past it, the clamp bounds, zeros of both signs, tiny and subnormal values, and every
    /// tail length.
    #[test]
    fn silu_is_identical_on_every_kernel() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut g: Vec<f32> = (0..1000).map(|_| (next() - 0.5) * 240.0).collect();
        g.extend([
            0.0, -0.0, HI, LO, -HI, -LO, 88.5, -88.5, 87.4, -87.4, 1e-30, -1e-30, 1e-40,
        ]);
        g.extend([f32::MIN_POSITIVE, 20.0, -20.0, 0.5, -0.5, 1e-7, f32::NAN]);
        let u: Vec<f32> = (0..g.len()).map(|_| (next() - 0.5) * 8.0).collect();
        for kernel in crate::Kernel::all_available() {
            for len in (0..=17).chain([g.len()]) {
                let mut want = g[..len].to_vec();
                silu_mul_scalar(&mut want, &u[..len]);
                let mut got = g[..len].to_vec();
                silu_mul_with(kernel, &mut got, &u[..len]);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                        "{}: len {len}, element {i} (gate {}): {a} vs {b}",
                        kernel.name(),
                        g[i]
                    );
                }
            }
        }
    }
}
