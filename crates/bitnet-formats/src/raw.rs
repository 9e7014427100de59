//! A format-neutral tensor read from a PyTorch or ONNX file.

/// Element type of a [`RawTensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawDtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// Boolean (one byte).
    Bool,
}

impl RawDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            RawDtype::F64 | RawDtype::I64 => 8,
            RawDtype::F32 | RawDtype::I32 => 4,
            RawDtype::F16 | RawDtype::BF16 | RawDtype::I16 => 2,
            RawDtype::U8 | RawDtype::I8 | RawDtype::Bool => 1,
        }
    }
}

/// A named, contiguous, row-major tensor with little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    /// Parameter name (e.g. `model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Element type.
    pub dtype: RawDtype,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// `shape.product() * dtype.size()` bytes, little-endian, row-major.
    pub data: Vec<u8>,
}
