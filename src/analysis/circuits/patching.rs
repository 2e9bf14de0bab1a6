//! Activation patching over every component (TransformerLens's `get_act_patch_*` family: the clean
//! run's activation copied into the corrupted run at one layer and position, head or pattern entry
//! at a time, and a metric of the patched logits), path patching between a sender head and a
//! receiver head's query, key or value input, and attribution patching (the first-order estimate
//! of every one of those patches from one forward and one backward pass of the corrupted run).

use super::{check_answers, check_head, check_layer, Acts};
use crate::error::{Error, Result};
use crate::hooks::{CacheFilter, Hooks};
use crate::models::transformer::{Site, Transformer};
use ndarray::{
    Array3, Array4, ArrayD, ArrayView2, ArrayView3, ArrayViewD, ArrayViewMutD, Axis, IxDyn,
};
use rayon::prelude::*;
use serde::Serialize;

/// A scalar of the logits at the last position, averaged over the batch; one token (or pair)
/// per example.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// `logit[answer] − logit[wrong]`.
    LogitDiff { answers: Vec<u32>, wrong: Vec<u32> },
    /// `logit[answer]`.
    Logit { answers: Vec<u32> },
    /// Cross-entropy of the answer.
    Loss { answers: Vec<u32> },
    /// Probability of the answer.
    Prob { answers: Vec<u32> },
}

impl Metric {
    fn answers(&self) -> &[u32] {
        match self {
            Metric::LogitDiff { answers, .. }
            | Metric::Logit { answers }
            | Metric::Loss { answers }
            | Metric::Prob { answers } => answers,
        }
    }

    /// The tokens fit a batch of `batch` and the model's output vocabulary.
    pub fn check(&self, model: &Transformer, batch: usize) -> Result<()> {
        check_answers(model, self.answers(), batch, "answer")?;
        if let Metric::LogitDiff { wrong, .. } = self {
            check_answers(model, wrong, batch, "wrong answer")?;
        }
        Ok(())
    }

    /// The value, and with `grad` its gradient with respect to the logits `[b, p, v]`.
    pub fn eval(&self, logits: ArrayView3<f32>, grad: bool) -> (f64, Option<Array3<f32>>) {
        let (b, p, v) = logits.dim();
        let mut g = grad.then(|| Array3::<f32>::zeros((b, p, v)));
        let mut total = 0.0f64;
        let inv_b = 1.0 / b as f64;
        for bi in 0..b {
            let row = logits.slice(ndarray::s![bi, p - 1, ..]);
            let a = self.answers()[bi] as usize;
            let mut add = |k: usize, x: f64| {
                if let Some(g) = g.as_mut() {
                    g[[bi, p - 1, k]] += (x * inv_b) as f32;
                }
            };
            match self {
                Metric::LogitDiff { wrong, .. } => {
                    let w = wrong[bi] as usize;
                    total += f64::from(row[a]) - f64::from(row[w]);
                    add(a, 1.0);
                    add(w, -1.0);
                }
                Metric::Logit { .. } => {
                    total += f64::from(row[a]);
                    add(a, 1.0);
                }
                Metric::Loss { .. } | Metric::Prob { .. } => {
                    let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                    let z: f64 = row.iter().map(|&x| (f64::from(x) - m).exp()).sum();
                    let logp = f64::from(row[a]) - m - z.ln();
                    let prob = logp.exp();
                    let is_loss = matches!(self, Metric::Loss { .. });
                    total += if is_loss { -logp } else { prob };
                    for (k, &x) in row.iter().enumerate() {
                        let pk = (f64::from(x) - m).exp() / z;
                        let hit = if k == a { 1.0 } else { 0.0 };
                        // d(−log p_a)/dx_k = p_k − [k=a]; d p_a/dx_k = p_a([k=a] − p_k).
                        add(k, if is_loss { pk - hit } else { prob * (hit - pk) });
                    }
                }
            }
        }
        (total * inv_b, g)
    }
}

/// The activation a sweep patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    ResidPre,
    ResidMid,
    AttnOut,
    MlpOut,
    Z,
    Q,
    K,
    V,
    Pattern,
}

impl Act {
    pub fn site(self, l: usize) -> Site {
        match self {
            Act::ResidPre => Site::ResidPre(l),
            Act::ResidMid => Site::ResidMid(l),
            Act::AttnOut => Site::AttnOut(l),
            Act::MlpOut => Site::MlpOut(l),
            Act::Z => Site::Z(l),
            Act::Q => Site::Q(l),
            Act::K => Site::K(l),
            Act::V => Site::V(l),
            Act::Pattern => Site::Pattern(l),
        }
    }

    /// Whether a model has this activation (MLP points need an MLP).
    fn exists(self, model: &Transformer) -> bool {
        !matches!(self, Act::ResidMid | Act::MlpOut) || model.cfg.has_mlp()
    }
}

/// An index axis of a sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexAxis {
    Layer,
    Pos,
    Head,
    DestPos,
    SrcPos,
}

impl IndexAxis {
    /// The activation's tensor axis this index fixes (TransformerLens layouts: `[b, p, ...]`,
    /// `[b, p, h, d_head]`, patterns `[b, h, dest, src]`).
    fn tensor_axis(self, act: Act) -> usize {
        match (self, act) {
            (IndexAxis::Head, Act::Pattern) => 1,
            (IndexAxis::Head, _) => 2,
            (IndexAxis::DestPos, _) => 2,
            (IndexAxis::SrcPos, _) => 3,
            _ => 1,
        }
    }
}

/// TransformerLens's `get_act_patch_*` functions, by their names without the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Sweep {
    ResidPre,
    ResidMid,
    AttnOut,
    MlpOut,
    AttnHeadOutByPos,
    AttnHeadQByPos,
    AttnHeadKByPos,
    AttnHeadVByPos,
    AttnHeadPatternByPos,
    AttnHeadPatternDestSrcPos,
    AttnHeadOutAllPos,
    AttnHeadQAllPos,
    AttnHeadKAllPos,
    AttnHeadVAllPos,
    AttnHeadPatternAllPos,
}

impl Sweep {
    pub const ALL: [Sweep; 15] = [
        Sweep::ResidPre,
        Sweep::ResidMid,
        Sweep::AttnOut,
        Sweep::MlpOut,
        Sweep::AttnHeadOutByPos,
        Sweep::AttnHeadQByPos,
        Sweep::AttnHeadKByPos,
        Sweep::AttnHeadVByPos,
        Sweep::AttnHeadPatternByPos,
        Sweep::AttnHeadPatternDestSrcPos,
        Sweep::AttnHeadOutAllPos,
        Sweep::AttnHeadQAllPos,
        Sweep::AttnHeadKAllPos,
        Sweep::AttnHeadVAllPos,
        Sweep::AttnHeadPatternAllPos,
    ];

    /// TransformerLens's function name (`get_act_patch_` + this).
    pub fn name(self) -> &'static str {
        use Sweep::*;
        match self {
            ResidPre => "resid_pre",
            ResidMid => "resid_mid",
            AttnOut => "attn_out",
            MlpOut => "mlp_out",
            AttnHeadOutByPos => "attn_head_out_by_pos",
            AttnHeadQByPos => "attn_head_q_by_pos",
            AttnHeadKByPos => "attn_head_k_by_pos",
            AttnHeadVByPos => "attn_head_v_by_pos",
            AttnHeadPatternByPos => "attn_head_pattern_by_pos",
            AttnHeadPatternDestSrcPos => "attn_head_pattern_dest_src_pos",
            AttnHeadOutAllPos => "attn_head_out_all_pos",
            AttnHeadQAllPos => "attn_head_q_all_pos",
            AttnHeadKAllPos => "attn_head_k_all_pos",
            AttnHeadVAllPos => "attn_head_v_all_pos",
            AttnHeadPatternAllPos => "attn_head_pattern_all_pos",
        }
    }

    /// The activation it patches and the axes it runs over.
    pub fn family(self) -> (Act, &'static [IndexAxis]) {
        use IndexAxis::*;
        use Sweep::*;
        const LP: &[IndexAxis] = &[Layer, Pos];
        const LPH: &[IndexAxis] = &[Layer, Pos, Head];
        const LH: &[IndexAxis] = &[Layer, Head];
        match self {
            ResidPre => (Act::ResidPre, LP),
            ResidMid => (Act::ResidMid, LP),
            AttnOut => (Act::AttnOut, LP),
            MlpOut => (Act::MlpOut, LP),
            AttnHeadOutByPos => (Act::Z, LPH),
            AttnHeadQByPos => (Act::Q, LPH),
            AttnHeadKByPos => (Act::K, LPH),
            AttnHeadVByPos => (Act::V, LPH),
            AttnHeadPatternByPos => (Act::Pattern, &[Layer, Head, DestPos]),
            AttnHeadPatternDestSrcPos => (Act::Pattern, &[Layer, Head, DestPos, SrcPos]),
            AttnHeadOutAllPos => (Act::Z, LH),
            AttnHeadQAllPos => (Act::Q, LH),
            AttnHeadKAllPos => (Act::K, LH),
            AttnHeadVAllPos => (Act::V, LH),
            AttnHeadPatternAllPos => (Act::Pattern, LH),
        }
    }

    /// The sweep's result shape for a model and an input of `pos` positions.
    pub fn shape(self, model: &Transformer, pos: usize) -> Vec<usize> {
        self.family()
            .1
            .iter()
            .map(|a| match a {
                IndexAxis::Layer => model.cfg.n_layers,
                IndexAxis::Head => model.cfg.n_heads,
                _ => pos,
            })
            .collect()
    }
}

/// Each index of `shape`, row-major.
fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut i| {
            let mut idx = vec![0; shape.len()];
            for (k, &s) in shape.iter().enumerate().rev() {
                idx[k] = i % s;
                i /= s;
            }
            idx
        })
        .collect()
}

/// The part of `a` that `index` (after its layer) selects.
fn select<'a>(
    mut a: ArrayViewD<'a, f32>,
    act: Act,
    axes: &[IndexAxis],
    index: &[usize],
) -> ArrayViewD<'a, f32> {
    for (ax, &i) in axes.iter().zip(index).skip(1) {
        a.collapse_axis(Axis(ax.tensor_axis(act)), i);
    }
    a
}

fn select_mut<'a>(
    mut a: ArrayViewMutD<'a, f32>,
    act: Act,
    axes: &[IndexAxis],
    index: &[usize],
) -> ArrayViewMutD<'a, f32> {
    for (ax, &i) in axes.iter().zip(index).skip(1) {
        a.collapse_axis(Axis(ax.tensor_axis(act)), i);
    }
    a
}

/// The clean activations a sweep reads, checked against the corrupted input's shape.
fn clean_acts<'a>(
    model: &Transformer,
    corrupted: ArrayView2<u32>,
    clean: &'a dyn Acts,
    act: Act,
) -> Result<Vec<ArrayViewD<'a, f32>>> {
    model.check_tokens(corrupted)?;
    if !act.exists(model) {
        return Err(Error::Input(format!(
            "`{}` does not exist in an attention-only model",
            act.site(0).name()
        )));
    }
    let (b, p) = corrupted.dim();
    (0..model.cfg.n_layers)
        .map(|l| {
            let name = act.site(l).name();
            let a = clean.act(&name)?;
            let rank = match act {
                Act::Z | Act::Q | Act::K | Act::V | Act::Pattern => 4,
                _ => 3,
            };
            if a.ndim() != rank {
                return Err(Error::Input(format!(
                    "the clean `{name}` has shape {:?}; it has {rank} axes",
                    a.shape()
                )));
            }
            let (cb, cp) = match act {
                Act::Pattern => (a.shape()[0], a.shape()[2]),
                _ => (a.shape()[0], a.shape()[1]),
            };
            if (cb, cp) != (b, p) {
                return Err(Error::Input(format!(
                    "clean and corrupted inputs differ in shape: the clean `{name}` is for inputs \
                     [{cb}, {cp}], the corrupted tokens are [{b}, {p}]"
                )));
            }
            Ok(a)
        })
        .collect()
}

/// Examples·positions a batched patching pass holds (a few hundred kilobytes of activations per
/// layer at the widths of toy models): larger batches run the products faster per example.
const PASS_ROWS: usize = 4096;

/// The corrupted run's logits with the clean activation patched in at each of `indices` (all in
/// one layer; an empty index patches nothing: the corrupted run itself), in one forward pass: the
/// corrupted input repeated once per index, each copy patched at its own index (examples do not
/// interact, so each copy is the run it stands for).
fn patched_logits(
    model: &Transformer,
    corrupted: ArrayView2<u32>,
    clean: &[ArrayViewD<f32>],
    (act, axes): (Act, &[IndexAxis]),
    indices: &[Vec<usize>],
    restrict: bool,
    resume: Option<&[ArrayD<f32>]>,
) -> Result<Vec<Array3<f32>>> {
    let l = indices.iter().find_map(|i| i.first().copied()).unwrap_or(0);
    debug_assert!(
        indices.iter().all(|i| i.is_empty() || i[0] == l),
        "one layer per pass"
    );
    let (b, p) = corrupted.dim();
    let k = indices.len();
    let tokens = ndarray::Array2::from_shape_fn((k * b, p), |(r, j)| corrupted[[r % b, j]]);
    let site = act.site(l).name();
    let last_layer = l + 1 == model.cfg.n_layers;
    // The metric reads the last position only: where the patch allows, the last block computes
    // no other. At the last block's query-side sites the hook then sees only that position, and
    // the patch is the clean run's there (the only place these patches can act: `reaches_last`).
    let full = model.full_under_restricted_queries(&site);
    let partial = restrict && last_layer && !full;
    let pos_axis = axes
        .iter()
        .find(|a| matches!(a, IndexAxis::Pos | IndexAxis::DestPos))
        .map(|a| a.tensor_axis(act))
        .unwrap_or(if act == Act::Pattern { 2 } else { 1 });
    let mut src = clean[l].view();
    if partial {
        src.slice_axis_inplace(Axis(pos_axis), ndarray::Slice::from(p - 1..p));
    }
    let remap = |idx: &[usize]| -> Vec<usize> {
        idx.iter()
            .zip(axes)
            .map(|(&i, a)| {
                let at_pos = matches!(a, IndexAxis::Pos | IndexAxis::DestPos);
                if partial && at_pos {
                    0
                } else {
                    i
                }
            })
            .collect()
    };
    let local: Vec<Vec<usize>> = indices
        .iter()
        .map(|i| if i.is_empty() { Vec::new() } else { remap(i) })
        .collect();
    let hooks = Hooks::new().try_add(site, move |a: &mut ArrayViewMutD<f32>| {
        if a.shape()[1..] != src.shape()[1..] || a.shape()[0] != k * src.shape()[0] {
            return Err(format!(
                "the clean activation has shape {:?}, the corrupted run's {:?}",
                src.shape(),
                a.shape()
            ));
        }
        for (c, idx) in local.iter().enumerate().filter(|(_, i)| !i.is_empty()) {
            let mut block = a.slice_axis_mut(Axis(0), ndarray::Slice::from(c * b..(c + 1) * b));
            select_mut(block.view_mut(), act, axes, idx).assign(&select(
                src.view(),
                act,
                axes,
                idx,
            ));
        }
        Ok(())
    });
    let logits = if restrict && (full || partial) {
        // The blocks before the patch are the corrupted run's: start at its layer.
        let from = resume.filter(|_| l > 0).map(|start| {
            // The corrupted run's residual stream, once per copy.
            let one = start[l].as_slice().expect("a cache entry is contiguous");
            let tiled: Vec<f32> = one.iter().copied().cycle().take(k * one.len()).collect();
            ndarray::Array3::from_shape_vec((k * b, p, model.cfg.d_model), tiled)
                .expect("copies of [b, p, d]")
        });
        model.run_with_hooks_at(
            tokens.view(),
            hooks,
            &[p - 1],
            from.as_ref().map(|t| (l, t.view())),
            partial,
        )?
    } else {
        model.run_with_hooks(tokens.view(), hooks)?
    };
    Ok((0..k)
        .map(|c| {
            logits
                .slice_axis(Axis(0), ndarray::Slice::from(c * b..(c + 1) * b))
                .to_owned()
        })
        .collect())
}

/// Passes a sweep is split into at least: two forwards side by side beat one of twice the batch
/// on small models (2 cores). A constant, not the thread count: the passes, and so the bits, are
/// the same on any pool.
const MIN_PASSES: usize = 2;

/// Indices in passes: consecutive indices of one layer, at most [`PASS_ROWS`] rows and at least
/// [`MIN_PASSES`] passes.
fn passes(indices: Vec<Vec<usize>>, rows_per_copy: usize) -> Vec<Vec<Vec<usize>>> {
    let per = (PASS_ROWS / rows_per_copy.max(1))
        .min(indices.len().div_ceil(MIN_PASSES))
        .max(1);
    let mut out: Vec<Vec<Vec<usize>>> = Vec::new();
    for idx in indices {
        match out.last_mut() {
            Some(last) if last.len() < per && last[0][0] == idx[0] => last.push(idx),
            _ => out.push(vec![idx]),
        }
    }
    out
}

/// One of TransformerLens's `get_act_patch_*` sweeps: the metric of the corrupted run with each
/// index's clean activation patched in, in the sweep's shape (`Sweep::shape`). Patches run
/// batched ([`PASS_ROWS`]) and their passes in parallel; each patched run is the same
/// computation on any thread count.
pub fn patch_sweep(
    model: &Transformer,
    corrupted: ArrayView2<u32>,
    clean: &dyn Acts,
    sweep: Sweep,
    metric: &Metric,
) -> Result<ArrayD<f64>> {
    metric.check(model, corrupted.nrows())?;
    let (act, axes) = sweep.family();
    let clean = clean_acts(model, corrupted, clean, act)?;
    let shape = sweep.shape(model, corrupted.ncols());
    // Patches that cannot reach the last position's logits (after attention in the last layer, at
    // another position) leave the metric at the corrupted run's: not run.
    let last = (model.cfg.n_layers - 1, corrupted.ncols() - 1);
    let (live, dead): (Vec<Vec<usize>>, Vec<Vec<usize>>) = indices(&shape)
        .into_iter()
        .partition(|idx| reaches_last(act, axes, idx, last));
    let resume = corrupted_resid_pre(model, corrupted)?;
    let mut groups = passes(live, corrupted.len());
    if !dead.is_empty() {
        // The corrupted run itself rides along in the first pass.
        groups[0].push(Vec::new());
    }
    let values: Vec<Vec<f64>> = groups
        .par_iter()
        .with_max_len(1)
        .map(|group| {
            let logits = patched_logits(
                model,
                corrupted,
                &clean,
                (act, axes),
                group,
                true,
                resume.as_deref(),
            )?;
            Ok(logits
                .iter()
                .map(|l| metric.eval(l.view(), false).0)
                .collect())
        })
        .collect::<Result<_>>()?;
    let mut out = ArrayD::zeros(IxDyn(&shape));
    let mut base = f64::NAN;
    for (idx, v) in groups.iter().flatten().zip(values.into_iter().flatten()) {
        if idx.is_empty() {
            base = v;
        } else {
            out[idx.as_slice()] = v;
        }
    }
    for idx in dead {
        out[idx.as_slice()] = base;
    }
    Ok(out)
}

/// The corrupted run's residual stream before each block (a hooked pass, as the patched ones),
/// where a patched pass can start; None for one block.
fn corrupted_resid_pre(
    model: &Transformer,
    corrupted: ArrayView2<u32>,
) -> Result<Option<Vec<ArrayD<f32>>>> {
    let n = model.cfg.n_layers;
    if n < 2 {
        return Ok(None);
    }
    let names: Vec<String> = (0..n).map(|l| Site::ResidPre(l).name()).collect();
    let watch = Hooks::new().add(Site::Embed.name(), |_: &mut ArrayViewMutD<f32>| {});
    let (_, cache) = model.run(corrupted, watch, Some(CacheFilter::Names(names.clone())))?;
    Ok(Some(
        names
            .iter()
            .map(|n| cache.get(n).cloned())
            .collect::<Result<_>>()?,
    ))
}

/// Whether a patch at `index` can change the last position's logits (`last`: the last layer and
/// position). What attention has already mixed in the last layer stays at its own position, so
/// a patch there at another position (of a residual point after attention, an attention or MLP
/// output, a head's z or query, or a pattern row) reaches only that position's logits.
fn reaches_last(act: Act, axes: &[IndexAxis], index: &[usize], last: (usize, usize)) -> bool {
    if index[0] != last.0 || matches!(act, Act::ResidPre | Act::K | Act::V) {
        return true;
    }
    let at = axes
        .iter()
        .zip(index)
        .find(|(a, _)| matches!(a, IndexAxis::Pos | IndexAxis::DestPos))
        .map(|(_, &i)| i);
    at.is_none_or(|pos| pos == last.1)
}

/// [`patch_sweep`] with a metric of the caller's (a Python function), called on each patched
/// run's logits in order.
pub fn patch_sweep_with(
    model: &Transformer,
    corrupted: ArrayView2<u32>,
    clean: &dyn Acts,
    sweep: Sweep,
    metric: &mut dyn FnMut(Array3<f32>) -> Result<f64>,
) -> Result<ArrayD<f64>> {
    let (act, axes) = sweep.family();
    let clean = clean_acts(model, corrupted, clean, act)?;
    let shape = sweep.shape(model, corrupted.ncols());
    let mut values = Vec::new();
    for group in passes(indices(&shape), corrupted.len()) {
        for logits in patched_logits(model, corrupted, &clean, (act, axes), &group, false, None)? {
            values.push(metric(logits)?);
        }
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), values).expect("sweep shape"))
}

/// The metric of a run of `tokens` (the baselines a sweep is read against).
pub fn metric_of(model: &Transformer, tokens: ArrayView2<u32>, metric: &Metric) -> Result<f64> {
    metric.check(model, tokens.nrows())?;
    Ok(metric.eval(model.forward(tokens)?.view(), false).0)
}

/// Attribution patching: for each sweep, `Σ (clean − corrupted) · ∂metric/∂activation` over the
/// entries each index patches, the gradient taken on the corrupted run: the first-order estimate
/// of `patched − corrupted` metric, for every sweep at once from one forward and one backward
/// pass (and one forward of the clean input).
pub fn attribution_patch(
    model: &Transformer,
    clean: ArrayView2<u32>,
    corrupted: ArrayView2<u32>,
    sweeps: &[Sweep],
    metric: &Metric,
) -> Result<Vec<ArrayD<f64>>> {
    check_same_shape(clean, corrupted)?;
    metric.check(model, corrupted.nrows())?;
    model.check_tokens(clean)?;
    let (_, clean_cache) = model.run_with_cache(clean, CacheFilter::All)?;
    let (_, corr_cache, _, grads) = model.run_with_grads(corrupted, CacheFilter::All, |l| {
        let (v, g) = metric.eval(l, true);
        Ok((v, g.expect("asked for the gradient")))
    })?;
    sweeps
        .iter()
        .map(|&sweep| {
            let (act, axes) = sweep.family();
            if !act.exists(model) {
                return Err(Error::Input(format!(
                    "`{}` does not exist in an attention-only model",
                    sweep.name()
                )));
            }
            let shape = sweep.shape(model, corrupted.ncols());
            let values = indices(&shape)
                .iter()
                .map(|idx| {
                    let name = act.site(idx[0]).name();
                    let (c, k, g) = (
                        clean_cache.get(&name)?.view(),
                        corr_cache.get(&name)?.view(),
                        grads.get(&name)?.view(),
                    );
                    let (c, k, g) = (
                        select(c, act, axes, idx),
                        select(k, act, axes, idx),
                        select(g, act, axes, idx),
                    );
                    let mut s = 0.0f64;
                    ndarray::Zip::from(&c)
                        .and(&k)
                        .and(&g)
                        .for_each(|&c, &k, &g| {
                            s += f64::from(c - k) * f64::from(g);
                        });
                    Ok(s)
                })
                .collect::<Result<Vec<f64>>>()?;
            Ok(ArrayD::from_shape_vec(IxDyn(&shape), values).expect("sweep shape"))
        })
        .collect()
}

fn check_same_shape(clean: ArrayView2<u32>, corrupted: ArrayView2<u32>) -> Result<()> {
    if clean.dim() != corrupted.dim() {
        return Err(Error::Input(format!(
            "clean and corrupted inputs differ in shape: {:?} and {:?}",
            clean.shape(),
            corrupted.shape()
        )));
    }
    Ok(())
}

/// Which input of the receiver head a path is patched into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverInput {
    Q,
    K,
    V,
}

impl ReceiverInput {
    pub const ALL: [ReceiverInput; 3] = [ReceiverInput::Q, ReceiverInput::K, ReceiverInput::V];
    fn site(self, l: usize) -> Site {
        match self {
            ReceiverInput::Q => Site::Q(l),
            ReceiverInput::K => Site::K(l),
            ReceiverInput::V => Site::V(l),
        }
    }
}

/// Path patching: the metric of the corrupted run when only the path from `sender` (layer, head)
/// to `receiver`'s (layer, head) `input` carries the clean run. First the corrupted run with the
/// sender's z taken from the clean run and every other head from its own corrupted run (so the
/// change reaches the receiver only directly through the residual stream; MLPs recompute unless
/// `freeze_mlps`), keeping the receiver's input; then the corrupted run with only that input
/// replaced. The receiver's layer must be after the sender's.
#[allow(clippy::too_many_arguments)]
pub fn path_patch(
    model: &Transformer,
    clean: ArrayView2<u32>,
    corrupted: ArrayView2<u32>,
    sender: (usize, usize),
    receiver: (usize, usize),
    input: ReceiverInput,
    metric: &Metric,
    freeze_mlps: bool,
) -> Result<f64> {
    check_same_shape(clean, corrupted)?;
    metric.check(model, corrupted.nrows())?;
    let (ls, hs) = sender;
    let (lr, hr) = receiver;
    check_layer(model, ls)?;
    check_head(model, hs)?;
    check_layer(model, lr)?;
    check_head(model, hr)?;
    if lr <= ls {
        return Err(Error::Input(format!(
            "path patching needs the receiver's layer ({lr}) after the sender's ({ls})"
        )));
    }
    let paths = PathRuns::new(model, clean, corrupted, freeze_mlps)?;
    let inputs = paths.receiver_inputs(sender, lr)?;
    paths.patched_metric(&inputs, (lr, hr), input, metric)
}

/// Path patching from every sender head to every receiver head's `input` in a later layer:
/// `[layer_s, head_s, layer_r, head_r]`, NaN where the receiver's layer is not after the sender's.
pub fn path_patch_sweep(
    model: &Transformer,
    clean: ArrayView2<u32>,
    corrupted: ArrayView2<u32>,
    input: ReceiverInput,
    metric: &Metric,
    freeze_mlps: bool,
) -> Result<Array4<f64>> {
    check_same_shape(clean, corrupted)?;
    metric.check(model, corrupted.nrows())?;
    let (n_l, n_h) = (model.cfg.n_layers, model.cfg.n_heads);
    if n_l < 2 {
        return Err(Error::Input(
            "path patching between heads needs two layers; this model has one".into(),
        ));
    }
    let paths = PathRuns::new(model, clean, corrupted, freeze_mlps)?;
    let mut out = Array4::from_elem((n_l, n_h, n_l, n_h), f64::NAN);
    let pairs: Vec<(usize, usize, usize)> = (0..n_l)
        .flat_map(|ls| (0..n_h).flat_map(move |hs| (ls + 1..n_l).map(move |lr| (ls, hs, lr))))
        .collect();
    let done: Vec<((usize, usize, usize), Vec<f64>)> = pairs
        .par_iter()
        .with_max_len(1)
        .map(|&(ls, hs, lr)| {
            let inputs = paths.receiver_inputs((ls, hs), lr)?;
            let v = (0..n_h)
                .map(|hr| paths.patched_metric(&inputs, (lr, hr), input, metric))
                .collect::<Result<Vec<f64>>>()?;
            Ok(((ls, hs, lr), v))
        })
        .collect::<Result<_>>()?;
    for ((ls, hs, lr), v) in done {
        for (hr, x) in v.into_iter().enumerate() {
            out[[ls, hs, lr, hr]] = x;
        }
    }
    Ok(out)
}

/// The clean and corrupted activations path patching reads.
struct PathRuns<'a> {
    model: &'a Transformer,
    corrupted: ArrayView2<'a, u32>,
    clean_z: Vec<ArrayD<f32>>,
    corr_z: Vec<ArrayD<f32>>,
    corr_mlp: Option<Vec<ArrayD<f32>>>,
}

impl<'a> PathRuns<'a> {
    fn new(
        model: &'a Transformer,
        clean: ArrayView2<'a, u32>,
        corrupted: ArrayView2<'a, u32>,
        freeze_mlps: bool,
    ) -> Result<Self> {
        let n_l = model.cfg.n_layers;
        let z_names: Vec<String> = (0..n_l).map(|l| Site::Z(l).name()).collect();
        let mlp_names: Vec<String> = (0..n_l).map(|l| Site::MlpOut(l).name()).collect();
        let (_, clean_cache) = model.run_with_cache(clean, CacheFilter::Names(z_names.clone()))?;
        let mut names = z_names.clone();
        let freeze = freeze_mlps && model.cfg.has_mlp();
        if freeze {
            names.extend(mlp_names.iter().cloned());
        }
        let (_, corr) = model.run_with_cache(corrupted, CacheFilter::Names(names))?;
        let take = |c: &crate::hooks::ActivationCache, ns: &[String]| -> Result<Vec<ArrayD<f32>>> {
            ns.iter().map(|n| c.get(n).cloned()).collect()
        };
        Ok(PathRuns {
            model,
            corrupted,
            clean_z: take(&clean_cache, &z_names)?,
            corr_z: take(&corr, &z_names)?,
            corr_mlp: if freeze {
                Some(take(&corr, &mlp_names)?)
            } else {
                None
            },
        })
    }

    /// Layer `lr`'s q, k and v when only the sender's output is clean and every other head (and,
    /// frozen, every MLP) between is held at its corrupted value.
    fn receiver_inputs(
        &self,
        (ls, hs): (usize, usize),
        lr: usize,
    ) -> Result<crate::hooks::ActivationCache> {
        let mut hooks = Hooks::new();
        for l in ls..lr {
            let corr = self.corr_z[l].view();
            let clean = (l == ls).then(|| self.clean_z[ls].view());
            hooks = hooks.add(Site::Z(l).name(), move |a: &mut ArrayViewMutD<f32>| {
                a.assign(&corr);
                if let Some(c) = &clean {
                    a.index_axis_mut(Axis(2), hs)
                        .assign(&c.index_axis(Axis(2), hs));
                }
            });
            if let Some(mlp) = &self.corr_mlp {
                let m = mlp[l].view();
                hooks = hooks.add(Site::MlpOut(l).name(), move |a: &mut ArrayViewMutD<f32>| {
                    a.assign(&m)
                });
            }
        }
        let names = ReceiverInput::ALL
            .iter()
            .map(|i| i.site(lr).name())
            .collect();
        let (_, cache) = self
            .model
            .run(self.corrupted, hooks, Some(CacheFilter::Names(names)))?;
        Ok(cache)
    }

    fn patched_metric(
        &self,
        inputs: &crate::hooks::ActivationCache,
        (lr, hr): (usize, usize),
        input: ReceiverInput,
        metric: &Metric,
    ) -> Result<f64> {
        let name = input.site(lr).name();
        let src = inputs.get(&name)?.view();
        let hooks = Hooks::new().add(name, move |a: &mut ArrayViewMutD<f32>| {
            a.index_axis_mut(Axis(2), hr)
                .assign(&src.index_axis(Axis(2), hr));
        });
        let logits = self.model.run_with_hooks(self.corrupted, hooks)?;
        Ok(metric.eval(logits.view(), false).0)
    }
}
