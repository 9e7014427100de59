//! `bitnet serve`: the OpenAI-compatible server.

use anyhow::Result;
use bitnet_server::ServeOptions;
use std::process::ExitCode;

/// Options of `bitnet serve` (each also an environment variable, or a key of `--config`).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    options: ServeOptions,
    /// Tokio worker threads for HTTP (default: all cores).
    #[arg(long, env = "BITNET_HTTP_THREADS")]
    http_threads: Option<usize>,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let config = a.options.resolve()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = a.http_threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build()?;
    rt.block_on(bitnet_server::serve(config))?;
    eprintln!("bitnet serve: stopped");
    Ok(ExitCode::SUCCESS)
}
