//! `bitnet convert`: HF checkpoint, GGUF, PyTorch or ONNX in; GGUF or HF (2B-4T packed) out.

use anyhow::{bail, Context, Result};
use bitnet_engine::convert::gguf_out::{write_gguf, GgufOptions, EMBEDDING_TYPES, TERNARY_TYPES};
use bitnet_engine::convert::hf_out::write_hf;
use bitnet_engine::convert::Parts;
use bitnet_engine::model::AbsMean;
use bitnet_formats::gguf::GgmlType;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Output container.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A GGUF file.
    Gguf,
    /// A Hugging Face checkpoint directory in the 2B-4T packed convention.
    Hf,
}

/// Options of `bitnet convert`.
#[derive(clap::Args)]
pub struct Args {
    /// Input: HF checkpoint directory, .gguf file, pytorch_model.bin / .pt / .pth, or .onnx
    /// (PyTorch and ONNX inputs need config.json and the tokenizer beside them).
    input: PathBuf,
    /// Output file (GGUF) or directory (--to hf).
    #[arg(short, long)]
    output: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "gguf")]
    to: Target,
    /// GGUF type of the seven projections: i2_s, tq1_0, tq2_0 or f16.
    #[arg(long = "type", default_value = "i2_s")]
    ttype: String,
    /// GGUF type of the embedding (and a separate output head): f16, q8_0 or q6_k.
    #[arg(long, default_value = "f16")]
    embedding_type: String,
    /// Master weights: reduce mean|W| as float32 PyTorch does with this many threads, as the
    /// Python converters of llama.cpp and bitnet.cpp do (their I2_S scales depend on it);
    /// 0 = the correctly rounded mean. Default: the number of CPUs, torch's default.
    #[arg(long)]
    torch_threads: Option<usize>,
}

pub fn parse_type(s: &str, allowed: &[GgmlType], flag: &str) -> Result<GgmlType> {
    let t = GgmlType::from_name(s).filter(|t| allowed.contains(t));
    t.with_context(|| {
        let names: Vec<String> = allowed.iter().map(|t| t.name().to_lowercase()).collect();
        format!("{flag} {s:?}: expected one of {}", names.join(", "))
    })
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let t0 = Instant::now();
    let ternary = parse_type(&a.ttype, &TERNARY_TYPES, "--type")?;
    let embedding = parse_type(&a.embedding_type, &EMBEDDING_TYPES, "--embedding-type")?;
    if a.to == Target::Hf && a.output.extension().is_some_and(|e| e == "gguf") {
        bail!(
            "--to hf writes a directory; {} looks like a GGUF file name",
            a.output.display()
        );
    }
    let spinner = ProgressBar::new_spinner().with_message(format!("reading {}", a.input.display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let threads = a
        .torch_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mean = if threads == 0 {
        AbsMean::Exact
    } else {
        AbsMean::Torch { threads }
    };
    let parts = Parts::open_with(&a.input, mean)
        .with_context(|| format!("reading {}", a.input.display()))?;
    spinner.finish_and_clear();
    eprintln!(
        "read {} ({} layers, {} ternary tensors) in {:.1} s",
        a.input.display(),
        parts.layers.len(),
        parts.n_ternary(),
        t0.elapsed().as_secs_f64()
    );
    match a.to {
        Target::Hf => {
            write_hf(&parts, &a.output)?;
            eprintln!(
                "wrote {} (2B-4T packed convention) in {:.1} s",
                a.output.display(),
                t0.elapsed().as_secs_f64()
            );
        }
        Target::Gguf => {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} tensors {msg} [{elapsed_precise}, ETA {eta}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let report = write_gguf(
                &parts,
                GgufOptions { ternary, embedding },
                &a.output,
                |done, total, name| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    bar.set_message(name.to_string());
                },
            )?;
            bar.finish_and_clear();
            for f in &report.fallbacks {
                eprintln!("note: {f}: rows are not whole {} blocks; written as F16 (lossless for ternary weights)", ternary.name());
            }
            eprintln!(
                "wrote {} ({} tensors) in {:.1} s; verified: all {} ternary tensors equal the input's ternarization exactly",
                a.output.display(),
                report.tensors.len(),
                t0.elapsed().as_secs_f64(),
                report.verified
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
