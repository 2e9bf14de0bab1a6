//! Opening up the ToyMLP on modular arithmetic: neuron ablation over all p² inputs and activation heat
//! maps of hidden neurons over the (a, b) grid.
//!
//! The hidden layer reaches the logits linearly (`logits = post·Wᵀ + b`), so ablating neuron n shifts
//! every input's logits by −(post_n − replacement)·W[:, n]: all neurons come from one cached run.

use super::ablation::{AblationRow, Unit};
use crate::engine::loss::{cross_entropy, mean, RowLoss};
use crate::error::Result;
use crate::hooks::CacheFilter;
use crate::models::toy_mlp::ToyMlp;
use crate::tasks::modular::{Op, Pair};
use rayon::prelude::*;

fn all_pairs(p: usize) -> Vec<Pair> {
    let p = p as u32;
    (0..p).flat_map(|a| (0..p).map(move |b| (a, b))).collect()
}

fn score(logits: &[f32], v: usize, targets: &[u32]) -> (f64, f64) {
    let mut rows = vec![RowLoss::default(); targets.len()];
    cross_entropy(logits, v, targets, &mut rows, None);
    (
        mean(&rows),
        rows.iter().filter(|r| r.correct).count() as f64 / rows.len().max(1) as f64,
    )
}

/// (loss, accuracy) on all pairs with nothing ablated, and every hidden neuron zero- and
/// mean-ablated, ranked by zero-ablated loss (most important first).
pub fn ablate_neurons(model: &ToyMlp, op: Op) -> Result<((f64, f64), Vec<AblationRow>)> {
    let (p, h) = (model.cfg.p, model.cfg.d_hidden);
    let pairs = all_pairs(p);
    let targets: Vec<u32> = pairs
        .iter()
        .map(|&(a, b)| op.apply(a as u64, b as u64, p as u64) as u32)
        .collect();
    let (logits, cache) =
        model.run_with_cache(&pairs, &CacheFilter::Names(vec!["hook_hidden_post".into()]))?;
    let base: Vec<f32> = logits.iter().copied().collect();
    let post = cache.get("hook_hidden_post")?;
    let w = model.param("unembed.weight").expect("unembed.weight");
    let mut rows: Vec<AblationRow> = (0..h)
        .into_par_iter()
        .map(|n| {
            let col: Vec<f32> = (0..pairs.len()).map(|i| post[[i, n]]).collect();
            let m = col.iter().map(|&x| x as f64).sum::<f64>() / col.len() as f64;
            let mut r = [(0.0, 0.0); 2];
            for (k, repl) in [0.0f32, m as f32].into_iter().enumerate() {
                let mut lg = base.clone();
                for (row, &a) in lg.chunks_exact_mut(p).zip(&col) {
                    let delta = a - repl;
                    if delta != 0.0 {
                        for (c, x) in row.iter_mut().enumerate() {
                            *x -= delta * w[c * h + n];
                        }
                    }
                }
                r[k] = score(&lg, p, &targets);
            }
            AblationRow {
                unit: Unit::Neuron,
                layer: 0,
                index: n,
                zero_loss: r[0].0,
                zero_acc: r[0].1,
                mean_loss: r[1].0,
                mean_acc: r[1].1,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.zero_loss.total_cmp(&a.zero_loss));
    Ok((score(&base, p, &targets), rows))
}

/// Each neuron's activation over the input grid: `grid[n][a][b]` = post-ReLU activation of neuron
/// `neurons[n]` on input (a, b).
pub fn neuron_grids(model: &ToyMlp, neurons: &[usize]) -> Result<Vec<Vec<Vec<f64>>>> {
    let p = model.cfg.p;
    let pairs = all_pairs(p);
    let (_, cache) =
        model.run_with_cache(&pairs, &CacheFilter::Names(vec!["hook_hidden_post".into()]))?;
    let post = cache.get("hook_hidden_post")?;
    Ok(neurons
        .iter()
        .map(|&n| {
            (0..p)
                .map(|a| (0..p).map(|b| post[[a * p + b, n]] as f64).collect())
                .collect()
        })
        .collect())
}
