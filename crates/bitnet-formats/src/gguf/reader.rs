//! The GGUF reader. Every count, length and offset is checked against the bytes that remain, so
//! a hostile file gives an error, never a panic or an allocation larger than the file.

use super::types::{GgmlType, MetaValue, MetaValueType};
use super::{GgufError, DEFAULT_ALIGNMENT};
use crate::bytes::Bytes;
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Caps beyond the file-size bounds (generous for real models: 2B-4T has 332 tensors and a
/// 128256-entry vocabulary).
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KV: u64 = 1 << 20;
const MAX_STRING: u64 = 1 << 26;
const MAX_ARRAY_DEPTH: usize = 2;
const MAX_DIMS: u32 = 4;

/// One tensor's header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Name.
    pub name: String,
    /// Dimensions, `ne0` (row length) first.
    pub dims: Vec<u64>,
    /// Type.
    pub ggml_type: GgmlType,
    /// Offset in the data section.
    pub offset: u64,
    /// Bytes of data.
    pub nbytes: usize,
}

impl TensorInfo {
    /// Number of values.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (`ne0`).
    pub fn ne0(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
    /// Rows (product of the other dimensions).
    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// An opened GGUF file: metadata and tensor infos parsed, data memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    bytes: Arc<Bytes>,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_start: usize,
    /// Data alignment.
    pub alignment: usize,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
            Some(e) => {
                let s = &self.b[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos,
                len: self.b.len(),
            }),
        }
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn u8(&mut self, w: &str) -> Result<u8, GgufError> {
        Ok(self.take(1, w)?[0])
    }
    fn u16(&mut self, w: &str) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(
            self.take(2, w)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, w: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(
            self.take(4, w)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, w: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(
            self.take(8, w)?.try_into().expect("8 bytes"),
        ))
    }
    fn invalid(&self, message: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.to_path_buf(),
            message,
        }
    }
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        if n > MAX_STRING || n as usize > self.remaining() {
            return Err(self.invalid(format!(
                "{what}: string length {n} at byte {} exceeds the {} bytes left",
                self.pos - 8,
                self.remaining()
            )));
        }
        let s = self.take(n as usize, what)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| self.invalid(format!("{what}: string is not valid UTF-8")))
    }
    fn value(&mut self, t: MetaValueType, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        use MetaValueType as T;
        Ok(match t {
            T::U8 => MetaValue::U8(self.u8(key)?),
            T::I8 => MetaValue::I8(self.u8(key)? as i8),
            T::U16 => MetaValue::U16(self.u16(key)?),
            T::I16 => MetaValue::I16(self.u16(key)? as i16),
            T::U32 => MetaValue::U32(self.u32(key)?),
            T::I32 => MetaValue::I32(self.u32(key)? as i32),
            T::F32 => MetaValue::F32(f32::from_bits(self.u32(key)?)),
            T::Bool => match self.u8(key)? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.invalid(format!("key `{key}`: bool byte {b} is not 0 or 1"))),
            },
            T::String => MetaValue::String(self.string(key)?),
            T::U64 => MetaValue::U64(self.u64(key)?),
            T::I64 => MetaValue::I64(self.u64(key)? as i64),
            T::F64 => MetaValue::F64(f64::from_bits(self.u64(key)?)),
            T::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(format!("key `{key}`: arrays nested too deeply")));
                }
                let et_id = self.u32(key)?;
                let et = MetaValueType::from_id(et_id).ok_or_else(|| {
                    self.invalid(format!("key `{key}`: unknown array element type {et_id}"))
                })?;
                let n = self.u64(key)?;
                let max = (self.remaining() / et.min_size()) as u64;
                if n > max {
                    return Err(self.invalid(format!(
                        "key `{key}`: array of {n} elements cannot fit in the {} bytes left",
                        self.remaining()
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, key, depth + 1)?);
                }
                MetaValue::Array(et, v)
            }
        })
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file (memory-mapped).
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: mapped read-only; we never write through it. A concurrent truncation of the
        // file by another process is outside the contract, as for every mmap-based loader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(Bytes::Mmap(mmap), path)
    }

    /// Parses a GGUF image held in memory (`path` names it in errors).
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, GgufError> {
        Self::parse(Bytes::Owned(bytes), path)
    }

    fn parse(bytes: Bytes, path: &Path) -> Result<Self, GgufError> {
        let mut c = Cursor {
            b: &bytes,
            pos: 0,
            path,
        };
        if c.take(4, "magic")? != b"GGUF" {
            return Err(c.invalid("not a GGUF file (magic is not \"GGUF\")".into()));
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            let hint = if version.swap_bytes() <= 3 {
                " (big-endian GGUF is not supported)"
            } else {
                ""
            };
            return Err(c.invalid(format!(
                "unsupported version {version}{hint}; supported: 2, 3"
            )));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_tensors > MAX_TENSORS || n_tensors as usize > c.remaining() / 24 {
            return Err(c.invalid(format!(
                "tensor count {n_tensors} is impossible for this file size"
            )));
        }
        if n_kv > MAX_KV || n_kv as usize > c.remaining() / 12 {
            return Err(c.invalid(format!(
                "metadata count {n_kv} is impossible for this file size"
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let t_id = c.u32(&key)?;
            let t = MetaValueType::from_id(t_id)
                .ok_or_else(|| c.invalid(format!("key `{key}`: unknown value type {t_id}")))?;
            let v = c.value(t, &key, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Duplicate {
                    path: path.to_path_buf(),
                    what: "metadata key",
                    name: key,
                });
            }
            metadata.push((key, v));
        }
        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 16 => a as usize,
                _ => {
                    return Err(c.invalid(format!(
                        "general.alignment {v:?} is not a power of two ≤ 65536"
                    )))
                }
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.invalid(format!(
                    "tensor `{name}`: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut numel: u64 = 1;
            for _ in 0..n_dims {
                let d = c.u64(&name)?;
                numel = numel
                    .checked_mul(d)
                    .filter(|&n| n <= 1 << 40)
                    .ok_or_else(|| c.invalid(format!("tensor `{name}`: dimensions overflow")))?;
                dims.push(d);
            }
            if numel == 0 {
                return Err(c.invalid(format!("tensor `{name}`: a dimension is zero")));
            }
            let id = c.u32(&name)?;
            let ggml_type = GgmlType::from_id(id).ok_or_else(|| GgufError::UnknownType {
                path: path.to_path_buf(),
                tensor: name.clone(),
                id,
                known: GgmlType::known(),
            })?;
            let block = ggml_type.block_size() as u64;
            let nbytes = if dims[0] % block != 0 && ggml_type != GgmlType::I2S {
                None
            } else {
                ggml_type.nbytes(numel)
            }
            .ok_or_else(|| {
                c.invalid(format!(
                    "tensor `{name}`: shape {dims:?} is not a whole number of {} blocks of {block}",
                    ggml_type.name()
                ))
            })?;
            let offset = c.u64(&name)?;
            if offset % alignment as u64 != 0 {
                return Err(c.invalid(format!(
                    "tensor `{name}`: offset {offset} is not aligned to {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Duplicate {
                    path: path.to_path_buf(),
                    what: "tensor",
                    name,
                });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                nbytes,
            });
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let len = bytes.len();
        for t in &tensors {
            let end = (data_start as u64)
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.nbytes as u64));
            if end.is_none_or(|e| e > len as u64) {
                return Err(GgufError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor `{}` ({} bytes of {} at data offset {}) lies outside the file ({} bytes)",
                        t.name,
                        t.nbytes,
                        t.ggml_type.name(),
                        t.offset,
                        len
                    ),
                });
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            bytes: Arc::new(bytes),
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            data_start,
            alignment,
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }
    /// A string value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }
    /// An integer value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }
    /// A numeric value.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }
    /// A tensor's header.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// The whole file, shareable: tensors can borrow from it without copying (see
    /// [`GgufFile::data_offset`]).
    pub fn shared(&self) -> Arc<dyn AsRef<[u8]> + Send + Sync> {
        self.bytes.clone()
    }
    /// Offset of a tensor's bytes from the start of the file.
    pub fn data_offset(&self, t: &TensorInfo) -> usize {
        self.data_start + t.offset as usize
    }
    /// A tensor's bytes (checked against the file length when the file was opened).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_start + t.offset as usize;
        &self.bytes[start..start + t.nbytes]
    }
    /// Drops a tensor's pages of the memory map from this process's resident memory, for a
    /// tensor that was converted into an owned layout (a repacked TQ2_0 projection): without
    /// this, the file's copy stays resident beside the converted one. The pages stay in the
    /// page cache, and a later read of [`GgufFile::data`] maps them in again, unchanged. Only
    /// whole pages inside the tensor are released; a file read into memory keeps its bytes.
    /// Returns the bytes released.
    #[cfg(unix)]
    pub fn release(&self, t: &TensorInfo) -> usize {
        const PAGE: usize = 4096;
        let Bytes::Mmap(m) = &*self.bytes else {
            return 0;
        };
        let start = self.data_offset(t);
        let (a, b) = (
            start.div_ceil(PAGE) * PAGE,
            (start + t.nbytes) / PAGE * PAGE,
        );
        if b <= a {
            return 0;
        }
        // SAFETY: `Mmap::map` maps the file read-only and shared (MAP_SHARED): MADV_DONTNEED
        // only unmaps this process's pages of the range, and the next access faults the file's
        // own, unchanged bytes back in, so every reference into the map keeps seeing the same
        // data. (On a system whose pages are larger than 4 KiB an unaligned range is refused,
        // and nothing is released.)
        match unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a) } {
            Ok(()) => b - a,
            Err(_) => 0,
        }
    }
    /// No memory-map advice off Unix: nothing is released.
    #[cfg(not(unix))]
    pub fn release(&self, _t: &TensorInfo) -> usize {
        0
    }
}
