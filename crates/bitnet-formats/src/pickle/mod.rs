//! PyTorch checkpoints (`torch.save` zip archives) through a restricted unpickler.
//!
//! A `torch.save` file (`pytorch_model.bin`, `*.pt`, `*.pth`) is a zip archive holding
//! `<prefix>/data.pkl` (a pickle describing the object tree), one stored entry per storage in
//! `<prefix>/data/<key>`, and optionally `<prefix>/byteorder`. The prefix directory name varies
//! (`archive`, the file stem, ...).
//!
//! The pickle is interpreted by a small stack machine implemented here; nothing is ever
//! imported or executed. Only these globals are accepted:
//!
//! * `collections.OrderedDict`,
//! * `torch._utils._rebuild_tensor`, `_rebuild_tensor_v2`, `_rebuild_tensor_v3`,
//!   `_rebuild_parameter`, `_rebuild_parameter_with_state`,
//! * the legacy storage classes `torch.FloatStorage`, `HalfStorage`, `BFloat16Storage`,
//!   `DoubleStorage`, `ByteStorage`, `CharStorage`, `ShortStorage`, `IntStorage`,
//!   `LongStorage`, `BoolStorage` and `torch.storage.UntypedStorage`,
//! * `torch.<dtype>` globals (`torch.float32`, ...), which `_rebuild_tensor_v3` uses.
//!
//! Any other global (`posix.system`, `builtins.eval`, a pickled `nn.Module` class, ...) is
//! rejected with [`PickleError::ForbiddenGlobal`] naming it.
//!
//! # Which tensors are returned
//!
//! The top-level object must be a dict. If it holds tensors directly it is the state dict.
//! Otherwise, if it has a well-known wrapper key (`state_dict`, `model_state_dict`, `model`,
//! `module`, in that order) whose value is a dict containing tensors, only that inner dict is
//! used (so `{"model": sd, "optimizer": ..., "epoch": 3}` yields `sd`'s own names). Otherwise
//! the whole tree is used. Nested dicts (and lists) are flattened with dotted names
//! (`{"encoder": {"w": t}}` gives `encoder.w`); non-tensor leaves (ints, strings, ...) are
//! skipped. Views are materialized as contiguous tensors (strides and storage offsets are
//! honoured), in state-dict order.
//!
//! # Limits
//!
//! Hostile files give errors, never panics or unbounded allocations: the pickle is capped at
//! 256 MiB and the file size, strings at 1 MiB, names at 4 KiB, MARK and container nesting at
//! 64 levels, the object count, stack and memo at the pickle length, tensors at 64 dimensions,
//! and every allocation after reading the pickle (parser objects, names, materialized tensors)
//! is charged to one budget of 8 × the file size + 64 MiB (views of a shared storage are each
//! materialized, e.g. tied embeddings, hence the headroom). Each storage entry is read once,
//! and only if a returned tensor uses it.

mod globals;
mod tensors;
mod unpickler;

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::raw::RawTensor;

use self::tensors::materialize;
use self::unpickler::{Obj, TensorRef, Unpickler};

/// Largest `data.pkl` accepted.
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Largest single string, byte string or global name.
const MAX_STRING_BYTES: usize = 1 << 20;
/// Deepest MARK nesting and dict nesting.
const MAX_DEPTH: usize = 64;
/// Most tensor dimensions.
const MAX_NDIM: usize = 64;
/// Longest flattened tensor name.
const MAX_NAME_BYTES: usize = 4096;
/// Keys tried, in order, when the top-level dict holds no tensor itself.
const WRAPPER_KEYS: [&str; 4] = ["state_dict", "model_state_dict", "model", "module"];

/// Error reading a PyTorch checkpoint. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The file (or an entry in it) could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// Checkpoint path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The zip container is unreadable.
    #[error("{}: not a readable torch.save zip archive ({context}): {source}", path.display())]
    Zip {
        /// Checkpoint path.
        path: PathBuf,
        /// What was being read (e.g. the entry name).
        context: String,
        /// Underlying error.
        source: zip::result::ZipError,
    },
    /// The archive layout is wrong (no `data.pkl`, big-endian, legacy format, ...).
    #[error("{}: {msg}", path.display())]
    Archive {
        /// Checkpoint path.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The pickle stream is malformed or uses an unsupported opcode.
    #[error("{}: data.pkl offset {offset}, opcode {opcode}: {msg}", path.display())]
    Pickle {
        /// Checkpoint path.
        path: PathBuf,
        /// Byte offset of the opcode in `data.pkl`.
        offset: usize,
        /// Opcode name and byte, e.g. `REDUCE (0x52)`.
        opcode: String,
        /// What is wrong.
        msg: String,
    },
    /// The pickle references a global outside the tensor-rebuild allow-list.
    #[error(
        "{}: data.pkl offset {offset}: refusing global `{global}`: only PyTorch tensor-rebuild \
         globals are allowed, so this is not a plain state dict (it may be a pickled module or \
         a malicious file); nothing was executed. Re-save with torch.save(model.state_dict(), path) \
         or use safetensors",
        path.display()
    )]
    ForbiddenGlobal {
        /// Checkpoint path.
        path: PathBuf,
        /// Byte offset of the GLOBAL / STACK_GLOBAL opcode in `data.pkl`.
        offset: usize,
        /// `module.name` of the refused global.
        global: String,
    },
    /// A tensor cannot be materialized (unsupported dtype, view out of bounds, ...).
    #[error("{}: tensor `{tensor}`: {msg}", path.display())]
    Tensor {
        /// Checkpoint path.
        path: PathBuf,
        /// Flattened tensor name.
        tensor: String,
        /// What is wrong.
        msg: String,
    },
    /// The unpickled object is not a (nested) state dict.
    #[error("{}: {msg}", path.display())]
    Structure {
        /// Checkpoint path.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> PickleError + '_ {
    move |source| PickleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn zip_err(path: &Path, context: String) -> impl FnOnce(zip::result::ZipError) -> PickleError + '_ {
    move |source| PickleError::Zip {
        path: path.to_path_buf(),
        context,
        source,
    }
}

fn archive_err(path: &Path, msg: impl Into<String>) -> PickleError {
    PickleError::Archive {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn structure_err(path: &Path, msg: impl Into<String>) -> PickleError {
    PickleError::Structure {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads every tensor of a `torch.save` zip checkpoint (see the module docs for the naming
/// rules and limits).
pub fn read_pytorch(path: &Path) -> Result<Vec<RawTensor>, PickleError> {
    let file = File::open(path).map_err(io_err(path))?;
    read_pytorch_reader(BufReader::new(file), path)
}

/// Like [`read_pytorch`], from any seekable reader (e.g. an in-memory `Cursor`); `path` is only
/// used in error messages.
pub fn read_pytorch_reader<R: Read + Seek>(
    mut reader: R,
    path: &Path,
) -> Result<Vec<RawTensor>, PickleError> {
    let file_len = reader.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    reader.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut magic = [0u8; 2];
    let got = reader.read(&mut magic).map_err(io_err(path))?;
    reader.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    if got == 2 && magic[0] == 0x80 && magic[1] <= 5 {
        return Err(archive_err(
            path,
            "legacy (non-zip) torch.save format (torch < 1.6 or _use_new_zipfile_serialization=False) \
             is not supported; re-save it with torch.save(torch.load(path), path) on torch >= 1.6",
        ));
    }
    let mut archive =
        zip::ZipArchive::new(reader).map_err(zip_err(path, "central directory".into()))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok())
        .map(String::from)
        .collect();
    let is_pkl =
        |n: &&String| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1);
    let pkl_name = match names.iter().filter(is_pkl).collect::<Vec<_>>().as_slice() {
        [one] => (*one).clone(),
        [] => {
            let msg =
                "no <archive>/data.pkl entry: not a torch.save checkpoint (TorchScript archives \
                       from torch.jit.save are not supported)";
            return Err(archive_err(path, msg));
        }
        _ => return Err(archive_err(path, "several */data.pkl entries")),
    };
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let byteorder_name = format!("{prefix}byteorder");
    if names.contains(&byteorder_name) {
        let order = read_entry(&mut archive, &byteorder_name, 16, path)?;
        if order != b"little" {
            let shown = String::from_utf8_lossy(&order);
            let msg =
                format!("byteorder is {shown:?}; only little-endian checkpoints are supported");
            return Err(archive_err(path, msg));
        }
    }
    let pkl = read_entry(
        &mut archive,
        &pkl_name,
        MAX_PICKLE_BYTES.min(file_len),
        path,
    )?;
    let budget = file_len.saturating_mul(8).saturating_add(64 << 20);
    let mut up = Unpickler::new(path, &pkl, budget);
    let root = up.run()?;
    let mut budget = up.budget;
    let tensors = up.collect(root, &mut budget)?;
    let tensors: Vec<(String, &TensorRef)> = tensors
        .into_iter()
        .filter_map(|(name, id)| match &up.objs[id] {
            Obj::Tensor(t) => Some((name, &**t)),
            _ => None,
        })
        .collect();
    materialize(&mut archive, prefix, &tensors, file_len, budget, path)
}

/// Reads a whole stored zip entry of at most `limit` bytes.
fn read_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
    path: &Path,
) -> Result<Vec<u8>, PickleError> {
    let mut entry = archive
        .by_name(name)
        .map_err(zip_err(path, format!("entry `{name}`")))?;
    let size = entry.size();
    if size > limit {
        return Err(archive_err(
            path,
            format!("entry `{name}` claims {size} bytes, over the limit of {limit}"),
        ));
    }
    let method = entry.compression();
    if method != zip::CompressionMethod::Stored {
        let msg =
            format!("entry `{name}` is compressed ({method:?}); torch.save writes stored entries");
        return Err(archive_err(path, msg));
    }
    // `size <= limit <= file length`, so this allocation is bounded by the input.
    let mut buf = Vec::with_capacity(size as usize);
    (&mut entry)
        .take(size.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 != size {
        return Err(archive_err(
            path,
            format!("entry `{name}` has {} bytes, header says {size}", buf.len()),
        ));
    }
    Ok(buf)
}
