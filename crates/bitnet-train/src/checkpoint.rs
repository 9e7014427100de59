//! Trainer checkpoints: a directory that is a runnable Hugging Face checkpoint with float master
//! weights (`config.json` with `quantization_mode: online`, `model.safetensors`, tokenizer files)
//! plus `optimizer.safetensors` (AdamW moments `m.NAME`, `v.NAME`) and `trainer_state.json`
//! (step, tokens seen, losses, the run's options), so `--resume` continues exactly.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

/// Writes f32 tensors to a safetensors file, atomically (a temporary file renamed into place).
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut bufs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        bufs.push((name.clone(), t.dims().to_vec(), bytes));
    }
    write_f32_bytes(path, &bufs)
}

/// Writes `(name, shape, little-endian f32 bytes)` as safetensors, atomically.
pub fn write_f32_bytes(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Checkpoint {
                    path: path.to_path_buf(),
                    message: format!("tensor {n}: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| Error::Checkpoint {
        path: tmp.clone(),
        message: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A tensor read back: name, shape, values.
pub type NamedF32 = (String, Vec<usize>, Vec<f32>);

/// Reads every tensor of a safetensors file as `(name, shape, f32 values)`.
pub fn read_f32(path: &Path) -> Result<Vec<NamedF32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!("tensor {name} is {:?}, expected F32", view.dtype()),
            });
        }
        let v = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push((name, view.shape().to_vec(), v));
    }
    Ok(out)
}
