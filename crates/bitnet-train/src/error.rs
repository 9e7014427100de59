//! Errors of the trainer: each names the file, field, tensor or option at fault.

use std::path::PathBuf;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong preparing data, training or saving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the engine (config, checkpoint, tokenizer files).
    #[error(transparent)]
    Engine(#[from] bitnet_engine::Error),
    /// An error of candle's tensor library.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A configuration or state file is unusable.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A training data file is unusable.
    #[error("{}: {message}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong (with the line number where there is one).
        message: String,
    },
    /// The tokenizer cannot be loaded, trained or run.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// The tokenizer file (or the output path when training one).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint does not fit the model or run it is loaded into.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong (tensor names and shapes).
        message: String,
    },
    /// A training option has an unusable value.
    #[error("option --{option}: {message}")]
    Option {
        /// The command-line option.
        option: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error("the loss is {loss} at step {step}: lower --lr or raise --warmup")]
    Diverged {
        /// The step.
        step: usize,
        /// The loss value.
        loss: f32,
    },
    /// An internal invariant failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
