//! `bitnet inspect`.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `bitnet inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory.
    path: PathBuf,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    print!("{}", bitnet_engine::inspect::inspect(&a.path)?);
    Ok(ExitCode::SUCCESS)
}
