//! A Q6_K matrix in the kernels' layout (`DenseMatrix::into_kernel_layout`: the VNNI lane
//! order where the AVX-512 VNNI head runs) holds the same values: embedding rows and dots are
//! bit-identical to the Q6_K matrix's.

use bitnet_kernels::formats::BlockQ6K;
use bitnet_kernels::quant::quantize_row;
use bitnet_kernels::{DenseData, DenseMatrix};
use rand::{RngExt, SeedableRng};

#[test]
fn kernel_layout_keeps_every_value() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(77);
    let (rows, cols) = (23usize, 768usize);
    let vals: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-2.0..2.0)).collect();
    let q6k = DenseMatrix::new(
        rows,
        cols,
        DenseData::Q6K(quantize_row::<BlockQ6K>(&vals).into()),
    );
    let laid = q6k.clone().into_kernel_layout();
    assert_eq!(laid.dtype(), "Q6_K");
    assert_eq!(laid.nbytes(), q6k.nbytes());
    assert_eq!((laid.rows(), laid.cols()), (rows, cols));
    if matches!(laid.data(), DenseData::Q6KLanes(_)) {
        assert!(!laid.is_shared(), "the reordered copy is owned");
    }
    let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
    for r in 0..rows {
        q6k.row_to_f32(r, &mut a);
        laid.row_to_f32(r, &mut b);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "row {r}: embedding values");
        assert_eq!(
            q6k.row_dot_scalar(r, &x).to_bits(),
            laid.row_dot_scalar(r, &x).to_bits(),
            "row {r}: scalar dot"
        );
    }
}
