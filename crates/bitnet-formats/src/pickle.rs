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

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::raw::{RawDtype, RawTensor};

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

/// Element type named by a storage class or a `torch.<dtype>` global.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TorchDtype {
    Supported(RawDtype),
    Unsupported(&'static str),
}

/// Storage kind from a persistent id.
#[derive(Clone, Copy, Debug, PartialEq)]
enum StorageKind {
    Typed(TorchDtype),
    Untyped,
}

/// An allow-listed global.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageKind),
    Dtype(TorchDtype),
}

/// Supported element types: `torch.<X>Storage` base name, `torch.<dtype>` names.
const DTYPES: [(RawDtype, &str, &str); 10] = [
    (RawDtype::F32, "Float", "float32 float"),
    (RawDtype::F16, "Half", "float16 half"),
    (RawDtype::BF16, "BFloat16", "bfloat16"),
    (RawDtype::F64, "Double", "float64 double"),
    (RawDtype::U8, "Byte", "uint8"),
    (RawDtype::I8, "Char", "int8"),
    (RawDtype::I16, "Short", "int16 short"),
    (RawDtype::I32, "Int", "int32 int"),
    (RawDtype::I64, "Long", "int64 long"),
    (RawDtype::Bool, "Bool", "bool"),
];
/// Storage classes and dtypes torch may emit that [`RawDtype`] cannot hold (reported per tensor).
const UNSUPPORTED_STORAGES: &str =
    "ComplexFloat ComplexDouble QInt8 QUInt8 QInt32 QUInt4x2 QUInt2x4";
const UNSUPPORTED_DTYPES: &str = "uint16 uint32 uint64 complex32 complex64 complex128 cfloat \
    cdouble float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz float8_e8m0fnu \
    float4_e2m1fn_x2 qint8 quint8 qint32 quint4x2";

/// `torch.<name>` as a storage class (`storage`) or as a dtype.
fn torch_dtype(name: &str, storage: bool) -> Option<TorchDtype> {
    let base = if storage {
        name.strip_suffix("Storage")?
    } else {
        name
    };
    let found = DTYPES.iter().find(|(_, s, d)| {
        if storage {
            *s == base
        } else {
            d.split(' ').any(|x| x == base)
        }
    });
    if let Some((d, ..)) = found {
        return Some(TorchDtype::Supported(*d));
    }
    let list = if storage {
        UNSUPPORTED_STORAGES
    } else {
        UNSUPPORTED_DTYPES
    };
    list.split_whitespace()
        .find(|x| *x == base)
        .map(TorchDtype::Unsupported)
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch" | "torch.storage", "UntypedStorage") => {
            Some(Global::Storage(StorageKind::Untyped))
        }
        ("torch", _) => torch_dtype(name, true)
            .map(|d| Global::Storage(StorageKind::Typed(d)))
            .or_else(|| torch_dtype(name, false).map(Global::Dtype)),
        _ => None,
    }
}

/// A storage referenced by a persistent id.
#[derive(Clone, Debug)]
struct StorageRef {
    key: String,
    kind: StorageKind,
    numel: u64,
}

/// A tensor view over a storage, in elements of `dtype`.
#[derive(Clone, Debug)]
struct TensorRef {
    storage: StorageRef,
    dtype: Option<TorchDtype>,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

type Id = usize;

/// An object built by the unpickler; containers refer to other objects by arena index, so
/// memo lookups never copy and cycles cannot leak.
#[derive(Debug)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
}

/// Opcodes this unpickler implements, and their names in the same order.
const OPCODES: &[u8] =
    b"\x80\x95}])(suaeqr\x94hjX\x8c\x8dCB\x8eJKM\x8a\x8bGN\x88\x89t\x85\x86\x87c\x93RbQ\x81.";
const OPCODE_NAMES: &str = "PROTO FRAME EMPTY_DICT EMPTY_LIST EMPTY_TUPLE MARK SETITEM SETITEMS \
    APPEND APPENDS BINPUT LONG_BINPUT MEMOIZE BINGET LONG_BINGET BINUNICODE SHORT_BINUNICODE \
    BINUNICODE8 SHORT_BINBYTES BINBYTES BINBYTES8 BININT BININT1 BININT2 LONG1 LONG4 BINFLOAT NONE \
    NEWTRUE NEWFALSE TUPLE TUPLE1 TUPLE2 TUPLE3 GLOBAL STACK_GLOBAL REDUCE BUILD BINPERSID NEWOBJ STOP";

fn opcode_name(op: u8) -> &'static str {
    let i = OPCODES.iter().position(|&b| b == op);
    i.and_then(|i| OPCODE_NAMES.split_whitespace().nth(i))
        .unwrap_or("unsupported")
}

/// Bytes of little-endian argument that follow an opcode.
fn arg_len(op: u8) -> u64 {
    match op {
        0x80 | b'q' | b'h' | 0x8c | b'C' | b'K' | 0x8a => 1,
        b'M' => 2,
        b'r' | b'j' | b'X' | b'B' | b'J' | 0x8b => 4,
        0x95 | 0x8d | 0x8e | b'G' => 8,
        _ => 0,
    }
}

struct Unpickler<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    op: u8,
    objs: Vec<Obj>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    /// Bytes the parser may still allocate (objects, stack, memo, tensor metadata).
    budget: u64,
}

impl<'a> Unpickler<'a> {
    fn new(path: &'a Path, data: &'a [u8], budget: u64) -> Self {
        Unpickler {
            path,
            data,
            pos: 0,
            op_start: 0,
            op: 0,
            objs: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            budget,
        }
    }

    /// Accounts for `bytes` of parser memory.
    fn charge(&mut self, bytes: usize) -> Result<(), PickleError> {
        match self.budget.checked_sub(bytes as u64) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(self.err("allocation budget exceeded (8 x file size + 64 MiB)")),
        }
    }

    fn err(&self, msg: impl Into<String>) -> PickleError {
        PickleError::Pickle {
            path: self.path.to_path_buf(),
            offset: self.op_start,
            opcode: if self.op_start >= self.data.len() {
                "(end of data, no STOP)".into()
            } else {
                format!("{} ({:#04x})", opcode_name(self.op), self.op)
            },
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| self.data.get(self.pos..end)) {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(self.err(format!("truncated: needs {n} more bytes"))),
        }
    }

    fn alloc(&mut self, obj: Obj) -> Result<Id, PickleError> {
        // Each opcode creates at most one object, so this only guards future changes.
        if self.objs.len() > self.data.len() + 16 {
            return Err(self.err("too many objects for the pickle size"));
        }
        let heap = match &obj {
            Obj::Str(s) => s.len(),
            Obj::Tuple(v) | Obj::List(v) => 8 * v.len(),
            Obj::Tensor(t) => 128 + 16 * t.shape.len() + t.storage.key.len(),
            Obj::Storage(st) => 64 + st.key.len(),
            _ => 0,
        };
        self.charge(std::mem::size_of::<Obj>() + heap)?;
        self.objs.push(obj);
        Ok(self.objs.len() - 1)
    }

    fn push(&mut self, obj: Obj) -> Result<(), PickleError> {
        let id = self.alloc(obj)?;
        self.push_id(id)
    }

    fn push_id(&mut self, id: Id) -> Result<(), PickleError> {
        if self.stack.len() > self.data.len() {
            return Err(self.err("stack too deep"));
        }
        self.charge(8)?;
        self.stack.push(id);
        Ok(())
    }

    /// Pops `n` items (oldest first), never reaching below the innermost MARK.
    fn pop_n(&mut self, n: usize) -> Result<Vec<Id>, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn top(&self) -> Result<Id, PickleError> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn string(&mut self, len: u64) -> Result<String, PickleError> {
        if len > MAX_STRING_BYTES as u64 {
            return Err(self.err(format!("string of {len} bytes exceeds the 1 MiB limit")));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn bytes(&mut self, len: u64) -> Result<(), PickleError> {
        if len > MAX_STRING_BYTES as u64 {
            return Err(self.err(format!(
                "byte string of {len} bytes exceeds the 1 MiB limit"
            )));
        }
        self.take(len)?;
        self.push(Obj::Bytes)
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().take(256).position(|&b| b == b'\n');
        let n = n.ok_or_else(|| self.err("global name line missing or longer than 256 bytes"))?;
        let line =
            std::str::from_utf8(&rest[..n]).map_err(|_| self.err("global name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(line)
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        match resolve_global(module, name) {
            Some(g) => self.push(Obj::Global(g)),
            None => Err(PickleError::ForbiddenGlobal {
                path: self.path.to_path_buf(),
                offset: self.op_start,
                global: format!("{module}.{name}"),
            }),
        }
    }

    fn memo_put(&mut self, idx: u32) -> Result<(), PickleError> {
        let top = self.top()?;
        if self.memo.len() > self.data.len() {
            return Err(self.err("memo too large"));
        }
        self.charge(32)?;
        self.memo.insert(idx, top);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<(), PickleError> {
        let id = *self
            .memo
            .get(&idx)
            .ok_or_else(|| self.err(format!("memo key {idx} missing")))?;
        self.push_id(id)
    }

    fn int(&self, id: Id, what: &str) -> Result<i64, PickleError> {
        match self.objs[id] {
            Obj::Int(v) => Ok(v),
            Obj::Bool(b) => Ok(b as i64),
            _ => Err(self.err(format!("{what} must be an int"))),
        }
    }

    fn uint(&self, id: Id, what: &str) -> Result<u64, PickleError> {
        let v = self.int(id, what)?;
        u64::try_from(v).map_err(|_| self.err(format!("{what} is negative ({v})")))
    }

    fn tuple(&self, id: Id, what: &str) -> Result<&[Id], PickleError> {
        match &self.objs[id] {
            Obj::Tuple(items) => Ok(items),
            _ => Err(self.err(format!("{what} must be a tuple"))),
        }
    }

    fn uints(&self, id: Id, what: &str) -> Result<Vec<u64>, PickleError> {
        let items = self.tuple(id, what)?;
        if items.len() > MAX_NDIM {
            return Err(self.err(format!("{what} has {} dims (max {MAX_NDIM})", items.len())));
        }
        items.iter().map(|&i| self.uint(i, what)).collect()
    }

    fn run(&mut self) -> Result<Id, PickleError> {
        loop {
            self.op_start = self.pos;
            self.op = 0;
            let op = self.take(1)?[0];
            self.op = op;
            let mut le = [0u8; 8];
            let n = arg_len(op);
            le[..n as usize].copy_from_slice(self.take(n)?);
            let arg = u64::from_le_bytes(le);
            match op {
                0x80 if arg > 5 => {
                    return Err(self.err(format!("pickle protocol {arg} not supported")))
                }
                0x80 => {}
                0x95 if arg > (self.data.len() - self.pos) as u64 => {
                    return Err(self.err("frame longer than the pickle"))
                }
                0x95 => {}
                b'}' => self.push(Obj::Dict(Vec::new()))?,
                b']' => self.push(Obj::List(Vec::new()))?,
                b')' => self.push(Obj::Tuple(Vec::new()))?,
                b'(' if self.marks.len() >= MAX_DEPTH => {
                    return Err(self.err("MARKs nested too deeply"))
                }
                b'(' => self.marks.push(self.stack.len()),
                b's' | b'u' => {
                    let items = if op == b's' {
                        self.pop_n(2)?
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err(self.err("odd number of items for SETITEMS"));
                    }
                    self.charge(8 * items.len())?;
                    let target = self.top()?;
                    match &mut self.objs[target] {
                        Obj::Dict(d) => d.extend(items.chunks_exact(2).map(|c| (c[0], c[1]))),
                        _ => return Err(self.err("SETITEM target is not a dict")),
                    }
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        self.pop_n(1)?
                    } else {
                        self.pop_mark()?
                    };
                    self.charge(8 * items.len())?;
                    let target = self.top()?;
                    match &mut self.objs[target] {
                        Obj::List(l) => l.extend(items),
                        _ => return Err(self.err("APPEND target is not a list")),
                    }
                }
                b'q' | b'r' => self.memo_put(arg as u32)?,
                0x94 => self.memo_put(u32::try_from(self.memo.len()).unwrap_or(u32::MAX))?,
                b'h' | b'j' => self.memo_get(arg as u32)?,
                b'X' | 0x8c | 0x8d => {
                    let s = self.string(arg)?;
                    self.push(Obj::Str(s))?;
                }
                b'C' | b'B' | 0x8e => self.bytes(arg)?,
                b'K' | b'M' => self.push(Obj::Int(arg as i64))?,
                b'J' => self.push(Obj::Int(i64::from(arg as u32 as i32)))?,
                0x8a | 0x8b if arg > 8 => {
                    return Err(self.err(format!("{arg}-byte integer does not fit in 64 bits")))
                }
                0x8a | 0x8b => {
                    let b = self.take(arg)?;
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    };
                    let mut buf = [fill; 8];
                    buf[..b.len()].copy_from_slice(b);
                    self.push(Obj::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => self.push(Obj::Float)?,
                b'N' => self.push(Obj::None)?,
                0x88 | 0x89 => self.push(Obj::Bool(op == 0x88))?,
                b't' | 0x85..=0x87 => {
                    let items = if op == b't' {
                        self.pop_mark()?
                    } else {
                        self.pop_n(usize::from(op - 0x84))?
                    };
                    self.push(Obj::Tuple(items))?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let items = self.pop_n(2)?;
                    match (&self.objs[items[0]], &self.objs[items[1]]) {
                        (Obj::Str(m), Obj::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(&m, &n)?;
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let items = self.pop_n(2)?;
                    let obj = self.call(items[0], items[1], op == 0x81)?;
                    self.push_id(obj)?;
                }
                b'b' => {
                    self.pop_n(1)?;
                    // OrderedDict state (`_metadata`) is attribute data, not items: ignore it.
                    if !matches!(self.objs[self.top()?], Obj::Dict(_) | Obj::Tensor(_)) {
                        return Err(self.err("BUILD is only supported on dicts and tensors"));
                    }
                }
                b'Q' => {
                    let pid = self.pop_n(1)?[0];
                    let storage = self.persistent_load(pid)?;
                    self.push(Obj::Storage(Box::new(storage)))?;
                }
                b'.' => return self.top(),
                _ => return Err(self.err("opcode not supported by the restricted unpickler")),
            }
        }
    }

    fn persistent_load(&self, pid: Id) -> Result<StorageRef, PickleError> {
        let items = self.tuple(pid, "persistent id")?;
        let [tag, class, key, _location, numel] = items else {
            return Err(self.err("persistent id must be ('storage', class, key, location, numel)"));
        };
        if !matches!(&self.objs[*tag], Obj::Str(s) if s == "storage") {
            return Err(self.err("persistent id tag is not 'storage'"));
        }
        let Obj::Global(Global::Storage(kind)) = self.objs[*class] else {
            return Err(self.err("persistent id does not name a storage class"));
        };
        let key = match &self.objs[*key] {
            Obj::Str(k)
                if (1..=64).contains(&k.len())
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                k.clone()
            }
            _ => return Err(self.err("storage key must be a short alphanumeric string")),
        };
        let numel = self.uint(*numel, "storage numel")?;
        Ok(StorageRef { key, kind, numel })
    }

    fn call(&mut self, callable: Id, args: Id, newobj: bool) -> Result<Id, PickleError> {
        let Obj::Global(g) = self.objs[callable] else {
            return Err(self.err("callable is not an allowed global"));
        };
        let a = self.tuple(args, "arguments")?;
        if a.len() > 8 {
            return Err(self.err(format!("{g:?} called with {} arguments", a.len())));
        }
        let a = a.to_vec();
        if newobj && g != Global::OrderedDict {
            return Err(self.err("NEWOBJ is only supported for OrderedDict"));
        }
        match g {
            // torch pickles OrderedDict as `OrderedDict()` followed by SETITEMS.
            Global::OrderedDict if a.is_empty() => self.alloc(Obj::Dict(Vec::new())),
            Global::OrderedDict => Err(self.err("OrderedDict() with arguments is not supported")),
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                let ok = match g {
                    Global::RebuildTensor => a.len() == 4,
                    Global::RebuildTensorV2 => a.len() == 6 || a.len() == 7,
                    _ => a.len() == 7 || a.len() == 8,
                };
                if !ok {
                    return Err(self.err(format!("{g:?} got {} arguments", a.len())));
                }
                let Obj::Storage(storage) = &self.objs[a[0]] else {
                    return Err(self.err("tensor storage argument is not a storage"));
                };
                let storage = StorageRef::clone(storage);
                let offset = self.uint(a[1], "storage offset")?;
                let shape = self.uints(a[2], "size")?;
                let stride = self.uints(a[3], "stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err("size and stride lengths differ"));
                }
                let dtype = match (g, storage.kind) {
                    (Global::RebuildTensorV3, _) => match self.objs[a[6]] {
                        Obj::Global(Global::Dtype(d)) => Some(d),
                        _ => {
                            return Err(
                                self.err("_rebuild_tensor_v3 dtype argument is not a torch dtype")
                            )
                        }
                    },
                    (_, StorageKind::Typed(d)) => Some(d),
                    (_, StorageKind::Untyped) => None,
                };
                self.alloc(Obj::Tensor(Box::new(TensorRef {
                    storage,
                    dtype,
                    offset,
                    shape,
                    stride,
                })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let n = if g == Global::RebuildParameter { 3 } else { 4 };
                if a.len() != n || !matches!(self.objs[a[0]], Obj::Tensor(_)) {
                    return Err(self.err(format!(
                        "{g:?} expects {n} arguments starting with a tensor"
                    )));
                }
                Ok(a[0])
            }
            Global::Storage(_) | Global::Dtype(_) => {
                Err(self.err(format!("{g:?} is not callable here")))
            }
        }
    }

    /// Picks the state dict (see module docs) and flattens it into named tensor ids, charging
    /// the names to `budget`.
    fn collect(&self, root: Id, budget: &mut u64) -> Result<Vec<(String, Id)>, PickleError> {
        let Obj::Dict(entries) = &self.objs[root] else {
            return Err(structure_err(
                self.path,
                "top-level object is not a dict (state dict)",
            ));
        };
        let mut start = root;
        if !entries
            .iter()
            .any(|&(_, v)| matches!(self.objs[v], Obj::Tensor(_)))
        {
            'keys: for key in WRAPPER_KEYS {
                for &(k, v) in entries {
                    let named = matches!(&self.objs[k], Obj::Str(s) if s == key);
                    if named
                        && matches!(self.objs[v], Obj::Dict(_))
                        && !self.walk_from(v, *budget)?.0.is_empty()
                    {
                        start = v;
                        break 'keys;
                    }
                }
            }
        }
        let (out, left) = self.walk_from(start, *budget)?;
        *budget = left;
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &out {
            if !seen.insert(name.as_str()) {
                return Err(structure_err(
                    self.path,
                    format!("duplicate tensor name `{name}`"),
                ));
            }
        }
        Ok(out)
    }

    /// Flattens the tree under `id`; returns the named tensors and the budget left.
    fn walk_from(&self, id: Id, budget: u64) -> Result<(Vec<(String, Id)>, u64), PickleError> {
        let max_visits = 4 * self.objs.len() + 1024;
        let mut walk = Walk {
            visits: 0,
            max_visits,
            budget,
            out: Vec::new(),
        };
        self.walk(id, String::new(), 0, &mut walk)?;
        Ok((walk.out, walk.budget))
    }

    /// Depth-first walk over dicts, lists and tuples.
    fn walk(
        &self,
        id: Id,
        prefix: String,
        depth: usize,
        walk: &mut Walk,
    ) -> Result<(), PickleError> {
        let structure = |msg: String| structure_err(self.path, msg);
        walk.visits += 1;
        if depth > MAX_DEPTH || walk.visits > walk.max_visits {
            let msg = format!(
                "containers nested deeper than {MAX_DEPTH} or shared too often (at `{prefix}`)"
            );
            return Err(structure(msg));
        }
        let join = |k: &str| {
            if prefix.len() + k.len() >= MAX_NAME_BYTES {
                Err(structure(format!(
                    "tensor name longer than {MAX_NAME_BYTES} bytes under `{prefix}`"
                )))
            } else if prefix.is_empty() {
                Ok(k.to_string())
            } else {
                Ok(format!("{prefix}.{k}"))
            }
        };
        match &self.objs[id] {
            Obj::Tensor(_) => {
                let cost = prefix.len() as u64 + 64;
                if cost > walk.budget {
                    return Err(structure(
                        "tensor names exceed the allocation budget".into(),
                    ));
                }
                walk.budget -= cost;
                walk.out.push((prefix, id));
            }
            Obj::Dict(entries) => {
                for &(k, v) in entries {
                    let key = match &self.objs[k] {
                        Obj::Str(s) => join(s)?,
                        Obj::Int(i) => join(&i.to_string())?,
                        _ => {
                            return Err(structure(format!(
                                "dict under `{prefix}` has a non-string key"
                            )))
                        }
                    };
                    self.walk(v, key, depth + 1, walk)?;
                }
            }
            Obj::List(items) | Obj::Tuple(items) => {
                for (i, &v) in items.iter().enumerate() {
                    self.walk(v, join(&i.to_string())?, depth + 1, walk)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// State of [`Unpickler::walk`]: visit count (shared containers are re-walked, so it is
/// capped), allocation budget left, and the tensors found.
struct Walk {
    visits: usize,
    max_visits: usize,
    budget: u64,
    out: Vec<(String, Id)>,
}

/// Reads each referenced storage once and copies every tensor view out of it.
fn materialize<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    prefix: &str,
    tensors: &[(String, &TensorRef)],
    file_len: u64,
    mut budget: u64,
    path: &Path,
) -> Result<Vec<RawTensor>, PickleError> {
    let tensor_err = |tensor: &str, msg: String| PickleError::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.into(),
        msg,
    };
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut dtypes = Vec::with_capacity(tensors.len());
    for (i, (name, t)) in tensors.iter().enumerate() {
        let dtype = match t.dtype {
            Some(TorchDtype::Supported(d)) => d,
            Some(TorchDtype::Unsupported(d)) => {
                return Err(tensor_err(name, format!("dtype {d} is not supported")))
            }
            None => return Err(tensor_err(name, "untyped storage without a dtype".into())),
        };
        dtypes.push(dtype);
        by_key.entry(t.storage.key.as_str()).or_default().push(i);
    }
    let mut out: Vec<Option<RawTensor>> = vec![None; tensors.len()];
    for (key, idxs) in by_key {
        let bytes = read_entry(archive, &format!("{prefix}data/{key}"), file_len, path)?;
        for i in idxs {
            let (name, t) = &tensors[i];
            let storage_elem = match t.storage.kind {
                StorageKind::Typed(TorchDtype::Supported(d)) => d.size() as u64,
                StorageKind::Typed(TorchDtype::Unsupported(d)) => {
                    return Err(tensor_err(
                        name,
                        format!("storage dtype {d} is not supported"),
                    ))
                }
                StorageKind::Untyped => 1,
            };
            let expected = t.storage.numel.checked_mul(storage_elem);
            if expected != Some(bytes.len() as u64) {
                let msg = format!("storage `{key}` has {} bytes, its header implies {} elements of {storage_elem} bytes", bytes.len(), t.storage.numel);
                return Err(tensor_err(name, msg));
            }
            budget = budget.saturating_sub(8 * t.shape.len() as u64);
            let data = gather(&bytes, t, dtypes[i], &mut budget)
                .map_err(|msg| tensor_err(name, format!("storage `{key}`: {msg}")))?;
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            out[i] = Some(RawTensor {
                name: name.clone(),
                dtype: dtypes[i],
                shape,
                data,
            });
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Copies a strided view of `storage` into a new contiguous buffer.
fn gather(
    storage: &[u8],
    t: &TensorRef,
    dtype: RawDtype,
    budget: &mut u64,
) -> Result<Vec<u8>, String> {
    let elem = dtype.size();
    if storage.len() % elem != 0 {
        return Err(format!(
            "{} bytes is not a whole number of {elem}-byte elements",
            storage.len()
        ));
    }
    let storage_elems = (storage.len() / elem) as u64;
    let overflow = || "shape overflows".to_string();
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let nbytes = numel.checked_mul(elem as u64).ok_or_else(overflow)?;
    if usize::try_from(nbytes).is_err() || nbytes > *budget {
        return Err(format!(
            "{nbytes} bytes exceeds the remaining allocation budget of {budget} bytes"
        ));
    }
    *budget -= nbytes;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| "stride overflows".to_string())?;
    }
    if last >= storage_elems {
        return Err(format!(
            "view (offset {}, shape {:?}, stride {:?}) reaches element {last}, past the storage's {storage_elems} elements",
            t.offset, t.shape, t.stride
        ));
    }
    // All indices are < storage_elems, so usize arithmetic below cannot overflow.
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let stride: Vec<usize> = t.stride.iter().map(|&s| s as usize).collect();
    let mut data = Vec::with_capacity(nbytes as usize);
    let (inner, inner_stride) = match (shape.last(), stride.last()) {
        (Some(&n), Some(&s)) => (n, s),
        _ => (1, 1),
    };
    let outer = shape.len().saturating_sub(1);
    let mut index = vec![0usize; outer];
    loop {
        let base = t.offset as usize + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
        if inner_stride == 1 {
            data.extend_from_slice(&storage[base * elem..(base + inner) * elem]);
        } else {
            for j in 0..inner {
                let at = (base + j * inner_stride) * elem;
                data.extend_from_slice(&storage[at..at + elem]);
            }
        }
        // Advance the outer multi-index (odometer order = row-major).
        let mut dim = outer;
        loop {
            if dim == 0 {
                return Ok(data);
            }
            dim -= 1;
            index[dim] += 1;
            if index[dim] < shape[dim] {
                break;
            }
            index[dim] = 0;
        }
    }
}
