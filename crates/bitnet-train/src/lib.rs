//! Quantization-aware training and fine-tuning of BitNet b1.58 models on candle (CPU).
//!
//! - [`model::TrainModel`]: the engine's architecture as a differentiable graph whose BitLinear
//!   layers fake-quantize weights (absmean ternary) and activations (absmax int8) exactly like
//!   transformers' `AutoBitLinear` in online mode, with straight-through gradients ([`quant`]);
//! - [`trainer::Trainer`]: AdamW, warmup + cosine, accumulation, clipping, held-out perplexity,
//!   exact resume, optional distillation ([`distill`]);
//! - [`tokenizer_train`]: byte-level BPE training; [`export`]: Hugging Face packed and GGUF exports
//!   through the engine's writers.

pub mod checkpoint;
pub mod data;
pub mod distill;
pub mod error;
pub mod export;
pub mod model;
pub mod ops;
pub mod optim;
pub mod quant;
pub mod tokenizer_train;
pub mod trainer;

pub use error::{Error, Result};
pub use model::TrainModel;
pub use quant::QuantMode;
pub use trainer::{TrainOptions, TrainReport, Trainer};
