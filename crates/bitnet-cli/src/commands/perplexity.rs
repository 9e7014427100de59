//! `bitnet perplexity`: llama.cpp's method (consecutive chunks of n_ctx tokens, the second half
//! of each scored).

use anyhow::{Context, Result};
use bitnet_engine::perplexity::perplexity;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Options of `bitnet perplexity`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: checkpoint directory or .gguf file.
    #[arg(long, env = "BITNET_MODEL")]
    model: PathBuf,
    /// Text file to score.
    #[arg(long)]
    file: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let (model, tok) = super::load(&a.model, a.device)?;
    let t0 = Instant::now();
    let tokens = tok.encode(&text, true)?;
    let bos = tok.bos_id().filter(|b| tokens.first() == Some(b));
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} chunk {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let r = perplexity(&model, &tokens, a.ctx, a.chunks, bos, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "perplexity: {:.4} ± {:.4} ({} chunks of {} tokens, {} tokens scored, {} tokens in the file; {:.1} s, {:.1} tokens/s)",
        r.ppl,
        r.ppl_stderr,
        r.chunks,
        a.ctx,
        r.tokens_scored,
        tokens.len(),
        secs,
        (r.chunks * a.ctx) as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}
