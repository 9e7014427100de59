//! Float matrices: embeddings and the output head, kept in their stored precision.

use half::{bf16, f16};

/// Storage of a [`DenseMatrix`]: values are exact in f32 whatever the storage type.
#[derive(Clone, Debug)]
pub enum DenseData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// bfloat16 (the usual Hugging Face checkpoint dtype).
    Bf16(Vec<bf16>),
    /// IEEE half.
    F16(Vec<f16>),
}

/// A row-major `[rows, cols]` float matrix.
#[derive(Clone, Debug)]
pub struct DenseMatrix {
    rows: usize,
    cols: usize,
    data: DenseData,
}

impl DenseMatrix {
    /// Wraps row-major data.
    ///
    /// # Panics
    /// If the data length is not `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: DenseData) -> Self {
        let len = match &data {
            DenseData::F32(v) => v.len(),
            DenseData::Bf16(v) => v.len(),
            DenseData::F16(v) => v.len(),
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
        }
    }
    /// Bytes of storage.
    pub fn nbytes(&self) -> usize {
        match &self.data {
            DenseData::F32(v) => v.len() * 4,
            DenseData::Bf16(v) => v.len() * 2,
            DenseData::F16(v) => v.len() * 2,
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
                for (o, x) in out.iter_mut().zip(&v[r * c..(r + 1) * c]) {
                    *o = x.to_f32();
                }
            }
        }
    }

    /// Dot product of row `r` with `x` (length `cols`), accumulated in f32 over 8 lanes.
    #[inline]
    pub fn row_dot(&self, r: usize, x: &[f32]) -> f32 {
        let c = self.cols;
        match &self.data {
            DenseData::F32(v) => dot8(&v[r * c..(r + 1) * c], x, |a| a),
            DenseData::Bf16(v) => dot8(&v[r * c..(r + 1) * c], x, |a| a.to_f32()),
            DenseData::F16(v) => dot8(&v[r * c..(r + 1) * c], x, |a| a.to_f32()),
        }
    }
}

#[inline]
fn dot8<T: Copy>(w: &[T], x: &[f32], f: impl Fn(T) -> f32) -> f32 {
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
