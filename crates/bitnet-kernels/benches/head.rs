//! Micro-benchmarks of the Q6_K output head (llama-quantize's default for the tied embedding)
//! at the small synthetic model's shape (vocab 32000 × hidden 512) and 2B-4T's width (hidden
//! 2560) for decode (1 token) and a serving batch (16 tokens), on the active kernel: `cargo bench -p bitnet-kernels --bench head`
//! (`RAYON_NUM_THREADS=1` for one core, `BITNET_KERNEL=avx2|scalar` to force a path).
//! Throughput is in multiply-adds ("items") per second.

use bitnet_kernels::formats::BlockQ6K;
use bitnet_kernels::ops::dense_matmul;
use bitnet_kernels::quant::quantize_row;
use bitnet_kernels::{DenseData, DenseMatrix};
use divan::counter::ItemsCount;
use divan::Bencher;
use rand::{RngExt, SeedableRng};

fn main() {
    divan::main();
}

/// (rows, cols): the small model's whole head, and 8192 rows of 2B-4T's (hidden 2560).
const SHAPES: [(usize, usize); 2] = [(32000, 512), (8192, 2560)];

fn run(b: Bencher, (rows, cols): (usize, usize), n: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
    // In the kernels' own layout, as the model loader keeps it (the VNNI lane order where the
    // AVX-512 VNNI head runs).
    let m = DenseMatrix::new(
        rows,
        cols,
        DenseData::Q6K(quantize_row::<BlockQ6K>(&w).into()),
    )
    .into_kernel_layout();
    let mut out = vec![0f32; n * rows];
    b.counter(ItemsCount::new(rows * cols * n))
        .bench_local(|| dense_matmul(&m, &x, n, &mut out));
}

/// Decode: one token's logits.
#[divan::bench(args = SHAPES, sample_count = 30)]
fn q6k_head_1_token(b: Bencher, shape: (usize, usize)) {
    run(b, shape, 1);
}

/// A continuous-batching step: 16 sequences' logits.
#[divan::bench(args = SHAPES, sample_count = 30)]
fn q6k_head_16_tokens(b: Bencher, shape: (usize, usize)) {
    run(b, shape, 16);
}
