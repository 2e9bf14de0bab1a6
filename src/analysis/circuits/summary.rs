//! Everything `toylens circuits` and the report's circuits section show about one transformer, as
//! data: direct logit attribution and the logit lens on clean inputs, activation patching of every
//! block and head from clean into corrupted inputs beside its attribution-patching estimate, path
//! patching between heads, composition and copying scores (raw and with processed weights), head
//! detector scores, and layer 0's full circuits.

use super::detect::{self, ErrorMeasure, Exclude, HeadKind};
use super::patching::{self, Metric, ReceiverInput, Sweep};
use super::process::{process, Processing};
use super::resid;
use super::weights::{self, Composition, CopyingScore};
use crate::batch::Batch;
use crate::config::Experiment;
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use crate::hooks::CacheFilter;
use crate::models::transformer::Transformer;
use crate::tasks::modular::{ModularTask, Op};
use ndarray::{Array2, ArrayD, Axis};
use serde::Serialize;

/// Clean and corrupted inputs of the same shape, the clean answers and the wrong answers (the
/// corrupted inputs' own) that the logit difference compares.
#[derive(Clone, Debug)]
pub struct CircuitInputs {
    pub clean: Array2<u32>,
    pub corrupted: Array2<u32>,
    pub answers: Vec<u32>,
    pub wrong: Vec<u32>,
    /// How they were chosen, for captions.
    pub description: String,
}

/// Random pairs `a b =` (seeded) with `a` replaced by another number in the corrupted inputs; the
/// wrong answer is the corrupted pair's.
pub fn modular_inputs(p: usize, op: Op, n: usize, seed: u64) -> CircuitInputs {
    let mut rng = Rng::new(seed);
    let pu = p as u64;
    let mut clean = Array2::zeros((n, 3));
    let mut corrupted = Array2::zeros((n, 3));
    let (mut answers, mut wrong) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (a, b) = (rng.below(pu), rng.below(pu));
        let a2 = (a + 1 + rng.below(pu - 1)) % pu;
        for (row, x) in [(&mut clean, a), (&mut corrupted, a2)] {
            row[[i, 0]] = x as u32;
            row[[i, 1]] = b as u32;
            row[[i, 2]] = p as u32;
        }
        answers.push(op.apply(a, b, pu) as u32);
        wrong.push(op.apply(a2, b, pu) as u32);
    }
    CircuitInputs {
        clean,
        corrupted,
        answers,
        wrong,
        description: format!(
            "{n} random pairs `a b =` (seed {seed}); corrupted: a replaced by another number; the logit difference is the clean answer's minus the corrupted answer's"
        ),
    }
}

/// The inputs an experiment's task gives, and the modulus when it is modular arithmetic (whose
/// full circuits are also drawn in the Fourier basis): modular pairs as [`modular_inputs`]; for
/// any other token task its first `n` training examples up to the last loss position, each
/// corrupted into the next one, whose answer is the wrong one.
pub fn inputs_for(exp: &Experiment, n: usize, seed: u64) -> Result<(CircuitInputs, Option<usize>)> {
    if let Some(m) = exp.task.downcast::<ModularTask>() {
        return Ok((modular_inputs(m.p, m.op, n, seed), Some(m.p)));
    }
    let mut data = exp.data()?;
    let batch = match data.train_set() {
        Some(b) => b,
        None => data.train_batch(1).into_owned(),
    };
    let Batch::Tokens(b) = batch.head(n + 1) else {
        return Err(Error::Input(format!(
            "circuit analysis needs a task of tokens; {} is not one",
            exp.task.describe()
        )));
    };
    let total = b.tokens.nrows();
    if total < 2 {
        return Err(Error::Input(
            "circuit analysis needs at least two training examples".into(),
        ));
    }
    let rows = total.min(n);
    let last = *b
        .loss_pos
        .last()
        .expect("a token batch has a loss position");
    let k = b.loss_pos.len() - 1;
    let next = |i: usize| (i + 1) % total;
    let inputs = CircuitInputs {
        clean: Array2::from_shape_fn((rows, last + 1), |(i, j)| b.tokens[[i, j]]),
        corrupted: Array2::from_shape_fn((rows, last + 1), |(i, j)| b.tokens[[next(i), j]]),
        answers: (0..rows).map(|i| b.targets[[i, k]]).collect(),
        wrong: (0..rows).map(|i| b.targets[[next(i), k]]).collect(),
        description: format!(
            "the first {rows} training examples up to position {last}; each corrupted into the next one, whose answer is the wrong one"
        ),
    };
    Ok((inputs, None))
}

/// A patching sweep's exact values and attribution estimates, both as the change of the metric
/// from the corrupted run, in the sweep's shape (nested lists).
#[derive(Clone, Debug, Serialize)]
pub struct PatchPair {
    pub sweep: &'static str,
    pub axes: Vec<&'static str>,
    pub exact: serde_json::Value,
    pub attribution: serde_json::Value,
}

/// Named grids (`[row][column]`), one per panel.
pub type Grids = Vec<(String, Vec<Vec<f64>>)>;

/// Named grids with holes (null where a value does not exist).
pub type SparseGrids = Vec<(String, Vec<Vec<Option<f64>>>)>;

/// Scores of one weight-based quantity without and with TransformerLens's weight processing.
#[derive(Clone, Debug, Serialize)]
pub struct RawAndProcessed<T> {
    pub raw: T,
    pub processed: T,
}

#[derive(Clone, Debug, Serialize)]
pub struct CircuitSummary {
    pub inputs: String,
    pub examples: usize,
    /// Mean logit difference (answer − wrong) at the last position.
    pub clean_logit_diff: f64,
    pub corrupted_logit_diff: f64,
    /// Direct logit attribution of every head, MLP, the embeddings and biases to the clean
    /// logit difference (mean over examples); the last entry, `constant`, is the final
    /// LayerNorm's bias and b_U: the entries sum to `clean_logit_diff`.
    pub dla_labels: Vec<String>,
    pub dla: Vec<f64>,
    /// The logit difference read off the residual before each layer and after the last (the
    /// final LayerNorm recomputed).
    pub logit_lens_labels: Vec<String>,
    pub logit_lens: Vec<f64>,
    pub patching: Vec<PatchPair>,
    /// Path patching into each receiver input (q, k, v): `[layer_s·head_s][layer_r·head_r]`,
    /// the change from the corrupted run (null where the receiver is not later).
    pub path_patching: Option<SparseGrids>,
    /// Q, K and V composition scores `[layer_A·head_A][layer_B·head_B]`.
    pub composition: Option<RawAndProcessed<Grids>>,
    pub copying: RawAndProcessed<Vec<CopyingScore>>,
    /// Previous-token, duplicate-token and induction scores `[layer][head]` (mul measure) on
    /// repeated random tokens.
    pub detectors: Option<Grids>,
    /// Layer 0's full circuits (not in the JSON: large).
    #[serde(skip)]
    pub full: weights::FullCircuits,
}

fn nested(a: &ArrayD<f64>) -> serde_json::Value {
    fn go(a: ndarray::ArrayViewD<f64>) -> serde_json::Value {
        if a.ndim() == 0 {
            return serde_json::json!(a.iter().next().copied().unwrap_or(0.0));
        }
        serde_json::Value::Array(a.outer_iter().map(go).collect())
    }
    go(a.view())
}

fn rows(a: ndarray::ArrayView2<f64>) -> Vec<Vec<f64>> {
    a.outer_iter().map(|r| r.to_vec()).collect()
}

/// `[L, H, L, H]` as `[L·H][L·H]`.
fn flat_pairs(a: &ndarray::Array4<f64>) -> Vec<Vec<f64>> {
    let (l, h, _, _) = a.dim();
    let m = a.to_shape((l * h, l * h)).expect("pairs");
    rows(m.view())
}

/// The sweeps drawn: every block by position, every head over all positions, and head outputs by
/// position.
pub const SWEEPS: [Sweep; 9] = [
    Sweep::ResidPre,
    Sweep::AttnOut,
    Sweep::MlpOut,
    Sweep::AttnHeadOutAllPos,
    Sweep::AttnHeadQAllPos,
    Sweep::AttnHeadKAllPos,
    Sweep::AttnHeadVAllPos,
    Sweep::AttnHeadPatternAllPos,
    Sweep::AttnHeadOutByPos,
];

/// Everything above, for `model` on `inputs`.
pub fn summarize(model: &Transformer, inputs: &CircuitInputs) -> Result<CircuitSummary> {
    let metric = Metric::LogitDiff {
        answers: inputs.answers.clone(),
        wrong: inputs.wrong.clone(),
    };
    let (b, p) = inputs.clean.dim();
    let clean_metric = patching::metric_of(model, inputs.clean.view(), &metric)?;
    let corrupted_metric = patching::metric_of(model, inputs.corrupted.view(), &metric)?;
    let (_, cache) = model.run_with_cache(inputs.clean.view(), CacheFilter::All)?;

    // Direct logit attribution: heads, MLP outputs, embeddings, biases.
    let stack = resid::full_resid_decomposition(model, &cache, None, false, false, false)?;
    let dla = resid::direct_logit_attribution(
        model,
        &cache,
        &stack,
        p - 1,
        &inputs.answers,
        Some(&inputs.wrong),
    )?;
    let mut dla_labels = stack.labels.clone();
    dla_labels.push("constant".into());
    let dla = dla.mean_axis(Axis(1)).expect("examples").to_vec();

    let (lens_labels, lens) = resid::logit_lens(model, &cache, p - 1)?;
    let logit_lens = lens
        .outer_iter()
        .map(|l| {
            (0..b)
                .map(|i| {
                    f64::from(l[[i, inputs.answers[i] as usize]])
                        - f64::from(l[[i, inputs.wrong[i] as usize]])
                })
                .sum::<f64>()
                / b as f64
        })
        .collect();

    let sweeps: Vec<Sweep> = SWEEPS
        .into_iter()
        .filter(|s| model.cfg.has_mlp() || *s != Sweep::MlpOut)
        .collect();
    let attribution = patching::attribution_patch(
        model,
        inputs.clean.view(),
        inputs.corrupted.view(),
        &sweeps,
        &metric,
    )?;
    let mut patch = Vec::new();
    for (sweep, attr) in sweeps.iter().zip(attribution) {
        let exact = patching::patch_sweep(model, inputs.corrupted.view(), &cache, *sweep, &metric)?
            - corrupted_metric;
        patch.push(PatchPair {
            sweep: sweep.name(),
            axes: sweep
                .family()
                .1
                .iter()
                .map(|a| match a {
                    patching::IndexAxis::Layer => "layer",
                    patching::IndexAxis::Pos => "pos",
                    patching::IndexAxis::Head => "head",
                    patching::IndexAxis::DestPos => "dest_pos",
                    patching::IndexAxis::SrcPos => "src_pos",
                })
                .collect(),
            exact: nested(&exact),
            attribution: nested(&attr),
        });
    }

    let two_layers = model.cfg.n_layers >= 2;
    let path_patching = if two_layers {
        let mut out = Vec::new();
        for input in ReceiverInput::ALL {
            let a = patching::path_patch_sweep(
                model,
                inputs.clean.view(),
                inputs.corrupted.view(),
                input,
                &metric,
                false,
            )?;
            let flat = flat_pairs(&a);
            let flat = flat
                .into_iter()
                .map(|r| {
                    r.into_iter()
                        .map(|x| (!x.is_nan()).then_some(x - corrupted_metric))
                        .collect()
                })
                .collect();
            out.push((crate::error::choice_name(&input), flat));
        }
        Some(out)
    } else {
        None
    };

    // (A shortformer model's ln1 cannot fold: W_pos joins after it. TransformerLens skips the
    // fold there too.)
    let processed = process(
        model,
        Processing {
            fold_ln: !model.cfg.shortformer(),
            ..Processing::default()
        },
    )?;
    let composition = if two_layers {
        let of = |m: &Transformer| -> Result<Grids> {
            Composition::ALL
                .iter()
                .map(|&c| {
                    Ok((
                        c.name().to_string(),
                        flat_pairs(&weights::composition_scores(m, c)?),
                    ))
                })
                .collect()
        };
        Some(RawAndProcessed {
            raw: of(model)?,
            processed: of(&processed)?,
        })
    } else {
        None
    };
    let copying = RawAndProcessed {
        raw: weights::copying_scores(model)?,
        processed: weights::copying_scores(&processed)?,
    };

    let detectors =
        if let Some(tokens) = detect::detector_tokens(model.cfg.n_ctx, model.cfg.d_vocab) {
            Some(
                HeadKind::ALL
                    .iter()
                    .map(|&k| {
                        let s = detect::detect(
                            model,
                            tokens.view(),
                            k,
                            Exclude::default(),
                            ErrorMeasure::Mul,
                        )?;
                        Ok((k.name().to_string(), rows(s.view())))
                    })
                    .collect::<Result<_>>()?,
            )
        } else {
            None
        };

    Ok(CircuitSummary {
        inputs: inputs.description.clone(),
        examples: b,
        clean_logit_diff: clean_metric,
        corrupted_logit_diff: corrupted_metric,
        dla_labels,
        dla,
        logit_lens_labels: lens_labels,
        logit_lens,
        patching: patch,
        path_patching,
        composition,
        copying,
        detectors,
        full: weights::full_circuits(model)?,
    })
}
