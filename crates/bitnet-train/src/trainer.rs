//! The training loop: AdamW with warmup + cosine, gradient accumulation and clipping, next-token
//! cross-entropy (optionally mixed with distillation from a teacher's logits), held-out loss and
//! perplexity, a progress bar, checkpoints that resume exactly, and a stop flag (ctrl-c).

use crate::checkpoint::{read_f32, write_f32_bytes};
use crate::data::{build_corpus, eval_windows, load_tokenizer, train_batch, Corpus};
use crate::distill::Teacher;
use crate::error::{Error, Result};
use crate::model::TrainModel;
use crate::optim::{clip_grad_norm, lr_at, AdamW, AdamWConfig, Moments};
use crate::quant::QuantMode;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Everything that defines a run (saved in `trainer_state.json`; a resumed run reuses it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainOptions {
    /// Training files (`.txt`: documents separated by blank lines; `.jsonl`: `text` fields).
    pub data: Vec<PathBuf>,
    /// `tokenizer.json` (byte-level BPE or any Hugging Face tokenizer).
    pub tokenizer: PathBuf,
    /// Tokens per training window.
    pub seq_len: usize,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub grad_accum: usize,
    /// Optimizer steps in the run.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Final learning rate of the cosine decay.
    pub min_lr: f32,
    /// Linear warmup steps.
    pub warmup: usize,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0 = off).
    pub clip: f32,
    /// Seed of initialization and data order.
    pub seed: u64,
    /// Held-out evaluation every N steps (0 = only at the end).
    pub eval_every: usize,
    /// Held-out windows evaluated.
    pub eval_windows: usize,
    /// Fraction of documents held out.
    pub heldout_frac: f32,
    /// Checkpoint every N steps (0 = only at the end).
    pub save_every: usize,
    /// Standard deviation of freshly initialized matrices.
    pub init_std: f32,
    /// Teacher logits (`bitnet logits` output) to distill from, with the mixing weight and
    /// temperature.
    pub distill: Option<crate::distill::DistillOptions>,
}

impl TrainOptions {
    /// Checks ranges, naming the option at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |option: &'static str, message: &str| {
            Err(Error::Option {
                option,
                message: message.to_string(),
            })
        };
        if self.data.is_empty() {
            return bad("data", "give at least one training file");
        }
        if self.seq_len < 2 {
            return bad("seq-len", "must be at least 2");
        }
        if self.batch_size == 0 {
            return bad("batch-size", "must be positive");
        }
        if self.grad_accum == 0 {
            return bad("grad-accum", "must be positive");
        }
        if self.steps == 0 {
            return bad("steps", "must be positive");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", "must be a positive number");
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("min-lr", "must be between 0 and --lr");
        }
        if !(0.0..1.0).contains(&self.heldout_frac) {
            return bad("heldout", "must be in [0, 1)");
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return bad("clip", "must be ≥ 0");
        }
        if !(self.adamw.weight_decay >= 0.0 && self.adamw.weight_decay < 1.0) {
            return bad("weight-decay", "must be in [0, 1)");
        }
        Ok(())
    }
}

/// One held-out evaluation.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Eval {
    /// Steps done when it ran.
    pub step: usize,
    /// Mean held-out cross-entropy (nats per token).
    pub loss: f32,
    /// `exp(loss)`.
    pub perplexity: f32,
}

/// Progress of a run (`trainer_state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// The run's options.
    pub options: TrainOptions,
    /// Optimizer steps done.
    pub step: usize,
    /// Training tokens consumed (inputs, all micro-batches).
    pub tokens_seen: u64,
    /// Training loss of every step done, in order.
    pub losses: Vec<f32>,
    /// Held-out evaluations.
    pub evals: Vec<Eval>,
    /// Seconds spent training, over all resumed parts.
    pub train_seconds: f64,
}

/// How the run ended.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The final state (also in the checkpoint).
    pub state: TrainState,
    /// Whether a stop request ended it early (the checkpoint holds the last full step).
    pub interrupted: bool,
}

/// A progress line: above the bar on a terminal, else on stderr (a hidden bar prints nothing).
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// A model, its optimizer and its data, ready to step.
pub struct Trainer {
    /// The model.
    pub model: TrainModel,
    /// The optimizer.
    pub opt: AdamW,
    /// Progress so far.
    pub state: TrainState,
    corpus: Corpus,
    teacher: Option<Teacher>,
    out_dir: PathBuf,
}

impl Trainer {
    /// A new run of `model` (fresh or fine-tuned) writing checkpoints to `out_dir`.
    pub fn new(model: TrainModel, options: TrainOptions, out_dir: &Path) -> Result<Self> {
        options.validate()?;
        if options.seq_len > model.config.max_position_embeddings {
            return Err(Error::Option {
                option: "seq-len",
                message: format!(
                    "{} is longer than the model's context (max_position_embeddings {} tokens)",
                    options.seq_len, model.config.max_position_embeddings
                ),
            });
        }
        let tok = load_tokenizer(&options.tokenizer)?;
        let corpus = build_corpus(
            &options.data,
            &tok,
            &options.tokenizer,
            model.config.bos_token_id,
            options.heldout_frac,
            model.config.vocab_size,
        )?;
        if corpus.train.len() < options.seq_len + 1 {
            return Err(Error::Option {
                option: "seq-len",
                message: format!(
                    "the training text has {} tokens, fewer than one window of {}",
                    corpus.train.len(),
                    options.seq_len + 1
                ),
            });
        }
        let teacher = match &options.distill {
            Some(d) => Some(Teacher::load(d, model.config.vocab_size)?),
            None => None,
        };
        let sizes: Vec<usize> = model
            .params
            .iter()
            .map(|p| p.var.as_tensor().elem_count())
            .collect();
        let opt = AdamW::new(options.adamw, &sizes);
        Ok(Trainer {
            model,
            opt,
            state: TrainState {
                options,
                step: 0,
                tokens_seen: 0,
                losses: Vec::new(),
                evals: Vec::new(),
                train_seconds: 0.0,
            },
            corpus,
            teacher,
            out_dir: out_dir.to_path_buf(),
        })
    }

    /// Reopens the checkpoint `dir` to continue its run exactly (same batches, schedule and
    /// optimizer state); later checkpoints go to the same directory.
    pub fn resume(dir: &Path) -> Result<Self> {
        let state_path = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: state_path.clone(),
            message: format!("invalid trainer state: {e}"),
        })?;
        let config = bitnet_engine::ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = bitnet_engine::weights::Checkpoint::open(dir)?;
        let model = TrainModel::from_checkpoint(config, &ckpt, DType::F32)?;
        let mut t = Trainer::new(model, state.options.clone(), dir)?;
        let opt_path = dir.join("optimizer.safetensors");
        let tensors = read_f32(&opt_path)?;
        let mut by_name: std::collections::HashMap<String, Vec<f32>> =
            tensors.into_iter().map(|(n, _, v)| (n, v)).collect();
        let mut moments = Vec::new();
        for p in &t.model.params {
            let n = p.var.as_tensor().elem_count();
            let mut take = |k: &str| -> Result<Vec<f32>> {
                let name = format!("{k}.{}", p.name);
                match by_name.remove(&name) {
                    Some(v) if v.len() == n => Ok(v),
                    Some(v) => Err(Error::Checkpoint {
                        path: opt_path.clone(),
                        message: format!("tensor {name} has {} values, expected {n}", v.len()),
                    }),
                    None => Err(Error::Checkpoint {
                        path: opt_path.clone(),
                        message: format!("no tensor {name}"),
                    }),
                }
            };
            moments.push(Moments {
                m: take("m")?,
                v: take("v")?,
            });
        }
        let t_steps = by_name.remove("t").and_then(|v| v.first().copied());
        t.opt.state = moments;
        t.opt.t = t_steps.map(|x| x as u64).unwrap_or(state.step as u64);
        t.state = state;
        Ok(t)
    }

    /// The held-out loss and perplexity now.
    pub fn evaluate(&self) -> Result<Option<Eval>> {
        let o = &self.state.options;
        let windows = eval_windows(&self.corpus.heldout, o.seq_len, o.eval_windows);
        if windows.is_empty() {
            return Ok(None);
        }
        let (mut sum, mut n) = (0.0f64, 0usize);
        for chunk in windows.chunks(o.batch_size) {
            let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
            let t = Tensor::from_vec(flat, (chunk.len(), o.seq_len + 1), &Device::Cpu)?;
            let loss = self
                .model
                .loss(&t, QuantMode::Ternary)?
                .to_scalar::<f32>()?;
            sum += loss as f64 * chunk.len() as f64;
            n += chunk.len();
        }
        let loss = (sum / n as f64) as f32;
        Ok(Some(Eval {
            step: self.state.step,
            loss,
            perplexity: loss.exp(),
        }))
    }

    /// One optimizer step; returns the mean training loss of its micro-batches.
    pub fn step(&mut self) -> Result<f32> {
        let o = self.state.options.clone();
        let mut acc: Vec<Vec<f32>> = self
            .model
            .params
            .iter()
            .map(|p| vec![0.0; p.var.as_tensor().elem_count()])
            .collect();
        let mut loss_sum = 0.0f32;
        let inv = 1.0 / o.grad_accum as f32;
        for micro in 0..o.grad_accum {
            let tokens = train_batch(
                &self.corpus.train,
                o.seq_len,
                o.batch_size,
                o.seed,
                self.state.step,
                micro,
            );
            let t = Tensor::from_vec(tokens, (o.batch_size, o.seq_len + 1), &Device::Cpu)?;
            let mut loss = self.model.loss(&t, QuantMode::Ternary)?;
            if let (Some(teacher), Some(d)) = (&self.teacher, &o.distill) {
                let kd = teacher.loss(&self.model, self.state.step, micro, o.seed)?;
                loss = ((loss * (1.0 - d.weight as f64))? + (kd * d.weight as f64)?)?;
            }
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(Error::Diverged {
                    step: self.state.step,
                    loss: value,
                });
            }
            loss_sum += value;
            let grads = loss.backward()?;
            for (p, a) in self.model.params.iter().zip(&mut acc) {
                if let Some(g) = grads.get(p.var.as_tensor()) {
                    let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
                    for (x, y) in a.iter_mut().zip(g) {
                        *x += y * inv;
                    }
                }
            }
        }
        clip_grad_norm(&mut acc, o.clip);
        let lr = lr_at(self.state.step, o.steps, o.warmup, o.lr, o.min_lr);
        let mut values: Vec<Vec<f32>> = self
            .model
            .params
            .iter()
            .map(|p| p.var.as_tensor().flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        let decay: Vec<bool> = self.model.params.iter().map(|p| p.decay).collect();
        self.opt.step(&mut values, &acc, &decay, lr)?;
        for (p, v) in self.model.params.iter().zip(values) {
            let shape = p.var.as_tensor().shape().clone();
            p.var.set(&Tensor::from_vec(v, shape, &Device::Cpu)?)?;
        }
        let loss = loss_sum * inv;
        self.state.step += 1;
        self.state.tokens_seen += (o.grad_accum * o.batch_size * o.seq_len) as u64;
        self.state.losses.push(loss);
        Ok(loss)
    }

    /// Runs to the configured step count (or until `stop` is set), evaluating and saving on the
    /// way; always leaves a checkpoint of the last completed step.
    pub fn run(&mut self, stop: &AtomicBool, progress: bool) -> Result<TrainReport> {
        let o = self.state.options.clone();
        let bar = if progress {
            indicatif::ProgressBar::new(o.steps as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps · {msg} · ETA {eta}",
            )
            .map_err(|e| Error::Internal(e.to_string()))?,
        );
        bar.set_position(self.state.step as u64);
        let mut interrupted = false;
        let tokens_per_step = (o.grad_accum * o.batch_size * o.seq_len) as f64;
        while self.state.step < o.steps {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let t0 = Instant::now();
            let loss = self.step()?;
            let dt = t0.elapsed().as_secs_f64();
            self.state.train_seconds += dt;
            bar.set_message(format!(
                "loss {loss:.3} · {:.0} tok/s",
                tokens_per_step / dt.max(1e-9)
            ));
            bar.inc(1);
            let s = self.state.step;
            if o.eval_every > 0 && s.is_multiple_of(o.eval_every) && s < o.steps {
                if let Some(e) = self.evaluate()? {
                    say(
                        &bar,
                        format!(
                            "step {s}: train loss {loss:.4}, held-out loss {:.4}, perplexity {:.2}, {:.0} tokens/s",
                            e.loss,
                            e.perplexity,
                            self.state.tokens_seen as f64 / self.state.train_seconds.max(1e-9)
                        ),
                    );
                    self.state.evals.push(e);
                }
            }
            if o.save_every > 0 && s.is_multiple_of(o.save_every) && s < o.steps {
                self.save()?;
            }
        }
        if !interrupted {
            if let Some(e) = self.evaluate()? {
                say(
                    &bar,
                    format!(
                        "step {}: held-out loss {:.4}, perplexity {:.2}",
                        e.step, e.loss, e.perplexity
                    ),
                );
                if self.state.evals.last().map(|x| x.step) != Some(e.step) {
                    self.state.evals.push(e);
                }
            }
        }
        bar.finish_and_clear();
        self.save()?;
        Ok(TrainReport {
            state: self.state.clone(),
            interrupted,
        })
    }

    /// Writes the checkpoint: config, master weights, optimizer moments, state, tokenizer files.
    pub fn save(&self) -> Result<()> {
        let dir = &self.out_dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::export::write_run_files(&self.model.config, &self.state.options.tokenizer, dir)?;
        self.model.save_weights(&dir.join("model.safetensors"))?;
        let mut opt = Vec::new();
        for (p, s) in self.model.params.iter().zip(&self.opt.state) {
            let shape = p.var.as_tensor().dims().to_vec();
            for (k, v) in [("m", &s.m), ("v", &s.v)] {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                opt.push((format!("{k}.{}", p.name), shape.clone(), bytes));
            }
        }
        opt.push((
            "t".into(),
            vec![1],
            (self.opt.t as f32).to_le_bytes().to_vec(),
        ));
        write_f32_bytes(&dir.join("optimizer.safetensors"), &opt)?;
        let path = dir.join("trainer_state.json");
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| Error::Internal(format!("serializing the trainer state: {e}")))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        tracing::info!("checkpoint {} at step {}", dir.display(), self.state.step);
        Ok(())
    }

    /// Documents in the training and held-out parts, and their token counts.
    pub fn corpus_summary(&self) -> (usize, usize, usize, usize) {
        (
            self.corpus.docs.0,
            self.corpus.train.len(),
            self.corpus.docs.1,
            self.corpus.heldout.len(),
        )
    }
}
