//! The traits shared by all quantized block formats.

/// A quantized block format: a `#[repr(C)]` plain-old-data struct holding [`QuantBlock::BLOCK`]
/// values, with the reference quantizer of the tool that defined it (so files we write carry the
/// same bytes as theirs).
pub trait QuantBlock: bytemuck::Pod + Send + Sync {
    /// Values per block.
    const BLOCK: usize;
    /// Format name (GGML's where it has one).
    const NAME: &'static str;

    /// Dequantizes the block into `out[..BLOCK]`.
    fn to_float(&self, out: &mut [f32]);
    /// Quantizes `x[..BLOCK]` as the format's reference implementation does.
    fn from_float(x: &[f32]) -> Self;
}

/// A ternary block format: every value is `(code − 1) · d` with 2-bit codes 0, 1, 2.
pub trait TernaryBlock: QuantBlock {
    /// The block's codes in element order (`out[..BLOCK]`, each 0, 1 or 2).
    fn codes(&self, out: &mut [u8]);
    /// The block scale `d` (the tensor scale for per-tensor formats).
    fn d(&self) -> f32;
    /// Builds a block from codes (0, 1, 2) and a scale.
    fn from_codes(codes: &[u8], d: f32) -> Self;
    /// Appends the block's codes in the engine's layout: `BLOCK / 128` [`crate::BlockI2`]s
    /// (`BLOCK` is a multiple of 128). The default goes through [`Self::codes`], a byte per
    /// code; TQ1_0 and TQ2_0 transcode directly (the GGUF loader repacks their projections so).
    fn push_i2(&self, out: &mut Vec<crate::BlockI2>) {
        let mut c = [1u8; 256];
        self.codes(&mut c[..Self::BLOCK]);
        for chunk in c[..Self::BLOCK].chunks_exact(crate::ternary::QK_I2) {
            out.push(crate::BlockI2::from_codes(chunk, 1.0));
        }
    }
}

/// `to_float` of a ternary block: `(code − 1) · d` (up to 256 values).
pub fn ternary_to_float<B: TernaryBlock>(b: &B, out: &mut [f32]) {
    let d = b.d();
    let mut c = [0u8; 256];
    b.codes(&mut c[..B::BLOCK]);
    for (o, &c) in out[..B::BLOCK].iter_mut().zip(&c) {
        *o = (c as f32 - 1.0) * d;
    }
}

/// Dequantizes a row of blocks into `out` (`out.len() == blocks.len() * B::BLOCK`).
pub fn dequantize_row<B: QuantBlock>(blocks: &[B], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(B::BLOCK)) {
        b.to_float(o);
    }
}

/// Quantizes `x` (a multiple of `B::BLOCK` long) into blocks.
pub fn quantize_row<B: QuantBlock>(x: &[f32]) -> Vec<B> {
    x.chunks_exact(B::BLOCK).map(B::from_float).collect()
}

/// llama.cpp's `nearest_int`: round half to even (for |x| < 2^22).
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}
