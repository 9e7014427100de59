//! Memory-mapped safetensors checkpoints: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`.

use crate::error::{Error, Result};
use bitnet_formats::bytes::Bytes;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    mmap: Bytes,
    data_start: usize,
}

/// The tensors of a checkpoint directory, memory-mapped and validated.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: HashMap<String, (usize, TensorInfo)>,
}

/// A borrowed view of one tensor.
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// The file it lives in.
    pub path: &'a Path,
    /// Stored dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// Raw little-endian bytes.
    pub data: &'a [u8],
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let v = crate::config::read_json(&index)?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::MissingField {
                    path: index.clone(),
                    field: "weight_map".into(),
                })?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let f = file.as_str().ok_or_else(|| Error::InvalidField {
                    path: index.clone(),
                    field: format!("weight_map.{tensor}"),
                    message: "expected a file name".into(),
                })?;
                if f.contains('/') || f.contains('\\') || f == ".." {
                    return Err(Error::InvalidField {
                        path: index.clone(),
                        field: format!("weight_map.{tensor}"),
                        message: format!("shard name {f:?} must be a plain file name"),
                    });
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(Error::NotFound {
                path: single,
                what: "weights (model.safetensors or model.safetensors.index.json)",
            });
        };

        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = HashMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound {
                        path: path.clone(),
                        what: "safetensors shard",
                    }
                } else {
                    Error::io(&path, e)
                }
            })?;
            // SAFETY: the file is opened read-only and mapped privately; the engine never writes
            // through the map. Another process truncating it while mapped is outside our contract
            // (the same assumption every mmap-based loader makes).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let idx = shards.len();
            for (name, info) in meta.tensors() {
                if tensors.contains_key(&name) {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` appears in more than one shard"),
                    });
                }
                tensors.insert(name, (idx, info.clone()));
            }
            shards.push(Shard {
                path,
                mmap: Bytes::Mmap(mmap),
                data_start: 8 + n,
            });
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            shards,
            tensors,
        })
    }

    /// Tensors read from a PyTorch or ONNX file, under their parameter names, as a checkpoint
    /// (`file` names them in errors; `dir` is where `config.json` lives).
    pub fn from_raw(
        dir: &Path,
        file: &Path,
        raw: Vec<bitnet_formats::raw::RawTensor>,
    ) -> Result<Self> {
        use bitnet_formats::raw::RawDtype;
        let mut data = Vec::new();
        let mut tensors = HashMap::new();
        for t in raw {
            let dtype = match t.dtype {
                RawDtype::F32 => Dtype::F32,
                RawDtype::F16 => Dtype::F16,
                RawDtype::BF16 => Dtype::BF16,
                RawDtype::F64 => Dtype::F64,
                RawDtype::U8 => Dtype::U8,
                RawDtype::I8 => Dtype::I8,
                RawDtype::I16 => Dtype::I16,
                RawDtype::I32 => Dtype::I32,
                RawDtype::I64 => Dtype::I64,
                RawDtype::Bool => Dtype::BOOL,
            };
            let start = data.len();
            data.extend_from_slice(&t.data);
            let info = TensorInfo {
                dtype,
                shape: t.shape,
                data_offsets: (start, data.len()),
            };
            if tensors.insert(t.name.clone(), (0, info)).is_some() {
                return Err(Error::Safetensors {
                    path: file.to_path_buf(),
                    message: format!("duplicate tensor `{}`", t.name),
                });
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            shards: vec![Shard {
                path: file.to_path_buf(),
                mmap: Bytes::Owned(data),
                data_start: 0,
            }],
            tensors,
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// All tensor names with their dtype and shape (sorted by name).
    pub fn list(&self) -> Vec<(&str, Dtype, &[usize])> {
        let mut v: Vec<_> = self
            .tensors
            .iter()
            .map(|(n, (_, i))| (n.as_str(), i.dtype, i.shape.as_slice()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|(_, i)| i.data_offsets.1 - i.data_offsets.0)
            .sum()
    }

    /// Looks a tensor up.
    pub fn get(&self, name: &str) -> Result<TensorRef<'_>> {
        let (name_ref, (idx, info)) =
            self.tensors
                .get_key_value(name)
                .ok_or_else(|| Error::MissingTensor {
                    name: name.to_string(),
                    path: self.dir.clone(),
                })?;
        let shard = &self.shards[*idx];
        let (a, b) = info.data_offsets;
        Ok(TensorRef {
            name: name_ref,
            path: &shard.path,
            dtype: info.dtype,
            shape: &info.shape,
            data: &shard.mmap[shard.data_start + a..shard.data_start + b],
        })
    }
}

impl TensorRef<'_> {
    /// Errors unless the shape is `expected`.
    pub fn expect_shape(&self, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(Error::TensorShape {
                name: self.name.into(),
                path: self.path.into(),
                expected: expected.to_vec(),
                found: self.shape.to_vec(),
            });
        }
        Ok(())
    }

    /// A dtype error for this tensor.
    pub fn dtype_error(&self, expected: &str) -> Error {
        Error::TensorDtype {
            name: self.name.into(),
            path: self.path.into(),
            expected: expected.into(),
            found: format!("{:?}", self.dtype),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (from F32, BF16 or F16).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let d = self.data;
        Ok(match self.dtype {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => return Err(self.dtype_error("F32, BF16 or F16")),
        })
    }

    /// The single value of a `[1]` or `[]` float tensor (a `weight_scale`).
    pub fn scalar_f32(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::TensorShape {
                name: self.name.into(),
                path: self.path.into(),
                expected: vec![1],
                found: self.shape.to_vec(),
            });
        }
        Ok(self.to_f32()?[0])
    }
}
