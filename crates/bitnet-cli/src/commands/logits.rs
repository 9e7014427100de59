//! `bitnet logits`: prompt logits and an optional greedy decode, in the fixtures' layout.

use anyhow::{bail, Context, Result};
use bitnet_engine::compare::LogitsRecord;
use bitnet_engine::generate::greedy_with_logits;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `bitnet logits`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "tokens"])))]
pub struct Args {
    /// Checkpoint directory.
    #[arg(long, env = "BITNET_MODEL")]
    model: PathBuf,
    /// Prompt text (tokenized with BOS as the tokenizer specifies).
    #[arg(long)]
    prompt: Option<String>,
    /// Token ids, comma-separated (used as given: no BOS is added).
    #[arg(long)]
    tokens: Option<String>,
    /// Also decode N tokens greedily through the KV cache (EOS ignored).
    #[arg(long, default_value_t = 0)]
    generate: usize,
    /// Output safetensors file: `ids`, `logits`, and with --generate `greedy`, `greedy_logits`.
    #[arg(long, short)]
    output: PathBuf,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Parses `1, 2,3` into ids, naming the offending element.
pub fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, t)| {
            t.parse::<u32>()
                .with_context(|| format!("--tokens: element {i} ({t:?}) is not a token id"))
        })
        .collect::<Result<Vec<u32>>>()?;
    if ids.is_empty() {
        bail!("--tokens: no token ids given");
    }
    Ok(ids)
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let ids = match (&a.prompt, &a.tokens) {
        (_, Some(t)) => {
            let ids = parse_tokens(t)?;
            // The model alone suffices; the tokenizer is not needed for ids.
            let mut model = bitnet_engine::Model::load(&a.model)?;
            super::place(&mut model, a.device)?;
            return write(&model, &ids, a.generate, &a.output);
        }
        (Some(p), None) => p.clone(),
        (None, None) => unreachable!("clap requires --prompt or --tokens"),
    };
    let (model, tok) = super::load(&a.model, a.device)?;
    let ids = tok.encode(&ids, true)?;
    write(&model, &ids, a.generate, &a.output)
}

fn write(model: &bitnet_engine::Model, ids: &[u32], n: usize, out: &Path) -> Result<ExitCode> {
    let (logits, greedy, greedy_logits) = greedy_with_logits(model, ids, n)?;
    let rec = LogitsRecord {
        ids: ids.iter().map(|&x| x as i64).collect(),
        logits,
        vocab: model.config.vocab_size,
        greedy: (n > 0).then(|| greedy.iter().map(|&x| x as i64).collect()),
        greedy_logits: (n > 0).then_some(greedy_logits),
    };
    rec.write(out)?;
    eprintln!(
        "wrote {}: {} prompt tokens{}",
        out.display(),
        ids.len(),
        if n > 0 {
            format!(", {n} greedy tokens")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
