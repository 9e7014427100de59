//! Micro-benchmarks of the ternary GEMV/GEMM at bitnet-b1.58-2B-4T's projection shapes, on
//! every kernel this CPU can run: `cargo bench -p bitnet-kernels --bench gemm`
//! (`RAYON_NUM_THREADS=1` for one core). Throughput is in multiply-adds ("items") per second.

use bitnet_kernels::ops::ternary_matmul_with;
use bitnet_kernels::{Kernel, QuantizedActs, TernaryMatrix};
use divan::counter::ItemsCount;
use divan::Bencher;
use rand::{RngExt, SeedableRng};

fn main() {
    divan::main();
}

/// (rows, cols) of the 2B-4T projections: q/o, k/v, gate/up, down.
const SHAPES: [(usize, usize); 4] = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)];

fn setup(rows: usize, cols: usize, n: usize) -> (TernaryMatrix, QuantizedActs) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let w: Vec<i8> = (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect();
    let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
    let m = TernaryMatrix::from_values(rows, cols, &w, 0.5);
    let mut a = QuantizedActs::new();
    a.quantize(&x, n, cols, m.cols_padded());
    (m, a)
}

fn kernels() -> Vec<&'static str> {
    Kernel::all_available().iter().map(|k| k.name()).collect()
}

fn run(b: Bencher, kernel: &str, n: usize) {
    let k = Kernel::all_available()
        .into_iter()
        .find(|k| k.name() == kernel)
        .expect("kernel listed by kernels()");
    // All four shapes run per iteration, as one layer's projections do.
    let data: Vec<_> = SHAPES.iter().map(|&(r, c)| setup(r, c, n)).collect();
    let macs: usize = SHAPES.iter().map(|&(r, c)| r * c * n).sum();
    let mut outs: Vec<Vec<f32>> = SHAPES.iter().map(|&(r, _)| vec![0f32; r * n]).collect();
    b.counter(ItemsCount::new(macs)).bench_local(|| {
        for ((m, a), out) in data.iter().zip(outs.iter_mut()) {
            ternary_matmul_with(k, m, a, out);
        }
    });
}

/// Decode: one token through the four projection shapes.
#[divan::bench(args = kernels())]
fn gemv_1_token(b: Bencher, kernel: &str) {
    run(b, kernel, 1);
}

/// A serving batch: 16 tokens.
#[divan::bench(args = kernels())]
fn gemm_16_tokens(b: Bencher, kernel: &str) {
    run(b, kernel, 16);
}

/// Past where AMX takes over from VNNI (`AMX_MIN_TOKENS`): 32 tokens.
#[divan::bench(args = kernels(), sample_count = 20)]
fn gemm_32_tokens(b: Bencher, kernel: &str) {
    run(b, kernel, 32);
}

/// Prefill: a 128-token prompt.
#[divan::bench(args = kernels(), sample_count = 10)]
fn gemm_128_tokens(b: Bencher, kernel: &str) {
    run(b, kernel, 128);
}

/// Prefill, one projection shape at a time on the active kernel (`BITNET_KERNEL` or the best
/// one): which shape holds a prefill back. Argument: `rows x cols`.
#[divan::bench(args = ["2560x2560", "640x2560", "6912x2560", "2560x6912"], sample_count = 10)]
fn gemm_128_tokens_by_shape(b: Bencher, shape: &str) {
    let (r, c) = shape
        .split_once('x')
        .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
        .expect("shape argument: ROWSxCOLS");
    let n = 128;
    let (m, a) = setup(r, c, n);
    let mut out = vec![0f32; r * n];
    b.counter(ItemsCount::new(r * c * n))
        .bench_local(|| ternary_matmul_with(bitnet_kernels::dispatch::active(), &m, &a, &mut out));
}

/// The AMX tile kernel called directly (whatever `AMX_MIN_TOKENS` the dispatcher uses), all
/// four shapes per iteration; argument: tokens. Compare with `gemm_*_tokens` on `avx512` to
/// see where tiles start to pay. Empty where AMX is not available.
#[cfg(target_arch = "x86_64")]
#[divan::bench(args = amx_tokens(), sample_count = 20)]
fn amx_direct(b: Bencher, n: usize) {
    let data: Vec<_> = SHAPES.iter().map(|&(r, c)| setup(r, c, n)).collect();
    let macs: usize = SHAPES.iter().map(|&(r, c)| r * c * n).sum();
    let mut outs: Vec<Vec<f32>> = SHAPES.iter().map(|&(r, _)| vec![0f32; r * n]).collect();
    b.counter(ItemsCount::new(macs)).bench_local(|| {
        for ((m, a), out) in data.iter().zip(outs.iter_mut()) {
            bitnet_kernels::amx::ternary_matmul(m, a, out);
        }
    });
}

#[cfg(target_arch = "x86_64")]
fn amx_tokens() -> Vec<usize> {
    if Kernel::Amx.available() {
        vec![8, 9, 16, 32, 128]
    } else {
        Vec::new()
    }
}
