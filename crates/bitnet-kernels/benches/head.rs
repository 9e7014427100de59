//! Micro-benchmarks of the Q6_K output head (llama-quantize's default for the tied embedding)
//! at the small synthetic model's shape (vocab 32000 × hidden 512) for decode (1 token) and a
//! serving batch (16 tokens), on the active kernel: `cargo bench -p bitnet-kernels --bench head`
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

const ROWS: usize = 32000;
const COLS: usize = 512;

fn run(b: Bencher, n: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let w: Vec<f32> = (0..ROWS * COLS)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x: Vec<f32> = (0..n * COLS).map(|_| rng.random_range(-2.0..2.0)).collect();
    let m = DenseMatrix::new(
        ROWS,
        COLS,
        DenseData::Q6K(quantize_row::<BlockQ6K>(&w).into()),
    );
    let mut out = vec![0f32; n * ROWS];
    b.counter(ItemsCount::new(ROWS * COLS * n))
        .bench_local(|| dense_matmul(&m, &x, n, &mut out));
}

/// Decode: one token's logits.
#[divan::bench(sample_count = 30)]
fn q6k_head_1_token(b: Bencher) {
    run(b, 1);
}

/// A continuous-batching step: 16 sequences' logits.
#[divan::bench(sample_count = 30)]
fn q6k_head_16_tokens(b: Bencher) {
    run(b, 16);
}
