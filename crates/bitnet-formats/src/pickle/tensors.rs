//! Turning the unpickled object tree into tensors: picking and flattening the state dict, then
//! copying every (possibly strided) view out of its storage entry.

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::Path;

use crate::raw::{RawDtype, RawTensor};

use super::globals::{StorageKind, TorchDtype};
use super::unpickler::{Id, Obj, TensorRef, Unpickler};
use super::{read_entry, structure_err, PickleError, MAX_DEPTH, MAX_NAME_BYTES, WRAPPER_KEYS};

impl Unpickler<'_> {
    /// Picks the state dict (see module docs) and flattens it into named tensor ids, charging
    /// the names to `budget`.
    pub(super) fn collect(
        &self,
        root: Id,
        budget: &mut u64,
    ) -> Result<Vec<(String, Id)>, PickleError> {
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
pub(super) fn materialize<R: Read + Seek>(
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
    if !storage.len().is_multiple_of(elem) {
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
