//! The trait shared by all quantized block formats.

/// A quantized block format: a `#[repr(C)]` plain-old-data struct holding [`QuantBlock::BLOCK`]
/// weights. Ternary formats store only the codes; the per-tensor scale lives in the matrix.
pub trait QuantBlock: bytemuck::Pod + Send + Sync {
    /// Weights per block.
    const BLOCK: usize;
    /// Short name of the format, as printed by `bitnet inspect`.
    const NAME: &'static str;

    /// Writes the block's weights (without the tensor scale) as floats into `out[..BLOCK]`.
    fn to_float(&self, out: &mut [f32]);
    /// Builds a block from integer weights in `-1..=1` (`values.len() == BLOCK`).
    fn from_ternary(values: &[i8]) -> Self;
    /// Integer dot product of the block's weights with `BLOCK` int8 activations.
    fn vec_dot_i8(&self, q: &[i8]) -> i32;
}
