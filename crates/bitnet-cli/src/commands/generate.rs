//! `bitnet generate`.

use super::SamplingArgs;
use anyhow::Result;
use bitnet_engine::{GenerateParams, Generator};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `bitnet generate`.
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory or GGUF file (default: the model bundled in `models/kjv-bitnet`).
    #[arg(long, env = "BITNET_MODEL")]
    model: Option<PathBuf>,
    /// Prompt text (BOS is added as the tokenizer specifies).
    #[arg(long)]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating through end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
    #[command(flatten)]
    kv: super::KvArgs,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let model_dir = super::model_or_bundled(a.model.clone())?;
    let sampling = a.sampling.resolve(&model_dir)?;
    let (model, tok) = super::load(&model_dir, a.device)?;
    let ids = tok.encode(&a.prompt, true)?;
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling,
        stop: a.stop,
        ignore_eos: a.ignore_eos,
    };
    let mut gen = Generator::new(&model, &tok, None).with_kv_type(a.kv.kv_type);
    // On a worker of the pool, so that each decode step keeps the other workers awake between
    // its parallel regions (`bitnet_kernels::pool::keep_workers_awake`).
    let (g, io_err) = rayon::scope(|_| {
        let mut out = std::io::stdout().lock();
        let mut io_err = None;
        let g = gen.generate(&ids, &params, |s| {
            if io_err.is_none() {
                if let Err(e) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
                    io_err = Some(e);
                }
            }
        });
        (g, io_err)
    });
    let g = g?;
    let mut out = std::io::stdout().lock();
    if let Some(e) = io_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    let _ = writeln!(out);
    eprintln!(
        "prompt: {} tokens, {:.1} tokens/s | generation: {} tokens, {:.1} tokens/s | finish: {}",
        ids.len(),
        g.prompt_tokens_run as f64 / g.prefill_secs.max(1e-9),
        g.tokens.len(),
        g.tokens.len() as f64 / g.decode_secs.max(1e-9),
        g.finish_reason.as_str()
    );
    Ok(ExitCode::SUCCESS)
}
