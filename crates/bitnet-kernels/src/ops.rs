//! The operations the model calls. Scalar reference implementations, threaded with rayon over
//! output rows where the work is large enough to pay for it.

use crate::act::QuantizedActs;
use crate::dense::DenseMatrix;
use crate::ternary::TernaryMatrix;
use rayon::prelude::*;

/// Multiply-adds below which a matmul stays on the calling thread (the engine also keeps the
/// pool awake only for passes whose layers reach it).
pub const PAR_THRESHOLD: usize = 1 << 18;

/// Fewest tokens for which the AMX kernel runs a ternary matmul. Below, the VNNI register
/// blocks are faster: AMX unpacks every weight to a byte first, which costs about what eight
/// tokens of `vpdpbusd` do; VNNI takes tokens in blocks of 8 and the rest one row at a time, so
/// 9 tokens already cost it nearly 16 (2026-12-07, fourteenth session, Xeon with AMX, 1 thread,
/// 6912 × 2560, µs per matmul: 8 tokens VNNI 562 vs AMX 714; 10 tokens 928 vs 680; 16 tokens
/// 1,392 vs 728; `benches/gemm.rs` `amx_direct` against `gemm_*_tokens`).
#[cfg(target_arch = "x86_64")]
const AMX_MIN_TOKENS: usize = 9;

/// `out[t, r] = (Σ_c T[r, c] · q[t, c]) · scale / s_x[t]` for every token row `t` of `x` and
/// every weight row `r`: ternary × int8 with i32 accumulation (`Σ w·q = Σ c·q − Σ q`), one float
/// multiply per output. `out` is row-major `[x.n(), w.rows()]`.
pub fn ternary_matmul(w: &TernaryMatrix, x: &QuantizedActs, out: &mut [f32]) {
    ternary_matmul_with(crate::dispatch::active(), w, x, out)
}

/// [`ternary_matmul`] on a given kernel (parity tests, benchmarks). The kernel must be
/// [`crate::Kernel::available`].
pub fn ternary_matmul_with(
    which: crate::Kernel,
    w: &TernaryMatrix,
    x: &QuantizedActs,
    out: &mut [f32],
) {
    assert!(
        which.available(),
        "kernel {} is not available on this CPU",
        which.name()
    );
    let (n, rows) = (x.n(), w.rows());
    assert_eq!(
        x.k_padded(),
        w.cols_padded(),
        "activation row length vs weight columns"
    );
    assert!(out.len() >= n * rows, "ternary_matmul output length");
    let scale = w.scale();
    let (q, kp) = (x.data(), x.k_padded());
    // Row-chunk kernel: tiles of weight rows × groups of tokens (the i32 sums on the stack);
    // rows go in pairs through `row_dot2` (on VNNI, one activation load serves two rows; on
    // AVX2, whose 16 registers leave no room for a 2-row block, it is two `row_dot` calls).
    let (sums, sxs) = (x.sums(), x.scales());
    let kernel = |r0: usize, chunk: &mut [f32]| {
        let nr = chunk.len() / n;
        let (mut acc, mut acc2) = ([0i32; 16], [0i32; 16]);
        // Tiles of 16 weight rows × a token group whose int8 rows fit in L1 (16 at 512
        // columns, 8 at 2560): the group's activations are read from L1 by all the tile's row
        // pairs instead of being re-streamed from L2 for every pair. Long rows (the FFN down
        // projection's 6912 columns: 54 KiB for 8 tokens) go in column slices of at most
        // 2560, the slices' exact i32 sums added per (row, token) before the epilogue.
        let tb = if 16 * kp <= 24 * 1024 { 16 } else { 8 };
        let kb = kp / 128;
        let kc = if kp > 4096 { 20 } else { kb.max(1) };
        let mut tile = [[0i32; 16]; 16];
        for i0 in (0..nr).step_by(16) {
            let i1 = (i0 + 16).min(nr);
            for t0 in (0..n).step_by(tb) {
                let nt = (n - t0).min(tb);
                if kb == 0 {
                    // No columns: every sum is 0 (the first slice below writes the tile).
                    for tr in &mut tile[..i1 - i0] {
                        tr[..nt].fill(0);
                    }
                }
                for k0 in (0..kb).step_by(kc) {
                    let k1 = (k0 + kc).min(kb);
                    let qt = &q[t0 * kp + k0 * 128..];
                    for i in (i0..i1).step_by(2) {
                        let ra = &w.row_blocks(r0 + i)[k0..k1];
                        let pair = i + 1 < i1;
                        let (first, second) = tile[i - i0..].split_at_mut(1);
                        // The first (usually only) column slice writes its sums straight into
                        // the tile: no zeroing, and no add whose loads would wait on the
                        // kernel's just-stored sums. Later slices go through `acc`/`acc2` and
                        // are added.
                        let (a, b) = if k0 == 0 {
                            let b = if pair {
                                &mut second[0][..nt]
                            } else {
                                &mut acc2[..nt]
                            };
                            (&mut first[0][..nt], b)
                        } else {
                            (&mut acc[..nt], &mut acc2[..nt])
                        };
                        if pair {
                            let rows = [ra, &w.row_blocks(r0 + i + 1)[k0..k1]];
                            crate::dispatch::row_dot2(which, rows, qt, kp, a, b);
                        } else {
                            crate::dispatch::row_dot(which, ra, qt, kp, a);
                        }
                        if k0 > 0 {
                            for (x, &u) in first[0].iter_mut().zip(&acc[..nt]) {
                                *x += u;
                            }
                            if pair {
                                for (y, &v) in second[0].iter_mut().zip(&acc2[..nt]) {
                                    *y += v;
                                }
                            }
                        }
                    }
                }
                let (sm, sx) = (&sums[t0..t0 + nt], &sxs[t0..t0 + nt]);
                let o = &mut chunk[i0 * n + t0..];
                epilogue(&tile[..i1 - i0], sm, sx, scale, o, n);
            }
        }
    };
    #[cfg(target_arch = "x86_64")]
    if which == crate::Kernel::Amx && n >= AMX_MIN_TOKENS && kp > 0 {
        crate::amx::ternary_matmul(w, x, out);
        return;
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if n == 1 && which != crate::Kernel::Scalar {
        // Decode: whole row chunks through the 4-row GEMV of the kernel, then the epilogue.
        run_rows(rows, kp, &mut out[..rows], 1, |r0, chunk: &mut [f32]| {
            gemv_chunk(which, w, x, r0, chunk)
        });
        return;
    }
    if n == 1 {
        run_rows(rows, w.cols_padded(), &mut out[..rows], 1, kernel);
    } else {
        // Compute into a row-major [rows, n] layout, then transpose: keeps weight rows hot.
        with_rows_scratch(rows * n, |tmp| {
            run_rows(rows, w.cols_padded() * n, tmp, n, kernel);
            crate::transpose::transpose_into(tmp, rows, n, out);
        });
    }
}

/// One token's products with rows `r0 ..` of `w` into `chunk` (one output per row), 64 rows
/// at a time through the kernel's 4-row GEMV, then the epilogue `(Σ − Σq) / s_x · scale`.
/// `which` must be a SIMD kernel (AMX decodes on VNNI) and available.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn gemv_chunk(
    which: crate::Kernel,
    w: &TernaryMatrix,
    x: &QuantizedActs,
    r0: usize,
    chunk: &mut [f32],
) {
    let (sum, sx, scale) = (x.sum(0), x.scale(0), w.scale());
    let (q, kb) = (x.data(), x.k_padded() / 128);
    let mut acc = [0i32; 64];
    for (c, o) in chunk.chunks_mut(64).enumerate() {
        let first = r0 + 64 * c;
        let acc = &mut acc[..o.len()];
        let blocks = w.rows_blocks(first, o.len());
        // SAFETY: `available()` checked the kernel's CPU features (AVX2, AVX-512 VNNI, NEON,
        // or NEON with dotprod) when it was chosen; shapes are asserted inside.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if which == crate::Kernel::Avx2 {
                crate::avx2::gemv_avx2(blocks, kb, q, acc)
            } else {
                crate::x86::gemv_vnni(blocks, kb, q, acc)
            }
            #[cfg(target_arch = "aarch64")]
            if which == crate::Kernel::NeonDot {
                crate::neon::gemv_dotprod(blocks, kb, q, acc)
            } else {
                crate::neon::gemv_neon(blocks, kb, q, acc)
            }
        };
        for (o, &a) in o.iter_mut().zip(acc.iter()) {
            *o = (a - sum) as f32 / sx * scale;
        }
    }
}

/// [`ternary_matmul`] of each matrix of `ws` with the same activations into the matching
/// `outs`. For one token on a SIMD kernel with more than one thread, all the matrices' rows go
/// to the pool in one parallel region (decode's q/k/v and gate/up projections: one hand-off
/// instead of one per matrix).
/// Same results as calling [`ternary_matmul`] for each.
pub fn ternary_matmul_each(ws: &[&TernaryMatrix], x: &QuantizedActs, outs: &mut [&mut [f32]]) {
    assert_eq!(
        ws.len(),
        outs.len(),
        "ternary_matmul_each: matrices vs outputs"
    );
    let which = crate::dispatch::active();
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let total: usize = ws.iter().map(|w| w.rows()).sum();
        let threads = rayon::current_num_threads();
        if x.n() == 1
            && which != crate::Kernel::Scalar
            && threads > 1
            && total * x.k_padded() >= PAR_THRESHOLD
        {
            let chunk = total.div_ceil(threads * 4).max(1);
            for (w, out) in ws.iter().zip(outs.iter()) {
                assert_eq!(
                    x.k_padded(),
                    w.cols_padded(),
                    "activation row length vs weight columns"
                );
                assert!(out.len() >= w.rows(), "ternary_matmul output length");
            }
            // Nested parallel iterators, one region: no list of work items (decode must not
            // allocate).
            outs.par_iter_mut().zip(ws.par_iter()).for_each(|(out, w)| {
                out[..w.rows()]
                    .par_chunks_mut(chunk)
                    .enumerate()
                    .for_each(|(i, part)| gemv_chunk(which, w, x, i * chunk, part))
            });
            return;
        }
    }
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        ternary_matmul_with(which, w, x, out);
    }
}

/// `out[t, r] = Σ_c M[r, c] · x[t, c]` in f32 (the output head). `x` is `[n, cols]`.
///
/// A Q6_K matrix runs fastest in the kernels' own layout: build it with
/// [`DenseMatrix::into_kernel_layout`] (the model loaders do), else a CPU with AVX-512 VNNI
/// takes the AVX2 Q6_K kernels.
pub fn dense_matmul(m: &DenseMatrix, x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (m.rows(), m.cols());
    assert!(
        x.len() >= n * cols && out.len() >= n * rows,
        "dense_matmul shapes"
    );
    #[cfg(target_arch = "x86_64")]
    match m.data() {
        crate::DenseData::Q6K(blocks) if crate::dense::simd_dense() => {
            q6k_int16(Q6Rows::Elements(blocks), rows, cols, x, n, out);
            return;
        }
        crate::DenseData::Q6KLanes(blocks) if q6k_vnni() => {
            q6k_int16(Q6Rows::Lanes(blocks), rows, cols, x, n, out);
            return;
        }
        _ => {}
    }
    if n == 1 {
        run_rows(rows, cols, &mut out[..rows], 1, |r0, chunk: &mut [f32]| {
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = m.row_dot(r0 + i, &x[..cols]);
            }
        });
        return;
    }
    // Several tokens (prefill logits, a batch of sequences). Every logit must have the bits of
    // the one-token path (`row_dot`), so that a sequence's output does not depend on what it
    // is batched with. f32 rows go through `row_dot` itself, token by token, while the row is
    // in L1. Other rows are converted once, a tile at a time, into f32 (exactly the values the
    // one-token dots use), and each token gets the one-token dot's own operations on them:
    // `dot_f32_x2` (two tokens per weight load) where `row_dot` is the AVX2 f32 dot — 16-bit
    // rows, whose conversion is exact, and Q8_0, whose AVX2 dot is the f32 dot of its
    // dequantized row (`x86::dot_q8_0`) — and the block-by-block sum of `dot_blocks` where
    // `row_dot` is that.
    #[cfg(target_arch = "x86_64")]
    let simd = crate::dense::simd_dense();
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    // The block size of the one-token dot of the format (0: the f32 dot of the whole row).
    let blocks = match m.data() {
        crate::DenseData::F32(_) => None,
        crate::DenseData::F16(_) | crate::DenseData::Bf16(_) => Some(0),
        crate::DenseData::Q8_0(_) => Some(if simd { 0 } else { 32 }),
        // The SIMD Q6_K head took the int16 path above; Q4_K has no SIMD dot.
        crate::DenseData::Q6K(_) | crate::DenseData::Q6KLanes(_) | crate::DenseData::Q4K(_) => {
            Some(256)
        }
    };
    let kernel = |r0: usize, chunk: &mut [f32]| {
        let nr = chunk.len() / n;
        let Some(block) = blocks else {
            for i in 0..nr {
                for t in 0..n {
                    chunk[i * n + t] = m.row_dot(r0 + i, &x[t * cols..(t + 1) * cols]);
                }
            }
            return;
        };
        // Rows are converted in tiles of TILE (16 KiB of f32 at 512 columns) and every pair
        // of tokens sweeps the whole tile, so the activations stream from L2 once per tile
        // instead of once per row.
        const TILE: usize = 8;
        let mut tile = vec![0f32; TILE * cols];
        let xt = |t: usize| &x[t.min(n - 1) * cols..(t.min(n - 1) + 1) * cols];
        for i0 in (0..nr).step_by(TILE) {
            let tr = (nr - i0).min(TILE);
            for j in 0..tr {
                m.row_to_f32(r0 + i0 + j, &mut tile[j * cols..(j + 1) * cols]);
            }
            for t in (0..n).step_by(2) {
                for j in 0..tr {
                    let w = &tile[j * cols..(j + 1) * cols];
                    let d = if block == 0 {
                        crate::dense::dot_f32_x2(w, [xt(t), xt(t + 1)])
                    } else {
                        [xt(t), xt(t + 1)].map(|x| crate::dense::dot_blocks_f32(w, x, block))
                    };
                    let o = (i0 + j) * n + t;
                    chunk[o] = d[0];
                    if t + 1 < n {
                        chunk[o + 1] = d[1];
                    }
                }
            }
        }
    };
    with_rows_scratch(rows * n, |tmp| {
        run_rows(rows, cols * n, tmp, n, kernel);
        crate::transpose::transpose_into(tmp, rows, n, out);
    });
}

thread_local! {
    /// The `[rows, n]` results of the batched kernels before their transpose, reused across
    /// calls: a fresh allocation of that size is a fresh mapping each time (page faults and
    /// zeroing measured at ~6 % of a small-model prefill).
    static ROWS_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `len` values taken from this thread's [`ROWS_SCRATCH`] (and
/// put back after, so no borrow is held while rayon runs other work on this thread). Its
/// values are stale: `f` must write every one before reading it (the row kernels write every
/// output of their chunk).
fn with_rows_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = ROWS_SCRATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    ROWS_SCRATCH.with(|b| *b.borrow_mut() = buf);
    r
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// int16 activations of the Q6_K head, reused across calls.
    static X16: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The AVX2 head's byte-split activations, one per token, reused across calls.
    static SPLIT: std::cell::RefCell<Vec<crate::q6k_avx2::SplitActs>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// The VNNI head's prepared activations, one per token, reused across calls.
    static VNNI: std::cell::RefCell<Vec<crate::q6k_vnni::VnniActs>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether the int16 VNNI Q6_K head runs (AVX-512 VNNI or AMX kernel active): the Q6_K heads
/// in the lane order ([`crate::DenseMatrix::into_kernel_layout`]) take it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn q6k_vnni() -> bool {
    crate::dense::simd_dense()
        && matches!(
            crate::dispatch::active(),
            crate::Kernel::Avx512Vnni | crate::Kernel::Amx
        )
}

/// The rows of a Q6_K head: in Q6_K's element order (the AVX2 kernels) or in the lane order of
/// the AVX-512 VNNI kernels.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Q6Rows<'a> {
    Elements(&'a [crate::formats::BlockQ6K]),
    Lanes(&'a [crate::formats::BlockQ6KLanes]),
}

/// The output head in Q6_K on int16 activations: each token is quantized to int16 (absmax,
/// relative error ≤ 2⁻¹⁶ of its largest value — far below the fixture bounds), then every row
/// goes through [`crate::q6k_vnni::q6k_i16_vnni_rows`] (AVX-512 VNNI, rows in the lane order) or
/// [`crate::q6k_avx2::q6k_split_rows`] (AVX2: the int16 values split into bytes for one token,
/// a tile of rows scale-folded to i16 for a batch): quants unpacked once per block for up to
/// 16 tokens, each token's logit computed from the same exact integer sums with the same float
/// operations as alone, so batching does not change logits. `out` is `[n, rows]`.
#[cfg(target_arch = "x86_64")]
fn q6k_int16(blocks: Q6Rows, rows: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    // The buffers are taken out of the thread-locals for the call (and put back after), so no
    // borrow is held while rayon runs other work on this thread.
    let mut b = X16.with(|buf| std::mem::take(&mut *buf.borrow_mut()));
    {
        b.resize(n * cols, 0);
        let mut inv = vec![0f32; n];
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let amax = xt.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax > 0.0 { 32767.0 / amax } else { 0.0 };
            for (o, &v) in b[t * cols..(t + 1) * cols].iter_mut().zip(xt) {
                *o = crate::act::round_half_even_small(v * s) as i16;
            }
            inv[t] = if s > 0.0 { 1.0 / s } else { 0.0 };
        }
        let bpr = cols / 256;
        let x16: &[i16] = &b;
        let vnni = matches!(blocks, Q6Rows::Lanes(_));
        // Every token prepared once, for all rows: split into bytes (AVX2), or reordered and
        // split (VNNI).
        let mut split = SPLIT.with(|buf| std::mem::take(&mut *buf.borrow_mut()));
        let mut acts = VNNI.with(|buf| std::mem::take(&mut *buf.borrow_mut()));
        if vnni {
            acts.resize_with(n, Default::default);
            for (t, a) in acts.iter_mut().enumerate() {
                a.set(&x16[t * cols..(t + 1) * cols]);
            }
        } else {
            split.resize_with(n, Default::default);
            for (t, sp) in split.iter_mut().enumerate() {
                sp.set(&x16[t * cols..(t + 1) * cols]);
            }
        }
        let kernel = |r0: usize, chunk: &mut [f32]| {
            let nr = chunk.len() / n;
            for t0 in (0..n).step_by(16) {
                let nt = (n - t0).min(16);
                let rows_blocks = match blocks {
                    Q6Rows::Elements(b) => Q6Rows::Elements(&b[r0 * bpr..(r0 + nr) * bpr]),
                    Q6Rows::Lanes(b) => Q6Rows::Lanes(&b[r0 * bpr..(r0 + nr) * bpr]),
                };
                let xs: [&crate::q6k_vnni::VnniActs; 16] = if vnni {
                    std::array::from_fn(|k| &acts[t0 + k.min(nt - 1)])
                } else {
                    [&EMPTY_ACTS; 16]
                };
                let xs = &xs[..nt];
                let sp: [&crate::q6k_avx2::SplitActs; 16] = if vnni {
                    [&EMPTY_SPLIT; 16]
                } else {
                    std::array::from_fn(|k| &split[t0 + k.min(nt - 1)])
                };
                let sp = &sp[..nt];
                if nt == n {
                    // SAFETY: `simd_dense` checked AVX2/FMA, and lane-ordered rows come here only
                    // when `q6k_vnni` (AVX-512 F/BW/VNNI, active kernel) holds; |x16| ≤ 32767
                    // by construction above; shapes asserted inside.
                    unsafe { q6k_rows(rows_blocks, bpr, xs, sp, chunk) };
                    if n == 1 {
                        // One flat pass (it vectorizes; a loop per one-element row measured
                        // ~5 % of a small-model decode step).
                        let s = inv[0];
                        for o in chunk.iter_mut() {
                            *o *= s;
                        }
                        continue;
                    }
                    for row in chunk.chunks_exact_mut(n) {
                        for (o, s) in row.iter_mut().zip(&inv) {
                            *o *= s;
                        }
                    }
                    continue;
                }
                let mut part = vec![0f32; nr * nt];
                // SAFETY: as above.
                unsafe { q6k_rows(rows_blocks, bpr, xs, sp, &mut part) };
                for i in 0..nr {
                    for k in 0..nt {
                        chunk[i * n + t0 + k] = part[i * nt + k] * inv[t0 + k];
                    }
                }
            }
        };
        if n == 1 {
            run_rows(rows, cols, &mut out[..rows], 1, kernel);
        } else {
            with_rows_scratch(rows * n, |tmp| {
                run_rows(rows, cols * n, tmp, n, kernel);
                crate::transpose::transpose_into(tmp, rows, n, out);
            });
        }
        SPLIT.with(|buf| *buf.borrow_mut() = split);
        VNNI.with(|buf| *buf.borrow_mut() = acts);
    }
    X16.with(|buf| *buf.borrow_mut() = b);
}

/// Split activations of no token (the VNNI path takes none).
#[cfg(target_arch = "x86_64")]
static EMPTY_SPLIT: crate::q6k_avx2::SplitActs = crate::q6k_avx2::SplitActs::EMPTY;

/// VNNI activations of no token (the AVX2 path takes none).
#[cfg(target_arch = "x86_64")]
static EMPTY_ACTS: crate::q6k_vnni::VnniActs = crate::q6k_vnni::VnniActs::EMPTY;

/// The int16 Q6_K row kernel: AVX-512 VNNI for rows in the lane order, else AVX2.
///
/// # Safety
/// As [`crate::q6k_vnni::q6k_i16_vnni_rows`] (lane order) or [`crate::q6k_avx2::q6k_split_rows`].
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn q6k_rows(
    blocks: Q6Rows,
    bpr: usize,
    xs: &[&crate::q6k_vnni::VnniActs],
    sp: &[&crate::q6k_avx2::SplitActs],
    out: &mut [f32],
) {
    // SAFETY: forwarded caller contract.
    unsafe {
        match blocks {
            Q6Rows::Lanes(b) => crate::q6k_vnni::q6k_i16_vnni_rows(b, bpr, xs, out),
            Q6Rows::Elements(b) => crate::q6k_avx2::q6k_split_rows(b, bpr, sp, out),
        }
    }
}

/// The ternary epilogue of a tile: `out[i·n + k] = (tile[i][k] − sums[k]) as f32 / s_x[k] ·
/// scale` for every row `i` of the tile and `k < sums.len()`. Whole rows of slices, so that it
/// vectorizes (per-lane IEEE division and multiplication: the same bits as one by one), on
/// 256-bit vectors where the CPU has AVX2, and all the tile's divisions in one function, so they
/// overlap instead of each waiting out the last (one call per row and 128-bit `divps` were ~5 %
/// of an AVX2 prefill).
#[inline]
fn epilogue(tile: &[[i32; 16]], sums: &[i32], sx: &[f32], scale: f32, out: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected just above.
        unsafe { epilogue_avx2(tile, sums, sx, scale, out, n) };
        return;
    }
    epilogue_lanes(tile, sums, sx, scale, out, n);
}

/// [`epilogue`] compiled for AVX2 (the same per-lane operations).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn epilogue_avx2(
    tile: &[[i32; 16]],
    sums: &[i32],
    sx: &[f32],
    scale: f32,
    out: &mut [f32],
    n: usize,
) {
    epilogue_lanes(tile, sums, sx, scale, out, n);
}

#[inline(always)]
fn epilogue_lanes(
    tile: &[[i32; 16]],
    sums: &[i32],
    sx: &[f32],
    scale: f32,
    out: &mut [f32],
    n: usize,
) {
    let nt = sums.len();
    for (i, acc) in tile.iter().enumerate() {
        let o = &mut out[i * n..i * n + nt];
        for (((o, &a), &s), &d) in o.iter_mut().zip(&acc[..nt]).zip(sums).zip(sx) {
            *o = (a - s) as f32 / d * scale;
        }
    }
}

/// Runs `kernel(first_row, out_chunk)` over `rows` rows of `per_row` outputs each, in parallel
/// chunks when `rows * work_per_row` is large.
fn run_rows<F>(rows: usize, work_per_row: usize, out: &mut [f32], per_row: usize, kernel: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let threads = rayon::current_num_threads().max(1);
    if rows * work_per_row < PAR_THRESHOLD || threads == 1 {
        kernel(0, out);
        return;
    }
    let rows_per_chunk = rows.div_ceil(threads * 4).max(1);
    out.par_chunks_mut(rows_per_chunk * per_row)
        .enumerate()
        .for_each(|(i, chunk)| kernel(i * rows_per_chunk, chunk));
}

/// [`rmsnorm`] over `n` rows of `w.len()` values (`x` and `out` row-major), rows in parallel
/// when the batch is large (prefill).
pub fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32, n: usize, out: &mut [f32]) {
    let h = w.len();
    assert!(
        x.len() >= n * h && out.len() >= n * h,
        "rmsnorm_rows shapes"
    );
    if n * h < PAR_THRESHOLD / 4 || rayon::current_num_threads() == 1 {
        for t in 0..n {
            rmsnorm(&x[t * h..(t + 1) * h], w, eps, &mut out[t * h..(t + 1) * h]);
        }
        return;
    }
    out[..n * h]
        .par_chunks_mut(h)
        .zip(x[..n * h].par_chunks(h))
        .for_each(|(o, xr)| rmsnorm(xr, w, eps, o));
}

/// RMSNorm in f32: `out = w · x / sqrt(mean(x²) + eps)` (sum of squares accumulated in f64).
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    // Eight f64 partial sums (independent chains the compiler vectorizes, instead of one
    // dependent add per value: ~2 µs per 512-value row), added pairwise at the end.
    let mut part = [0f64; 8];
    let chunks = x[..n].chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    for c in chunks {
        for (p, &v) in part.iter_mut().zip(c) {
            *p += (v as f64) * (v as f64);
        }
    }
    let ss = ((part[0] + part[4]) + (part[2] + part[6]))
        + ((part[1] + part[5]) + (part[3] + part[7]))
        + tail;
    let var = (ss / n as f64) as f32;
    let inv = 1.0f32 / (var + eps).sqrt();
    for ((o, &v), &g) in out[..n].iter_mut().zip(&x[..n]).zip(w) {
        *o = g * (v * inv);
    }
}

/// `ln Σ exp(row)` accumulated in f64 (for log-probabilities: perplexity, KL divergence).
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    max + row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// In-place softmax in f32: the exponentials through [`crate::glu::exp_shifted`] (eight lanes
/// at a time), summed in order.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    crate::glu::exp_shifted(x, max);
    let sum: f32 = x.iter().sum();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Precomputed half-split ("NEOX") rotary tables: dimension `i` pairs with `i + head_dim/2`,
/// `inv_freq[i] = theta^(−2i/head_dim)`, angle = `pos · inv_freq[i]` in f32 (as transformers).
#[derive(Clone, Debug)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Tables for positions `0..max_pos`.
    pub fn new(head_dim: usize, theta: f32, max_pos: usize) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for &f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTable { half, cos, sin }
    }

    /// `cos` of every angle, `[max_pos · head_dim/2]` (position-major).
    pub fn cos(&self) -> &[f32] {
        &self.cos
    }

    /// `sin` of every angle, laid out as [`RopeTable::cos`].
    pub fn sin(&self) -> &[f32] {
        &self.sin
    }

    /// Positions covered.
    pub fn max_pos(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head of `x` (`x.len()` a multiple of `head_dim`) for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let cos = &self.cos[pos * h..(pos + 1) * h];
        let sin = &self.sin[pos * h..(pos + 1) * h];
        for head in x.chunks_exact_mut(2 * h) {
            let (a, b) = head.split_at_mut(h);
            for i in 0..h {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

pub use crate::attention::{attend, attend_scalar};

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn naive(w: &[i8], rows: usize, cols: usize, scale: f32, x: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * rows];
        for t in 0..n {
            let xr = &x[t * cols..(t + 1) * cols];
            let amax = xr.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = 127.0 / amax.max(1e-5);
            let q: Vec<i32> = xr
                .iter()
                .map(|v| (v * s).round_ties_even().clamp(-128.0, 127.0) as i32)
                .collect();
            for r in 0..rows {
                let d: i32 = (0..cols).map(|c| w[r * cols + c] as i32 * q[c]).sum();
                out[t * rows + r] = d as f32 / s * scale;
            }
        }
        out
    }

    #[test]
    fn ternary_matmul_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for &(rows, cols, n) in &[(5, 64, 1), (7, 130, 3), (300, 1000, 2), (1024, 512, 1)] {
            let w: Vec<i8> = (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect();
            let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-3.0..3.0)).collect();
            let m = TernaryMatrix::from_values(rows, cols, &w, 0.7);
            let mut a = QuantizedActs::new();
            a.quantize(&x, n, cols, m.cols_padded());
            let mut out = vec![0f32; n * rows];
            ternary_matmul(&m, &a, &mut out);
            assert_eq!(
                out,
                naive(&w, rows, cols, 0.7, &x, n),
                "{rows}x{cols} n={n}"
            );
        }
    }

    #[test]
    fn rope_is_half_split() {
        let t = RopeTable::new(4, 10000.0, 3);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        t.apply(&mut x, 0);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        t.apply(&mut x, 1);
        // dim 0 pairs with dim 2, angle 1 rad.
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((x[0] - (1.0 * c - 3.0 * s)).abs() < 1e-6);
        assert!((x[2] - (3.0 * c + 1.0 * s)).abs() < 1e-6);
    }

    #[test]
    fn attend_single_position_returns_value() {
        let mut scores = [0f32; 1];
        let mut out = [0f32; 2];
        attend(
            &[1.0, 0.0],
            &[0.5, 0.5],
            &[3.0, -1.0],
            1,
            1.0,
            &mut scores,
            &mut out,
        );
        assert_eq!(out, [3.0, -1.0]);
    }
}
