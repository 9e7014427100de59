//! `bitnet bench`: prompt-processing and generation speed, llama-bench style, plus bytes read
//! per generated token and the bandwidth that implies. `--json` uses llama-bench's field names.

use anyhow::{bail, Context, Result};
use bitnet_engine::bench::{bytes_per_token, mean_sd, time_generation_streams, time_prompt};
use bitnet_engine::Model;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `bitnet bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: checkpoint directory or .gguf file.
    #[arg(long, short, env = "BITNET_MODEL")]
    model: PathBuf,
    /// Prompt tokens for the pp test (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    n_prompt: usize,
    /// Generated tokens for the tg test (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    n_gen: usize,
    /// Thread counts, comma-separated (as llama-bench's `-t`).
    #[arg(
        short = 't',
        long = "thread-counts",
        id = "thread_counts",
        default_value = "1,2"
    )]
    threads: String,
    /// Sequences decoding together in the tg test, comma-separated (continuous batching's
    /// decode; t/s is then the aggregate over all of them).
    #[arg(long, default_value = "1")]
    streams: String,
    /// Repetitions per test.
    #[arg(short = 'r', long, default_value_t = 3)]
    reps: usize,
    #[command(flatten)]
    kv: super::KvArgs,
    /// Print a JSON array (llama-bench's field names) instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// A comma-separated list of counts (`1,2`), the error naming `flag`.
fn counts(list: &str, flag: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|t| {
            t.trim()
                .parse::<usize>()
                .with_context(|| format!("{flag}: {t:?} is not a count"))
        })
        .collect()
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let threads = counts(&a.threads, "-t")?;
    let streams = counts(&a.streams, "--streams")?;
    if streams.contains(&0) {
        bail!("--streams must be positive");
    }
    if threads.contains(&0) || a.reps == 0 {
        bail!("-t and -r must be positive");
    }
    let kv = a.kv.kv_type;
    let mut model =
        Model::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let placement = super::place(&mut model, a.device)?;
    let ctx = model.config.max_position_embeddings;
    if a.n_prompt > ctx || a.n_gen > ctx {
        bail!(
            "-p {} / -n {} exceed the model's context of {ctx} tokens",
            a.n_prompt,
            a.n_gen
        );
    }
    let size = std::fs::metadata(&a.model).map(|m| m.len()).unwrap_or(0);
    let bpt = bytes_per_token(&model);
    let kernel = if placement.gpu {
        placement.description.clone()
    } else {
        bitnet_kernels::dispatch::active().name().to_string()
    };
    let mut rows = Vec::new();
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
        let tests =
            std::iter::once((a.n_prompt, 0, 1)).chain(streams.iter().map(|&np| (0, a.n_gen, np)));
        for (n_prompt, n_gen, np) in tests {
            if n_prompt + n_gen == 0 {
                continue;
            }
            let run = |seed: u64| -> Result<f64> {
                Ok(if n_prompt > 0 {
                    time_prompt(&model, n_prompt, seed, kv)?
                } else {
                    time_generation_streams(&model, n_gen, np, seed, kv)?
                })
            };
            pool.install(|| run(0))?; // warm-up, as llama-bench
            let secs: Vec<f64> = (1..=a.reps as u64)
                .map(|s| pool.install(|| run(s)))
                .collect::<Result<_>>()?;
            let n = (n_prompt + n_gen * np) as f64;
            let ts: Vec<f64> = secs.iter().map(|s| n / s).collect();
            let (avg_ts, sd_ts) = mean_sd(&ts);
            let (avg_s, sd_s) = mean_sd(&secs);
            let gbps = if n_gen > 0 {
                Some(bpt as f64 * avg_ts / np as f64 / 1e9)
            } else {
                None
            };
            rows.push(json!({
                "model_filename": a.model.display().to_string(),
                "model_size": size,
                "model_n_params": null,
                "n_batch": if n_prompt > 0 { n_prompt } else { 1 },
                "n_threads": t,
                "n_prompt": n_prompt,
                "n_gen": n_gen,
                "n_streams": np,
                "avg_ns": (avg_s * 1e9) as u64,
                "stddev_ns": (sd_s * 1e9) as u64,
                "avg_ts": avg_ts,
                "stddev_ts": sd_ts,
                "samples_ns": secs.iter().map(|s| (s * 1e9) as u64).collect::<Vec<_>>(),
                "samples_ts": ts,
                "kernel": kernel,
                "type_k": kv.name(),
                "type_v": kv.name(),
                "bytes_per_token": if n_gen > 0 { Some(bpt) } else { None },
                "gbps": gbps,
            }));
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("| model | size | kernel | threads | test | t/s | GB/s |");
    println!("|---|---:|---|---:|---|---:|---:|");
    for r in &rows {
        let test = if r["n_prompt"].as_u64().unwrap_or(0) > 0 {
            format!("pp{}", r["n_prompt"])
        } else if r["n_streams"].as_u64().unwrap_or(1) > 1 {
            format!("tg{} x{}", r["n_gen"], r["n_streams"])
        } else {
            format!("tg{}", r["n_gen"])
        };
        println!(
            "| {} | {:.2} MiB | {} | {} | {} | {:.2} ± {:.2} | {} |",
            a.model
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default(),
            size as f64 / (1 << 20) as f64,
            kernel,
            r["n_threads"],
            test,
            r["avg_ts"].as_f64().unwrap_or(0.0),
            r["stddev_ts"].as_f64().unwrap_or(0.0),
            r["gbps"]
                .as_f64()
                .map_or("".to_string(), |g| format!("{g:.2}"))
        );
    }
    println!(
        "(bytes read per generated token: {:.1} MiB)",
        bpt as f64 / (1 << 20) as f64
    );
    Ok(ExitCode::SUCCESS)
}
