//! The local learning coefficient λ̂ (Lau et al., "Quantifying degeneracy in singular models via the
//! learning coefficient", arXiv 2308.12108), estimated by SGLD exactly as devinterp 1.x defines it
//! (`estimate_learning_coeff_with_summary` with `SGMCMC.sgld`), for any model through [`Model`];
//! RMSprop-preconditioned SGLD and SGNHT beside it ([`chain`] has the updates and their per-step
//! norms).
//!
//! Per chain, from w₀ = w*: at every step t a minibatch of m examples of the sampling set (an
//! epoch-wise shuffle seeded by (seed, chain), cycled) gives L_m(w_t) and its gradient, then (SGLD)
//!
//! ```text
//! w_{t+1} = w_t − (ε/2)·(nβ·∇L_m(w_t) + γ·(w_t − w*)) + √ε·σ·N(0, I)        (σ = 1)
//! ```
//!
//! After `burnin` steps, every K-th step's minibatch loss L_m(w_t) (taken before that step's update,
//! as devinterp records it) is a draw. Each chain's λ̂ = nβ·(mean of its draws − L(w*)); the estimate
//! is their mean, with the standard deviation over chains (n − 1 in the denominator, as torch's
//! `std`). nβ defaults to devinterp's m / ln m (`batch`), or n / ln n (`dataset`) for the training
//! set's n. L(w*) defaults to the loss on the whole training set (`full`); devinterp's default, the
//! mean over the first `chains` minibatches (`minibatches`), is available by name: its error is
//! multiplied by nβ in λ̂.
//!
//! Diagnostics per chain: the loss trace, ‖w_t − w*‖, and the MALA acceptance probability of each
//! move between consecutive draws as devinterp's `MalaAcceptanceRate` computes it, with the
//! potential U(w) = nβ·L_m(w) + (γ/2)·‖w − w*‖² (meaningful for K = 1; devinterp leaves the first
//! transition of each chain at 0 in its mean, toylens averages the transitions it computes; SGLD
//! only: the other samplers' proposals are not Langevin's).
//!
//! Refined LLCs (Wang et al. 2024, "Differentiation and specialization of attention heads via the
//! refined local learning coefficient"): `restrict` samples only some weights (the
//! weight-restricted LLC); the sampling set may be any named set of the task (sampled and
//! measured on a set q′, the data-refined LLC of the paper); and at every draw the loss on each
//! observed set S is recorded, as devinterp 2.x's observables record it, giving
//! λ̂_S = nβ·(mean over draws of L_S(w_t) − L_S(w*)) per chain: how far the posterior sampled on the
//! sampling set rises in S's loss.
//! Chains run in parallel, each seeded from (seed, chain) alone: results do not depend on the thread
//! count.

pub mod chain;

use crate::analysis::components::select_ranges;
use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::models::{mask::Mask, Model, Scratch};
use crate::tasks::{EpochOrder, NamedSet};
pub use chain::{Sampler, StepNorms};
use rayon::prelude::*;
use serde::Serialize;

/// The inverse temperature nβ.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum NBeta {
    /// m / ln m, m the minibatch size (devinterp's `default_nbeta`).
    Batch,
    /// n / ln n, n the training-set size.
    Dataset,
    Value(f64),
}

impl NBeta {
    /// `batch`, `dataset` or a number; the error says which are known.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "batch" => Ok(NBeta::Batch),
            "dataset" => Ok(NBeta::Dataset),
            x => x
                .parse::<f64>()
                .map(NBeta::Value)
                .map_err(|_| format!("`{x}`: nβ is `batch`, `dataset` or a number")),
        }
    }
}

/// Where L(w*) is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum InitLoss {
    /// The whole training set.
    Full,
    /// The mean over the first `chains` minibatches (devinterp's default).
    Minibatches,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlcConfig {
    /// Step size ε.
    pub lr: f64,
    /// Localization γ.
    pub localization: f64,
    pub nbeta: NBeta,
    pub chains: usize,
    pub draws: usize,
    pub burnin: usize,
    pub steps_between_draws: usize,
    /// Minibatch size m: None for [`DEFAULT_BATCH_SIZE`], or the whole training set where that is
    /// smaller (the estimate's warnings then say so); a larger m given is an error.
    pub batch_size: Option<usize>,
    pub seed: u64,
    pub init_loss: InitLoss,
    /// Sample only these components (names, `*` patterns or `blocks.L.attn.head.H`, see
    /// [`crate::analysis::components`]), every other weight held at w*: the weight-restricted LLC
    /// (Wang et al. 2024). Empty: every trainable weight.
    pub restrict: Vec<String>,
    /// A pruning mask (safetensors of 0/1 by parameter name) whose dead weights are never moved;
    /// None: a run directory's own `mask.safetensors` where it has one. Read by the commands that
    /// load checkpoints (`commands::llc`); a library caller hands the loaded mask to
    /// [`estimate_many_masked`].
    pub mask: Option<std::path::PathBuf>,
    pub sampler: Sampler,
    /// RMSprop-SGLD's decay α of the mean of squared gradients, in [0, 1).
    pub rmsprop_alpha: f64,
    /// RMSprop-SGLD's eps in G = 1 / (√v + eps), > 0.
    pub rmsprop_eps: f64,
    /// SGNHT's diffusion factor A (and the thermostat's start), > 0.
    pub diffusion: f64,
    /// The task's named set the chains sample on (None: the training set). Read by the commands,
    /// which resolve names into sets.
    pub sample_on: Option<String>,
    /// The task's named sets whose loss is recorded at every draw (λ̂ per set).
    pub observe: Vec<String>,
    /// Examples of each observed set evaluated at a draw (the first ones, the same every draw);
    /// None: the minibatch size m.
    pub observe_examples: Option<usize>,
    /// A run's estimates at the checkpoints of these steps only (empty: every checkpoint). Read by
    /// the commands that open runs.
    pub at_steps: Vec<u64>,
}

impl Default for LlcConfig {
    fn default() -> Self {
        LlcConfig {
            lr: 1e-4,
            localization: 100.0,
            nbeta: NBeta::Batch,
            chains: 4,
            draws: 200,
            burnin: 100,
            steps_between_draws: 1,
            batch_size: None,
            seed: 0,
            init_loss: InitLoss::Full,
            restrict: Vec::new(),
            mask: None,
            sampler: Sampler::Sgld,
            rmsprop_alpha: 0.99,
            rmsprop_eps: 0.1,
            diffusion: 0.01,
            sample_on: None,
            observe: Vec::new(),
            observe_examples: None,
            at_steps: Vec::new(),
        }
    }
}

/// The minibatch size when none is given (devinterp's examples take 512 too).
pub const DEFAULT_BATCH_SIZE: usize = 512;

impl LlcConfig {
    /// The minibatch size m on a training set of `n_train` examples.
    pub fn minibatch(&self, n_train: usize) -> usize {
        self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE.min(n_train))
    }

    /// An error naming the setting, for values no estimate can use.
    pub fn validate(&self, n_train: usize) -> Result<()> {
        let bad = |k: &str, why: String| Err(Error::Input(format!("--{k}: {why}")));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(
                "lr",
                format!("the step size ε must be positive (got {})", self.lr),
            );
        }
        if !(self.localization >= 0.0 && self.localization.is_finite()) {
            return bad(
                "localization",
                format!("γ must be ≥ 0 (got {})", self.localization),
            );
        }
        if !(0.0..1.0).contains(&self.rmsprop_alpha) {
            return bad(
                "rmsprop-alpha",
                format!("the decay α must be in [0, 1) (got {})", self.rmsprop_alpha),
            );
        }
        if !(self.rmsprop_eps > 0.0 && self.rmsprop_eps.is_finite()) {
            return bad(
                "rmsprop-eps",
                format!("must be positive (got {})", self.rmsprop_eps),
            );
        }
        if !(self.diffusion > 0.0 && self.diffusion < 1.0) {
            return bad(
                "diffusion",
                format!(
                    "SGNHT's diffusion factor A must be in (0, 1): it starts the thermostat ξ, and ξ ≥ 1 reverses the momentum (got {})",
                    self.diffusion
                ),
            );
        }
        if self.observe_examples == Some(0) {
            return bad("observe-examples", "must be at least 1 (got 0)".into());
        }
        if let NBeta::Value(b) = self.nbeta {
            if !(b > 0.0 && b.is_finite()) {
                return bad("nbeta", format!("nβ must be positive (got {b})"));
            }
        }
        if n_train == 0 {
            return Err(Error::Input(
                "the sampling set (the training set, or --sample-on's) is empty: no λ̂ to estimate"
                    .into(),
            ));
        }
        for (k, v) in [
            ("chains", self.chains),
            ("draws", self.draws),
            ("steps-between-draws", self.steps_between_draws),
            ("batch-size", self.minibatch(n_train)),
        ] {
            if v == 0 {
                return bad(k, "must be at least 1 (got 0)".into());
            }
        }
        if self.chains == 1 {
            return bad(
                "chains",
                "needs at least 2 chains for a standard deviation".into(),
            );
        }
        if let Some(m) = self.batch_size.filter(|&m| m > n_train) {
            return bad(
                "batch-size",
                format!("a minibatch of {m} is larger than the training set ({n_train} examples)"),
            );
        }
        if self.minibatch(n_train) == 1 && self.nbeta == NBeta::Batch {
            return bad(
                "nbeta",
                "m / ln m is undefined for a minibatch of 1; give nβ".into(),
            );
        }
        Ok(())
    }

    /// nβ for a training set of `n` examples.
    pub fn nbeta_value(&self, n: usize) -> f64 {
        let over_log = |k: usize| k as f64 / (k as f64).ln();
        match self.nbeta {
            NBeta::Batch => over_log(self.minibatch(n)),
            NBeta::Dataset => over_log(n),
            NBeta::Value(b) => b,
        }
    }
}

/// One chain's record.
#[derive(Clone, Debug, Serialize)]
pub struct ChainTrace {
    pub llc: f64,
    /// L_m(w_t) of each draw.
    pub losses: Vec<f64>,
    /// ‖w_t − w*‖ of each draw.
    pub distances: Vec<f64>,
    /// MALA acceptance probability of each move between consecutive draws (SGLD only).
    pub acceptance: Vec<f64>,
    /// Every step's norms of the update's terms, burn-in included.
    pub norms: Vec<StepNorms>,
    /// `[set][draw]`: each observed set's loss at each draw.
    pub observed: Vec<Vec<f64>>,
}

/// λ̂ measured on one observed set: nβ·(mean over draws of L_S(w_t) − L_S(w*)).
#[derive(Clone, Debug, Serialize)]
pub struct ObservedLlc {
    pub set: String,
    pub llc_mean: f64,
    pub llc_std: f64,
    pub llc_per_chain: Vec<f64>,
    /// L_S(w*).
    pub init_loss: f64,
}

/// The estimate at one set of weights.
#[derive(Clone, Debug, Serialize)]
pub struct LlcEstimate {
    pub llc_mean: f64,
    pub llc_std: f64,
    pub llc_per_chain: Vec<f64>,
    /// L(w*).
    pub init_loss: f64,
    pub nbeta: f64,
    /// NaN where the sampler is not SGLD.
    pub mean_acceptance: f64,
    pub sampler: Sampler,
    /// The observed sets' λ̂, in the order asked.
    pub observed: Vec<ObservedLlc>,
    /// Calibration problems seen (empty when none).
    pub warnings: Vec<String>,
    pub chains: Vec<ChainTrace>,
}

pub(super) fn chain_seed(seed: u64, chain: usize, stream: u64) -> u64 {
    let mut z = seed
        ^ (chain as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z ^= z >> 31;
    z.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// L(w*) as `cfg.init_loss` says.
fn init_loss(model: &dyn Model, data: &Batch, cfg: &LlcConfig) -> Result<f64> {
    let mut s = Scratch::new();
    match cfg.init_loss {
        InitLoss::Full => Ok(model.evaluate(&mut s, data)?.loss),
        InitLoss::Minibatches => {
            // devinterp: the first `chains` batches of its (shuffled) loader.
            let m = cfg.minibatch(data.len());
            let mut order = EpochOrder::new(data.len(), m, chain_seed(cfg.seed, 0, 0));
            let k = cfg.chains.min(data.len().div_ceil(m));
            let mut total = 0.0;
            for step in 1..=k as u64 {
                total += model
                    .evaluate(&mut s, &data.select(order.batch(step)))?
                    .loss;
            }
            Ok(total / k as f64)
        }
    }
}

/// Mean and standard deviation (n − 1 in the denominator, as torch's `std`) of per-chain values.
fn mean_std(per: &[f64]) -> (f64, f64) {
    let k = per.len() as f64;
    let mean = per.iter().sum::<f64>() / k;
    let var = per.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn mean_of(s: &[f64]) -> f64 {
    s.iter().sum::<f64>() / s.len().max(1) as f64
}

/// The estimate from its chains' records; `observed` names each observed set with L_S(w*).
fn summarize(
    chains: Vec<chain::ChainRecord>,
    (init, nbeta): (f64, f64),
    observed: &[(String, f64)],
    cfg: &LlcConfig,
    full_batch: bool,
) -> LlcEstimate {
    let mut warnings = Vec::new();
    let traces: Vec<ChainTrace> = chains
        .into_iter()
        .enumerate()
        .map(|(c, rec)| {
            let losses = &rec.losses;
            let llc = nbeta * (mean_of(losses) - init);
            if losses.iter().any(|l| !l.is_finite()) {
                warnings.push(format!(
                    "chain {c} diverged (its loss became {}): take a smaller --lr or a larger --localization",
                    losses.last().copied().unwrap_or(f64::NAN)
                ));
            } else {
                let q = losses.len() / 4;
                if q >= 2 {
                    let (early, late) = (mean_of(&losses[q..2 * q]), mean_of(&losses[3 * q..]));
                    if late - init > 2.0 * (early - init).max(0.0) + 1.0 {
                        warnings.push(format!(
                            "chain {c}'s loss is still growing ({early:.3e} → {late:.3e}): take a smaller --lr or a larger --localization"
                        ));
                    }
                }
                if llc < 0.0 {
                    warnings.push(format!(
                        "chain {c} sits below L(w*) (λ̂ {llc:.3}): the step is too large or γ too small for this model, or w* is not a local minimum"
                    ));
                }
            }
            ChainTrace {
                llc,
                losses: rec.losses,
                distances: rec.distances,
                acceptance: rec.acceptance,
                norms: rec.norms,
                observed: rec.observed,
            }
        })
        .collect();
    let per: Vec<f64> = traces.iter().map(|t| t.llc).collect();
    let (mean, std) = mean_std(&per);
    let observed = observed
        .iter()
        .enumerate()
        .map(|(k, (set, init))| {
            // A chain that diverged before its first draw observed nothing: NaN, not 0.
            let per: Vec<f64> = traces
                .iter()
                .map(|t| match t.observed[k].as_slice() {
                    [] => f64::NAN,
                    draws => nbeta * (mean_of(draws) - init),
                })
                .collect();
            let (llc_mean, llc_std) = mean_std(&per);
            ObservedLlc {
                set: set.clone(),
                llc_mean,
                llc_std,
                llc_per_chain: per,
                init_loss: *init,
            }
        })
        .collect();
    let acc: Vec<f64> = traces
        .iter()
        .flat_map(|t| t.acceptance.iter().copied())
        .filter(|a| a.is_finite())
        .collect();
    let mean_acceptance = if acc.is_empty() {
        f64::NAN
    } else {
        mean_of(&acc)
    };
    // With minibatches U itself is noisy (nβ times the batch-to-batch spread of L_m), which lowers
    // the acceptance whatever the step; the warning is for full-batch sampling only.
    if full_batch && !acc.is_empty() && mean_acceptance < 0.5 {
        warnings.push(format!(
            "mean MALA acceptance {mean_acceptance:.2} with full-batch gradients (good sampling gives 0.9 or more): take a smaller --lr"
        ));
    }
    if cfg.sampler == Sampler::Sgnht {
        // The thermostat holds the momentum's mean square at ε; a ξ that keeps growing means the
        // gradient kicks outrun it.
        for (c, t) in traces.iter().enumerate() {
            if let Some(last) = t.norms.last() {
                if last.thermostat.is_finite() && last.thermostat > 0.5 {
                    warnings.push(format!(
                        "chain {c}'s SGNHT thermostat ended at ξ = {:.3} (near 1 it cancels the momentum): take a smaller --lr",
                        last.thermostat
                    ));
                }
            }
        }
    }
    LlcEstimate {
        llc_mean: mean,
        llc_std: std,
        llc_per_chain: per,
        init_loss: init,
        nbeta,
        mean_acceptance,
        sampler: cfg.sampler,
        observed,
        warnings,
        chains: traces,
    }
}

/// λ̂ at each of `models`' weights on the training set `data`; every (model, chain) runs in parallel.
pub fn estimate_many(
    models: &[&dyn Model],
    data: &Batch,
    cfg: &LlcConfig,
) -> Result<Vec<LlcEstimate>> {
    estimate_many_masked(models, data, cfg, None)
}

/// [`estimate_many`] for pruned models: the dead entries of `mask` are never moved (they stay
/// exactly zero in every draw).
pub fn estimate_many_masked(
    models: &[&dyn Model],
    data: &Batch,
    cfg: &LlcConfig,
    mask: Option<&Mask>,
) -> Result<Vec<LlcEstimate>> {
    estimate_observed(models, (data, &[]), cfg, mask)
}

/// λ̂ at each of `models`' weights, sampling on `data` (a task's training set, or any of its named
/// sets), with the loss on each `observed` set recorded at every draw (its first
/// `cfg.observe_examples` examples, default m); `mask`'s dead entries never move.
pub fn estimate_observed(
    models: &[&dyn Model],
    (data, observed): (&Batch, &[NamedSet]),
    cfg: &LlcConfig,
    mask: Option<&Mask>,
) -> Result<Vec<LlcEstimate>> {
    cfg.validate(data.len())?;
    crate::engine::threads::init(0);
    crate::engine::threads::flush_subnormals();
    let nbeta = cfg.nbeta_value(data.len());
    let minibatch = cfg.minibatch(data.len());
    let observed: Vec<NamedSet> = observed
        .iter()
        .map(|s| s.head(cfg.observe_examples.unwrap_or(minibatch)))
        .collect();
    let sampled = models
        .iter()
        .map(|m| select_ranges(*m, &cfg.restrict, mask))
        .collect::<Result<Vec<_>>>()?;
    let jobs: Vec<(usize, usize)> = (0..models.len())
        .flat_map(|k| (0..cfg.chains).map(move |c| (k, c)))
        .collect();
    let mut results = jobs
        .par_iter()
        .map(|&(k, c)| chain::run_chain(models[k], (data, &observed), cfg, nbeta, (c, &sampled[k])))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    models
        .iter()
        .map(|m| {
            let init = init_loss(*m, data, cfg)?;
            let mut scratch = Scratch::new();
            let observed_init = observed
                .iter()
                .map(|s| Ok((s.name.clone(), s.loss(*m, &mut scratch)?)))
                .collect::<Result<Vec<_>>>()?;
            let chains: Vec<_> = results.by_ref().take(cfg.chains).collect();
            let mut estimate = summarize(
                chains,
                (init, nbeta),
                &observed_init,
                cfg,
                minibatch == data.len(),
            );
            if cfg.batch_size.is_none() && minibatch < DEFAULT_BATCH_SIZE {
                estimate.warnings.insert(
                    0,
                    format!(
                        "the default minibatch of {DEFAULT_BATCH_SIZE} is larger than the training set ({minibatch} examples): the whole set is used (full-batch SGLD)"
                    ),
                );
            }
            Ok(estimate)
        })
        .collect()
}

/// λ̂ at `model`'s weights on the training set `data`.
pub fn estimate(model: &dyn Model, data: &Batch, cfg: &LlcConfig) -> Result<LlcEstimate> {
    Ok(estimate_many(&[model], data, cfg)?.remove(0))
}

/// One cell of a calibration grid.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationCell {
    pub lr: f64,
    pub nbeta: f64,
    pub localization: f64,
    pub estimate: LlcEstimate,
}

/// λ̂ over a grid of step sizes × nβ × γ (as devinterp's `EpsilonBetaAnalyzer`), every cell with
/// `base`'s other settings (and `mask`'s dead weights held at zero, as the estimate holds them).
pub fn calibrate(
    model: &dyn Model,
    data: &Batch,
    base: &LlcConfig,
    (lrs, nbetas, localizations): (&[f64], &[NBeta], &[f64]),
    mask: Option<&Mask>,
) -> Result<Vec<CalibrationCell>> {
    let mut cells = Vec::new();
    for &lr in lrs {
        for &nbeta in nbetas {
            for &localization in localizations {
                let cfg = LlcConfig {
                    lr,
                    nbeta,
                    localization,
                    ..base.clone()
                };
                let estimate = estimate_many_masked(&[model], data, &cfg, mask)?.remove(0);
                cells.push(CalibrationCell {
                    lr,
                    nbeta: estimate.nbeta,
                    localization,
                    estimate,
                });
            }
        }
    }
    Ok(cells)
}
