//! `bitnet create-model`: a random ternary model of a real shape, as GGUF.

use anyhow::{Context, Result};
use bitnet_engine::convert::gguf_out::{write_gguf, GgufOptions, EMBEDDING_TYPES, TERNARY_TYPES};
use bitnet_engine::convert::random::random_parts;
use bitnet_engine::Activation;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Options of `bitnet create-model`.
#[derive(clap::Args)]
pub struct Args {
    /// Shape: 2b4t, small or tiny.
    #[arg(long, default_value = "2b4t")]
    shape: String,
    /// Projection type: tq2_0, tq1_0, i2_s or f16.
    #[arg(long = "type", default_value = "tq2_0")]
    ttype: String,
    /// Embedding type: q6_k (llama-quantize's default), q8_0 or f16.
    #[arg(long, default_value = "q6_k")]
    embedding_type: String,
    /// Output GGUF file.
    #[arg(long, short)]
    out: PathBuf,
    /// FFN activation: silu (written as llama.cpp's `bitnet` arch, loadable by llama.cpp) or
    /// relu2 (`bitnet-b1.58`, as 2B-4T; llama.cpp does not know that arch). Same speed.
    #[arg(long, default_value = "silu")]
    act: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let t0 = Instant::now();
    let ternary = super::convert::parse_type(&a.ttype, &TERNARY_TYPES, "--type")?;
    let embedding =
        super::convert::parse_type(&a.embedding_type, &EMBEDDING_TYPES, "--embedding-type")?;
    let act = match a.act.as_str() {
        "silu" => Activation::Silu,
        "relu2" => Activation::Relu2,
        other => anyhow::bail!("--act {other:?}: expected silu or relu2"),
    };
    let parts = random_parts(&a.shape, act, a.seed)?;
    let r = write_gguf(
        &parts,
        GgufOptions { ternary, embedding },
        &a.out,
        |_, _, _| {},
    )
    .with_context(|| format!("writing {}", a.out.display()))?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({} shape, {} tensors, {:.1} MiB) in {:.1} s",
        a.out.display(),
        a.shape,
        r.tensors.len(),
        size as f64 / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
