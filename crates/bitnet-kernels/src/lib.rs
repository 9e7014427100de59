//! Numerics for BitNet b1.58.
//!
//! This crate is the kernel seam of the engine: the model code calls the functions in [`ops`]
//! (and the types they take) and never loops over weights itself, so SIMD and threading work can
//! replace the loops here without touching model code.
//!
//! - [`ternary`]: the in-memory ternary weight layout ([`ternary::BlockI2`], 128 weights in 32
//!   bytes) and [`ternary::TernaryMatrix`].
//! - [`quant`]: the one trait every quantized block format implements ([`quant::QuantBlock`]).
//! - [`act`]: per-token absmax int8 activation quantization ([`act::QuantizedActs`]).
//! - [`dense`]: float matrices (embeddings, output head) stored as f32, bf16 or f16.
//! - [`ops`]: integer GEMM/GEMV, RMSNorm, RoPE, softmax, attention.

pub mod act;
pub mod dense;
pub mod ops;
pub mod quant;
pub mod ternary;

pub use act::QuantizedActs;
pub use dense::{DenseData, DenseMatrix};
pub use quant::QuantBlock;
pub use ternary::{BlockI2, TernaryMatrix};
