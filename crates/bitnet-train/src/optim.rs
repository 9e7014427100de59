//! AdamW (decoupled weight decay, as `torch.optim.AdamW`), a linear-warmup + cosine learning-rate
//! schedule, and global-norm gradient clipping. State is plain f32 vectors so a checkpoint stores
//! it exactly.

use crate::error::{Error, Result};

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Decoupled weight decay (applied to matrices only).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// Moments of one parameter.
#[derive(Clone, Debug)]
pub struct Moments {
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
}

/// AdamW over a fixed list of parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Moments, one per parameter, in the model's parameter order.
    pub state: Vec<Moments>,
    /// Updates taken so far (bias correction uses it).
    pub t: u64,
}

impl AdamW {
    /// Zero moments for parameters of these sizes.
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        AdamW {
            config,
            state: sizes
                .iter()
                .map(|&n| Moments {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                })
                .collect(),
            t: 0,
        }
    }

    /// One update of `params[i]` with gradient `grads[i]` at learning rate `lr`; `decay[i]` says
    /// whether weight decay applies.
    pub fn step(
        &mut self,
        params: &mut [Vec<f32>],
        grads: &[Vec<f32>],
        decay: &[bool],
        lr: f32,
    ) -> Result<()> {
        if params.len() != self.state.len() || grads.len() != self.state.len() {
            return Err(Error::Internal(format!(
                "optimizer holds {} parameters, got {} values and {} gradients",
                self.state.len(),
                params.len(),
                grads.len()
            )));
        }
        self.t += 1;
        let c = self.config;
        let bc1 = 1.0 - (c.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(self.t as i32);
        let step = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for (((p, g), s), &d) in params.iter_mut().zip(grads).zip(&mut self.state).zip(decay) {
            let wd = if d { 1.0 - lr * c.weight_decay } else { 1.0 };
            for (((w, &g), m), v) in p.iter_mut().zip(g).zip(&mut s.m).zip(&mut s.v) {
                *m = c.beta1 * *m + (1.0 - c.beta1) * g;
                *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
                *w = *w * wd - step * *m / ((*v).sqrt() / bc2_sqrt + c.eps);
            }
        }
        Ok(())
    }
}

/// Learning rate at `step` (0-based): linear warmup over `warmup` steps to `peak`, then a cosine
/// decay to `min` at `total`.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f32, min: f32) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f32 / span as f32).min(1.0);
    min + 0.5 * (peak - min) * (1.0 + (std::f32::consts::PI * progress).cos())
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (no-op when `max_norm <= 0`);
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f32) -> f32 {
    let norm = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let k = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= k;
            }
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_adamw_step_moves_each_weight_by_lr() {
        // With zero moments, bias correction makes the first step lr · sign(g).
        let mut opt = AdamW::new(
            AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            },
            &[3],
        );
        let mut p = vec![vec![1.0f32, 1.0, 1.0]];
        opt.step(&mut p, &[vec![0.5, -2.0, 0.0]], &[true], 0.1)
            .unwrap();
        assert!((p[0][0] - 0.9).abs() < 1e-6);
        assert!((p[0][1] - 1.1).abs() < 1e-6);
        assert_eq!(p[0][2], 1.0);
    }

    #[test]
    fn decoupled_decay_shrinks_matrices_only() {
        let mut opt = AdamW::new(
            AdamWConfig {
                weight_decay: 0.5,
                ..Default::default()
            },
            &[1, 1],
        );
        let mut p = vec![vec![2.0f32], vec![2.0]];
        opt.step(&mut p, &[vec![0.0], vec![0.0]], &[true, false], 0.1)
            .unwrap();
        assert!((p[0][0] - 1.9).abs() < 1e-6);
        assert_eq!(p[1][0], 2.0);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        assert!((lr_at(0, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-6);
        assert!((lr_at(9, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-6);
        assert!((lr_at(10, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-6);
        assert!((lr_at(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-6);
        assert!(lr_at(55, 100, 10, 1.0, 0.1) < 0.6);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        let n = (g[0][0].powi(2) + g[1][0].powi(2)).sqrt();
        assert!((n - 1.0).abs() < 1e-4);
    }
}
