//! Float matrices: embeddings and the output head, kept in their stored precision.

use crate::buf::Buf;
use crate::formats::{BlockQ4K, BlockQ6K, BlockQ6KLanes, BlockQ8_0};
use crate::quant::QuantBlock;
use half::{bf16, f16};

/// Storage of a [`DenseMatrix`]: values are exact in f32 whatever the storage type.
#[derive(Clone, Debug)]
pub enum DenseData {
    /// 32-bit floats.
    F32(Buf<f32>),
    /// bfloat16 (the usual Hugging Face checkpoint dtype).
    Bf16(Buf<bf16>),
    /// IEEE half.
    F16(Buf<f16>),
    /// Q8_0 blocks (rows are whole blocks).
    Q8_0(Buf<BlockQ8_0>),
    /// Q6_K blocks.
    Q6K(Buf<BlockQ6K>),
    /// Q6_K blocks with their quants in the lane order of the AVX-512 VNNI head
    /// ([`DenseMatrix::into_kernel_layout`]).
    Q6KLanes(Buf<BlockQ6KLanes>),
    /// Q4_K blocks.
    Q4K(Buf<BlockQ4K>),
}

/// A row-major `[rows, cols]` float matrix.
#[derive(Clone, Debug)]
pub struct DenseMatrix {
    rows: usize,
    cols: usize,
    data: DenseData,
}

impl DenseMatrix {
    /// Wraps row-major data (block formats: `cols` a multiple of the block size).
    ///
    /// # Panics
    /// If the data length is not `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: DenseData) -> Self {
        let len = match &data {
            DenseData::F32(v) => v.len(),
            DenseData::Bf16(v) => v.len(),
            DenseData::F16(v) => v.len(),
            DenseData::Q8_0(v) => v.len() * BlockQ8_0::BLOCK,
            DenseData::Q6K(v) => v.len() * BlockQ6K::BLOCK,
            DenseData::Q6KLanes(v) => v.len() * BlockQ6KLanes::BLOCK,
            DenseData::Q4K(v) => v.len() * BlockQ4K::BLOCK,
        };
        assert_eq!(len, rows * cols, "dense matrix length");
        DenseMatrix { rows, cols, data }
    }
    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Storage type name.
    pub fn dtype(&self) -> &'static str {
        match self.data {
            DenseData::F32(_) => "F32",
            DenseData::Bf16(_) => "BF16",
            DenseData::F16(_) => "F16",
            DenseData::Q8_0(_) => "Q8_0",
            DenseData::Q6K(_) | DenseData::Q6KLanes(_) => "Q6_K",
            DenseData::Q4K(_) => "Q4_K",
        }
    }
    /// Bytes of storage.
    pub fn nbytes(&self) -> usize {
        match &self.data {
            DenseData::F32(v) => v.len() * 4,
            DenseData::Bf16(v) => v.len() * 2,
            DenseData::F16(v) => v.len() * 2,
            DenseData::Q8_0(v) => std::mem::size_of_val(&**v),
            DenseData::Q6K(v) => std::mem::size_of_val(&**v),
            DenseData::Q6KLanes(v) => std::mem::size_of_val(&**v),
            DenseData::Q4K(v) => std::mem::size_of_val(&**v),
        }
    }

    /// The storage.
    pub fn data(&self) -> &DenseData {
        &self.data
    }

    /// The matrix in the layout the active kernels read fastest: where the AVX-512 VNNI output
    /// head runs (the `avx512` or `amx` kernel), a Q6_K matrix becomes [`DenseData::Q6KLanes`]
    /// (the same quants, scales and `d`, reordered; owned, so a memory-mapped file's copy is
    /// no longer read and may be released). Every other matrix, and every matrix on other
    /// CPUs, is returned unchanged. The values do not change: [`DenseMatrix::row_to_f32`]
    /// gives the same bits either way.
    pub fn into_kernel_layout(self) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let DenseData::Q6K(v) = &self.data {
            if crate::ops::q6k_vnni() {
                use rayon::prelude::*;
                let lanes: Vec<BlockQ6KLanes> = v.par_iter().map(BlockQ6KLanes::from_q6k).collect();
                return DenseMatrix {
                    data: DenseData::Q6KLanes(lanes.into()),
                    ..self
                };
            }
        }
        self
    }

    /// Whether the values are borrowed from a memory-mapped file (zero-copy).
    pub fn is_shared(&self) -> bool {
        match &self.data {
            DenseData::F32(v) => v.is_shared(),
            DenseData::Bf16(v) => v.is_shared(),
            DenseData::F16(v) => v.is_shared(),
            DenseData::Q8_0(v) => v.is_shared(),
            DenseData::Q6K(v) => v.is_shared(),
            DenseData::Q6KLanes(v) => v.is_shared(),
            DenseData::Q4K(v) => v.is_shared(),
        }
    }

    /// Copies row `r` into `out` as f32 (embedding lookup).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        let out = &mut out[..c];
        match &self.data {
            DenseData::F32(v) => out.copy_from_slice(&v[r * c..(r + 1) * c]),
            DenseData::Bf16(v) => {
                for (o, x) in out.iter_mut().zip(&v[r * c..(r + 1) * c]) {
                    *o = x.to_f32();
                }
            }
            DenseData::F16(v) => {
                let row = &v[r * c..(r + 1) * c];
                #[cfg(target_arch = "x86_64")]
                if simd_dense() {
                    // SAFETY: `simd_dense` checked F16C (and AVX2); `out` holds `cols` values.
                    unsafe { crate::x86::f16_to_f32(bytemuck::cast_slice(row), out) };
                    return;
                }
                for (o, x) in out.iter_mut().zip(row) {
                    *o = x.to_f32();
                }
            }
            DenseData::Q8_0(v) => dequant_row(&v[r * c / 32..(r + 1) * c / 32], out),
            DenseData::Q6K(v) => {
                let blocks = &v[r * c / 256..(r + 1) * c / 256];
                #[cfg(target_arch = "x86_64")]
                if simd_dense() {
                    // SAFETY: `simd_dense` checked AVX2/FMA; `out` holds `cols` values.
                    unsafe { crate::x86::dequant_q6k(blocks, out) };
                    return;
                }
                dequant_row(blocks, out)
            }
            DenseData::Q6KLanes(v) => {
                // Block by block back in Q6_K's order, then Q6_K's own dequantization (the
                // same bits as the Q6_K matrix gives).
                let blocks = &v[r * c / 256..(r + 1) * c / 256];
                for (b, o) in blocks.iter().zip(out.chunks_exact_mut(256)) {
                    let q = [b.to_q6k()];
                    #[cfg(target_arch = "x86_64")]
                    if simd_dense() {
                        // SAFETY: `simd_dense` checked AVX2/FMA; `o` holds 256 values.
                        unsafe { crate::x86::dequant_q6k(&q, o) };
                        continue;
                    }
                    dequant_row(&q, o)
                }
            }
            DenseData::Q4K(v) => dequant_row(&v[r * c / 256..(r + 1) * c / 256], out),
        }
    }

    /// Dot product of row `r` with `x` (length `cols`), accumulated in f32 over 8 lanes; with
    /// AVX2 + FMA (F16C for f16) when the active kernel is a SIMD one.
    #[inline]
    pub fn row_dot(&self, r: usize, x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if simd_dense() {
            let c = self.cols;
            // SAFETY: `simd_dense` checked AVX2, FMA and F16C; `x` holds `cols` values
            // (asserted inside the kernel).
            unsafe {
                match &self.data {
                    DenseData::F32(v) => return crate::x86::dot_f32(&v[r * c..(r + 1) * c], x),
                    DenseData::Bf16(v) => {
                        return crate::x86::dot_bf16(
                            bytemuck::cast_slice(&v[r * c..(r + 1) * c]),
                            x,
                        )
                    }
                    DenseData::F16(v) => {
                        return crate::x86::dot_f16(bytemuck::cast_slice(&v[r * c..(r + 1) * c]), x)
                    }
                    DenseData::Q6K(v) => {
                        return crate::x86::dot_q6k(&v[r * c / 256..(r + 1) * c / 256], x)
                    }
                    DenseData::Q8_0(v) => {
                        return crate::x86::dot_q8_0(&v[r * c / 32..(r + 1) * c / 32], x)
                    }
                    _ => {}
                }
            }
        }
        self.row_dot_scalar(r, x)
    }

    /// The portable twin of [`DenseMatrix::row_dot`].
    pub fn row_dot_scalar(&self, r: usize, x: &[f32]) -> f32 {
        let c = self.cols;
        match &self.data {
            DenseData::F32(v) => dot8(&v[r * c..(r + 1) * c], x, |a| a),
            DenseData::Bf16(v) => dot8(&v[r * c..(r + 1) * c], x, |a| a.to_f32()),
            DenseData::F16(v) => dot8(&v[r * c..(r + 1) * c], x, |a| a.to_f32()),
            DenseData::Q8_0(v) => dot_blocks(&v[r * c / 32..(r + 1) * c / 32], x),
            DenseData::Q6K(v) => dot_blocks(&v[r * c / 256..(r + 1) * c / 256], x),
            DenseData::Q6KLanes(v) => dot_blocks(&v[r * c / 256..(r + 1) * c / 256], x),
            DenseData::Q4K(v) => dot_blocks(&v[r * c / 256..(r + 1) * c / 256], x),
        }
    }
}

/// Whether the float dot products may use AVX2/FMA/F16C (not when scalar is forced).
#[cfg(target_arch = "x86_64")]
pub(crate) fn simd_dense() -> bool {
    use std::sync::OnceLock;
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| {
        crate::dispatch::active() != crate::Kernel::Scalar
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

/// f32 dot product, with AVX2 + FMA when the active kernel is a SIMD one (8-lane scalar twin
/// otherwise).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd_dense() {
        // SAFETY: `simd_dense` checked AVX2 and FMA; lengths are checked inside the kernel.
        return unsafe { crate::x86::dot_f32(a, b) };
    }
    dot8(a, b, |v| v)
}

/// One f32 row against two activation rows, `out[k] = Σ w·x_k`, each with exactly the
/// operations of [`DenseMatrix::row_dot`] on the same row stored as f32, bf16 or f16 (their
/// conversions to f32 are exact): [`crate::x86::dot_f32_x2`] where the float dots use AVX2,
/// this scalar twin (`dot8`, as `row_dot_scalar`) otherwise. The batched output head uses it
/// so that a token's logits are bit-identical to its one-token logits.
#[inline]
pub fn dot_f32_x2(w: &[f32], x: [&[f32]; 2]) -> [f32; 2] {
    #[cfg(target_arch = "x86_64")]
    if simd_dense() {
        // SAFETY: `simd_dense` checked AVX2 and FMA; lengths are asserted inside the kernel.
        return unsafe { crate::x86::dot_f32_x2(w, x) };
    }
    x.map(|r| dot8(w, r, |v| v))
}

fn dequant_row<B: QuantBlock>(blocks: &[B], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(B::BLOCK)) {
        b.to_float(o);
    }
}

/// [`dot_blocks`] of a row already dequantized into `w` (blocks of `block` values): the same
/// operations, so the same bits, without decoding the row again for every token.
pub(crate) fn dot_blocks_f32(w: &[f32], x: &[f32], block: usize) -> f32 {
    let mut acc = 0f32;
    for (wc, xc) in w.chunks_exact(block).zip(x.chunks_exact(block)) {
        acc += dot8(wc, xc, |a| a);
    }
    acc
}

/// Dot product of dequantized blocks with `x`, block by block through a stack buffer.
fn dot_blocks<B: QuantBlock>(blocks: &[B], x: &[f32]) -> f32 {
    let mut buf = [0f32; 256];
    let mut acc = 0f32;
    for (b, xc) in blocks.iter().zip(x.chunks_exact(B::BLOCK)) {
        b.to_float(&mut buf[..B::BLOCK]);
        acc += dot8(&buf[..B::BLOCK], xc, |a| a);
    }
    acc
}

#[inline]
pub(crate) fn dot8<T: Copy>(w: &[T], x: &[f32], f: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = w.len() / 8 * 8;
    for (wc, xc) in w[..n8].chunks_exact(8).zip(x[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += f(wc[l]) * xc[l];
        }
    }
    let mut tail = 0f32;
    for (a, b) in w[n8..].iter().zip(&x[n8..]) {
        tail += f(*a) * b;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
