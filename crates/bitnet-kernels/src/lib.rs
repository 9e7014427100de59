//! Numerics for BitNet b1.58.
//!
//! This crate is the kernel seam of the engine: the model code calls the functions in [`ops`]
//! (and the types they take) and never loops over weights itself, so SIMD and threading work can
//! replace the loops here without touching model code.
//!
//! - [`ternary`]: the in-memory ternary weight layout ([`ternary::BlockI2`], 128 weights in 32
//!   bytes) and [`ternary::TernaryMatrix`].
//! - [`quant`]: the traits every quantized block format implements ([`quant::QuantBlock`],
//!   [`quant::TernaryBlock`]); [`formats`]: the GGML formats (Q8_0, Q4_K, Q6_K, TQ1_0, TQ2_0, I2_S).
//! - [`act`]: per-token absmax int8 activation quantization ([`act::QuantizedActs`]).
//! - [`dense`]: float matrices (embeddings, output head) stored as f32, bf16 or f16.
//! - [`ops`]: integer GEMM/GEMV, RMSNorm, RoPE, softmax, attention; [`attention`]: the query
//!   heads of one key/value head together; [`glu`]: the SiLU-gated FFN activation with a
//!   vectorized `exp`.

pub mod act;
pub mod alloc_count;
#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod buf;
pub mod dense;
pub mod dispatch;
pub mod formats;
pub mod glu;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod ops;
pub mod pool;
#[cfg(target_arch = "x86_64")]
pub mod q6k_avx2;
#[cfg(target_arch = "x86_64")]
pub mod q6k_vnni;
pub mod quant;
pub mod ternary;
pub mod transpose;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use act::QuantizedActs;
pub use buf::{Buf, SharedBytes};
pub use dense::{DenseData, DenseMatrix};
pub use dispatch::Kernel;
pub use quant::{QuantBlock, TernaryBlock};
pub use ternary::{BlockI2, TernaryMatrix};
