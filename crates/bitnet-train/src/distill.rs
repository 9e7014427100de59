//! Distillation from a teacher's logits as `bitnet logits` writes them (`ids`, `logits` and, with
//! `--generate`, `greedy`, `greedy_logits`): the student learns the teacher's temperature-softened
//! next-token distribution, `T² · KL(softmax(teacher/T) ‖ softmax(student/T))` averaged over
//! positions, mixed with the cross-entropy as `(1 − w)·CE + w·KD`.

use crate::error::{Error, Result};
use crate::model::TrainModel;
use crate::quant::QuantMode;
use bitnet_engine::compare::LogitsRecord;
use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `--distill` options.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DistillOptions {
    /// Teacher logits files (`bitnet logits -o FILE`).
    pub files: Vec<PathBuf>,
    /// Weight of the distillation term, in [0, 1].
    pub weight: f32,
    /// Softmax temperature.
    pub temperature: f32,
}

/// One teacher sequence: its tokens `[1, t]` and, computed once at load, the teacher's
/// temperature-softened distribution after each token and its log (`[t, vocab]`).
#[derive(Clone, Debug)]
struct Sequence {
    ids: Tensor,
    p: Tensor,
    log_p: Tensor,
}

/// Loaded teacher sequences.
#[derive(Clone, Debug)]
pub struct Teacher {
    seqs: Vec<Sequence>,
    vocab: usize,
    temperature: f32,
}

impl Teacher {
    /// Reads the teacher files; their vocabulary must be the student's.
    pub fn load(o: &DistillOptions, vocab: usize) -> Result<Self> {
        if o.files.is_empty() {
            return Err(Error::Option {
                option: "distill",
                message: "no teacher logits file given".into(),
            });
        }
        if !(0.0..=1.0).contains(&o.weight) {
            return Err(Error::Option {
                option: "distill-weight",
                message: format!("{} is not in [0, 1]", o.weight),
            });
        }
        if !(o.temperature.is_finite() && o.temperature > 0.0) {
            return Err(Error::Option {
                option: "distill-temperature",
                message: format!("{} is not a positive number", o.temperature),
            });
        }
        let mut seqs = Vec::new();
        for f in &o.files {
            let r = LogitsRecord::read(f, "")?;
            if r.vocab != vocab {
                return Err(Error::Data {
                    path: f.clone(),
                    message: format!(
                        "teacher logits have vocab {}, the student has {vocab}",
                        r.vocab
                    ),
                });
            }
            let mut ids: Vec<u32> = r.ids.iter().map(|&x| x as u32).collect();
            let mut logits = r.logits.clone();
            // A greedy continuation extends the sequence: greedy_logits[0] repeats the last
            // prompt row; row i ≥ 1 follows greedy[i − 1].
            if let (Some(g), Some(gl)) = (&r.greedy, &r.greedy_logits) {
                if g.len() > 1 {
                    ids.extend(g[..g.len() - 1].iter().map(|&x| x as u32));
                    logits.extend_from_slice(&gl[vocab..g.len() * vocab]);
                }
            }
            if ids.len() < 2 {
                return Err(Error::Data {
                    path: f.clone(),
                    message: "a teacher sequence needs at least two tokens".into(),
                });
            }
            let t = ids.len();
            let scaled =
                (Tensor::from_vec(logits, (t, vocab), &Device::Cpu)? / o.temperature as f64)?;
            seqs.push(Sequence {
                ids: Tensor::from_vec(ids, (1, t), &Device::Cpu)?,
                p: candle_nn::ops::softmax(&scaled, D::Minus1)?,
                log_p: candle_nn::ops::log_softmax(&scaled, D::Minus1)?,
            });
        }
        Ok(Teacher {
            seqs,
            vocab,
            temperature: o.temperature,
        })
    }

    /// The distillation loss of `model` on the teacher sequence chosen for `(step, micro)`.
    pub fn loss(&self, model: &TrainModel, step: usize, micro: usize, seed: u64) -> Result<Tensor> {
        let i = (step
            .wrapping_mul(31)
            .wrapping_add(micro)
            .wrapping_add(seed as usize))
            % self.seqs.len();
        let s = &self.seqs[i];
        let t = s.ids.dim(1)?;
        let temp = self.temperature as f64;
        let student = model
            .forward(&s.ids, QuantMode::Ternary)?
            .reshape((t, self.vocab))?;
        let log_q = candle_nn::ops::log_softmax(&(student / temp)?, D::Minus1)?;
        let kl = (&s.p * (&s.log_p - log_q)?)?.sum(D::Minus1)?.mean_all()?;
        Ok((kl * (temp * temp))?)
    }
}
