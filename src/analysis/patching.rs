//! Activation patching: run a target input with one activation copied from a source input (at one
//! position or all, one head or all), and measure the effect on the correct answer's logit and loss.

use crate::error::{Error, Result};
use crate::hooks::{self, CacheFilter, Hooks, PatchSpec};
use crate::io::Loaded;
use crate::models::transformer::Transformer;
use crate::models::transformer::{patch_axes, Site};
use ndarray::{Array2, Axis};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct PatchEffect {
    pub hook: String,
    pub correct: u32,
    pub logit_before: f32,
    pub logit_after: f32,
    pub loss_before: f64,
    pub loss_after: f64,
    /// The patched run's prediction at the last position.
    pub prediction_after: u32,
}

fn last_row_loss(l: &ndarray::Array3<f32>, correct: usize) -> (f32, f64, u32) {
    let row = l.index_axis(Axis(0), 0);
    let row = row.index_axis(Axis(0), l.shape()[1] - 1);
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    let arg = row
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    (row[correct], lse - row[correct] as f64, arg as u32)
}

/// Patch `hook` from `source` into `target` (token sequences of equal length); `correct` is the
/// target's right answer at the last position.
pub fn patch(
    model: &Transformer,
    hook: &str,
    source: &[u32],
    target: &[u32],
    correct: u32,
    spec: PatchSpec,
) -> Result<PatchEffect> {
    let site = Site::parse(&model.cfg, hook)?;
    if source.len() != target.len() {
        return Err(Error::Input(format!(
            "source has {} tokens, target {}",
            source.len(),
            target.len()
        )));
    }
    if correct as usize >= model.cfg.d_vocab_out() {
        return Err(Error::Input(format!(
            "answer {correct} is outside the output vocabulary ({})",
            model.cfg.d_vocab_out()
        )));
    }
    let (pos_axis, head_axis) = patch_axes(site);
    if let Some(p) = spec.position {
        if p >= target.len() {
            return Err(Error::Input(format!(
                "position {p} is outside the input (length {})",
                target.len()
            )));
        }
    }
    if let (Some(h), Some(_)) = (spec.head, head_axis) {
        if h >= model.cfg.n_heads {
            return Err(Error::Input(format!(
                "head {h} does not exist (n_heads = {})",
                model.cfg.n_heads
            )));
        }
    } else if spec.head.is_some() {
        return Err(Error::Input(format!(
            "`{hook}` has no head axis; drop --head"
        )));
    }
    let row = |t: &[u32]| Array2::from_shape_vec((1, t.len()), t.to_vec()).expect("row");
    // Source, baseline and patched run all take the hooked path (a hook that changes nothing at
    // the same point): a cache-only pass may take shortcuts that round differently, and patching a
    // run into itself must change nothing, bit for bit.
    let watch = || Hooks::new().add(hook, |_| {});
    let (_, cache) = model.run(
        row(source).view(),
        watch(),
        Some(CacheFilter::Names(vec![hook.to_string()])),
    )?;
    let src = cache.get(hook)?.clone();
    let before = model.run_with_hooks(row(target).view(), watch())?;
    let after = model.run_with_hooks(
        row(target).view(),
        Hooks::new().try_add(hook, hooks::patch_from(src, spec, pos_axis, head_axis)),
    )?;
    let (lb, sb, _) = last_row_loss(&before, correct as usize);
    let (la, sa, pred) = last_row_loss(&after, correct as usize);
    Ok(PatchEffect {
        hook: hook.to_string(),
        correct,
        logit_before: lb,
        logit_after: la,
        loss_before: sb,
        loss_after: sa,
        prediction_after: pred,
    })
}

/// Patch `hook` of a modular-arithmetic model from input `a b =` (source) into another (target).
pub fn patch_pair(
    loaded: &Loaded,
    hook: &str,
    source: (u32, u32),
    target: (u32, u32),
    spec: PatchSpec,
) -> Result<PatchEffect> {
    let model = loaded.transformer()?;
    let m = loaded.modular()?;
    for (name, (a, b)) in [("source", source), ("target", target)] {
        if a as usize >= m.p || b as usize >= m.p {
            return Err(Error::Input(format!(
                "{name} {a},{b}: inputs are numbers below p = {}",
                m.p
            )));
        }
    }
    let correct = m.op.apply(target.0 as u64, target.1 as u64, m.p as u64) as u32;
    let eq = m.p as u32;
    patch(
        model,
        hook,
        &[source.0, source.1, eq],
        &[target.0, target.1, eq],
        correct,
        spec,
    )
}
