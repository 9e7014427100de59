//! GGML block formats (llama.cpp / bitnet.cpp), each a `#[repr(C)]` struct with a compile-time
//! size check and the reference quantizer of the tool that defined it.

pub mod i2_s;
pub mod q4_k;
pub mod q6_k;
pub mod q6_k_lanes;
pub mod q8_0;
pub mod tq1_0;
pub mod tq2_0;

pub use i2_s::{dequantize_i2_s, i2_s_nbytes, quantize_i2_s};
pub use q4_k::BlockQ4K;
pub use q6_k::BlockQ6K;
pub use q6_k_lanes::BlockQ6KLanes;
pub use q8_0::BlockQ8_0;
pub use tq1_0::BlockTQ1_0;
pub use tq2_0::BlockTQ2_0;

/// Values per super-block of the K and TQ formats.
pub const QK_K: usize = 256;
