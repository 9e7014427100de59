//! Every SIMD kernel against its scalar twin, on random and edge inputs.

use bitnet_kernels::dispatch::row_dot;
use bitnet_kernels::ops::ternary_matmul_with;
use bitnet_kernels::{Kernel, QuantizedActs, TernaryMatrix};
use rand::{RngExt, SeedableRng};

fn case(w: &[i8], rows: usize, cols: usize, q: &[i8], n: usize) {
    let m = TernaryMatrix::from_values(rows, cols, w, 0.37);
    let kp = m.cols_padded();
    // Activation rows padded to whole blocks with zeros.
    let mut qa = vec![0i8; n * kp];
    for t in 0..n {
        qa[t * kp..t * kp + cols].copy_from_slice(&q[t * cols..(t + 1) * cols]);
    }
    for r in 0..rows {
        let mut want = vec![0i32; n];
        row_dot(Kernel::Scalar, m.row_blocks(r), &qa, kp, &mut want);
        // The scalar twin itself against a plain dot of the values (codes c = w + 1).
        for t in 0..n {
            let plain: i32 = (0..cols)
                .map(|c| (w[r * cols + c] as i32 + 1) * q[t * cols + c] as i32)
                .sum();
            assert_eq!(want[t], plain, "scalar row {r} token {t}");
        }
        for k in Kernel::all_available() {
            let mut got = vec![0i32; n];
            row_dot(k, m.row_blocks(r), &qa, kp, &mut got);
            assert_eq!(got, want, "{} row {r} ({rows}x{cols}, n={n})", k.name());
        }
    }
}

#[test]
fn random_shapes_and_token_counts() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for &(rows, cols, n) in &[
        (3, 128, 1),
        (5, 384, 2),
        (4, 896, 5),
        (2, 100, 3),
        (7, 130, 9),
        (3, 1024, 17),
        // Every register-block split of the batched VNNI kernel: 8+4+2+1 and 8+8.
        (3, 256, 15),
        (2, 512, 16),
    ] {
        let w: Vec<i8> = (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect();
        let q: Vec<i8> = (0..n * cols).map(|_| rng.random()).collect();
        case(&w, rows, cols, &q, n);
    }
}

#[test]
fn edge_inputs() {
    // 640 columns: five blocks; 4000: 32 blocks, past the AVX2 kernels' 15-block i16 sums
    // (two full chunks and a partial one), 9 tokens (register blocks 8 + 1).
    for (rows, cols, n) in [(3, 640, 6), (5, 4000, 9)] {
        edge_case(rows, cols, n);
    }
}

fn edge_case(rows: usize, cols: usize, n: usize) {
    let patterns: Vec<(Vec<i8>, Vec<i8>)> = vec![
        (vec![-1; rows * cols], vec![127; n * cols]),
        (vec![1; rows * cols], vec![-128; n * cols]),
        (vec![1; rows * cols], vec![127; n * cols]),
        (vec![-1; rows * cols], vec![-128; n * cols]),
        (vec![0; rows * cols], vec![-128; n * cols]),
        (vec![1; rows * cols], vec![0; n * cols]),
        // i16-saturation pattern for maddubs chains: alternating extremes everywhere.
        (
            (0..rows * cols)
                .map(|i| if i % 2 == 0 { 1 } else { -1 })
                .collect(),
            (0..n * cols)
                .map(|i| if i % 2 == 0 { 127 } else { -128 })
                .collect(),
        ),
    ];
    for (w, q) in patterns {
        case(&w, rows, cols, &q, n);
        gemv_case(&w, rows, cols, &q);
    }
}

/// The decode GEMV kernels (four rows per pass) on the first activation row against the
/// scalar twin, called directly: through `ternary_matmul` activations come from the quantizer
/// and never reach −128.
fn gemv_case(w: &[i8], rows: usize, cols: usize, q: &[i8]) {
    // (name, GEMV): each is called with `rows` rows of kp/128 blocks and one activation row.
    type Gemv = fn(&[bitnet_kernels::BlockI2], usize, &[i8], &mut [i32]);
    #[allow(unused_mut)]
    let mut gemvs: Vec<(&str, Gemv)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if Kernel::Avx2.available() {
            // SAFETY: AVX2 detected; shapes as described above (asserted inside).
            gemvs.push(("gemv_avx2", |b, k, q, o| unsafe {
                bitnet_kernels::avx2::gemv_avx2(b, k, q, o)
            }));
        }
        if Kernel::Avx512Vnni.available() {
            // SAFETY: AVX-512 VNNI detected; shapes as above.
            gemvs.push(("gemv_vnni", |b, k, q, o| unsafe {
                bitnet_kernels::x86::gemv_vnni(b, k, q, o)
            }));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of every aarch64 Linux CPU; shapes as above.
        gemvs.push(("gemv_neon", |b, k, q, o| unsafe {
            bitnet_kernels::neon::gemv_neon(b, k, q, o)
        }));
        if Kernel::NeonDot.available() {
            // SAFETY: the dot-product extension detected; shapes as above.
            gemvs.push(("gemv_dotprod", |b, k, q, o| unsafe {
                bitnet_kernels::neon::gemv_dotprod(b, k, q, o)
            }));
        }
    }
    let m = TernaryMatrix::from_values(rows, cols, w, 1.0);
    let kp = m.cols_padded();
    let mut qa = vec![0i8; kp];
    qa[..cols].copy_from_slice(&q[..cols]);
    let want: Vec<i32> = (0..rows)
        .map(|r| {
            let mut o = [0i32];
            row_dot(Kernel::Scalar, m.row_blocks(r), &qa, kp, &mut o);
            o[0]
        })
        .collect();
    let blocks = m.rows_blocks(0, rows);
    for (name, gemv) in gemvs {
        let mut got = vec![0i32; rows];
        gemv(blocks, kp / 128, &qa, &mut got);
        assert_eq!(got, want, "{name} {rows}x{cols}");
    }
}

#[test]
fn matmul_is_identical_on_every_kernel() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    // n = 1 takes the four-rows-per-activation decode path (301 rows: a remainder of 1).
    for (rows, cols, n) in [
        (300, 1000, 3),
        (64, 512, 16),
        // Wide rows: the AVX2 path's 4-token groups (8 int8 rows would not fit in L1).
        (37, 6912, 9),
        (301, 1024, 1),
        (7, 384, 1),
        (3, 128, 1),
    ] {
        let w: Vec<i8> = (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-4.0..4.0)).collect();
        assert_matmul_matches_scalar(rows, cols, n, &w, &x, 0.5, "random");
    }
}

/// `ternary_matmul_with` on every available kernel (and the AMX kernel directly, whatever
/// token threshold the dispatcher uses) equals the scalar kernel bit for bit.
fn assert_matmul_matches_scalar(
    rows: usize,
    cols: usize,
    n: usize,
    w: &[i8],
    x: &[f32],
    scale: f32,
    what: &str,
) {
    let m = TernaryMatrix::from_values(rows, cols, w, scale);
    let mut a = QuantizedActs::new();
    a.quantize(x, n, cols, m.cols_padded());
    let mut want = vec![0f32; n * rows];
    ternary_matmul_with(Kernel::Scalar, &m, &a, &mut want);
    for k in Kernel::all_available() {
        let mut got = vec![0f32; n * rows];
        ternary_matmul_with(k, &m, &a, &mut got);
        assert_eq!(got, want, "{} {rows}x{cols} n={n} {what}", k.name());
    }
    #[cfg(target_arch = "x86_64")]
    if Kernel::Amx.available() && n > 0 {
        let mut got = vec![0f32; n * rows];
        bitnet_kernels::amx::ternary_matmul(&m, &a, &mut got);
        assert_eq!(got, want, "amx (direct) {rows}x{cols} n={n} {what}");
    }
}

/// The AMX tile kernel (and every other one) against scalar on the shapes where tiles are
/// partial: rows around the 32-row block, tokens around the 16-token tile and the 2-tile pair,
/// odd column counts (zero padding), and edge weights/activations (all −1, all +1, zero rows,
/// ±127 activations).
#[test]
fn matmul_tile_edges_are_identical_on_every_kernel() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let shapes = [
        (1, 128, 8),
        (16, 384, 16),
        (31, 1000, 17),
        (32, 256, 32),
        (33, 640, 33),
        (65, 129, 48),
        (40, 2560, 9),
        (47, 768, 40),
        // Five token tiles: AMX keeps the unpacked codes for three passes (the last one odd).
        (50, 512, 70),
        // Past 4096 columns the VNNI tiles go in column slices of 20 blocks (here 20 + 14).
        (33, 4300, 17),
    ];
    for (si, &(rows, cols, n)) in shapes.iter().enumerate() {
        for pattern in 0..4 {
            let w: Vec<i8> = (0..rows * cols)
                .map(|i| match pattern {
                    1 => -1,
                    2 => 1,
                    3 if (i / cols) % 3 == 0 => 0,
                    _ => rng.random_range(-1..=1),
                })
                .collect();
            let x: Vec<f32> = (0..n * cols)
                .map(|i| match pattern {
                    1 | 2 => {
                        if i % 2 == 0 {
                            8.0
                        } else {
                            -8.0
                        }
                    }
                    _ => rng.random_range(-4.0..4.0),
                })
                .collect();
            let what = format!("shape {si} pattern {pattern}");
            assert_matmul_matches_scalar(rows, cols, n, &w, &x, 0.25, &what);
        }
    }
}

#[test]
fn parity_is_not_vacuous() {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        assert!(Kernel::all_available().contains(&Kernel::Avx2));
    }
    #[cfg(target_arch = "aarch64")]
    {
        assert!(Kernel::all_available().contains(&Kernel::Neon));
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            assert!(Kernel::all_available().contains(&Kernel::NeonDot));
        }
    }
    eprintln!("kernels tested: {:?}", Kernel::all_available());
}

#[test]
fn dense_dots_match_scalar_within_rounding() {
    use bitnet_kernels::{DenseData, DenseMatrix};
    use half::{bf16, f16};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    for cols in [1usize, 7, 8, 31, 32, 33, 100, 256, 2560] {
        let rows = 3;
        let vals: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mut datas = vec![
            DenseData::F32(vals.clone().into()),
            DenseData::Bf16(
                vals.iter()
                    .map(|&v| bf16::from_f32(v))
                    .collect::<Vec<_>>()
                    .into(),
            ),
            DenseData::F16(
                vals.iter()
                    .map(|&v| f16::from_f32(v))
                    .collect::<Vec<_>>()
                    .into(),
            ),
        ];
        if cols % 256 == 0 {
            use bitnet_kernels::formats::{BlockQ6K, BlockQ8_0};
            use bitnet_kernels::quant::quantize_row;
            datas.push(DenseData::Q6K(quantize_row::<BlockQ6K>(&vals).into()));
            datas.push(DenseData::Q8_0(quantize_row::<BlockQ8_0>(&vals).into()));
        }
        for data in datas {
            let m = DenseMatrix::new(rows, cols, data);
            for r in 0..rows {
                let (a, b) = (m.row_dot(r, &x), m.row_dot_scalar(r, &x));
                let bound: f32 = vals[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(&x)
                    .map(|(w, x)| (w * x).abs())
                    .sum();
                assert!(
                    (a - b).abs() <= 1e-5 * bound + 1e-6,
                    "{} cols {cols}: {a} vs {b}",
                    m.dtype()
                );
            }
        }
    }
}

#[test]
fn q6k_decode_head_matches_scalar_within_int16_rounding() {
    use bitnet_kernels::formats::BlockQ6K;
    use bitnet_kernels::ops::dense_matmul;
    use bitnet_kernels::quant::quantize_row;
    use bitnet_kernels::{DenseData, DenseMatrix};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    for &(rows, cols) in &[(37usize, 256usize), (300, 2560)] {
        let vals: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-5.0..5.0)).collect();
        let m = DenseMatrix::new(
            rows,
            cols,
            DenseData::Q6K(quantize_row::<BlockQ6K>(&vals).into()),
        );
        // Q6_K's order (the AVX2 kernel) and the kernels' own layout (the VNNI lane order
        // where the AVX-512 VNNI head runs).
        let lanes = m.clone().into_kernel_layout();
        assert_eq!(
            matches!(lanes.data(), DenseData::Q6KLanes(_)),
            vnni_head(),
            "the lane order exactly where the VNNI head runs"
        );
        for m in [m, lanes] {
            let mut out = vec![0f32; rows];
            dense_matmul(&m, &x, 1, &mut out);
            q6k_check_rows(&m, &vals, &x, &out);
        }
    }
}

/// Each of `out` (one token's logits) against the scalar dot of its row of `m`, within the
/// int16 head's bound relative to `Σ |w·x|`.
fn q6k_check_rows(m: &bitnet_kernels::DenseMatrix, vals: &[f32], x: &[f32], out: &[f32]) {
    let cols = m.cols();
    for (r, &got) in out.iter().enumerate().take(m.rows()) {
        let want = m.row_dot_scalar(r, x);
        let bound: f32 = vals[r * cols..(r + 1) * cols]
            .iter()
            .zip(x)
            .map(|(w, x)| (w * x).abs())
            .sum();
        assert!(
            (got - want).abs() <= 1e-4 * bound,
            "{:?} row {r}: {got} vs {want}",
            std::mem::discriminant(m.data())
        );
    }
}

#[test]
fn batched_dense_head_matches_per_row_dots() {
    use bitnet_kernels::formats::{BlockQ6K, BlockQ8_0};
    use bitnet_kernels::ops::dense_matmul;
    use bitnet_kernels::quant::quantize_row;
    use bitnet_kernels::{DenseData, DenseMatrix};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    // The Q6_K kernel's 4-row × 4-token register blocks at the small model's width (512) and
    // 2B-4T's (2560); 301 rows: a ragged last tile (one row through the per-row kernel); 19
    // tokens: groups of 4, 2 and 1.
    for cols in [512usize, 2560] {
        let (rows, n) = (301usize, 19usize);
        let vals: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-5.0..5.0)).collect();
        // Q6_K on a SIMD kernel (AVX2 or AVX-512 VNNI) runs on int16 activations: its error
        // bound is relative to Σ|w·x| (as for the decode head), and a token's logits are
        // bit-identical to its one-token run.
        let int16 = int16_head();
        let f16: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
        let bf16: Vec<half::bf16> = vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let q6k = DenseMatrix::new(
            rows,
            cols,
            DenseData::Q6K(quantize_row::<BlockQ6K>(&vals).into()),
        );
        for m in [
            q6k.clone(),
            // The VNNI lane order where the AVX-512 VNNI head runs (else Q6_K again).
            q6k.clone().into_kernel_layout(),
            DenseMatrix::new(
                rows,
                cols,
                DenseData::Q8_0(quantize_row::<BlockQ8_0>(&vals).into()),
            ),
            DenseMatrix::new(rows, cols, DenseData::F32(vals.clone().into())),
            DenseMatrix::new(rows, cols, DenseData::F16(f16.clone().into())),
            DenseMatrix::new(rows, cols, DenseData::Bf16(bf16.clone().into())),
        ] {
            let q6k = matches!(m.data(), DenseData::Q6K(_) | DenseData::Q6KLanes(_));
            let mut out = vec![0f32; n * rows];
            dense_matmul(&m, &x, n, &mut out);
            for t in 0..n {
                let xt = &x[t * cols..(t + 1) * cols];
                let mut alone = vec![0f32; rows];
                dense_matmul(&m, xt, 1, &mut alone);
                for r in 0..rows {
                    let want = m.row_dot_scalar(r, xt);
                    let got = out[t * rows + r];
                    // Every format: a token's batched logit has the bits of its one-token one.
                    assert_eq!(
                        got.to_bits(),
                        alone[r].to_bits(),
                        "t {t} r {r}: batch vs alone"
                    );
                    let tol = if q6k && int16 {
                        let bound: f32 = vals[r * cols..(r + 1) * cols]
                            .iter()
                            .zip(xt)
                            .map(|(w, x)| (w * x).abs())
                            .sum();
                        1e-4 * bound
                    } else {
                        1e-3 * (1.0 + want.abs())
                    };
                    assert!((got - want).abs() <= tol, "t {t} r {r}: {got} vs {want}");
                }
            }
        }
    }
}

/// Whether the AVX-512 VNNI Q6_K head runs (the `avx512` or `amx` kernel active).
fn vnni_head() -> bool {
    matches!(
        bitnet_kernels::dispatch::active(),
        Kernel::Avx512Vnni | Kernel::Amx
    )
}

/// Whether the Q6_K head runs on int16 activations: a SIMD kernel active on a CPU with
/// AVX2, FMA and F16C.
fn int16_head() -> bool {
    #[cfg(target_arch = "x86_64")]
    return bitnet_kernels::dispatch::active() != Kernel::Scalar
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[test]
fn dot_f32_x2_matches_f64_and_each_token_alone() {
    // Every output equals the f64 dot within f32 rounding and has the bits of the one-token
    // dot of its own token (the batched head relies on this for batch-independent logits),
    // whatever the other token. Odd lengths hit the tails.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 512, 513] {
        let mut w: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0..3.0)).collect();
        if n > 2 {
            w[..n / 2].fill(1e15); // large magnitudes
        }
        let xs: Vec<Vec<f32>> = (0..3)
            .map(|_| (0..n).map(|_| rng.random_range(-3.0..3.0)).collect())
            .collect();
        let got = bitnet_kernels::dense::dot_f32_x2(&w, [&xs[0], &xs[1]]);
        let other = bitnet_kernels::dense::dot_f32_x2(&w, [&xs[2], &xs[0]]);
        assert_eq!(other[1].to_bits(), got[0].to_bits(), "n {n}: position");
        for k in 0..2 {
            let alone = bitnet_kernels::dense::dot_f32(&w, &xs[k]);
            assert_eq!(got[k].to_bits(), alone.to_bits(), "n {n} token {k}: alone");
            let want: f64 = w
                .iter()
                .zip(&xs[k])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let mag: f64 = w
                .iter()
                .zip(&xs[k])
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            assert!(
                (got[k] as f64 - want).abs() <= 1e-5 * mag + 1e-6,
                "n {n} token {k}: {} vs {want}",
                got[k]
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn q6k_dequant_simd_is_bit_identical() {
    use bitnet_kernels::formats::BlockQ6K;
    use bitnet_kernels::quant::{quantize_row, QuantBlock};
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let mut vals: Vec<f32> = (0..256 * 9).map(|_| rng.random_range(-4.0..4.0)).collect();
    vals[..256].fill(0.0); // an all-zero block
    vals[256..512].iter_mut().for_each(|v| *v = 1e4); // max magnitude
    let blocks = quantize_row::<BlockQ6K>(&vals);
    let mut want = vec![0f32; vals.len()];
    for (b, o) in blocks.iter().zip(want.chunks_exact_mut(256)) {
        b.to_float(o);
    }
    let mut got = vec![0f32; vals.len()];
    // SAFETY: AVX2 and FMA were detected above.
    unsafe { bitnet_kernels::x86::dequant_q6k(&blocks, &mut got) };
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn attention_simd_is_bit_identical_to_its_twin() {
    // Head sizes with and without 64-lane blocks and 8-lane tails, one to many positions, large
    // and tiny scores.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    for (hd, npos) in [
        (64usize, 1usize),
        (64, 130),
        (128, 40),
        (136, 9),
        (70, 5),
        (100, 7),
        (8, 33),
        (5, 3),
    ] {
        for spread in [0.01f32, 1.0, 30.0] {
            let q: Vec<f32> = (0..hd).map(|_| rng.random_range(-spread..spread)).collect();
            let k: Vec<f32> = (0..npos * hd)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let v: Vec<f32> = (0..npos * hd)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let (mut s1, mut s2) = (vec![0f32; npos], vec![0f32; npos]);
            let (mut o1, mut o2) = (vec![0f32; hd], vec![0f32; hd]);
            let scale = 1.0 / (hd as f32).sqrt();
            bitnet_kernels::ops::attend(&q, &k, &v, npos, scale, &mut s1, &mut o1);
            bitnet_kernels::ops::attend_scalar(&q, &k, &v, npos, scale, &mut s2, &mut o2);
            let bits = |o: &[f32]| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&o1), bits(&o2), "hd {hd} npos {npos} spread {spread}");
            assert!(o1.iter().all(|x| x.is_finite()));
        }
    }
}

#[test]
fn grouped_attention_is_bit_identical_to_each_head_alone() {
    // One to nine heads per key/value head (register blocks of 4, 3, 2, 1), head sizes the
    // AVX-512 kernel takes (multiples of 64) and others (each head through `attend`), one to
    // many positions, large and tiny scores; every head against the scalar twin, bit for bit.
    // The twin's dot products follow the active kernel (AVX2 where it runs), so with the
    // scalar path forced (`BITNET_KERNEL=scalar`) only the scalar kernel can match it.
    let kernels = if bitnet_kernels::dispatch::active() == Kernel::Scalar {
        vec![Kernel::Scalar]
    } else {
        Kernel::all_available()
    };
    eprintln!("grouped attention kernels: {kernels:?}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
    for (hd, npos) in [
        (64usize, 1usize),
        (64, 37),
        (128, 1),
        (128, 130),
        (192, 9),
        (96, 5),
        (160, 4),
        (136, 3),
    ] {
        for heads in [1usize, 2, 3, 4, 5, 8, 9] {
            for spread in [0.01f32, 1.0, 30.0] {
                let q: Vec<f32> = (0..heads * hd)
                    .map(|_| rng.random_range(-spread..spread))
                    .collect();
                let k: Vec<f32> = (0..npos * hd)
                    .map(|_| rng.random_range(-2.0..2.0))
                    .collect();
                let v: Vec<f32> = (0..npos * hd)
                    .map(|_| rng.random_range(-2.0..2.0))
                    .collect();
                let scale = 1.0 / (hd as f32).sqrt();
                let bits = |o: &[f32]| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for &kernel in &kernels {
                    let mut scores = vec![f32::NAN; heads * npos];
                    let mut got = vec![f32::NAN; heads * hd];
                    bitnet_kernels::attention::attend_group_with(
                        kernel,
                        &q,
                        hd,
                        &k,
                        &v,
                        npos,
                        scale,
                        &mut scores,
                        &mut got,
                    );
                    for j in 0..heads {
                        let (mut s, mut want) = (vec![0f32; npos], vec![0f32; hd]);
                        bitnet_kernels::ops::attend_scalar(
                            &q[j * hd..(j + 1) * hd],
                            &k,
                            &v,
                            npos,
                            scale,
                            &mut s,
                            &mut want,
                        );
                        assert_eq!(
                        bits(&got[j * hd..(j + 1) * hd]),
                        bits(&want),
                        "{kernel:?}: hd {hd} npos {npos} heads {heads} head {j} spread {spread}"
                    );
                    }
                }
            }
        }
    }
}

#[test]
fn two_row_dot_equals_two_single_rows_on_every_kernel() {
    // The 2-row VNNI block (8 tokens at a time, the rest per row) against the scalar twin:
    // token counts below, at and past the block; random and extreme values; rows past the AVX2
    // kernel's 15 blocks of i16 sums (2176 columns: 17 blocks), there with the largest i16 sums
    // (every weight +1 against −128, and −1 against 127).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    for (cols, n) in [
        (128usize, 1usize),
        (256, 7),
        (384, 8),
        (512, 9),
        (640, 16),
        (1024, 21),
        (2176, 6),
        (2176, 11),
    ] {
        let extreme = cols == 2176 && n == 6;
        let mut w: Vec<i8> = (0..2 * cols).map(|_| rng.random_range(-1..=1)).collect();
        w[..cols / 2].fill(1);
        w[cols..cols + cols / 2].fill(-1);
        if extreme {
            w[..cols].fill(1);
            w[cols..].fill(-1);
        }
        let m = TernaryMatrix::from_values(2, cols, &w, 1.0);
        let kp = m.cols_padded();
        let mut q = vec![0i8; n * kp];
        for (i, v) in q.iter_mut().enumerate() {
            *v = match i % 5 {
                _ if extreme => [-128, 127][i / kp % 2],
                0 => 127,
                1 => -128,
                _ => rng.random(),
            };
        }
        let rows = [m.row_blocks(0), m.row_blocks(1)];
        let (mut wa, mut wb) = (vec![0i32; n], vec![0i32; n]);
        row_dot(Kernel::Scalar, rows[0], &q, kp, &mut wa);
        row_dot(Kernel::Scalar, rows[1], &q, kp, &mut wb);
        for k in Kernel::all_available() {
            let (mut a, mut b) = (vec![0i32; n], vec![0i32; n]);
            bitnet_kernels::dispatch::row_dot2(k, rows, &q, kp, &mut a, &mut b);
            assert_eq!((&a, &b), (&wa, &wb), "{} cols {cols} n {n}", k.name());
        }
    }
}

/// The AVX2 activation quantizer is bit-identical to its scalar twin: half-way values (row
/// absmax 127, so `s = 1` and `k + 0.5` must round to even), zero rows, huge and tiny
/// magnitudes, and every tail length.
#[test]
fn activation_quantization_simd_is_bit_identical() {
    use bitnet_kernels::act::quantize_row_scalar;
    type Quantizer = fn(&[f32], &mut [i8]) -> (f32, i32);
    #[allow(unused_mut)]
    let mut simd: Vec<(&str, Quantizer)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected; the test's output rows are longer than its inputs.
        simd.push(("avx2", |x, o| unsafe {
            bitnet_kernels::x86::quantize_row_avx2(x, o)
        }));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of every aarch64 Linux CPU; outputs as above.
    simd.push(("neon", |x, o| unsafe {
        bitnet_kernels::neon::quantize_row_neon(x, o)
    }));
    if simd.is_empty() {
        eprintln!("SKIPPED: no SIMD quantizer on this CPU");
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    for len in (1..80).chain([127, 128, 129, 2560, 6912]) {
        for pattern in 0..9 {
            let x: Vec<f32> = (0..len)
                .map(|i| match pattern {
                    0 => rng.random_range(-3.0..3.0),
                    1 if i == 0 => 127.0,
                    1 => (rng.random_range(-127i32..127) as f32) + 0.5,
                    2 => 0.0,
                    3 => rng.random_range(-1e30..1e30),
                    4 => rng.random_range(-1e-7..1e-7),
                    // Non-finite values (an overflowed hidden state): NaN is skipped by the
                    // absmax and quantizes to 0; an infinity makes the scale 0.
                    5 if i % 7 == 3 => f32::NAN,
                    6 if i % 11 == 5 => f32::NEG_INFINITY,
                    7 if i % 5 == 2 => f32::INFINITY,
                    8 if i % 3 == 0 => -0.0,
                    _ => rng.random_range(-3.0..3.0),
                })
                .collect();
            let pad = len + 13;
            let mut a = vec![7i8; pad];
            let want = quantize_row_scalar(&x, &mut a);
            for (name, f) in &simd {
                let mut b = vec![7i8; pad];
                let got = f(&x, &mut b);
                assert_eq!(
                    got.0.to_bits(),
                    want.0.to_bits(),
                    "{name} scale, len {len} pattern {pattern}"
                );
                assert_eq!(got.1, want.1, "{name} sum, len {len} pattern {pattern}");
                assert_eq!(b, a, "{name} codes, len {len} pattern {pattern}");
            }
        }
    }
}

/// Both int16 Q6_K decode kernels against the dequantized row in f64, on random blocks and on
/// the magnitude extremes the VNNI kernel's exact-i32 argument rests on (q = −32, scale = −128,
/// |x16| = 32767 everywhere: any overflow would flip the sign).
#[test]
fn q6k_int16_kernels_match_dequantized_dot_at_the_extremes() {
    #[cfg(target_arch = "x86_64")]
    {
        use bitnet_kernels::formats::BlockQ6K;
        use bitnet_kernels::quant::{quantize_row, QuantBlock};
        if !std::is_x86_feature_detected!("avx2")
            || !std::is_x86_feature_detected!("fma")
            || !std::is_x86_feature_detected!("f16c")
        {
            eprintln!("SKIPPED: no AVX2/FMA/F16C");
            return;
        }
        let vnni = Kernel::Avx512Vnni.available();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(33);
        let random: Vec<f32> = (0..2560).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut extreme = quantize_row::<BlockQ6K>(&[0.0; 512]);
        for b in &mut extreme {
            b.ql = [0; 128];
            b.qh = [0; 64];
            b.scales = [-128; 16];
            b.d = half::f16::from_f32(0.5).to_bits();
        }
        let cases = [
            (quantize_row::<BlockQ6K>(&random), false),
            (extreme.clone(), true),
        ];
        for (blocks, extreme) in &cases {
            let n = blocks.len() * 256;
            for sign in [1i16, -1] {
                let x16: Vec<i16> = (0..n)
                    .map(|_| {
                        if *extreme {
                            32767 * sign
                        } else {
                            rng.random_range(-32767i16..=32767)
                        }
                    })
                    .collect();
                let mut w = vec![0f32; n];
                for (b, o) in blocks.iter().zip(w.chunks_exact_mut(256)) {
                    b.to_float(o);
                }
                let want: f64 = w.iter().zip(&x16).map(|(&a, &b)| a as f64 * b as f64).sum();
                let bound: f64 = w
                    .iter()
                    .zip(&x16)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                // The byte-split AVX2 kernel, 5 tokens (each must equal the one-token result).
                let split = bitnet_kernels::q6k_avx2::SplitActs::new(&x16);
                let mut out5 = [0f32; 5];
                // SAFETY: AVX2/FMA/F16C detected; `split` covers every block.
                unsafe {
                    bitnet_kernels::q6k_avx2::q6k_split_rows(
                        blocks,
                        blocks.len(),
                        &[&split; 5],
                        &mut out5,
                    )
                };
                assert!(out5.iter().all(|v| v.to_bits() == out5[4].to_bits()));
                let avx2 = out5[0] as f64;
                assert!(
                    (avx2 - want).abs() <= 1e-5 * bound,
                    "avx2 {avx2} vs {want} (extreme {extreme})"
                );
                assert!(
                    (avx2 - want).abs() <= 1e-5 * bound,
                    "avx2 {avx2} vs {want} (extreme {extreme})"
                );
                if vnni {
                    // One token (the byte-split path) and 5 (the i16 path), on the blocks in
                    // the VNNI lane order: the same bits.
                    let blocks: &Vec<_> = &blocks
                        .iter()
                        .map(bitnet_kernels::formats::BlockQ6KLanes::from_q6k)
                        .collect();
                    let acts = bitnet_kernels::q6k_vnni::VnniActs::new(&x16);
                    let (mut out, mut out5) = ([0f32], [0f32; 5]);
                    // SAFETY: AVX-512 VNNI detected; `acts` covers every block.
                    unsafe {
                        bitnet_kernels::q6k_vnni::q6k_i16_vnni_rows(
                            blocks,
                            blocks.len(),
                            &[&acts],
                            &mut out,
                        );
                        bitnet_kernels::q6k_vnni::q6k_i16_vnni_rows(
                            blocks,
                            blocks.len(),
                            &[&acts; 5],
                            &mut out5,
                        );
                    }
                    assert!(out5.iter().all(|v| v.to_bits() == out[0].to_bits()));
                    let got = out[0] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * bound,
                        "vnni {got} vs {want} (extreme {extreme})"
                    );
                }
            }
        }
    }
}

/// One parallel region for several matrices gives each matrix's own product, bit for bit:
/// one token (the fused path when the work is large enough and the pool has threads) and
/// several (matrix by matrix), shapes whose rows do not split evenly into chunks.
#[test]
fn matmul_each_matches_one_by_one() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let cols = 1000;
    let shapes = [(700usize, 0.7f32), (131, 1.3), (67, 0.2)];
    let ms: Vec<TernaryMatrix> = shapes
        .iter()
        .map(|&(rows, scale)| {
            let w: Vec<i8> = (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect();
            TernaryMatrix::from_values(rows, cols, &w, scale)
        })
        .collect();
    for n in [1, 3] {
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mut a = QuantizedActs::new();
        a.quantize(&x, n, cols, ms[0].cols_padded());
        let want: Vec<Vec<f32>> = ms
            .iter()
            .map(|m| {
                let mut o = vec![0f32; n * m.rows()];
                bitnet_kernels::ops::ternary_matmul(m, &a, &mut o);
                o
            })
            .collect();
        let mut got: Vec<Vec<f32>> = ms.iter().map(|m| vec![f32::NAN; n * m.rows()]).collect();
        let ws: Vec<&TernaryMatrix> = ms.iter().collect();
        let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
        bitnet_kernels::ops::ternary_matmul_each(&ws, &a, &mut outs);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(g), bits(w), "matrix {i}, n={n}");
        }
    }
}

/// The F16C row conversion of the batched head's tiles equals `half`'s, bit for bit, on every
/// length (the 8-wide body and the tail) and on zeros, subnormals, infinities and NaN.
#[cfg(target_arch = "x86_64")]
#[test]
fn f16_to_f32_matches_half_on_every_length_and_special() {
    if !std::is_x86_feature_detected!("f16c") {
        eprintln!("SKIPPED: no F16C");
        return;
    }
    let special = [
        0x0000u16, 0x8000, 0x0001, 0x83ff, 0x7c00, 0xfc00, 0x7e00, 0x3c00, 0xfbff,
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
    for n in 0..40usize {
        let src: Vec<u16> = (0..n)
            .map(|i| special.get(i).copied().unwrap_or_else(|| rng.random()))
            .collect();
        let mut got = vec![f32::NAN; n];
        // SAFETY: F16C detected above; `got` holds `n` values.
        unsafe { bitnet_kernels::x86::f16_to_f32(&src, &mut got) };
        for (i, (&h, g)) in src.iter().zip(&got).enumerate() {
            let want = half::f16::from_bits(h).to_f32();
            assert_eq!(g.to_bits(), want.to_bits(), "n {n} index {i} bits {h:#06x}");
        }
    }
}
