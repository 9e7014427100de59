//! Round trips of the GGML block formats.

use bitnet_kernels::formats::*;
use bitnet_kernels::{BlockI2, QuantBlock, TernaryBlock};
use rand::{RngExt, SeedableRng};

/// The ternary codes of test case `case`: all 0, all 2, all 1, the cycle 0 1 2, then random.
fn case_codes(case: usize, n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
    (0..n)
        .map(|i| match case {
            0 => 0,
            1 => 2,
            2 => 1,
            3 => (i % 3) as u8,
            _ => rng.random_range(0..3u8),
        })
        .collect()
}

fn ternary_roundtrip<B: TernaryBlock>() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    for case in 0..50 {
        let codes = case_codes(case, B::BLOCK, &mut rng);
        let d = 0.0371f32;
        let b = B::from_codes(&codes, d);
        let mut back = vec![0u8; B::BLOCK];
        b.codes(&mut back);
        assert_eq!(back, codes, "{} case {case}", B::NAME);
        // Quantizing the float values {-d, 0, d} gives the same codes.
        let mut f = vec![0f32; B::BLOCK];
        b.to_float(&mut f);
        let q = B::from_float(&f);
        let mut back2 = vec![0u8; B::BLOCK];
        q.codes(&mut back2);
        if case != 2 {
            assert_eq!(back2, codes, "{} from_float case {case}", B::NAME);
        }
    }
}

#[test]
fn ternary_formats_roundtrip() {
    ternary_roundtrip::<BlockTQ2_0>();
    ternary_roundtrip::<BlockTQ1_0>();
    ternary_roundtrip::<BlockI2>();
}

fn lossy_roundtrip<B: QuantBlock>(tol: f32) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for _ in 0..50 {
        let x: Vec<f32> = (0..B::BLOCK).map(|_| rng.random_range(-2.0..2.0)).collect();
        let b = B::from_float(&x);
        let mut y = vec![0f32; B::BLOCK];
        b.to_float(&mut y);
        let err = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err <= tol, "{}: max error {err}", B::NAME);
    }
    let zeros = B::from_float(&vec![0f32; B::BLOCK]);
    let mut y = vec![1f32; B::BLOCK];
    zeros.to_float(&mut y);
    assert!(y.iter().all(|&v| v == 0.0), "{}: zero block", B::NAME);
}

#[test]
fn float_formats_roundtrip() {
    lossy_roundtrip::<BlockQ8_0>(2.0 / 127.0);
    lossy_roundtrip::<BlockQ6K>(4.0 / 63.0);
    lossy_roundtrip::<BlockQ4K>(4.0 / 15.0);
}

#[test]
fn i2_s_bytes_roundtrip() {
    let s = 0.25f32;
    let vals: Vec<f32> = (0..384)
        .map(|i| [(-s), 0.0, s][(i * 7 + i / 5) % 3])
        .collect();
    let bytes = quantize_i2_s(&vals);
    assert_eq!(bytes.len(), i2_s_nbytes(384));
    let mut codes = vec![0u8; 384];
    let scale = dequantize_i2_s(&bytes, 384, &mut codes);
    assert_eq!(scale, s);
    for (c, v) in codes.iter().zip(&vals) {
        assert_eq!((*c as f32 - 1.0) * scale, *v);
    }
}

/// The direct transcodes into the engine's layout (`push_i2` of TQ2_0 and TQ1_0) give the
/// codes of the byte-per-code path, and `BlockI2::has_code3` sees a code 3 at every position.
fn push_i2_matches_the_code_path<B: TernaryBlock>() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for case in 0..300 {
        let codes = case_codes(case, B::BLOCK, &mut rng);
        let b = B::from_codes(&codes, 0.5);
        let mut got = Vec::new();
        b.push_i2(&mut got);
        let want: Vec<BlockI2> = codes
            .chunks(128)
            .map(|c| BlockI2::from_codes(c, 1.0))
            .collect();
        assert_eq!(got, want, "{} case {case}", B::NAME);
        assert!(
            !got.iter().any(BlockI2::has_code3),
            "{} case {case}",
            B::NAME
        );
    }
    // One non-zero weight at each position lands where the code path puts it.
    for pos in 0..B::BLOCK {
        let mut codes = vec![1u8; B::BLOCK];
        codes[pos] = 0;
        let mut got = Vec::new();
        B::from_codes(&codes, 1.0).push_i2(&mut got);
        assert_eq!(
            got[pos / 128].code(pos % 128),
            0,
            "{} position {pos}",
            B::NAME
        );
        let zeros = got.iter().flat_map(|g| (0..128).map(|i| g.code(i)));
        assert_eq!(zeros.filter(|&c| c == 1).count(), B::BLOCK - 1);
    }
}

#[test]
fn ternary_formats_transcode_like_the_code_path() {
    push_i2_matches_the_code_path::<BlockTQ2_0>();
    push_i2_matches_the_code_path::<BlockTQ1_0>();
    push_i2_matches_the_code_path::<BlockI2>();
    for pos in 0..128 {
        let mut codes = vec![1u8; 128];
        codes[pos] = 3;
        assert!(
            BlockI2::from_codes(&codes, 1.0).has_code3(),
            "code 3 at {pos}"
        );
    }
    // TQ2_0 passes a code 3 through (the loader rejects it from the transcoded blocks).
    let mut codes = vec![1u8; 256];
    codes[200] = 3;
    let mut got = Vec::new();
    BlockTQ2_0::from_codes(&codes, 1.0).push_i2(&mut got);
    assert!(got[1].has_code3() && !got[0].has_code3());
}
