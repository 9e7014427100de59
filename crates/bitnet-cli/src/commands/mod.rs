//! One module per subcommand, plus the options they share.

pub mod admin;
pub mod batch;
pub mod bench;
pub mod chat;
pub mod compare;
pub mod convert;
pub mod create_model;
pub mod generate;
pub mod inspect;
pub mod loadtest;
pub mod logits;
pub mod perplexity;
pub mod serve;
pub mod train;

use anyhow::{Context, Result};
use bitnet_engine::{Model, SamplingParams, Tokenizer};
use std::path::Path;
use std::time::Instant;

/// Sampling flags shared by `generate` and `chat`; unset flags take the model's
/// `generation_config.json` defaults (greedy when it has none).
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 = greedy.
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Sample from the K most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling: smallest set with probability ≥ P (1 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Repetition penalty over prompt and output (1 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,
    /// RNG seed: the same seed gives the same text.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// Flags over the model's defaults, validated.
    pub fn resolve(&self, model_dir: &Path) -> Result<SamplingParams> {
        let mut p =
            SamplingParams::from_generation_config(&model_dir.join("generation_config.json"))?;
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.repeat_penalty {
            p.repeat_penalty = v;
        }
        p.seed = self.seed;
        p.validate()?;
        Ok(p)
    }
}

/// The small model that ships with the repository (trained by `bitnet train` on the King James
/// Bible; see `models/README.md`), used by `generate` and `chat` when no `--model` is given.
pub const BUNDLED_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/kjv-bitnet");

/// `--model` if given, else the bundled model (with an error saying where it was looked for).
pub fn model_or_bundled(model: Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    if let Some(m) = model {
        return Ok(m);
    }
    let p = std::path::PathBuf::from(BUNDLED_MODEL);
    if p.join("config.json").is_file() {
        tracing::info!("no --model given: using the bundled model {}", p.display());
        return Ok(p);
    }
    anyhow::bail!(
        "no --model given (or BITNET_MODEL), and the bundled model is not at {} (was the binary \
         moved out of its repository?)",
        p.display()
    )
}

/// `--device`, shared by the commands that run a model.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct DeviceArgs {
    /// Where the model runs: auto (a CUDA GPU when this build has the `cuda` feature and one is
    /// usable, else the CPU, saying why), cpu, cuda or cuda:N [default: auto].
    #[arg(long, env = "BITNET_DEVICE")]
    pub device: Option<bitnet_engine::Device>,
}

/// `--kv-type`, shared by the commands that run a model on the CPU.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct KvArgs {
    /// KV-cache element type on the CPU: f32, or f16 (half the memory and half the bytes
    /// attention reads; each key and value rounded to f16, which moves the logits a little:
    /// README, "KV cache"). On a GPU, `BITNET_CUDA_KV` sets the device cache's.
    #[arg(long, env = "BITNET_KV_TYPE", default_value = "f32")]
    pub kv_type: bitnet_engine::KvType,
}

/// Puts `model` on the chosen device. A fall-back to the CPU is said on stderr when the user
/// asked for `auto` or the build could have used a GPU; an unusable `cuda` is an error.
pub fn place(model: &mut Model, d: DeviceArgs) -> Result<bitnet_engine::Placement> {
    let device = d.device.unwrap_or_default();
    // The error names the device and the reason.
    let p = model.use_device(device)?;
    if !p.gpu
        && device == bitnet_engine::Device::Auto
        && (d.device.is_some() || cfg!(feature = "cuda"))
    {
        tracing::warn!("device: {}", p.description);
    } else {
        tracing::info!("device: {}", p.description);
    }
    Ok(p)
}

/// Hands the pages freed during a model load (the GGUF metadata, the tokenizer's build: tens of
/// MB for a 128k vocabulary) back to the OS at once, instead of after mimalloc's purge delay:
/// otherwise they are still resident when the first forward pass maps the output head in, and
/// the peak RSS carries them (2B-4T shape, `generate --max-tokens 1`: ~40 MB less).
fn release_freed_memory() {
    // SAFETY: `mi_collect` only walks the allocator's own free lists and returns unused pages
    // to the OS; no live allocation is touched.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Loads model and tokenizer on the chosen device, logging the load time.
pub fn load(dir: &Path, device: DeviceArgs) -> Result<(Model, Tokenizer)> {
    let t = Instant::now();
    let (mut model, tok) = Model::load_with_tokenizer(dir)
        .with_context(|| format!("loading model {}", dir.display()))?;
    place(&mut model, device)?;
    release_freed_memory();
    tracing::info!(
        "loaded {} in {:.2} s",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok((model, tok))
}
