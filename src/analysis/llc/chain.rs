//! One chain of a λ̂ estimate: the samplers' updates, as devinterp defines them, the per-step norms
//! of their terms, and the draws (the minibatch loss, and the loss on each observed set).
//!
//! With g = ∇L_m(w_t) on the step's minibatch, δ = w_t − w*, η ~ N(0, I), per sampled weight:
//!
//! ```text
//! SGLD          w ← w − (ε/2)·(nβ·g + γ·δ) + √ε·η
//! RMSprop-SGLD  v ← α·v + (1 − α)·g²,  G = 1 / (√v + eps)                      (v₀ = 0)
//!               w ← w − (ε/2)·G·(nβ·g + γ·δ) + √ε·√G·η
//! SGNHT         p ← p − ε·(nβ·g + γ·δ);  p ← p − ξ·p;  p ← p + √(2Aε)·η;  w ← w + p
//!               ξ ← ξ + mean(p²) − ε                                  (p₀ = √ε·η, ξ₀ = A)
//! ```
//!
//! SGLD and RMSprop-SGLD are devinterp 2.x's `SGMCMC.sgld` and `SGMCMC.rmsprop_sgld` (its default
//! α 0.99, eps 0.1); SGNHT is devinterp's `SGNHT` (Ding et al. 2014), which has no localization: it
//! is the γ = 0 case here. (devinterp 2.0.1's `SGMCMC.sgnht` computes a thermostat and momentum it
//! never applies, so it samples as SGLD without localization and with its noise scaled by √(2A);
//! its `sample()` offers only the two SGLD samplers.)
//!
//! Every step's norms follow devinterp 2.x's `Metrics` (the terms as applied to the weights):
//! `scaled_grad` (ε/2)·nβ·G·g, `unscaled_grad` (ε/2)·nβ·g, `localization` (ε/2)·G·γ·δ, `noise`
//! √ε·√G·η (G = 1 for SGLD), `distance` δ before the step, and the three dot products. For SGNHT
//! the terms are those added to the momentum (ε·nβ·g, ε·γ·δ, √(2Aε)·η) and its thermostat ξ.

use super::LlcConfig;
use crate::batch::Batch;
use crate::engine::rng::Rng;
use crate::error::Result;
use crate::models::{Model, Scratch};
use crate::tasks::{EpochOrder, NamedSet};
use serde::Serialize;
use std::ops::Range;

/// Which sampler moves the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Sampler {
    /// Stochastic-gradient Langevin dynamics with localization (Lau et al.).
    #[default]
    Sgld,
    /// SGLD preconditioned by RMSprop's running mean of squared gradients (Li et al. 2016).
    RmspropSgld,
    /// Stochastic-gradient Nosé–Hoover thermostat (Ding et al. 2014).
    Sgnht,
}

impl Sampler {
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Sgld => "sgld",
            Sampler::RmspropSgld => "rmsprop-sgld",
            Sampler::Sgnht => "sgnht",
        }
    }
}

/// The norms of one step's terms (see the module's description).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StepNorms {
    pub scaled_grad: f64,
    pub unscaled_grad: f64,
    pub localization: f64,
    pub noise: f64,
    pub distance: f64,
    pub dot_grad_prior: f64,
    pub dot_grad_noise: f64,
    pub dot_prior_noise: f64,
    /// SGNHT's ξ after the step (0 for the other samplers).
    pub thermostat: f64,
}

impl StepNorms {
    pub const COLUMNS: [&'static str; 9] = [
        "scaled_grad",
        "unscaled_grad",
        "localization",
        "noise",
        "distance",
        "dot_grad_prior",
        "dot_grad_noise",
        "dot_prior_noise",
        "thermostat",
    ];

    pub fn values(&self) -> [f64; 9] {
        [
            self.scaled_grad,
            self.unscaled_grad,
            self.localization,
            self.noise,
            self.distance,
            self.dot_grad_prior,
            self.dot_grad_noise,
            self.dot_prior_noise,
            self.thermostat,
        ]
    }

    /// Adds one weight's terms (sums of squares and products, square-rooted by `finish`).
    #[inline]
    fn add(&mut self, grad: f64, unscaled: f64, prior: f64, noise: f64, delta: f64) {
        self.scaled_grad += grad * grad;
        self.unscaled_grad += unscaled * unscaled;
        self.localization += prior * prior;
        self.noise += noise * noise;
        self.distance += delta * delta;
        self.dot_grad_prior += grad * prior;
        self.dot_grad_noise += grad * noise;
        self.dot_prior_noise += prior * noise;
    }

    fn finish(mut self) -> Self {
        for x in [
            &mut self.scaled_grad,
            &mut self.unscaled_grad,
            &mut self.localization,
            &mut self.noise,
            &mut self.distance,
        ] {
            *x = x.sqrt();
        }
        self
    }
}

/// What a chain records.
pub(super) struct ChainRecord {
    /// L_m(w_t) of each draw.
    pub losses: Vec<f64>,
    /// ‖w_t − w*‖ of each draw.
    pub distances: Vec<f64>,
    /// MALA acceptance of each move between consecutive draws (SGLD only).
    pub acceptance: Vec<f64>,
    /// Every step's norms, burn-in included.
    pub norms: Vec<StepNorms>,
    /// `[set][draw]`: each observed set's loss at each draw.
    pub observed: Vec<Vec<f64>>,
}

/// The sampler's state beyond the weights.
enum State {
    Sgld,
    Rmsprop { square_avg: Vec<f32> },
    Sgnht { momentum: Vec<f32>, thermostat: f64 },
}

/// One chain from `model`'s weights (w*), moving only the weights in `sampled`.
pub(super) fn run_chain(
    model: &dyn Model,
    (data, observed): (&Batch, &[NamedSet]),
    cfg: &LlcConfig,
    nbeta: f64,
    (chain, sampled): (usize, &[Range<usize>]),
) -> Result<ChainRecord> {
    let mut m = model.clone_box();
    let w_star = model.params().to_vec();
    let mut scratch = Scratch::new();
    let mut order = EpochOrder::new(
        data.len(),
        cfg.minibatch(data.len()),
        super::chain_seed(cfg.seed, chain, 0),
    );
    let mut rng = Rng::new(super::chain_seed(cfg.seed, chain, 1));
    let n = w_star.len();
    let mut grads = vec![0.0f32; n];
    let mut dws = vec![0.0f32; n];
    let mut noise = vec![0.0f32; n];
    let (lr, gamma, nb) = (cfg.lr as f32, cfg.localization as f32, nbeta as f32);
    let sqrt_lr = lr.sqrt();
    let mut state = match cfg.sampler {
        Sampler::Sgld => State::Sgld,
        Sampler::RmspropSgld => State::Rmsprop {
            square_avg: vec![0.0; n],
        },
        Sampler::Sgnht => {
            let mut momentum = vec![0.0f32; n];
            for r in sampled {
                rng.fill_normal_f32(&mut momentum[r.clone()]);
                for p in &mut momentum[r.clone()] {
                    *p *= sqrt_lr;
                }
            }
            State::Sgnht {
                momentum,
                thermostat: cfg.diffusion,
            }
        }
    };
    let n_sampled: usize = sampled.iter().map(|r| r.len()).sum();
    let mut rec = ChainRecord {
        losses: Vec::new(),
        distances: Vec::new(),
        acceptance: Vec::new(),
        norms: Vec::new(),
        observed: vec![Vec::new(); observed.len()],
    };
    // The point of this draw, and (point, ∇U there, U there) of the previous one, for the
    // acceptance probability: buffers reused across draws.
    let (mut point, mut prev_point, mut prev_dws) =
        (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let mut prev_u: Option<f64> = None;
    let steps = cfg.burnin + cfg.draws * cfg.steps_between_draws;
    for i in 0..steps {
        let batch = data.select(order.batch(i as u64 + 1));
        let loss = m
            .loss_and_grad_of(&mut scratch, &batch, &mut grads, sampled)?
            .loss;
        let drawn = i >= cfg.burnin && (i + 1 - cfg.burnin) % cfg.steps_between_draws == 0;
        if drawn {
            if let State::Sgld = state {
                // Only the MALA acceptance (SGLD's) needs the draw's point.
                point.copy_from_slice(m.params());
            }
            if loss.is_finite() {
                for (set, losses) in observed.iter().zip(&mut rec.observed) {
                    losses.push(set.loss(m.as_ref(), &mut scratch)?);
                }
            }
        }
        let w = m.params_mut();
        let mut norms = StepNorms::default();
        for r in sampled {
            rng.fill_normal_f32(&mut noise[r.clone()]);
        }
        match &mut state {
            State::Sgld => {
                let half = 0.5 * f64::from(lr);
                for r in sampled {
                    for j in r.clone() {
                        let delta = w[j] - w_star[j];
                        let d_p = nb * grads[j] + gamma * delta;
                        dws[j] = d_p;
                        w[j] += -0.5 * lr * d_p + sqrt_lr * noise[j];
                        let g = half * f64::from(nb * grads[j]);
                        norms.add(
                            g,
                            g,
                            half * f64::from(gamma * delta),
                            f64::from(sqrt_lr * noise[j]),
                            f64::from(delta),
                        );
                    }
                }
            }
            State::Rmsprop { square_avg } => {
                let (alpha, eps) = (cfg.rmsprop_alpha as f32, cfg.rmsprop_eps as f32);
                let half = 0.5 * f64::from(lr);
                for r in sampled {
                    for j in r.clone() {
                        let g = grads[j];
                        square_avg[j] = square_avg[j] * alpha + (1.0 - alpha) * g * g;
                        let pre = 1.0 / (square_avg[j].sqrt() + eps);
                        let delta = w[j] - w_star[j];
                        let (grad_term, prior_term) = (pre * (nb * g), pre * (gamma * delta));
                        w[j] += -0.5 * lr * (grad_term + prior_term);
                        let noise_term = sqrt_lr * (pre.sqrt() * noise[j]);
                        w[j] += noise_term;
                        norms.add(
                            half * f64::from(grad_term),
                            half * f64::from(nb * g),
                            half * f64::from(prior_term),
                            f64::from(noise_term),
                            f64::from(delta),
                        );
                    }
                }
            }
            State::Sgnht {
                momentum,
                thermostat,
            } => {
                let xi = *thermostat as f32;
                let scale = (2.0 * cfg.diffusion as f32 * lr).sqrt();
                let mut energy = 0.0f64;
                for r in sampled {
                    for j in r.clone() {
                        let delta = w[j] - w_star[j];
                        let (grad_term, prior_term) = (lr * (nb * grads[j]), lr * (gamma * delta));
                        let mut p = momentum[j] - (grad_term + prior_term);
                        p -= xi * p;
                        let noise_term = scale * noise[j];
                        p += noise_term;
                        momentum[j] = p;
                        w[j] += p;
                        energy += f64::from(p) * f64::from(p);
                        norms.add(
                            f64::from(grad_term),
                            f64::from(grad_term),
                            f64::from(prior_term),
                            f64::from(noise_term),
                            f64::from(delta),
                        );
                    }
                }
                *thermostat += energy / n_sampled.max(1) as f64 - f64::from(lr);
                norms.thermostat = *thermostat;
            }
        }
        let dist2 = norms.distance;
        let norms = norms.finish();
        rec.norms.push(norms);
        if !loss.is_finite() {
            rec.losses.push(loss);
            rec.distances.push(norms.distance);
            break;
        }
        if drawn {
            rec.losses.push(loss);
            rec.distances.push(norms.distance);
            if let State::Sgld = state {
                let u = nbeta * loss + 0.5 * cfg.localization * dist2;
                if let Some(pu) = prev_u {
                    rec.acceptance.push(mala_acceptance(
                        (&prev_point, &prev_dws, pu),
                        (&point, &dws, u),
                        cfg.lr,
                        sampled,
                    ));
                }
                std::mem::swap(&mut prev_point, &mut point);
                prev_dws.copy_from_slice(&dws);
                prev_u = Some(u);
            }
        }
    }
    Ok(rec)
}

/// min(1, q(prev | cur) / q(cur | prev) · exp(U(prev) − U(cur))) for Langevin proposals of step ε,
/// each side (point, ∇U there, U there), as devinterp's `MalaAcceptanceRate` computes it.
fn mala_acceptance(
    (prev, prev_grad, prev_u): (&[f32], &[f32], f64),
    (cur, cur_grad, cur_u): (&[f32], &[f32], f64),
    lr: f64,
    ranges: &[Range<usize>],
) -> f64 {
    let (mut to_prev, mut to_cur) = (0.0f64, 0.0f64);
    for r in ranges {
        for j in r.clone() {
            let (p, c) = (f64::from(prev[j]), f64::from(cur[j]));
            let a = p - c + 0.5 * lr * f64::from(cur_grad[j]);
            let b = c - p + 0.5 * lr * f64::from(prev_grad[j]);
            to_prev += a * a;
            to_cur += b * b;
        }
    }
    let log_ratio = (-to_prev + to_cur) / (2.0 * lr) + prev_u - cur_u;
    if log_ratio.is_nan() {
        return f64::NAN;
    }
    log_ratio.exp().min(1.0)
}
