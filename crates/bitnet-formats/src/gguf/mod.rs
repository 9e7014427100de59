//! GGUF v2/v3 (little-endian): a bounds-checked, memory-mapped reader and a writer.
//!
//! Layout (BITNET.md): magic `GGUF`, u32 version, u64 tensor count, u64 KV count, KV pairs
//! (string key, u32 value type, value), tensor infos (name, u32 n_dims, u64 dims with ne0 = row
//! length first, u32 type, u64 offset relative to the aligned data section), data.

mod reader;
mod types;
mod writer;

pub use reader::{GgufFile, TensorInfo};
pub use types::{GgmlType, MetaValue, MetaValueType};
pub use writer::GgufWriter;

use std::path::PathBuf;

/// Default `general.alignment`.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// Errors reading or writing GGUF files.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// I/O failure.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file ends before a structure it declares.
    #[error("{}: truncated GGUF: {what} at byte {offset} runs past the end of the file ({len} bytes)", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Where.
        offset: usize,
        /// File length.
        len: usize,
    },
    /// A structural problem (bad magic, version, counts, lengths, offsets, sizes).
    #[error("{}: invalid GGUF: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor type id this reader does not know.
    #[error("{}: tensor `{tensor}` has unknown GGML type id {id} (known: {known})", path.display())]
    UnknownType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The id.
        id: u32,
        /// Supported ids.
        known: String,
    },
    /// Two tensors or keys with one name.
    #[error("{}: duplicate {what} `{name}`", path.display())]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// "tensor" or "metadata key".
        what: &'static str,
        /// The name.
        name: String,
    },
}
