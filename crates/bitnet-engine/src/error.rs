//! Errors of the engine: every variant carries the file, tensor, field or parameter at fault.

use std::path::PathBuf;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory that must exist does not.
    #[error("{what} not found: {}", path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
        /// What it should have been ("model directory", "config.json", …).
        what: &'static str,
    },
    /// An I/O error on a file.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A required configuration field is absent.
    #[error("{}: missing required field `{field}`", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
    },
    /// A configuration field has an unusable value.
    #[error("{}: field `{field}`: {message}", path.display())]
    InvalidField {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The architecture is not one this engine runs.
    #[error("{}: unsupported architecture {found}; supported: {supported}", path.display())]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// What the config names.
        found: String,
        /// What is supported.
        supported: &'static str,
    },
    /// The quantization configuration is not one this engine runs.
    #[error("{}: unsupported quantization config: {message}", path.display())]
    UnsupportedQuantization {
        /// The config file.
        path: PathBuf,
        /// What is wrong and what is supported.
        message: String,
    },
    /// A safetensors file is corrupt or truncated.
    #[error("{}: invalid safetensors file: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the model needs is absent.
    #[error("tensor `{name}` not found in {}", path.display())]
    MissingTensor {
        /// Tensor name.
        name: String,
        /// The checkpoint (file or directory) searched.
        path: PathBuf,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` in {}: expected shape {expected:?}, found {found:?}", path.display())]
    TensorShape {
        /// Tensor name.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype this role cannot use.
    #[error("tensor `{name}` in {}: expected dtype {expected}, found {found}", path.display())]
    TensorDtype {
        /// Tensor name.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// Acceptable dtypes.
        expected: String,
        /// Dtype in the file.
        found: String,
    },
    /// The tokenizer files cannot be used.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The prompt plus the requested tokens do not fit the context window.
    #[error(
        "prompt of {prompt_tokens} tokens + max_tokens {max_tokens} = {} exceeds the model's context of {n_ctx} tokens",
        prompt_tokens + max_tokens
    )]
    ContextOverflow {
        /// Prompt length in tokens.
        prompt_tokens: usize,
        /// Tokens requested.
        max_tokens: usize,
        /// Context window.
        n_ctx: usize,
    },
    /// A sampling parameter is out of range.
    #[error("invalid sampling parameter `{param}` = {value}: {reason}")]
    InvalidSampling {
        /// Parameter name as the CLI/API spells it.
        param: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        reason: &'static str,
    },
    /// A token id is not in the vocabulary.
    #[error("token id {id} is out of range for vocabulary size {vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A GGUF file is unreadable or hostile.
    #[error(transparent)]
    Gguf(#[from] bitnet_formats::gguf::GgufError),
    /// A PyTorch or ONNX input could not be read (the message names the file and the cause).
    #[error("{0}")]
    Input(String),
    /// The prompt is empty (no tokens to run).
    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,
    /// The requested device cannot be used, or a GPU operation failed (with the reason).
    #[error("device: {0}")]
    Device(String),
    /// A batched step was given more tokens than its buffers hold.
    #[error("batched step of {tokens} tokens exceeds the run state's {max} tokens per step")]
    BatchTooLarge {
        /// Tokens in the step.
        tokens: usize,
        /// The run state's limit.
        max: usize,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
