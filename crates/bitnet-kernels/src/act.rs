//! Per-token int8 activation quantization (absmax, BITNET.md):
//! `s_x = 127 / max(max|x|, 1e-5)`, `q = clamp(round_half_even(x · s_x), −128, 127)`.

/// A batch of quantized activation rows, reused across calls (no allocation once large enough).
#[derive(Clone, Debug, Default)]
pub struct QuantizedActs {
    n: usize,
    k: usize,
    k_padded: usize,
    q: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

impl QuantizedActs {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `n` rows of length `k` from `x` (row-major, `x.len() >= n * k`), padding each row
    /// with zeros to `k_padded` (≥ `k`, the weight matrix's [`crate::TernaryMatrix::cols_padded`]).
    pub fn quantize(&mut self, x: &[f32], n: usize, k: usize, k_padded: usize) {
        assert!(k_padded >= k && x.len() >= n * k, "activation shape");
        self.n = n;
        self.k = k;
        self.k_padded = k_padded;
        self.q.resize(n * k_padded, 0);
        self.scales.resize(n, 0.0);
        self.sums.resize(n, 0);
        if k_padded == 0 {
            // Empty rows (a zero-column matrix): the scalar result of an empty row.
            for t in 0..n {
                (self.scales[t], self.sums[t]) = quantize_row_scalar(&[], &mut []);
            }
            return;
        }
        let rows = self.q[..n * k_padded]
            .chunks_mut(k_padded)
            .zip(&mut self.scales[..n])
            .zip(&mut self.sums[..n]);
        if n < 16 || rayon::current_num_threads() == 1 {
            for (t, ((qrow, s), sum)) in rows.enumerate() {
                (*s, *sum) = quantize_row(&x[t * k..(t + 1) * k], qrow);
            }
            return;
        }
        // Prefill-sized batches: rows in parallel.
        use rayon::prelude::*;
        self.q[..n * k_padded]
            .par_chunks_mut(k_padded)
            .zip(self.scales[..n].par_iter_mut())
            .zip(self.sums[..n].par_iter_mut())
            .enumerate()
            .for_each(|(t, ((qrow, s), sum))| {
                (*s, *sum) = quantize_row(&x[t * k..(t + 1) * k], qrow);
            });
    }

    /// Rows.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Unpadded row length.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Padded row length.
    pub fn k_padded(&self) -> usize {
        self.k_padded
    }
    /// Quantized row `t` (padded length).
    #[inline]
    pub fn row(&self, t: usize) -> &[i8] {
        &self.q[t * self.k_padded..(t + 1) * self.k_padded]
    }
    /// All rows (row `t` at `t · k_padded`).
    #[inline]
    pub fn data(&self) -> &[i8] {
        &self.q[..self.n * self.k_padded]
    }
    /// `s_x` of row `t` (real value = q / s_x).
    #[inline]
    pub fn scale(&self, t: usize) -> f32 {
        self.scales[t]
    }
    /// `Σ q` of row `t`, for the `Σ w·q = Σ c·q − Σ q` identity.
    #[inline]
    pub fn sum(&self, t: usize) -> i32 {
        self.sums[t]
    }
    /// `s_x` of every row.
    #[inline]
    pub fn scales(&self) -> &[f32] {
        &self.scales[..self.n]
    }
    /// `Σ q` of every row.
    #[inline]
    pub fn sums(&self) -> &[i32] {
        &self.sums[..self.n]
    }
}

/// Round half to even for |x| < 2²² (here |x| ≤ 127·(1 + ε)): adding and subtracting 1.5·2²³
/// makes the FPU round in its default mode, which is half-to-even — the same result as
/// `f32::round_ties_even`, without the `rintf` call that baseline x86-64 (no SSE4.1) emits.
#[inline(always)]
pub fn round_half_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        ((x.abs() + MAGIC) - MAGIC).copysign(x)
    } else {
        x.round_ties_even()
    }
}

/// Quantizes one row into `out` (zero-padded past `x.len()`); returns `(s_x, Σ q)`. AVX2 when
/// the CPU has it and the scalar kernel is not forced (`x86::quantize_row_avx2`, bit-identical:
/// `vroundps` rounds half to even), NEON on aarch64 (`neon::quantize_row_neon`: `fcvtns`
/// rounds half to even too), else [`quantize_row_scalar`].
pub fn quantize_row(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    assert!(
        out.len() >= x.len(),
        "quantize_row: output shorter than the row"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::dispatch::active() != crate::Kernel::Scalar && std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected just above; lengths asserted.
        return unsafe { crate::x86::quantize_row_avx2(x, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if crate::dispatch::active() != crate::Kernel::Scalar {
        // SAFETY: a non-scalar kernel on aarch64 is NEON, available (checked when chosen).
        return unsafe { crate::neon::quantize_row_neon(x, out) };
    }
    quantize_row_scalar(x, out)
}

/// Scalar twin of [`quantize_row`].
pub fn quantize_row_scalar(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let s = 127.0f32 / amax.max(1e-5);
    let mut sum = 0i32;
    for (o, &v) in out.iter_mut().zip(x) {
        let q = round_half_even_small(v * s).clamp(-128.0, 127.0) as i8;
        sum += q as i32;
        *o = q;
    }
    out[x.len()..].fill(0);
    (s, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_pads() {
        // amax = 127 → s = 1: 0.5 → 0, 1.5 → 2, 2.5 → 2, -0.5 → -0, -1.5 → -2.
        let x = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5];
        let mut q = [9i8; 8];
        let (s, sum) = quantize_row(&x, &mut q);
        assert_eq!(s, 1.0);
        assert_eq!(q, [127, 0, 2, 2, 0, -2, 0, 0]);
        assert_eq!(sum, 129);
    }

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        let mut x = -300.0f32;
        while x < 300.0 {
            for v in [x, x + 0.5, -x - 0.5, x + 0.4999999, x + 0.5000001] {
                assert_eq!(
                    round_half_even_small(v).to_bits(),
                    v.round_ties_even().to_bits(),
                    "{v}"
                );
            }
            x += 0.25;
        }
        for v in [1e7f32, -1e9, f32::MAX, 0.0, -0.0] {
            assert_eq!(round_half_even_small(v), v.round_ties_even());
        }
    }

    #[test]
    fn zero_row_is_finite() {
        let mut a = QuantizedActs::new();
        a.quantize(&[0.0; 4], 1, 4, 128);
        assert!(a.scale(0).is_finite());
        assert!(a.row(0).iter().all(|&v| v == 0));
    }
}
