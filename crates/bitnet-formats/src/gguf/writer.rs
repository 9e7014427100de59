//! The GGUF writer (version 3, little-endian).

use super::types::{GgmlType, MetaValue};
use super::{GgufError, DEFAULT_ALIGNMENT};
use std::io::Write;
use std::path::Path;

/// Collects metadata and tensors, then writes a GGUF file.
pub struct GgufWriter {
    alignment: usize,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty file with the default alignment.
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Adds (or replaces) a metadata key. `general.alignment` also sets the alignment.
    pub fn set(&mut self, key: &str, value: MetaValue) {
        if key == "general.alignment" {
            if let Some(a) = value.as_u64().filter(|a| a.is_power_of_two()) {
                self.alignment = a as usize;
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Adds a tensor; `dims` are GGML order (ne0 = row length first). Checks the byte count.
    pub fn add_tensor(
        &mut self,
        name: &str,
        t: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<(), GgufError> {
        let n: u64 = dims.iter().product();
        let want = t.nbytes(n);
        if want != Some(data.len())
            || (t != GgmlType::I2S && !dims[0].is_multiple_of(t.block_size() as u64))
        {
            return Err(GgufError::Invalid {
                path: name.into(),
                message: format!(
                    "tensor `{name}`: {} bytes for {} values of {} (expected {want:?})",
                    data.len(),
                    n,
                    t.name()
                ),
            });
        }
        if self.tensors.iter().any(|x| x.0 == name) {
            return Err(GgufError::Duplicate {
                path: name.into(),
                what: "tensor",
                name: name.to_string(),
            });
        }
        self.tensors
            .push((name.to_string(), t, dims.to_vec(), data));
        Ok(())
    }

    /// Writes the file (to a temporary name, then renamed into place).
    pub fn write(&self, path: &Path) -> Result<(), GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("gguf.partial");
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        let a = self.alignment as u64;
        for (name, t, dims, data) in &self.tensors {
            put_str(&mut head, name);
            head.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + data.len() as u64).div_ceil(a) * a;
        }
        let pad = head.len().div_ceil(self.alignment) * self.alignment - head.len();
        head.resize(head.len() + pad, 0);
        w.write_all(&head).map_err(io)?;
        for (_, _, _, data) in &self.tensors {
            w.write_all(data).map_err(io)?;
            let pad = (data.len() as u64).div_ceil(a) * a - data.len() as u64;
            w.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        }
        w.flush().map_err(io)?;
        drop(w);
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => b.push(*x),
        MetaValue::I8(x) => b.push(*x as u8),
        MetaValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => b.push(*x as u8),
        MetaValue::String(s) => put_str(b, s),
        MetaValue::Array(t, items) => {
            b.extend_from_slice(&(*t as u32).to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(b, i);
            }
        }
        MetaValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}
