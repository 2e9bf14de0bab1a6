//! Hook points, named as in TransformerLens (`hook_embed`, `blocks.0.attn.hook_pattern`, ...), the
//! activation cache (a map from that name to an array, shapes as TransformerLens gives them), and
//! hooks that read or replace an activation during a forward pass.

use crate::error::{closest, Error, Result};
use crate::models::transformer::TransformerConfig;
use ndarray::{ArrayD, ArrayViewMutD, Axis, IxDyn};
use std::collections::BTreeMap;

/// One hook point of the transformer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    Embed,
    PosEmbed,
    ResidPre(usize),
    Ln1Scale(usize),
    Ln1Normalized(usize),
    Q(usize),
    K(usize),
    V(usize),
    AttnScores(usize),
    Pattern(usize),
    Z(usize),
    AttnOut(usize),
    ResidMid(usize),
    Ln2Scale(usize),
    Ln2Normalized(usize),
    MlpPre(usize),
    MlpPost(usize),
    MlpOut(usize),
    ResidPost(usize),
    LnFinalScale,
    LnFinalNormalized,
    UnembedIn,
    UnembedOut,
}

impl Site {
    pub fn name(&self) -> String {
        use Site::*;
        match *self {
            Embed => "hook_embed".into(),
            PosEmbed => "hook_pos_embed".into(),
            ResidPre(l) => format!("blocks.{l}.hook_resid_pre"),
            Ln1Scale(l) => format!("blocks.{l}.ln1.hook_scale"),
            Ln1Normalized(l) => format!("blocks.{l}.ln1.hook_normalized"),
            Q(l) => format!("blocks.{l}.attn.hook_q"),
            K(l) => format!("blocks.{l}.attn.hook_k"),
            V(l) => format!("blocks.{l}.attn.hook_v"),
            AttnScores(l) => format!("blocks.{l}.attn.hook_attn_scores"),
            Pattern(l) => format!("blocks.{l}.attn.hook_pattern"),
            Z(l) => format!("blocks.{l}.attn.hook_z"),
            AttnOut(l) => format!("blocks.{l}.hook_attn_out"),
            ResidMid(l) => format!("blocks.{l}.hook_resid_mid"),
            Ln2Scale(l) => format!("blocks.{l}.ln2.hook_scale"),
            Ln2Normalized(l) => format!("blocks.{l}.ln2.hook_normalized"),
            MlpPre(l) => format!("blocks.{l}.mlp.hook_pre"),
            MlpPost(l) => format!("blocks.{l}.mlp.hook_post"),
            MlpOut(l) => format!("blocks.{l}.hook_mlp_out"),
            ResidPost(l) => format!("blocks.{l}.hook_resid_post"),
            LnFinalScale => "ln_final.hook_scale".into(),
            LnFinalNormalized => "ln_final.hook_normalized".into(),
            UnembedIn => "unembed.hook_in".into(),
            UnembedOut => "unembed.hook_out".into(),
        }
    }

    /// Every hook point of a model with this config, in the order the forward pass reaches them.
    pub fn all(cfg: &TransformerConfig) -> Vec<Site> {
        use Site::*;
        let mut v = vec![Embed, PosEmbed];
        for l in 0..cfg.n_layers {
            v.push(ResidPre(l));
            if cfg.has_ln() {
                v.extend([Ln1Scale(l), Ln1Normalized(l)]);
            }
            v.extend([
                Q(l),
                K(l),
                V(l),
                AttnScores(l),
                Pattern(l),
                Z(l),
                AttnOut(l),
            ]);
            if cfg.has_mlp() {
                v.push(ResidMid(l));
                if cfg.has_ln() {
                    v.extend([Ln2Scale(l), Ln2Normalized(l)]);
                }
                v.extend([MlpPre(l), MlpPost(l), MlpOut(l)]);
            }
            v.push(ResidPost(l));
        }
        if cfg.has_ln() {
            v.extend([LnFinalScale, LnFinalNormalized]);
        }
        v.extend([UnembedIn, UnembedOut]);
        v
    }

    /// The hook point called `name` in a model with this config, or an error listing close names.
    pub fn parse(cfg: &TransformerConfig, name: &str) -> Result<Site> {
        let all = Site::all(cfg);
        if let Some(s) = all.iter().find(|s| s.name() == name) {
            return Ok(*s);
        }
        let names: Vec<String> = all.iter().map(|s| s.name()).collect();
        Err(Error::UnknownHook {
            name: name.to_string(),
            suggestions: closest(name, names.iter().map(|s| s.as_str()), 3),
        })
    }
}

/// A hook: sees the activation (TransformerLens shape) and may change it in place.
pub type HookFn<'a> = Box<dyn FnMut(&mut ArrayViewMutD<f32>) + 'a>;

/// Hooks by hook-point name, run in the order added when several share a point.
#[derive(Default)]
pub struct Hooks<'a> {
    pub(crate) entries: Vec<(String, HookFn<'a>)>,
}

impl<'a> Hooks<'a> {
    pub fn new() -> Self {
        Hooks {
            entries: Vec::new(),
        }
    }

    /// Add a hook at `name` (checked when the model runs).
    pub fn add(
        mut self,
        name: impl Into<String>,
        f: impl FnMut(&mut ArrayViewMutD<f32>) + 'a,
    ) -> Self {
        self.entries.push((name.into(), Box::new(f)));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Zero ablation: the activation becomes 0.
pub fn zero_ablate() -> impl FnMut(&mut ArrayViewMutD<f32>) {
    |a| a.fill(0.0)
}

/// Mean ablation: every batch element gets the batch mean (axis 0).
pub fn mean_ablate() -> impl FnMut(&mut ArrayViewMutD<f32>) {
    |a| {
        let n = a.len_of(Axis(0)).max(1) as f32;
        let mean = a.sum_axis(Axis(0)) / n;
        for mut row in a.axis_iter_mut(Axis(0)) {
            row.assign(&mean);
        }
    }
}

/// Replace the activation with `value` (same shape; broadcasting allowed).
pub fn replace_with(value: ArrayD<f32>) -> impl FnMut(&mut ArrayViewMutD<f32>) {
    move |a| {
        let dim = a.raw_dim();
        a.assign(
            &value
                .broadcast(dim)
                .expect("replacement shape does not broadcast"),
        );
    }
}

/// What to patch from a source activation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatchSpec {
    /// Only this position (axis 1 of `[batch, pos, ...]`, or the query axis of patterns); all if None.
    pub position: Option<usize>,
    /// Only this head (for per-head activations: q, k, v, z, scores, pattern); all if None.
    pub head: Option<usize>,
}

/// Activation patching: copy `source` (an activation from another run, same shape) into this run's
/// activation at the chosen position/head. `head_axis` and `pos_axis` give where heads and positions
/// sit for this hook point (see [`patch_axes`]).
pub fn patch_from(
    source: ArrayD<f32>,
    spec: PatchSpec,
    pos_axis: usize,
    head_axis: Option<usize>,
) -> impl FnMut(&mut ArrayViewMutD<f32>) {
    move |a| {
        assert_eq!(a.shape(), source.shape(), "patch source has another shape");
        let mut dst = a.view_mut();
        let mut src = source.view();
        if let (Some(h), Some(ax)) = (spec.head, head_axis) {
            dst.collapse_axis(Axis(ax), h);
            src.collapse_axis(Axis(ax), h);
        }
        if let Some(p) = spec.position {
            dst.collapse_axis(Axis(pos_axis), p);
            src.collapse_axis(Axis(pos_axis), p);
        }
        dst.assign(&src);
    }
}

/// (position axis, head axis) of a hook point's activation in TransformerLens layout.
pub fn patch_axes(site: Site) -> (usize, Option<usize>) {
    match site {
        Site::Q(_) | Site::K(_) | Site::V(_) | Site::Z(_) => (1, Some(2)),
        Site::AttnScores(_) | Site::Pattern(_) => (2, Some(1)),
        _ => (1, None),
    }
}

/// Which activations to keep in a cache.
pub enum CacheFilter<'a> {
    All,
    Names(Vec<String>),
    Predicate(Box<dyn Fn(&str) -> bool + 'a>),
}

/// Activations by hook-point name.
#[derive(Clone, Debug, Default)]
pub struct ActivationCache {
    pub map: BTreeMap<String, ArrayD<f32>>,
}

impl ActivationCache {
    /// The activation at `name`, or an error listing close names.
    pub fn get(&self, name: &str) -> Result<&ArrayD<f32>> {
        self.map.get(name).ok_or_else(|| Error::UnknownHook {
            name: name.to_string(),
            suggestions: closest(name, self.map.keys().map(|s| s.as_str()), 3),
        })
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Shape helper for hook views.
pub(crate) fn dyn_shape(s: &[usize]) -> IxDyn {
    IxDyn(s)
}
