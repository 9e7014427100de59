//! Attention over an f16 key/value cache: on every kernel, bit for bit what the f32 kernels
//! give on the same values widened to f32 (the widening is exact), for one head (`attend`
//! against its scalar twin) and for grouped heads (`attend_group_with`), over random rows,
//! f16's extremes (±65504, subnormals, zeros) and odd head sizes.

use bitnet_kernels::attention::{attend, attend_group_with, attend_scalar};
use bitnet_kernels::Kernel;
use half::f16;
use rand::{RngExt, SeedableRng};

fn bits(o: &[f32]) -> Vec<u32> {
    o.iter().map(|x| x.to_bits()).collect()
}

/// Cached rows as f16 and widened back to f32.
fn rows(rng: &mut impl rand::Rng, n: usize, case: usize) -> (Vec<f16>, Vec<f32>) {
    let h: Vec<f16> = (0..n)
        .map(|i| match case {
            // f16's largest finite value (scaled by 2^-12 so that the scores stay finite),
            // its subnormals, zeros; alternating signs.
            1 => f16::from_f32(if i % 2 == 0 { 65504.0 } else { -65504.0 } / 4096.0),
            2 => f16::from_bits((i % 1024) as u16 | if i % 3 == 0 { 0x8000 } else { 0 }),
            3 => f16::ZERO,
            _ => f16::from_f32(rng.random_range(-2.0f32..2.0)),
        })
        .collect();
    let w = h.iter().map(|x| x.to_f32()).collect();
    (h, w)
}

#[test]
fn f16_attention_equals_f32_attention_on_the_widened_rows() {
    let kernels = if bitnet_kernels::dispatch::active() == Kernel::Scalar {
        vec![Kernel::Scalar]
    } else {
        Kernel::all_available()
    };
    eprintln!("kernels: {kernels:?}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(41);
    let mut checked = 0;
    for (hd, npos) in [
        (64usize, 1usize),
        (64, 37),
        (128, 130),
        (96, 5),
        (136, 3),
        (5, 9),
        (70, 4),
    ] {
        for case in 0..4 {
            let (kh, kf) = rows(&mut rng, npos * hd, case);
            let (vh, vf) = rows(&mut rng, npos * hd, (case + 1) % 4);
            let scale = 1.0 / (hd as f32).sqrt();
            for heads in [1usize, 2, 3, 4, 5] {
                let q: Vec<f32> = (0..heads * hd)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect();
                // One head: the dispatched kernel and the scalar twin, f16 vs f32.
                let one = |f16_rows: bool, scalar: bool| {
                    let (mut s, mut o) = (vec![0f32; npos], vec![f32::NAN; hd]);
                    match (f16_rows, scalar) {
                        (true, false) => attend(&q[..hd], &kh, &vh, npos, scale, &mut s, &mut o),
                        (true, true) => {
                            attend_scalar(&q[..hd], &kh, &vh, npos, scale, &mut s, &mut o)
                        }
                        (false, false) => attend(&q[..hd], &kf, &vf, npos, scale, &mut s, &mut o),
                        (false, true) => {
                            attend_scalar(&q[..hd], &kf, &vf, npos, scale, &mut s, &mut o)
                        }
                    }
                    o
                };
                let want = bits(&one(false, false));
                let ctx = format!("hd {hd} npos {npos} case {case}");
                assert_eq!(bits(&one(true, false)), want, "attend f16: {ctx}");
                assert_eq!(bits(&one(true, true)), want, "attend_scalar f16: {ctx}");
                assert_eq!(bits(&one(false, true)), want, "attend_scalar f32: {ctx}");
                for &kernel in &kernels {
                    let mut s = vec![f32::NAN; heads * npos];
                    let mut got = vec![f32::NAN; heads * hd];
                    attend_group_with(kernel, &q, hd, &kh, &vh, npos, scale, &mut s, &mut got);
                    let mut want = vec![f32::NAN; heads * hd];
                    attend_group_with(kernel, &q, hd, &kf, &vf, npos, scale, &mut s, &mut want);
                    assert_eq!(bits(&got), bits(&want), "{kernel:?} {heads} heads: {ctx}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0);
}
