//! Neuron and head ablation on all p² inputs: loss and accuracy with each MLP neuron and each
//! attention head zeroed, or replaced by its mean over the inputs.
//!
//! A last-layer neuron reaches the logits linearly when there is no final LayerNorm: ablating neuron n
//! shifts the logits by −(post_n − replacement)·(W_out[n]·W_U). All neurons then come from one cached
//! run (exact, and 500× fewer forward passes); otherwise each ablation is a hooked run.

use crate::batch::TokenBatch;
use crate::engine::loss::{cross_entropy, mean, RowLoss};
use crate::error::Result;
use crate::hooks::{CacheFilter, Hooks};
use crate::models::transformer::Transformer;
use crate::tasks::modular::{ModularTask, Op};
use ndarray::{Array2, Array3, ArrayViewMutD, Axis};
use rayon::prelude::*;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Neuron,
    Head,
}

#[derive(Clone, Debug, Serialize)]
pub struct AblationRow {
    pub unit: Unit,
    pub layer: usize,
    pub index: usize,
    pub zero_loss: f64,
    pub zero_acc: f64,
    pub mean_loss: f64,
    pub mean_acc: f64,
}

/// (mean loss, accuracy) of `logits [n, v]` against `targets`.
fn score(logits: &[f32], v: usize, targets: &[u32]) -> (f64, f64) {
    let mut rows = vec![RowLoss::default(); targets.len()];
    cross_entropy(logits, v, targets, &mut rows, None);
    (
        mean(&rows),
        rows.iter().filter(|r| r.correct).count() as f64 / rows.len().max(1) as f64,
    )
}

fn all_inputs(p: usize, op: Op) -> (Array2<u32>, Vec<u32>) {
    let b = ModularTask::all_pairs_batch(p, op);
    let targets = b.targets.column(0).to_vec();
    (b.tokens, targets)
}

/// Last-position logits `[n, v]` of a hooked run.
fn last_logits(l: &Array3<f32>) -> Vec<f32> {
    l.index_axis(Axis(1), l.shape()[1] - 1)
        .iter()
        .copied()
        .collect()
}

/// Loss and accuracy on all pairs with nothing ablated.
pub fn baseline(model: &Transformer, p: usize, op: Op) -> Result<(f64, f64)> {
    let (tokens, targets) = all_inputs(p, op);
    let l = model.forward(tokens.view())?;
    Ok(score(&last_logits(&l), model.cfg.d_vocab_out(), &targets))
}

/// A hook that zeroes index `idx` of axis 2 (a head of `hook_z`, a neuron of `hook_post`), or with
/// `mean` gives it, at each position, its mean over the batch.
pub fn unit_ablation(idx: usize, mean: bool) -> impl FnMut(&mut ArrayViewMutD<f32>) + Send {
    move |a: &mut ArrayViewMutD<f32>| {
        let mut unit = a.index_axis_mut(Axis(2), idx);
        if mean {
            let m = unit.mean_axis(Axis(0)).expect("batch");
            unit.axis_iter_mut(Axis(0))
                .for_each(|mut row| row.assign(&m));
        } else {
            unit.fill(0.0);
        }
    }
}

/// Zero- and mean-ablate index `idx` of axis 2 at hook point `name` (a head of `hook_z`, a neuron of
/// `hook_post`) in hooked runs: [(loss, accuracy) zeroed, (loss, accuracy) mean-ablated]. Mean
/// ablation gives each position the unit's mean over the inputs at that position.
fn hooked(
    model: &Transformer,
    tokens: &Array2<u32>,
    targets: &[u32],
    name: &str,
    idx: usize,
) -> Result<[(f64, f64); 2]> {
    let mut r = [(0.0, 0.0); 2];
    for (i, mean_ablate) in [false, true].into_iter().enumerate() {
        let hook = unit_ablation(idx, mean_ablate);
        let out = model.run_with_hooks(tokens.view(), Hooks::new().add(name, hook))?;
        r[i] = score(&last_logits(&out), model.cfg.d_vocab_out(), targets);
    }
    Ok(r)
}

fn row(unit: Unit, layer: usize, index: usize, r: [(f64, f64); 2]) -> AblationRow {
    AblationRow {
        unit,
        layer,
        index,
        zero_loss: r[0].0,
        zero_acc: r[0].1,
        mean_loss: r[1].0,
        mean_acc: r[1].1,
    }
}

/// Every MLP neuron and attention head, zero- and mean-ablated, ranked by zero-ablated loss
/// (most important first).
pub fn ablate_all(model: &Transformer, p: usize, op: Op) -> Result<Vec<AblationRow>> {
    let cfg = &model.cfg;
    let v = cfg.d_vocab_out();
    let (tokens, targets) = all_inputs(p, op);
    let mut rows = Vec::new();
    for l in 0..cfg.n_layers {
        for h in 0..cfg.n_heads {
            rows.push(row(
                Unit::Head,
                l,
                h,
                hooked(
                    model,
                    &tokens,
                    &targets,
                    &format!("blocks.{l}.attn.hook_z"),
                    h,
                )?,
            ));
        }
        if !cfg.has_mlp() {
            continue;
        }
        let name = format!("blocks.{l}.mlp.hook_post");
        if l + 1 < cfg.n_layers || cfg.has_ln() {
            for n in 0..cfg.d_mlp() {
                rows.push(row(
                    Unit::Neuron,
                    l,
                    n,
                    hooked(model, &tokens, &targets, &name, n)?,
                ));
            }
            continue;
        }
        // Last layer, no final LayerNorm: each neuron shifts the logits by −Δ·(W_out[n]·W_U).
        let (logits, cache) =
            model.run_with_cache(tokens.view(), CacheFilter::Names(vec![name.clone()]))?;
        let base = last_logits(&logits);
        let post = cache.get(&name)?;
        let last = post.shape()[1] - 1;
        let post = post
            .index_axis(Axis(1), last)
            .to_owned()
            .into_dimensionality::<ndarray::Ix2>()
            .expect("[n, d_mlp]");
        let (w_out, w_u) = (
            model.param(&format!("blocks.{l}.mlp.W_out")).unwrap(),
            model.param("unembed.W_U").unwrap(),
        );
        let d = cfg.d_model;
        let neuron_rows: Vec<AblationRow> = (0..cfg.d_mlp())
            .into_par_iter()
            .map(|n| {
                let u: Vec<f32> = (0..v)
                    .map(|c| (0..d).map(|j| w_out[[n, j]] * w_u[[j, c]]).sum())
                    .collect();
                let col = post.column(n);
                let m = col.mean().unwrap_or(0.0);
                let mut r = [(0.0, 0.0); 2];
                for (i, repl) in [0.0f32, m].into_iter().enumerate() {
                    let mut lg = base.clone();
                    for (row, &a) in lg.chunks_exact_mut(v).zip(col.iter()) {
                        let delta = a - repl;
                        for (x, &uc) in row.iter_mut().zip(&u) {
                            *x -= delta * uc;
                        }
                    }
                    r[i] = score(&lg, v, &targets);
                }
                row(Unit::Neuron, l, n, r)
            })
            .collect();
        rows.extend(neuron_rows);
    }
    rows.sort_by(|a, b| b.zero_loss.total_cmp(&a.zero_loss));
    Ok(rows)
}

/// Examples a generic ablation runs on (the first of the training set).
pub const GENERIC_EXAMPLES: usize = 512;

/// Mean loss and accuracy over the loss positions of `batch`, from logits `[n, pos, v]`.
fn score_positions(logits: &Array3<f32>, batch: &TokenBatch) -> (f64, f64) {
    let v = logits.shape()[2];
    let mut flat = Vec::with_capacity(batch.tokens.nrows() * batch.loss_pos.len() * v);
    let mut targets = Vec::with_capacity(batch.targets.len());
    for (b, row) in batch.targets.rows().into_iter().enumerate() {
        for (i, &p) in batch.loss_pos.iter().enumerate() {
            flat.extend(logits.slice(ndarray::s![b, p, ..]).iter().copied());
            targets.push(row[i]);
        }
    }
    score(&flat, v, &targets)
}

/// Every attention head and MLP neuron of any transformer, zero- and mean-ablated on the examples
/// of `batch` (loss and accuracy over its loss positions), ranked by zero-ablated loss. Each unit
/// is a hooked run; [`ablate_all`] is the fast form on modular arithmetic.
pub fn ablate_on(model: &Transformer, batch: &TokenBatch) -> Result<Vec<AblationRow>> {
    let cfg = &model.cfg;
    let mut units: Vec<(Unit, usize, usize, String)> = Vec::new();
    for l in 0..cfg.n_layers {
        units.extend(
            (0..cfg.n_heads).map(|h| (Unit::Head, l, h, format!("blocks.{l}.attn.hook_z"))),
        );
        if cfg.has_mlp() {
            units.extend(
                (0..cfg.d_mlp()).map(|n| (Unit::Neuron, l, n, format!("blocks.{l}.mlp.hook_post"))),
            );
        }
    }
    let mut rows = units
        .into_par_iter()
        .map(|(unit, layer, idx, name)| {
            let mut r = [(0.0, 0.0); 2];
            for (i, mean_ablate) in [false, true].into_iter().enumerate() {
                let hooks = Hooks::new().add(&name, unit_ablation(idx, mean_ablate));
                let out = model.run_with_hooks(batch.tokens.view(), hooks)?;
                r[i] = score_positions(&out, batch);
            }
            Ok(row(unit, layer, idx, r))
        })
        .collect::<Result<Vec<_>>>()?;
    rows.sort_by(|a, b| b.zero_loss.total_cmp(&a.zero_loss));
    Ok(rows)
}

/// Loss and accuracy of `batch` with nothing ablated.
pub fn baseline_on(model: &Transformer, batch: &TokenBatch) -> Result<(f64, f64)> {
    let out = model.forward(batch.tokens.view())?;
    Ok(score_positions(&out, batch))
}
