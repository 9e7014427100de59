//! Model file formats: GGUF (read and write), PyTorch `torch.save` checkpoints through a
//! restricted unpickler, and ONNX initializers. Each reader turns hostile input into errors,
//! never panics or unbounded allocations.

pub mod bytes;
pub mod gguf;
pub mod onnx;
pub mod pickle;
pub mod raw;
