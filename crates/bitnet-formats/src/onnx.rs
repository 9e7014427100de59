//! ONNX initializers: the weights stored in `ModelProto.graph.initializer`.
//!
//! A small hand-written protobuf reader (varint, fixed32/64 and length-delimited fields, all
//! bounds-checked) walks `ModelProto` → `graph` (field 7) → `initializer` (field 5) and decodes
//! each `TensorProto`: `dims` (1, packed or not), `data_type` (2), `name` (8), `raw_data` (9),
//! the typed fields `float_data` (4), `int32_data` (5, which also carries float16 / bfloat16
//! bit patterns and int8 / uint8 / int16 / bool values), `int64_data` (7), `double_data` (10),
//! and external data (`data_location` 14 = EXTERNAL with `external_data` 13 entries
//! `location` / `offset` / `length`). External files are resolved relative to the model's
//! directory; absolute locations and `..` components are rejected, and `offset + length` must lie
//! inside the file. Everything else in the model (nodes, inputs, metadata) is skipped.
//!
//! Exporters that constant-fold weights (e.g. pre-transposing a `MatMul` weight) give them
//! generated names such as `onnx::MatMul_123` or `val_0`; [`names_look_lost`] and
//! [`check_names`] detect that so callers can ask for a re-export.
//!
//! Hostile files give errors, never panics: lengths are checked against the buffer before any
//! slice, tensors have at most 64 dimensions, and all decoded tensors together are capped at
//! 8 × the model size + 2 × the external files' sizes + 64 MiB.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::raw::{RawDtype, RawTensor};

/// Most tensor dimensions.
const MAX_NDIM: usize = 64;

/// Error reading ONNX initializers. Every variant names the model file.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The model file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// Model path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The protobuf encoding is malformed.
    #[error("{}: malformed protobuf at byte {offset} in {context}: {msg}", path.display())]
    Proto {
        /// Model path.
        path: PathBuf,
        /// Absolute byte offset in the model file.
        offset: usize,
        /// Message being decoded, e.g. `GraphProto.initializer[3]`.
        context: String,
        /// What is wrong.
        msg: String,
    },
    /// An initializer is unsupported or inconsistent (dtype, dims vs. data size, ...).
    #[error("{}: initializer `{tensor}`: {msg}", path.display())]
    Tensor {
        /// Model path.
        path: PathBuf,
        /// Initializer name (or `#index` if it has none).
        tensor: String,
        /// What is wrong.
        msg: String,
    },
    /// An initializer's external data is missing, out of bounds or outside the model directory.
    #[error("{}: initializer `{tensor}`: external data `{location}`: {msg}", path.display())]
    ExternalData {
        /// Model path.
        path: PathBuf,
        /// Initializer name.
        tensor: String,
        /// The `location` entry as written in the model.
        location: String,
        /// What is wrong.
        msg: String,
    },
    /// Most weights carry exporter-generated names (see [`check_names`]).
    #[error(
        "{}: {lost} of {total} floating-point initializers have exporter-generated names \
         (e.g. {examples}): parameter names were lost in the ONNX export, so the weights cannot be \
         matched to model layers (and folded weights may be pre-transposed). Re-export keeping the \
         names: torch.onnx.export(model, args, path, export_params=True, \
         do_constant_folding=False) with the TorchScript exporter (dynamo=False), or \
         torch.onnx.export(..., dynamo=True, optimize=False); or convert from the original \
         safetensors / pytorch_model.bin checkpoint instead",
        path.display()
    )]
    NamesLost {
        /// Model path.
        path: PathBuf,
        /// Floating-point initializers with generated names.
        lost: usize,
        /// Floating-point initializers in total.
        total: usize,
        /// A few of the generated names, quoted and comma-separated.
        examples: String,
    },
}

/// Reads every initializer of an ONNX model, in file order, resolving external data relative to
/// the model's directory.
pub fn read_onnx(path: &Path) -> Result<Vec<RawTensor>, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.into(),
        source,
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut ctx = Ctx {
        path,
        dir,
        budget: (bytes.len() as u64)
            .saturating_mul(8)
            .saturating_add(64 << 20),
        seen_files: HashSet::new(),
        names: HashSet::new(),
        out: Vec::new(),
    };
    let mut model = Pb::new(&bytes, 0);
    while let Some((field, value)) = model.next().map_err(|e| ctx.proto(e, "ModelProto"))? {
        if field == 7 {
            let (graph, base) = value
                .bytes(&model)
                .map_err(|e| ctx.proto(e, "ModelProto"))?;
            ctx.graph(graph, base)?;
        }
    }
    Ok(ctx.out)
}

/// True when most floating-point initializers (with at least one dimension) have names an
/// exporter generated (`onnx::MatMul_123`, `/layers.0/Constant_output_0`, `val_12`, `1234`, ...)
/// instead of parameter names such as `model.layers.0.self_attn.q_proj.weight`.
pub fn names_look_lost(tensors: &[RawTensor]) -> bool {
    let (lost, total) = lost_counts(tensors);
    total > 0 && 2 * lost > total
}

/// Returns [`OnnxError::NamesLost`] (with re-export advice) when [`names_look_lost`] is true.
pub fn check_names(path: &Path, tensors: &[RawTensor]) -> Result<(), OnnxError> {
    if !names_look_lost(tensors) {
        return Ok(());
    }
    let (lost, total) = lost_counts(tensors);
    let examples: Vec<String> = tensors
        .iter()
        .filter(|t| looks_generated(&t.name))
        .take(3)
        .map(|t| format!("`{}`", t.name))
        .collect();
    let examples = examples.join(", ");
    Err(OnnxError::NamesLost {
        path: path.into(),
        lost,
        total,
        examples,
    })
}

fn lost_counts(tensors: &[RawTensor]) -> (usize, usize) {
    let weights = tensors.iter().filter(|t| {
        matches!(
            t.dtype,
            RawDtype::F32 | RawDtype::F16 | RawDtype::BF16 | RawDtype::F64
        ) && !t.shape.is_empty()
    });
    weights.fold((0, 0), |(lost, total), t| {
        (lost + looks_generated(&t.name) as usize, total + 1)
    })
}

/// Exporter-generated value names rather than parameter paths.
fn looks_generated(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    };
    name.is_empty()
        || name.starts_with("onnx::")
        || name.starts_with('/')
        || name.bytes().all(|b| b.is_ascii_digit())
        || [
            "val_",
            "_val_",
            "_param_constant",
            "_tensor_constant",
            "const_fold_opt__",
            "Constant_",
        ]
        .iter()
        .any(|p| numbered(p))
}

/// A decoded protobuf field value.
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    /// Length-delimited payload and its absolute offset in the file.
    Bytes(&'a [u8], usize),
}

/// A wire-level error: absolute offset and message.
type PbErr = (usize, String);

impl<'a> Value<'a> {
    /// The payload of a length-delimited field; `r` (the reader that produced it) gives the
    /// error offset otherwise.
    fn bytes(self, r: &Pb) -> Result<(&'a [u8], usize), PbErr> {
        match self {
            Value::Bytes(b, at) => Ok((b, at)),
            _ => r.fail("expected a length-delimited field"),
        }
    }
}

/// Bounds-checked protobuf reader over one message; `base` is the message's file offset.
struct Pb<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Pb<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Pb { buf, pos: 0, base }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn fail<T>(&self, msg: &str) -> Result<T, PbErr> {
        Err((self.base + self.pos, msg.into()))
    }

    fn varint(&mut self) -> Result<u64, PbErr> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return self.fail("truncated varint");
            };
            if i == 9 && b > 1 {
                return self.fail("varint overflows 64 bits");
            }
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        self.fail("varint longer than 10 bytes")
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PbErr> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => self.fail(&format!(
                "field of {n} bytes runs past the end of its message"
            )),
        }
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, PbErr> {
        if self.at_end() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > (1 << 29) - 1 {
            return self.fail(&format!("invalid field number {field}"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().unwrap_or_default(),
            )),
            2 => {
                let len = self.varint()?;
                let at = self.base + self.pos;
                Value::Bytes(self.take(len)?, at)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().unwrap_or_default(),
            )),
            w => return self.fail(&format!("unsupported wire type {w} (field {field})")),
        };
        Ok(Some((field as u32, value)))
    }
}

/// Fields of one `TensorProto`, before conversion.
#[derive(Default)]
struct TensorFields<'a> {
    dims: Vec<i64>,
    data_type: i64,
    name: Option<String>,
    raw: Option<&'a [u8]>,
    /// `float_data` (4 bytes each) or `double_data` (8 bytes each), little-endian.
    floats: Vec<u8>,
    doubles: Vec<u8>,
    int32: Vec<i32>,
    int64: Vec<i64>,
    external: Vec<(String, String)>,
    location: u64,
    segment: bool,
}

/// Appends a repeated scalar field that may be packed (`Bytes`) or not.
fn repeated(r: &Pb, value: Value, width: usize, mut push: impl FnMut(u64)) -> Result<(), PbErr> {
    match value {
        Value::Varint(v) if width == 0 => push(v),
        Value::Fixed32(v) if width == 4 => push(v.into()),
        Value::Fixed64(v) if width == 8 => push(v),
        Value::Bytes(b, at) if width == 0 => {
            let mut r = Pb::new(b, at);
            while !r.at_end() {
                push(r.varint()?);
            }
        }
        Value::Bytes(b, _) if b.len() % width == 0 => {
            for c in b.chunks_exact(width) {
                let mut le = [0u8; 8];
                le[..width].copy_from_slice(c);
                push(u64::from_le_bytes(le));
            }
        }
        Value::Bytes(_, at) => {
            return Err((
                at,
                format!("packed field is not a multiple of {width} bytes"),
            ))
        }
        _ => return r.fail("repeated field has the wrong wire type"),
    }
    Ok(())
}

fn string_entry(b: &[u8], at: usize) -> Result<(String, String), PbErr> {
    let mut r = Pb::new(b, at);
    let (mut key, mut value) = (String::new(), String::new());
    while let Some((field, v)) = r.next()? {
        if field == 1 || field == 2 {
            let (s, at) = v.bytes(&r)?;
            let s = std::str::from_utf8(s).map_err(|_| (at, "string is not UTF-8".to_string()))?;
            *if field == 1 { &mut key } else { &mut value } = s.to_string();
        }
    }
    Ok((key, value))
}

fn parse_tensor(b: &[u8], base: usize) -> Result<TensorFields<'_>, PbErr> {
    let mut t = TensorFields::default();
    let mut r = Pb::new(b, base);
    while let Some((field, v)) = r.next()? {
        match field {
            1 => repeated(&r, v, 0, |x| t.dims.push(x as i64))?,
            2 => match v {
                Value::Varint(x) => t.data_type = x as i64,
                _ => return r.fail("data_type is not a varint"),
            },
            3 => t.segment = true,
            4 => repeated(&r, v, 4, |x| {
                t.floats.extend_from_slice(&(x as u32).to_le_bytes())
            })?,
            5 => repeated(&r, v, 0, |x| t.int32.push(x as i32))?,
            7 => repeated(&r, v, 0, |x| t.int64.push(x as i64))?,
            8 => {
                let (s, at) = v.bytes(&r)?;
                let s =
                    std::str::from_utf8(s).map_err(|_| (at, "name is not UTF-8".to_string()))?;
                t.name = Some(s.to_string());
            }
            9 => t.raw = Some(v.bytes(&r)?.0),
            10 => repeated(&r, v, 8, |x| t.doubles.extend_from_slice(&x.to_le_bytes()))?,
            13 => {
                let (s, at) = v.bytes(&r)?;
                t.external.push(string_entry(s, at)?);
            }
            14 => match v {
                Value::Varint(x) => t.location = x,
                _ => return r.fail("data_location is not a varint"),
            },
            _ => {}
        }
        if t.dims.len() > MAX_NDIM {
            return r.fail(&format!("more than {MAX_NDIM} dims"));
        }
    }
    Ok(t)
}

/// ONNX `TensorProto.DataType` → element type, or the unsupported type's name.
fn dtype(code: i64) -> Result<RawDtype, String> {
    Ok(match code {
        1 => RawDtype::F32,
        2 => RawDtype::U8,
        3 => RawDtype::I8,
        5 => RawDtype::I16,
        6 => RawDtype::I32,
        7 => RawDtype::I64,
        9 => RawDtype::Bool,
        10 => RawDtype::F16,
        11 => RawDtype::F64,
        16 => RawDtype::BF16,
        _ => {
            const NAMES: [&str; 29] = [
                "UNDEFINED",
                "FLOAT",
                "UINT8",
                "INT8",
                "UINT16",
                "INT16",
                "INT32",
                "INT64",
                "STRING",
                "BOOL",
                "FLOAT16",
                "DOUBLE",
                "UINT32",
                "UINT64",
                "COMPLEX64",
                "COMPLEX128",
                "BFLOAT16",
                "FLOAT8E4M3FN",
                "FLOAT8E4M3FNUZ",
                "FLOAT8E5M2",
                "FLOAT8E5M2FNUZ",
                "UINT4",
                "INT4",
                "FLOAT4E2M1",
                "FLOAT8E8M0",
                "UINT2",
                "INT2",
                "FLOAT6E2M3",
                "FLOAT6E3M2",
            ];
            let name = usize::try_from(code)
                .ok()
                .and_then(|i| NAMES.get(i))
                .unwrap_or(&"unknown");
            return Err(format!("data_type {code} ({name}) is not supported"));
        }
    })
}

/// Converts `int32_data` values to `dtype`'s little-endian bytes, range-checked.
fn from_int32(vals: &[i32], dtype: RawDtype) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(vals.len() * dtype.size());
    for &v in vals {
        let bad = || format!("int32_data value {v} does not fit {dtype:?}");
        match dtype {
            RawDtype::I32 => out.extend_from_slice(&v.to_le_bytes()),
            RawDtype::I16 => {
                out.extend_from_slice(&i16::try_from(v).map_err(|_| bad())?.to_le_bytes())
            }
            RawDtype::I8 => {
                out.extend_from_slice(&i8::try_from(v).map_err(|_| bad())?.to_le_bytes())
            }
            RawDtype::U8 => out.push(u8::try_from(v).map_err(|_| bad())?),
            RawDtype::Bool if v == 0 || v == 1 => out.push(v as u8),
            // float16 / bfloat16: the 16-bit pattern, zero-extended.
            RawDtype::F16 | RawDtype::BF16 => {
                out.extend_from_slice(&u16::try_from(v).map_err(|_| bad())?.to_le_bytes())
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// Reader state: paths, allocation budget, names seen and tensors decoded so far.
struct Ctx<'p> {
    path: &'p Path,
    dir: &'p Path,
    budget: u64,
    seen_files: HashSet<PathBuf>,
    names: HashSet<String>,
    out: Vec<RawTensor>,
}

impl Ctx<'_> {
    fn proto(&self, (offset, msg): PbErr, context: &str) -> OnnxError {
        OnnxError::Proto {
            path: self.path.into(),
            offset,
            context: context.into(),
            msg,
        }
    }

    fn tensor_err(&self, tensor: &str, msg: impl Into<String>) -> OnnxError {
        OnnxError::Tensor {
            path: self.path.into(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }

    fn graph(&mut self, graph: &[u8], base: usize) -> Result<(), OnnxError> {
        let mut r = Pb::new(graph, base);
        let mut index = 0;
        while let Some((field, v)) = r.next().map_err(|e| self.proto(e, "GraphProto"))? {
            let context = || format!("GraphProto.initializer[{index}]");
            match field {
                5 => {
                    let (b, at) = v.bytes(&r).map_err(|e| self.proto(e, &context()))?;
                    let fields = parse_tensor(b, at).map_err(|e| self.proto(e, &context()))?;
                    let tensor = self.convert(fields, index)?;
                    self.out.push(tensor);
                    index += 1;
                }
                15 => {
                    return Err(self.tensor_err(
                        "(sparse_initializer)",
                        "sparse initializers are not supported",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn convert(&mut self, t: TensorFields, index: usize) -> Result<RawTensor, OnnxError> {
        let name = t.name.clone().unwrap_or_else(|| format!("#{index}"));
        let path = self.path;
        let err = |msg: String| OnnxError::Tensor {
            path: path.into(),
            tensor: name.clone(),
            msg,
        };
        if !self.names.insert(name.clone()) {
            return Err(err("duplicate initializer name".into()));
        }
        if t.segment {
            return Err(err("segmented tensors are not supported".into()));
        }
        let dtype = dtype(t.data_type).map_err(err)?;
        let mut shape = Vec::with_capacity(t.dims.len());
        for &d in &t.dims {
            shape.push(
                usize::try_from(d)
                    .map_err(|_| err(format!("negative dimension in {:?}", t.dims)))?,
            );
        }
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let nbytes = numel.and_then(|n| n.checked_mul(dtype.size()));
        let nbytes = nbytes.ok_or_else(|| err(format!("dims {:?} overflow", t.dims)))?;
        if t.location == 1 {
            let data = self.external(&name, &t.external, nbytes)?;
            return Ok(RawTensor {
                name,
                dtype,
                shape,
                data,
            });
        }
        if nbytes as u64 > self.budget {
            return Err(err("decoded tensors exceed the allocation budget".into()));
        }
        self.budget -= nbytes as u64;
        let data = if nbytes == 0 {
            Vec::new()
        } else if let Some(raw) = t.raw {
            if raw.len() != nbytes {
                return Err(err(format!(
                    "raw_data has {} bytes, dims {:?} need {nbytes}",
                    raw.len(),
                    t.dims
                )));
            }
            raw.to_vec()
        } else {
            let (data, field) = match dtype {
                RawDtype::F32 => (t.floats, "float_data"),
                RawDtype::F64 => (t.doubles, "double_data"),
                RawDtype::I64 => (
                    t.int64.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    "int64_data",
                ),
                _ => (from_int32(&t.int32, dtype).map_err(err)?, "int32_data"),
            };
            if data.len() != nbytes {
                let have = data.len() / dtype.size();
                return Err(err(format!(
                    "{field} has {have} values, dims {:?} need {}",
                    t.dims,
                    nbytes / dtype.size()
                )));
            }
            data
        };
        Ok(RawTensor {
            name,
            dtype,
            shape,
            data,
        })
    }

    fn external(
        &mut self,
        tensor: &str,
        entries: &[(String, String)],
        nbytes: usize,
    ) -> Result<Vec<u8>, OnnxError> {
        let map: HashMap<&str, &str> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let location = map.get("location").copied().unwrap_or("");
        let err = |msg: String| OnnxError::ExternalData {
            path: self.path.into(),
            tensor: tensor.into(),
            location: location.into(),
            msg,
        };
        let number = |key: &str| -> Result<Option<u64>, OnnxError> {
            map.get(key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| err(format!("{key} {v:?} is not a number")))
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        let length = number("length")?;
        let rel = Path::new(location);
        let escapes = location.is_empty()
            || location.contains('\0')
            || location.split(['/', '\\']).any(|c| c == "..")
            || location.starts_with(['/', '\\'])
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            return Err(err(
                "location must be a relative path inside the model's directory".into(),
            ));
        }
        let full = self.dir.join(rel);
        let io = |e: std::io::Error| err(format!("{}: {e}", full.display()));
        let meta = std::fs::metadata(&full).map_err(io)?;
        if !meta.is_file() {
            return Err(err(format!("{} is not a regular file", full.display())));
        }
        let size = meta.len();
        let length = length.unwrap_or(nbytes as u64);
        if length != nbytes as u64 {
            return Err(err(format!(
                "length {length} but the tensor's dims need {nbytes} bytes"
            )));
        }
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(err(format!(
                "offset {offset} + length {length} is past the end of the {size}-byte file"
            )));
        }
        if self.seen_files.insert(full.clone()) {
            self.budget = self.budget.saturating_add(size.saturating_mul(2));
        }
        if length > self.budget {
            return Err(err("decoded tensors exceed the allocation budget".into()));
        }
        self.budget -= length;
        let mut file = File::open(&full).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut data = vec![0u8; nbytes];
        file.read_exact(&mut data).map_err(io)?;
        Ok(data)
    }
}
