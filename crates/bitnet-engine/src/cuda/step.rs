//! One forward step on the GPU: buffers ([`DevState`]), per-sequence KV caches ([`DevCache`]),
//! the kernel sequence, and CUDA graphs for decode-sized steps.

use super::{CudaRunner, DevHead, DevTernary};
use crate::error::{Error, Result};
use crate::forward::{KvCache, RunState};
use crate::model::Model;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use std::collections::HashMap;

/// Steps of at most this many tokens are captured once per (tokens, logit rows) shape and
/// replayed as a CUDA graph (one launch instead of ~11 per layer).
const GRAPH_MAX_TOKENS: usize = 64;

/// Warps per attention block (passed to kernels.cu as `-DATT_WARPS`).
pub(crate) const ATT_WARPS: u32 = 8;

/// What one [`CudaRunner::step`] runs: token `t` of sequence `caches[slots[t].0]` at position
/// `slots[t].1`, and the token rows whose logits are wanted.
pub(crate) struct StepRequest<'a> {
    pub tokens: &'a [u32],
    pub slots: &'a [(usize, usize)],
    pub logit_rows: &'a [usize],
}

/// One sequence's keys and values on the device, `[layer][kv_head][capacity][head_dim]` in
/// the runner's KV precision (bytes here: the kernels address them by element).
pub(crate) struct DevCache {
    k: CudaSlice<u8>,
    v: CudaSlice<u8>,
    capacity: usize,
}

/// A captured step. CUDA graph executables may be launched from any thread (the context is
/// bound before each launch); cudarc only lacks the marker.
struct Graph(CudaGraph);
// SAFETY: a CUgraphExec is a driver handle without thread affinity; `CudaGraph::launch` binds
// the context to the calling thread first, and `DevState` is never used by two threads at once
// (it lives in a `&mut RunState`).
unsafe impl Send for Graph {}

/// Device buffers for steps of up to `max_batch` tokens.
pub(crate) struct DevState {
    max_batch: usize,
    x: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    att: CudaSlice<f32>,
    gu: CudaSlice<f32>,
    g: CudaSlice<f32>,
    q8: CudaSlice<i8>,
    sx: CudaSlice<f32>,
    sumx: CudaSlice<i32>,
    xn: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    info: CudaSlice<u64>,
    rows: CudaSlice<i32>,
    host_info: Vec<u64>,
    host_rows: Vec<i32>,
    graphs: HashMap<(usize, usize), Graph>,
    graphs_failed: bool,
}

fn dev_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Device(format!("cuda: {what}: {e}"))
}

fn grid(x: usize, y: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x.max(1) as u32, y.max(1) as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaRunner {
    fn new_state(&self, model: &Model, max_batch: usize) -> Result<DevState> {
        let c = &model.config;
        let b = max_batch.max(1);
        let (h, qd, kvd, inter) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let kp = [h, qd, inter]
            .iter()
            .map(|&k| 16 * crate::cuda_layout::words(k))
            .max();
        let s = &self.stream;
        let z = "allocating step buffers";
        Ok(DevState {
            max_batch: b,
            x: s.alloc_zeros(b * h).map_err(dev_err(z))?,
            qkv: s.alloc_zeros(b * (qd + 2 * kvd)).map_err(dev_err(z))?,
            att: s.alloc_zeros(b * qd).map_err(dev_err(z))?,
            gu: s.alloc_zeros(b * 2 * inter).map_err(dev_err(z))?,
            g: s.alloc_zeros(b * inter).map_err(dev_err(z))?,
            q8: s.alloc_zeros(b * kp.unwrap_or(16)).map_err(dev_err(z))?,
            sx: s.alloc_zeros(b).map_err(dev_err(z))?,
            sumx: s.alloc_zeros(b).map_err(dev_err(z))?,
            xn: s.alloc_zeros(b * h).map_err(dev_err(z))?,
            logits: s.alloc_zeros(b * c.vocab_size).map_err(dev_err(z))?,
            info: s.alloc_zeros(3 * b).map_err(dev_err(z))?,
            rows: s.alloc_zeros(b).map_err(dev_err(z))?,
            host_info: Vec::with_capacity(3 * b),
            host_rows: Vec::with_capacity(b),
            graphs: HashMap::new(),
            graphs_failed: false,
        })
    }

    /// Makes `cache`'s device storage hold `cache.capacity()` positions (allocating it, or
    /// growing it with its contents kept).
    fn ensure_cache(&self, model: &Model, cache: &mut KvCache) -> Result<()> {
        let c = &model.config;
        let cap = cache.capacity();
        if cache.dev.as_ref().is_some_and(|d| d.capacity >= cap) {
            return Ok(());
        }
        // Bytes per position of one (layer, kv head).
        let (blocks, row) = (
            c.num_hidden_layers * c.num_key_value_heads,
            c.head_dim * self.kv_bytes,
        );
        let s = &self.stream;
        let z = "allocating a KV cache";
        let mut k = s
            .alloc_zeros::<u8>(blocks * cap * row)
            .map_err(dev_err(z))?;
        let mut v = s
            .alloc_zeros::<u8>(blocks * cap * row)
            .map_err(dev_err(z))?;
        if let Some(old) = cache.dev.take() {
            let keep = old.capacity * row;
            for b in 0..blocks {
                let (src, dst) = (
                    b * keep..(b + 1) * keep,
                    b * cap * row..b * cap * row + keep,
                );
                s.memcpy_dtod(&old.k.slice(src.clone()), &mut k.slice_mut(dst.clone()))
                    .map_err(dev_err("growing a KV cache"))?;
                s.memcpy_dtod(&old.v.slice(src), &mut v.slice_mut(dst))
                    .map_err(dev_err("growing a KV cache"))?;
            }
        }
        cache.dev = Some(DevCache {
            k,
            v,
            capacity: cap,
        });
        Ok(())
    }

    /// Runs `req` and writes the logits of its `logit_rows` to `out` (`rows × vocab`). The
    /// caller has validated ids, positions and `tokens.len() ≤ state.max_batch()`.
    pub(crate) fn step(
        &self,
        model: &Model,
        req: StepRequest<'_>,
        caches: &mut [&mut KvCache],
        state: &mut RunState,
        out: &mut [f32],
    ) -> Result<()> {
        let StepRequest {
            tokens,
            slots,
            logit_rows,
        } = req;
        let c = &model.config;
        let (n, m, h, vocab) = (tokens.len(), logit_rows.len(), c.hidden_size, c.vocab_size);
        if state
            .dev
            .as_ref()
            .is_none_or(|d| d.max_batch < state.max_batch())
        {
            state.dev = Some(self.new_state(model, state.max_batch())?);
        }
        for cache in caches.iter_mut() {
            self.ensure_cache(model, cache)?;
        }
        // Embedding rows on the host (a copy of n rows), then one upload.
        for (t, &id) in tokens.iter().enumerate() {
            model
                .embed
                .row_to_f32(id as usize, &mut state.x[t * h..(t + 1) * h]);
        }
        let ds = state.dev.as_mut().expect("allocated above");
        ds.host_info.clear();
        for &(si, pos) in slots {
            let dc = caches[si].dev.as_ref().expect("ensured above");
            let (kp, _) = dc.k.device_ptr(&self.stream);
            let (vp, _) = dc.v.device_ptr(&self.stream);
            ds.host_info
                .extend([kp, vp, pos as u64 | ((dc.capacity as u64) << 32)]);
        }
        ds.host_rows.clear();
        ds.host_rows.extend(logit_rows.iter().map(|&r| r as i32));
        let s = &self.stream;
        let z = "uploading step inputs";
        s.memcpy_htod(&state.x[..n * h], &mut ds.x.slice_mut(..n * h))
            .map_err(dev_err(z))?;
        s.memcpy_htod(&ds.host_info[..], &mut ds.info.slice_mut(..3 * n))
            .map_err(dev_err(z))?;
        if m > 0 {
            s.memcpy_htod(&ds.host_rows[..], &mut ds.rows.slice_mut(..m))
                .map_err(dev_err(z))?;
        }
        if self.graphs && !ds.graphs_failed && n <= GRAPH_MAX_TOKENS {
            self.launch_graph(model, ds, n, m)?;
        } else {
            self.launch_all(model, ds, n, m)?;
        }
        if m > 0 {
            s.memcpy_dtoh(&ds.logits.slice(..m * vocab), &mut out[..m * vocab])
                .map_err(dev_err("reading logits"))?;
        }
        s.synchronize().map_err(dev_err("running a step"))?;
        for &(si, pos) in slots {
            let cache = &mut *caches[si];
            cache.len = cache.len.max(pos + 1);
        }
        Ok(())
    }

    /// Replays the captured graph of this step shape, capturing it first if needed. A capture
    /// failure turns graphs off for this state (logged once) and runs the kernels directly.
    fn launch_graph(&self, model: &Model, ds: &mut DevState, n: usize, m: usize) -> Result<()> {
        if let Some(g) = ds.graphs.get(&(n, m)) {
            return g.0.launch().map_err(dev_err("launching a graph"));
        }
        let s = &self.stream;
        let captured = s
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let launched = self.launch_all(model, ds, n, m).map_err(|e| e.to_string());
                let graph = s
                    .end_capture(CUgraphInstantiate_flags(0))
                    .map_err(|e| e.to_string());
                launched?;
                graph?.ok_or_else(|| "the capture recorded nothing".to_string())
            });
        match captured {
            Ok(g) => {
                g.launch().map_err(dev_err("launching a graph"))?;
                ds.graphs.insert((n, m), Graph(g));
                Ok(())
            }
            Err(e) => {
                tracing::warn!("CUDA graph capture failed ({e}); launching kernels directly");
                ds.graphs_failed = true;
                self.launch_all(model, ds, n, m)
            }
        }
    }

    /// The kernel sequence of one step: every layer, then the final norm and head for the
    /// `m` wanted rows.
    fn launch_all(&self, model: &Model, ds: &mut DevState, n: usize, m: usize) -> Result<()> {
        let c = &model.config;
        let k = &self.k;
        let s = &self.stream;
        let i = |v: usize| v as i32;
        let (h, qd, inter) = (c.hidden_size, c.q_dim(), c.intermediate_size);
        let (heads, n_kv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (ni, eps, scale) = (i(n), c.rms_norm_eps, (hd as f32).powf(-0.5));
        let e = dev_err("launching a kernel");
        // SAFETY (every launch below): the arguments match the kernel's parameter list in
        // kernels.cu in number, order and type (device buffers as pointers, i32/f32 scalars);
        // buffers hold `max_batch ≥ n` tokens; grid sizes are what each kernel indexes by.
        let norm_quant = |x: &CudaSlice<f32>,
                          w: &CudaSlice<f32>,
                          width: usize,
                          ds_q8: &mut CudaSlice<i8>,
                          sx: &mut CudaSlice<f32>,
                          sumx: &mut CudaSlice<i32>| {
            let (kk, kp) = (i(width), i(16 * crate::cuda_layout::words(width)));
            unsafe {
                s.launch_builder(&k.rmsnorm_quant)
                    .arg(x)
                    .arg(w)
                    .arg(&eps)
                    .arg(&kk)
                    .arg(&kp)
                    .arg(ds_q8)
                    .arg(sx)
                    .arg(sumx)
                    .launch(grid(n, 1, 256))
            }
            .map(|_| ())
            .map_err(&e)
        };
        let gemm = |w: &DevTernary,
                    q8: &CudaSlice<i8>,
                    sx: &CudaSlice<f32>,
                    sumx: &CudaSlice<i32>,
                    out: &mut CudaSlice<f32>,
                    acc: i32| {
            let (rows, words) = (i(w.rows), i(w.words));
            unsafe {
                s.launch_builder(&k.ternary_gemm)
                    .arg(&w.w)
                    .arg(&w.scale)
                    .arg(q8)
                    .arg(sx)
                    .arg(sumx)
                    .arg(out)
                    .arg(&rows)
                    .arg(&words)
                    .arg(&ni)
                    .arg(&acc)
                    .launch(grid(w.rows.div_ceil(8), n.div_ceil(8), 256))
            }
            .map(|_| ())
            .map_err(&e)
        };
        let (hi, kvi, hdi) = (i(heads), i(n_kv), i(hd));
        let relu2 = i32::from(self.relu2);
        let inter_i = i(inter);
        for (li, l) in self.layers.iter().enumerate() {
            let lii = i(li);
            norm_quant(
                &ds.x,
                &l.input_norm,
                h,
                &mut ds.q8,
                &mut ds.sx,
                &mut ds.sumx,
            )?;
            gemm(&l.qkv, &ds.q8, &ds.sx, &ds.sumx, &mut ds.qkv, 0)?;
            unsafe {
                s.launch_builder(&k.rope_store)
                    .arg(&mut ds.qkv)
                    .arg(&self.cos)
                    .arg(&self.sin)
                    .arg(&ds.info)
                    .arg(&lii)
                    .arg(&hi)
                    .arg(&kvi)
                    .arg(&hdi)
                    .launch(grid(n, 1, 256))
            }
            .map_err(&e)?;
            unsafe {
                s.launch_builder(&k.attention)
                    .arg(&ds.qkv)
                    .arg(&ds.info)
                    .arg(&mut ds.att)
                    .arg(&lii)
                    .arg(&hi)
                    .arg(&kvi)
                    .arg(&hdi)
                    .arg(&scale)
                    .launch(grid(heads, n, 32 * ATT_WARPS))
            }
            .map_err(&e)?;
            norm_quant(
                &ds.att,
                &l.attn_sub_norm,
                qd,
                &mut ds.q8,
                &mut ds.sx,
                &mut ds.sumx,
            )?;
            gemm(&l.o, &ds.q8, &ds.sx, &ds.sumx, &mut ds.x, 1)?;
            norm_quant(&ds.x, &l.post_norm, h, &mut ds.q8, &mut ds.sx, &mut ds.sumx)?;
            gemm(&l.gate_up, &ds.q8, &ds.sx, &ds.sumx, &mut ds.gu, 0)?;
            unsafe {
                s.launch_builder(&k.act_mul)
                    .arg(&ds.gu)
                    .arg(&mut ds.g)
                    .arg(&inter_i)
                    .arg(&ni)
                    .arg(&relu2)
                    .launch(grid((n * inter).div_ceil(256), 1, 256))
            }
            .map_err(&e)?;
            norm_quant(
                &ds.g,
                &l.ffn_sub_norm,
                inter,
                &mut ds.q8,
                &mut ds.sx,
                &mut ds.sumx,
            )?;
            gemm(&l.down, &ds.q8, &ds.sx, &ds.sumx, &mut ds.x, 1)?;
        }
        if m == 0 {
            return Ok(());
        }
        let (hh, mi, vocab) = (i(h), i(m), c.vocab_size);
        unsafe {
            s.launch_builder(&k.rmsnorm_rows)
                .arg(&ds.x)
                .arg(&ds.rows)
                .arg(&self.norm)
                .arg(&eps)
                .arg(&hh)
                .arg(&mut ds.xn)
                .launch(grid(m, 1, 256))
        }
        .map_err(&e)?;
        let vi = i(vocab);
        let cfg = grid(vocab.div_ceil(8), 1, 256);
        let mut b = match &self.head {
            DevHead::F32(w) => {
                let mut b = s.launch_builder(&k.head_f32);
                b.arg(w);
                b
            }
            DevHead::F16(w) => {
                let mut b = s.launch_builder(&k.head_f16);
                b.arg(w);
                b
            }
            DevHead::Bf16(w) => {
                let mut b = s.launch_builder(&k.head_bf16);
                b.arg(w);
                b
            }
            DevHead::Q6K(w) => {
                let mut b = s.launch_builder(&k.head_q6k);
                b.arg(w);
                b
            }
        };
        b.arg(&ds.xn).arg(&mut ds.logits).arg(&vi).arg(&hh).arg(&mi);
        unsafe { b.launch(cfg) }.map_err(&e)?;
        Ok(())
    }
}
