//! BitNet b1.58 inference engine: loads Hugging Face checkpoints (packed or master weights),
//! runs the forward pass exactly as transformers' `BitNetForCausalLM`, tokenizes, renders chat
//! templates, samples and generates.

pub mod compare;
pub mod config;
pub mod convert;
#[cfg(feature = "cuda")]
pub mod cuda;
mod cuda_layout;
pub mod device;
pub mod error;
pub mod forward;
pub mod kv_cache;
pub mod model;
pub mod weights;

pub use config::{Activation, Architecture, ModelConfig, WeightFormat};
pub use device::{Device, Placement};
pub use error::{Error, Result};
pub use forward::{RunState, SeqStep};
pub use kv_cache::{KvCache, KvType};
pub use model::Model;
pub mod bench;
pub mod chat;
pub mod generate;
pub mod gguf_model;
pub mod gguf_tokenizer;
pub mod inspect;
pub mod perplexity;
pub mod sampling;
pub mod spm;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use generate::{FinishReason, GenerateParams, Generation, Generator, StopMatcher};
pub use sampling::SamplingParams;
pub use tokenizer::Tokenizer;
#[doc(hidden)]
pub mod test_support;
