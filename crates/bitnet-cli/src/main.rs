//! `bitnet`: run, inspect and compare BitNet b1.58 models.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// BitNet b1.58 inference: generate, chat, dump and compare logits, inspect checkpoints.
#[derive(Parser)]
#[command(name = "bitnet", version, about)]
struct Cli {
    /// Worker threads for the matrix kernels (default: all cores).
    #[arg(long, global = true, env = "BITNET_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text after a prompt, streamed to stdout; speed on stderr.
    Generate(commands::generate::Args),
    /// Multi-turn chat with the model's chat template (interactive or piped stdin).
    Chat(commands::chat::Args),
    /// Write prompt logits (and optionally a greedy decode) to a safetensors file.
    Logits(commands::logits::Args),
    /// Compare two logits files (A is the reference) against the fixture criteria.
    CompareLogits(commands::compare::Args),
    /// Describe a checkpoint: architecture, shapes, parameters, formats, tokenizer, template.
    Inspect(commands::inspect::Args),
    /// Convert a checkpoint (HF, GGUF, PyTorch, ONNX) to GGUF (I2_S, TQ1_0, TQ2_0, F16) or HF.
    Convert(commands::convert::Args),
    /// Perplexity of a text file (llama.cpp's method).
    Perplexity(commands::perplexity::Args),
    /// Prompt and generation speed, llama-bench style (table or --json).
    Bench(commands::bench::Args),
    /// Write a random ternary model of a real shape as GGUF (for benchmarks).
    CreateModel(commands::create_model::Args),
    /// OpenAI-compatible HTTP server with continuous batching, streaming and metrics.
    Serve(Box<commands::serve::Args>),
    /// Load an OpenAI-compatible server on loopback (TTFT, TPOT, ITL, throughput).
    Loadtest(commands::loadtest::Args),
    /// Tenants, API keys, usage and audit log of `bitnet serve --auth`, on its database.
    Admin(commands::admin::Args),
    /// Run an OpenAI Batch JSONL file against a server (metered like any request).
    Batch(commands::batch::Args),
    /// Quantization-aware training or fine-tuning; exports Hugging Face and GGUF models.
    Train(Box<commands::train::Args>),
    /// Train a byte-level BPE tokenizer (tokenizer.json) on text files.
    TrainTokenizer(commands::train::TokenizerArgs),
}

/// `info` for the server (load and shutdown lines), `warn` elsewhere; `RUST_LOG` overrides.
fn default_log(c: &Command) -> &'static str {
    match c {
        Command::Serve(_) => "info,tower_http=warn",
        _ => "warn",
    }
}

/// mimalloc instead of glibc's malloc: the server's request path makes a few hundred small
/// allocations per request across threads, where glibc's per-thread caches overflow into
/// shared bins (see the README's multi-tenancy section for the measurement).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log(&cli.command))),
        )
        .init();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: --threads {n}: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        // The per-token loops run on a worker of the global pool (as `bench` and the serve
        // engine do): each kernel's parallel loop then starts inside the pool instead of
        // being injected from this thread, which would sleep until a worker has run it.
        Command::Generate(a) => rayon::scope(|_| commands::generate::run(a)),
        Command::Chat(a) => rayon::scope(|_| commands::chat::run(a)),
        Command::Logits(a) => rayon::scope(|_| commands::logits::run(a)),
        Command::CompareLogits(a) => commands::compare::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Perplexity(a) => rayon::scope(|_| commands::perplexity::run(a)),
        Command::Bench(a) => commands::bench::run(a),
        Command::CreateModel(a) => commands::create_model::run(a),
        Command::Serve(a) => commands::serve::run(*a),
        Command::Loadtest(a) => commands::loadtest::run(a),
        Command::Admin(a) => commands::admin::run(a),
        Command::Batch(a) => commands::batch::run(a),
        Command::Train(a) => commands::train::run(*a),
        Command::TrainTokenizer(a) => commands::train::run_tokenizer(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
