//! The CUDA backend (feature `cuda`): the whole forward pass on an NVIDIA GPU.
//!
//! cudarc loads the driver (`libcuda.so`) and NVRTC (`libnvrtc.so`) at run time, so building
//! needs no CUDA toolkit. At [`CudaRunner::new`] the kernels of `kernels.cu` are compiled for
//! the device's compute capability and the weights are uploaded once: ternary projections in
//! the dp4a layout of [`crate::cuda_layout`] (q|k|v and gate|up fused into one matrix each,
//! with a scale per row), norms in f32, the output head in its stored type (F32/F16/BF16, and
//! Q6_K read in place; Q8_0/Q4_K heads are expanded to f32 once, exactly). Per step the host only looks up the embedding
//! rows and uploads them with a small token table (cache addresses and positions); every layer
//! then runs as 11 kernel launches on one stream, replayed from a CUDA graph for decode-sized
//! steps, and the wanted logits come back.

mod step;

pub(crate) use step::{DevCache, DevState, StepRequest};

use crate::config::Activation;
use crate::cuda_layout::{pack_rows, words};
use crate::model::Model;
use bitnet_kernels::{DenseData, TernaryMatrix};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use rayon::prelude::*;
use std::sync::Arc;

/// The kernels' source (compiled at run time by NVRTC).
pub const KERNELS_CU: &str = include_str!("kernels.cu");

/// A ternary matrix in the GPU layout.
pub(crate) struct DevTernary {
    pub w: CudaSlice<u32>,
    pub scale: CudaSlice<f32>,
    pub rows: usize,
    pub words: usize,
}

/// One transformer block's weights on the device.
pub(crate) struct DevLayer {
    pub input_norm: CudaSlice<f32>,
    pub qkv: DevTernary,
    pub attn_sub_norm: CudaSlice<f32>,
    pub o: DevTernary,
    pub post_norm: CudaSlice<f32>,
    pub gate_up: DevTernary,
    pub ffn_sub_norm: CudaSlice<f32>,
    pub down: DevTernary,
}

/// The output head in its stored float type.
pub(crate) enum DevHead {
    F32(CudaSlice<f32>),
    F16(CudaSlice<u16>),
    Bf16(CudaSlice<u16>),
    /// GGUF Q6_K blocks, read in place.
    Q6K(CudaSlice<u8>),
}

/// The compiled kernels.
pub(crate) struct Kernels {
    pub rmsnorm_quant: CudaFunction,
    pub rmsnorm_rows: CudaFunction,
    pub ternary_gemm: CudaFunction,
    pub rope_store: CudaFunction,
    pub attention: CudaFunction,
    pub act_mul: CudaFunction,
    pub head_f32: CudaFunction,
    pub head_f16: CudaFunction,
    pub head_bf16: CudaFunction,
    pub head_q6k: CudaFunction,
}

/// A model's weights on one GPU, its compiled kernels and its stream.
pub struct CudaRunner {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) k: Kernels,
    pub(crate) layers: Vec<DevLayer>,
    pub(crate) norm: CudaSlice<f32>,
    pub(crate) head: DevHead,
    pub(crate) cos: CudaSlice<f32>,
    pub(crate) sin: CudaSlice<f32>,
    pub(crate) relu2: bool,
    pub(crate) graphs: bool,
    /// Bytes per KV-cache element: 4 (f32, the default) or 2 (f16, `BITNET_CUDA_KV=f16`).
    pub(crate) kv_bytes: usize,
    description: String,
}

/// Formats a driver/compiler error with what was being done.
pub(crate) fn ctx_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

impl CudaRunner {
    /// Opens device `ordinal`, compiles the kernels and uploads the model. The error says why
    /// the GPU cannot be used (no driver, no device, no NVRTC, an unsupported shape, …).
    pub fn new(model: &Model, ordinal: usize) -> Result<Self, String> {
        let c = &model.config;
        if !c.head_dim.is_multiple_of(2) || c.head_dim > 256 {
            return Err(format!(
                "head_dim {} is not supported by the CUDA kernels (even, at most 256)",
                c.head_dim
            ));
        }
        // SAFETY: only tries to dlopen the driver library (no symbol is called).
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver found (libcuda.so could not be loaded)".into());
        }
        // SAFETY: as above, for NVRTC.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(
                "the CUDA driver is present but NVRTC (libnvrtc.so) is not on the library \
                 path; it compiles the kernels at load"
                    .into(),
            );
        }
        let count = CudaContext::device_count().map_err(ctx_err("counting CUDA devices"))?;
        if count <= 0 {
            return Err("the CUDA driver reports no device".into());
        }
        if ordinal >= count as usize {
            return Err(format!("no CUDA device {ordinal} ({count} present)"));
        }
        let ctx = CudaContext::new(ordinal).map_err(ctx_err("creating the CUDA context"))?;
        // One stream, used in order: no cross-stream events (they would also get in the way
        // of graph capture).
        // SAFETY: every buffer of this runner is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(ctx_err("creating a stream"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(ctx_err("reading the compute capability"))?;
        let kv_f16 = match std::env::var("BITNET_CUDA_KV").as_deref() {
            Err(_) | Ok("f32") => false,
            Ok("f16") => true,
            Ok(other) => return Err(format!("BITNET_CUDA_KV={other:?}: expected f32 or f16")),
        };
        let k = compile(&ctx, major, minor, kv_f16)?;

        let up = |v: &[f32]| stream.clone_htod(v).map_err(ctx_err("uploading weights"));
        let tern = |mats: &[&TernaryMatrix]| -> Result<DevTernary, String> {
            let (w, scale) = pack_rows(mats);
            Ok(DevTernary {
                words: words(mats[0].cols()),
                rows: scale.len(),
                w: stream
                    .clone_htod(&w)
                    .map_err(ctx_err("uploading weights"))?,
                scale: up(&scale)?,
            })
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            layers.push(DevLayer {
                input_norm: up(&l.input_norm)?,
                qkv: tern(&[&l.q, &l.k, &l.v])?,
                attn_sub_norm: up(&l.attn_sub_norm)?,
                o: tern(&[&l.o])?,
                post_norm: up(&l.post_norm)?,
                gate_up: tern(&[&l.gate, &l.up])?,
                ffn_sub_norm: up(&l.ffn_sub_norm)?,
                down: tern(&[&l.down])?,
            });
        }
        let hm = model.head();
        let head = match hm.data() {
            DenseData::F32(v) => DevHead::F32(up(v)?),
            DenseData::F16(v) => DevHead::F16(
                stream
                    .clone_htod(bytemuck::cast_slice::<_, u16>(v))
                    .map_err(ctx_err("uploading the output head"))?,
            ),
            DenseData::Bf16(v) => DevHead::Bf16(
                stream
                    .clone_htod(bytemuck::cast_slice::<_, u16>(v))
                    .map_err(ctx_err("uploading the output head"))?,
            ),
            DenseData::Q6K(v) => DevHead::Q6K(
                stream
                    .clone_htod(bytemuck::cast_slice::<_, u8>(v))
                    .map_err(ctx_err("uploading the output head"))?,
            ),
            // Reordered for the CPU's VNNI head at load: back to Q6_K's order (exact).
            DenseData::Q6KLanes(v) => {
                let q6k: Vec<bitnet_kernels::formats::BlockQ6K> =
                    v.par_iter().map(|b| b.to_q6k()).collect();
                DevHead::Q6K(
                    stream
                        .clone_htod(bytemuck::cast_slice::<_, u8>(&q6k))
                        .map_err(ctx_err("uploading the output head"))?,
                )
            }
            // Other block-quantized heads (GGUF Q8_0/Q4_K): expanded to f32 once, exactly.
            _ => {
                let cols = hm.cols();
                let mut f = vec![0f32; hm.rows() * cols];
                f.par_chunks_mut(cols.max(1))
                    .enumerate()
                    .for_each(|(r, row)| hm.row_to_f32(r, row));
                DevHead::F32(up(&f)?)
            }
        };
        let runner = CudaRunner {
            norm: up(&model.norm)?,
            cos: up(model.rope.cos())?,
            sin: up(model.rope.sin())?,
            relu2: c.hidden_act == Activation::Relu2,
            graphs: std::env::var("BITNET_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            kv_bytes: if kv_f16 { 2 } else { 4 },
            description: format!("cuda:{ordinal} ({name}, compute {major}.{minor})"),
            stream,
            k,
            layers,
            head,
        };
        runner
            .stream
            .synchronize()
            .map_err(ctx_err("uploading weights"))?;
        tracing::info!("model on {}", runner.description);
        Ok(runner)
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Option<(usize, usize)> {
        self.stream.context().mem_get_info().ok()
    }

    /// E.g. `cuda:0 (NVIDIA H200, compute 9.0)`.
    pub fn description(&self) -> &str {
        &self.description
    }
}

/// Compiles `kernels.cu` for the device (falling back to PTX for sm_80, which the driver
/// JIT-compiles forward, when this NVRTC does not know the device's architecture).
fn compile(
    ctx: &Arc<CudaContext>,
    major: i32,
    minor: i32,
    kv_f16: bool,
) -> Result<Kernels, String> {
    let opts = |arch: String| {
        let mut options = vec![
            format!("--gpu-architecture={arch}"),
            "-std=c++17".into(),
            format!("-DATT_WARPS={}", step::ATT_WARPS),
        ];
        if !kv_f16 {
            options.push("-DBITNET_KV_F32".into());
        }
        CompileOptions {
            // The CPU engine never fuses a multiply-add; neither do the kernels.
            fmad: Some(false),
            options,
            ..Default::default()
        }
    };
    let ptx = match compile_ptx_with_opts(KERNELS_CU, opts(format!("compute_{major}{minor}"))) {
        Ok(p) => p,
        Err(first) => {
            compile_ptx_with_opts(KERNELS_CU, opts("compute_80".into())).map_err(|_| {
                format!("NVRTC could not compile the kernels for compute_{major}{minor}: {first}")
            })?
        }
    };
    let module = ctx
        .load_module(ptx)
        .map_err(ctx_err("loading the compiled kernels"))?;
    let f = |name: &str| {
        module
            .load_function(name)
            .map_err(|e| format!("kernel {name}: {e}"))
    };
    Ok(Kernels {
        rmsnorm_quant: f("rmsnorm_quant")?,
        rmsnorm_rows: f("rmsnorm_rows")?,
        ternary_gemm: f("ternary_gemm")?,
        rope_store: f("rope_store")?,
        attention: f("attention")?,
        act_mul: f("act_mul")?,
        head_f32: f("head_f32")?,
        head_f16: f("head_f16")?,
        head_bf16: f("head_bf16")?,
        head_q6k: f("head_q6k")?,
    })
}
