//! `bitnet train` (quantization-aware training / fine-tuning) and `bitnet train-tokenizer`.

use anyhow::{bail, Context, Result};
use bitnet_engine::convert::gguf_out::GgufOptions;
use bitnet_engine::weights::Checkpoint;
use bitnet_engine::ModelConfig;
use bitnet_train::distill::DistillOptions;
use bitnet_train::optim::AdamWConfig;
use bitnet_train::{TrainModel, TrainOptions, Trainer};
use candle_core::DType;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Options of `bitnet train`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("start").required(true).args(["config", "init_from", "resume"])))]
pub struct Args {
    /// Train from scratch with this shape: a Hugging Face `config.json` (hidden_size,
    /// num_hidden_layers, …; vocab_size and BOS/EOS default to the tokenizer's).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Fine-tune a checkpoint with float master weights (e.g. a `-bf16` release or one of ours).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Continue the run saved in this checkpoint directory exactly (its saved options, data and
    /// tokenizer are reused; export flags still apply).
    #[arg(long, conflicts_with_all = ["data", "tokenizer", "out", "distill"])]
    resume: Option<PathBuf>,
    /// Training text: `.txt` (documents separated by blank lines) or `.jsonl` (`text` fields).
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// `tokenizer.json` (default: the --init-from checkpoint's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Checkpoint directory (written every --save-every steps, at the end and on ctrl-c).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Tokens per window.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Peak learning rate (BitNet trains with larger rates than float models).
    #[arg(long, default_value_t = 1.5e-3)]
    lr: f32,
    /// Final learning rate of the cosine decay (default: --lr / 10).
    #[arg(long)]
    min_lr: Option<f32>,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// AdamW decoupled weight decay (matrices only).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f32,
    /// AdamW β₁.
    #[arg(long, default_value_t = 0.9)]
    beta1: f32,
    /// AdamW β₂.
    #[arg(long, default_value_t = 0.95)]
    beta2: f32,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Seed of initialization and data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out evaluation every N steps (0 = at the end only).
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Held-out windows per evaluation.
    #[arg(long, default_value_t = 32)]
    eval_windows: usize,
    /// Fraction of documents held out.
    #[arg(long, default_value_t = 0.02)]
    heldout: f32,
    /// Checkpoint every N steps (0 = at the end only).
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    /// Standard deviation of freshly initialized matrices.
    #[arg(long, default_value_t = 0.02)]
    init_std: f32,
    /// Teacher logits from `bitnet logits -o FILE` (repeatable): adds a distillation loss.
    #[arg(long)]
    distill: Vec<PathBuf>,
    /// Weight of the distillation loss (the cross-entropy gets 1 − w).
    #[arg(long, default_value_t = 0.5)]
    distill_weight: f32,
    /// Distillation softmax temperature.
    #[arg(long, default_value_t = 1.0)]
    distill_temperature: f32,
    /// Also export a Hugging Face checkpoint (2B-4T packed convention) to this directory.
    #[arg(long)]
    export_hf: Option<PathBuf>,
    /// Also export a GGUF file.
    #[arg(long)]
    export_gguf: Option<PathBuf>,
    /// Ternary type of the GGUF export.
    #[arg(long, default_value = "tq2_0")]
    gguf_type: String,
    /// Embedding type of the GGUF export.
    #[arg(long, default_value = "f16")]
    gguf_embedding_type: String,
}

/// Reads a shape `config.json` for training from scratch, filling what the tokenizer knows.
fn scratch_config(path: &Path, tok: &tokenizers::Tokenizer) -> Result<ModelConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let Some(o) = v.as_object_mut() else {
        bail!("{}: expected a JSON object", path.display());
    };
    o.entry("model_type").or_insert("bitnet".into());
    o.entry("architectures")
        .or_insert(serde_json::json!(["BitNetForCausalLM"]));
    o.entry("vocab_size")
        .or_insert(tok.get_vocab_size(true).into());
    let (bos, eos) = bitnet_train::tokenizer_train::special_ids(tok);
    if let Some(b) = bos {
        o.entry("bos_token_id").or_insert(b.into());
    }
    if !eos.is_empty() {
        o.entry("eos_token_id").or_insert(eos.into());
    }
    o.insert(
        "quantization_config".into(),
        serde_json::json!({"quant_method": "bitnet", "linear_class": "autobitlinear",
                           "quantization_mode": "online"}),
    );
    Ok(ModelConfig::from_value(&v, path)?)
}

fn gguf_options(a: &Args) -> Result<GgufOptions> {
    use bitnet_engine::convert::gguf_out::{EMBEDDING_TYPES, TERNARY_TYPES};
    Ok(GgufOptions {
        ternary: super::convert::parse_type(&a.gguf_type, &TERNARY_TYPES, "--gguf-type")?,
        embedding: super::convert::parse_type(
            &a.gguf_embedding_type,
            &EMBEDDING_TYPES,
            "--gguf-embedding-type",
        )?,
    })
}

/// Runs `bitnet train`.
pub fn run(a: Args) -> Result<ExitCode> {
    let gguf_opts = gguf_options(&a)?;
    // Every training op allocates a fresh tensor: keep freed memory instead of page-faulting it
    // back in each step.
    bitnet_kernels::buf::keep_freed_memory();
    let mut trainer = if let Some(dir) = &a.resume {
        Trainer::resume(dir).with_context(|| format!("resuming from {}", dir.display()))?
    } else {
        let Some(out) = &a.out else {
            bail!("--out DIR is required (where checkpoints go)");
        };
        let tokenizer = match (&a.tokenizer, &a.init_from) {
            (Some(t), _) => t.clone(),
            (None, Some(dir)) => dir.join("tokenizer.json"),
            (None, None) => bail!("--tokenizer is required with --config"),
        };
        let tok = bitnet_train::data::load_tokenizer(&tokenizer)?;
        let model = if let Some(cfg) = &a.config {
            let config = scratch_config(cfg, &tok)?;
            TrainModel::new_random(config, a.init_std, a.seed, DType::F32)?
        } else if let Some(dir) = &a.init_from {
            let config = ModelConfig::from_file(&dir.join("config.json"))?;
            let ckpt = Checkpoint::open(dir)?;
            TrainModel::from_checkpoint(config, &ckpt, DType::F32)
                .with_context(|| format!("loading {}", dir.display()))?
        } else {
            unreachable!("clap requires --config, --init-from or --resume")
        };
        let options = TrainOptions {
            data: a.data.clone(),
            tokenizer,
            seq_len: a.seq_len,
            batch_size: a.batch_size,
            grad_accum: a.grad_accum,
            steps: a.steps,
            lr: a.lr,
            min_lr: a.min_lr.unwrap_or(a.lr / 10.0),
            warmup: a.warmup,
            adamw: AdamWConfig {
                beta1: a.beta1,
                beta2: a.beta2,
                eps: 1e-8,
                weight_decay: a.weight_decay,
            },
            clip: a.clip,
            seed: a.seed,
            eval_every: a.eval_every,
            eval_windows: a.eval_windows,
            heldout_frac: a.heldout,
            save_every: a.save_every,
            init_std: a.init_std,
            distill: (!a.distill.is_empty()).then(|| DistillOptions {
                files: a.distill.clone(),
                weight: a.distill_weight,
                temperature: a.distill_temperature,
            }),
        };
        Trainer::new(model, options, out)?
    };
    let (dtr, ttr, dho, tho) = trainer.corpus_summary();
    let c = &trainer.model.config;
    eprintln!(
        "model: hidden {}, {} layers, {}/{} heads, FFN {}, vocab {} — {:.2} M parameters",
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.intermediate_size,
        c.vocab_size,
        trainer.model.n_params() as f64 / 1e6
    );
    eprintln!(
        "data: {dtr} documents / {ttr} tokens for training, {dho} / {tho} held out; starting at step {} of {}",
        trainer.state.step, trainer.state.options.steps
    );
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                    eprintln!("\nstopping: saving a checkpoint after the current step…");
                    stop.store(true, Ordering::Relaxed);
                }
            }
        });
    }
    let out_dir = a
        .resume
        .clone()
        .or(a.out.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let report = trainer.run(&stop, true)?;
    let s = &report.state;
    let last = s.losses.last().copied().unwrap_or(f32::NAN);
    eprintln!(
        "{} at step {}: {} tokens seen in {:.0} s ({:.0} tokens/s), last training loss {last:.4}{}",
        if report.interrupted {
            "interrupted"
        } else {
            "done"
        },
        s.step,
        s.tokens_seen,
        s.train_seconds,
        s.tokens_seen as f64 / s.train_seconds.max(1e-9),
        s.evals
            .last()
            .map(|e| format!(
                ", held-out loss {:.4} (perplexity {:.2})",
                e.loss, e.perplexity
            ))
            .unwrap_or_default()
    );
    eprintln!("checkpoint: {}", out_dir.display());
    if report.interrupted {
        return Ok(ExitCode::from(130));
    }
    if let Some(dir) = &a.export_hf {
        bitnet_train::export::export_hf(&out_dir, dir)?;
        eprintln!("exported {} (Hugging Face, 2B-4T packed)", dir.display());
    }
    if let Some(f) = &a.export_gguf {
        let r = bitnet_train::export::export_gguf(&out_dir, f, gguf_opts)?;
        eprintln!(
            "exported {} (GGUF, {} ternary tensors verified)",
            f.display(),
            r.verified
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of `bitnet train-tokenizer`.
#[derive(clap::Args)]
pub struct TokenizerArgs {
    /// Vocabulary size, special tokens included.
    #[arg(long)]
    vocab: usize,
    /// Training text files (`.txt` or `.jsonl` with `text` fields).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output `tokenizer.json` (a `tokenizer_config.json` is written beside it).
    #[arg(long, short)]
    output: PathBuf,
}

/// Runs `bitnet train-tokenizer`.
pub fn run_tokenizer(a: TokenizerArgs) -> Result<ExitCode> {
    let t = std::time::Instant::now();
    let n = bitnet_train::tokenizer_train::train_tokenizer(&a.files, a.vocab, &a.output)?;
    eprintln!(
        "wrote {} ({n} tokens: byte-level BPE with Llama 3's split pattern) in {:.1} s",
        a.output.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
