//! `out[t·rows + r] = tmp[r·n + t]`: the row-major `[rows, n]` results of a row-parallel kernel
//! (every weight row's outputs for the `n` tokens side by side) into the `[n, rows]` layout the
//! model uses. Square tiles transposed in registers: 16 × 16 with AVX-512 F
//! ([`tile16_avx512`]), 8 × 8 with AVX ([`tile8_avx`], when the AVX2 kernels are active); ragged
//! edges and other CPUs go through [`transpose_scalar`] (the scalar twin). A move of values:
//! every path gives the same result.

/// Transposes `tmp` (`[rows, n]`) into `out` (`[n, rows]`).
///
/// # Panics
/// When `tmp.len() < rows·n` or `out.len() < rows·n`.
pub fn transpose_into(tmp: &[f32], rows: usize, n: usize, out: &mut [f32]) {
    assert!(
        tmp.len() >= rows * n && out.len() >= rows * n,
        "transpose_into: shapes"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let tiles: Option<(usize, Tile)> = match crate::dispatch::active() {
            crate::Kernel::Avx512Vnni | crate::Kernel::Amx => Some((16, tile16_avx512)),
            crate::Kernel::Avx2 => Some((8, tile8_avx)),
            crate::Kernel::Scalar | crate::Kernel::Neon | crate::Kernel::NeonDot => None,
        };
        if let Some((size, tile)) = tiles {
            // SAFETY: the active kernel's selection checked its features (`Kernel::available`):
            // the AVX-512 kernels imply AVX-512 F, the AVX2 kernel AVX.
            unsafe { transpose_tiled(tmp, rows, n, out, size, tile) };
            return;
        }
    }
    transpose_scalar(tmp, rows, n, out);
}

/// A square register tile of side `t`: `dst[j·dst_stride + i] = src[i·src_stride + j]` for
/// `i, j < t`.
#[cfg(target_arch = "x86_64")]
type Tile = unsafe fn(*const f32, usize, *mut f32, usize);

/// [`transpose_into`] with `t × t` tiles through `tile`, the ragged edges through the scalar
/// twin.
///
/// # Safety
/// `tile` must be a `t × t` [`Tile`] whose CPU features are present.
#[cfg(target_arch = "x86_64")]
unsafe fn transpose_tiled(
    tmp: &[f32],
    rows: usize,
    n: usize,
    out: &mut [f32],
    t: usize,
    tile: Tile,
) {
    assert!(
        tmp.len() >= rows * n && out.len() >= rows * n,
        "transpose_tiled: shapes"
    );
    let (rf, nf) = (rows / t * t, n / t * t);
    for r0 in (0..rf).step_by(t) {
        for t0 in (0..nf).step_by(t) {
            // SAFETY: the tile reads tmp[(r0+i)·n + t0 ..][..t] and writes
            // out[(t0+j)·rows + r0 ..][..t] for i, j < t, inside both slices since r0 + t ≤ rows,
            // t0 + t ≤ n and both hold rows·n values (asserted); features: caller contract.
            unsafe {
                tile(
                    tmp.as_ptr().add(r0 * n + t0),
                    n,
                    out.as_mut_ptr().add(t0 * rows + r0),
                    rows,
                )
            };
        }
    }
    // The ragged edges: the last columns of every row, then the last rows.
    transpose_part(tmp, rows, n, out, 0..rf, nf..n);
    transpose_part(tmp, rows, n, out, rf..rows, 0..n);
}

/// The scalar twin: 16 × 16 tiles of plain element moves (a plain loop strides through `out`
/// by `rows` for every value: a cache miss each at prompt sizes).
pub fn transpose_scalar(tmp: &[f32], rows: usize, n: usize, out: &mut [f32]) {
    transpose_part(tmp, rows, n, out, 0..rows, 0..n);
}

fn transpose_part(
    tmp: &[f32],
    rows: usize,
    n: usize,
    out: &mut [f32],
    rr: std::ops::Range<usize>,
    tr: std::ops::Range<usize>,
) {
    const T: usize = 16;
    for r0 in rr.clone().step_by(T) {
        let r1 = (r0 + T).min(rr.end);
        for t0 in tr.clone().step_by(T) {
            let t1 = (t0 + T).min(tr.end);
            for r in r0..r1 {
                for t in t0..t1 {
                    out[t * rows + r] = tmp[r * n + t];
                }
            }
        }
    }
}

/// One 16 × 16 tile: `dst[j·dst_stride + i] = src[i·src_stride + j]`, in four shuffle stages
/// (pairs of rows interleaved, then 4 × 4 blocks within 128-bit lanes, then the 128-bit lanes
/// across vectors twice): 64 shuffles for 256 values.
///
/// # Safety
/// The CPU must support AVX-512 F; `src` has 16 rows of 16 readable values `src_stride` apart
/// and `dst` 16 rows of 16 writable values `dst_stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn tile16_avx512(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: features enabled; the loads and stores stay in the rows of the contract.
    unsafe {
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, v) in r.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(src.add(i * src_stride));
        }
        // Per 128-bit lane L: t[2k] = [r2k[4L], r2k+1[4L], r2k[4L+1], r2k+1[4L+1]],
        // t[2k+1] the same for 4L+2, 4L+3.
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // u[4m + c], lane L: column 4L + c of rows 4m .. 4m+4.
        let mut u = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            let (a, b, c, d) = (t[4 * m], t[4 * m + 1], t[4 * m + 2], t[4 * m + 3]);
            u[4 * m] = _mm512_shuffle_ps::<0x44>(a, c);
            u[4 * m + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
            u[4 * m + 2] = _mm512_shuffle_ps::<0x44>(b, d);
            u[4 * m + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
        }
        // Column 4L + c: lane L of u[c], u[4+c], u[8+c], u[12+c] side by side.
        for c in 0..4 {
            let (a, b, cc, d) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
            let v0 = _mm512_shuffle_f32x4::<0x88>(a, b);
            let v1 = _mm512_shuffle_f32x4::<0xDD>(a, b);
            let v2 = _mm512_shuffle_f32x4::<0x88>(cc, d);
            let v3 = _mm512_shuffle_f32x4::<0xDD>(cc, d);
            let cols = [
                _mm512_shuffle_f32x4::<0x88>(v0, v2),
                _mm512_shuffle_f32x4::<0x88>(v1, v3),
                _mm512_shuffle_f32x4::<0xDD>(v0, v2),
                _mm512_shuffle_f32x4::<0xDD>(v1, v3),
            ];
            for (l, col) in cols.iter().enumerate() {
                _mm512_storeu_ps(dst.add((4 * l + c) * dst_stride), *col);
            }
        }
    }
}

/// One 8 × 8 tile (AVX): `dst[j·dst_stride + i] = src[i·src_stride + j]`, in three shuffle
/// stages (pairs of rows interleaved, 4 × 4 blocks within 128-bit lanes, then the lanes across
/// vectors): 24 shuffles for 64 values.
///
/// # Safety
/// The CPU must support AVX; `src` has 8 rows of 8 readable values `src_stride` apart and `dst`
/// 8 rows of 8 writable values `dst_stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub unsafe fn tile8_avx(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: features enabled; the loads and stores stay in the rows of the contract.
    unsafe {
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, v) in r.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(src.add(i * src_stride));
        }
        // Per 128-bit lane L: t[2k] = [r2k[4L], r2k+1[4L], r2k[4L+1], r2k+1[4L+1]],
        // t[2k+1] the same for 4L+2, 4L+3.
        let mut t = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // u[4m + c], lane L: column 4L + c of rows 4m .. 4m+4.
        let mut u = [_mm256_setzero_ps(); 8];
        for m in 0..2 {
            let (a, b, c, d) = (t[4 * m], t[4 * m + 1], t[4 * m + 2], t[4 * m + 3]);
            u[4 * m] = _mm256_shuffle_ps::<0x44>(a, c);
            u[4 * m + 1] = _mm256_shuffle_ps::<0xEE>(a, c);
            u[4 * m + 2] = _mm256_shuffle_ps::<0x44>(b, d);
            u[4 * m + 3] = _mm256_shuffle_ps::<0xEE>(b, d);
        }
        // Column c (lane 0 of u[c] and u[4 + c]) and column 4 + c (lane 1 of both).
        for c in 0..4 {
            let lo = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
            let hi = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
            _mm256_storeu_ps(dst.add(c * dst_stride), lo);
            _mm256_storeu_ps(dst.add((4 + c) * dst_stride), hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape class (full tiles, ragged rows and columns, fewer than 16 of either) gives
    /// the scalar twin's result, which is checked against the definition.
    #[test]
    fn transpose_matches_definition() {
        for (rows, n) in [
            (8, 8),
            (24, 13),
            (9, 8),
            (16, 16),
            (32, 48),
            (37, 16),
            (16, 21),
            (45, 33),
            (7, 16),
            (40, 5),
            (1, 1),
        ] {
            let tmp: Vec<f32> = (0..rows * n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut want = vec![f32::NAN; rows * n];
            for r in 0..rows {
                for t in 0..n {
                    want[t * rows + r] = tmp[r * n + t];
                }
            }
            let mut scalar = vec![f32::NAN; rows * n];
            transpose_scalar(&tmp, rows, n, &mut scalar);
            assert_eq!(scalar, want, "scalar {rows}x{n}");
            let mut got = vec![f32::NAN; rows * n];
            transpose_into(&tmp, rows, n, &mut got);
            assert_eq!(got, want, "dispatched {rows}x{n}");
            // Each register tile this CPU can run, whatever kernel is active.
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    let mut got = vec![f32::NAN; rows * n];
                    // SAFETY: AVX-512 F detected; lengths rows·n.
                    unsafe { transpose_tiled(&tmp, rows, n, &mut got, 16, tile16_avx512) };
                    assert_eq!(got, want, "16x16 tiles {rows}x{n}");
                }
                if std::is_x86_feature_detected!("avx") {
                    let mut got = vec![f32::NAN; rows * n];
                    // SAFETY: AVX detected; lengths rows·n.
                    unsafe { transpose_tiled(&tmp, rows, n, &mut got, 8, tile8_avx) };
                    assert_eq!(got, want, "8x8 tiles {rows}x{n}");
                }
            }
        }
    }
}
