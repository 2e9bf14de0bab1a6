//! A TransformerLens-compatible transformer: the same config fields, parameter names and shapes, hook
//! names and activation shapes, computed by toylens' own engine with an explicit backward.
//!
//! One forward serves training and interpretability. Without hooks or cache it takes two exact
//! shortcuts: layer 0 computes everything before attention (LN, Q/K/V) once per distinct
//! (token, position) pair and indexes into it, and the last block computes attention queries, MLP and
//! unembedding only at the positions that carry loss. With hooks every activation is computed at
//! every position, so a hook always sees (and can replace) the full tensor. A pass with a cache and
//! no hooks keeps layer 0's shortcuts and, where the inputs' first tokens repeat, computes the last
//! block's rows at those positions once per distinct prefix (`prefix.rs`); the cache still gets
//! every entry in full.
//!
//! `forward.rs` and `backward.rs` hold the passes, a function per stage (embeddings, attention, MLP,
//! unembedding) with the shapes each takes; the forward records the shortcuts it took in a [`Plan`]
//! and the backward follows that record. `sites.rs` names and shapes the hook points.

mod backward;
mod config;
mod forward;
mod params;
mod positions;
mod prefix;
mod projections;
mod sites;

pub use config::{
    InitScheme, Normalization, PositionalEmbedding, TransformerConfig, TransformerSection,
};
pub use forward::SeqInput;
pub use params::{BlockIds, Layout, LnIds, MlpIds, ParamSpec};
pub use sites::{patch_axes, Site};

use crate::batch::{Batch, Input, LossStats, SequenceBatch, TokenBatch};
use crate::engine::loss::{self, RowLoss};
use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, CacheFilter, HookRunner, Hooks};
use crate::models::{batch_mismatch, Buffer, Kind, Model, Scratch, TensorSpec};
use ndarray::{Array3, ArrayView2, ArrayView3, IxDyn};

/// The buffers of the last [`Transformer::run`], kept for the next (one set, for any model).
static RUN_WORKSPACE: std::sync::Mutex<Option<Workspace>> = std::sync::Mutex::new(None);

/// The last run's buffers, when no other run holds them: repeated runs (an analysis over units, a
/// notebook cell run again) then allocate and page-fault nothing large.
fn take_run_workspace() -> Workspace {
    RUN_WORKSPACE
        .lock()
        .ok()
        .and_then(|mut w| w.take())
        .unwrap_or_default()
}

fn put_run_workspace(ws: Workspace) {
    if let Ok(mut w) = RUN_WORKSPACE.lock() {
        *w = Some(ws);
    }
}

/// A transformer: its config, the parameter layout and the flat parameter buffer.
#[derive(Clone, Debug)]
pub struct Transformer {
    pub cfg: TransformerConfig,
    pub layout: Layout,
    pub params: Vec<f32>,
    /// Rotary models' tables, made once from the config.
    rotary: Option<positions::Rotary>,
}

/// One LayerNorm's buffers, `[rows, d]` (scale `[rows]`).
#[derive(Default, Debug)]
struct LnBufs {
    xc: Vec<f32>,
    scale: Vec<f32>,
    xhat: Vec<f32>,
    y: Vec<f32>,
}

/// One block's activations (shapes as in `forward.rs`: r layer-0 rows or b·p, q query positions).
#[derive(Default, Debug)]
struct LayerBufs {
    ln1: LnBufs,
    /// `[h, r, d_head]` each, head-major.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Smeared keys: the keys before smearing, `[h, r, d_head]`.
    k_raw: Vec<f32>,
    /// Shortformer: the queries' and keys' input, ln1's output + W_pos, `[r, d]`.
    qk_in: Vec<f32>,
    /// `[b, h, q, p]` each. The scores are written only where something reads them (a hook, the
    /// cache, or `keep_scores`).
    scores: Vec<f32>,
    pattern: Vec<f32>,
    /// `[b·q, h·d_head]` (not computed where W_O is folded into v).
    z: Vec<f32>,
    /// Folded W_O: v·W_O per head, `[h, r, d]`.
    vo: Vec<f32>,
    /// The W_in fold of layer 0: the distinct rows that queries sit at (`own_rows`, and each
    /// row's index among them in `own_slot [r]`, u32::MAX for the others), their resid_pre
    /// `[own, d]`, and through W_in `xin [r, m]` (only those rows written); W_O·W_in per head
    /// `[h·d_head, m]`; each head's v·(W_O·W_in) `[h, r, m]`.
    own_rows: Vec<u32>,
    own_slot: Vec<u32>,
    xown: Vec<f32>,
    xin_own: Vec<f32>,
    xin: Vec<f32>,
    wo_in: Vec<f32>,
    vow: Vec<f32>,
    /// The fold's bias, b_in + b_O·W_in `[m]`.
    fold_bias: Vec<f32>,
    /// `[b·q, d]` each.
    attn_out: Vec<f32>,
    resid_mid: Vec<f32>,
    ln2: LnBufs,
    /// `[b·q, m]` each.
    pre: Vec<f32>,
    post: Vec<f32>,
    /// `[b·q, d]`.
    mlp_out: Vec<f32>,
    /// A split cache pass's arrays that this block writes its rows straight into, instead of
    /// into the buffers above (prefix.rs).
    direct: prefix::DirectRows,
    /// Write `scores` though no hook wants them (a split cache pass reads them after the forward).
    keep_scores: bool,
}

/// The exact shortcuts a forward pass took, recorded for its backward to follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Layer 0 computes everything before attention once per distinct (token, position).
    pub dedup_layer0: bool,
    /// Layer 0 projects v through W_O per distinct row and skips z·W_O.
    pub fold_wo_layer0: bool,
    /// W_in's bias and the ReLU are applied in one pass.
    pub fused_bias_relu: bool,
    /// Layer 0 (no LayerNorm before its MLP) computes mlp_pre from the few distinct rows its input
    /// is a linear function of (resid_pre and each head's v·W_O, through W_in) instead of from
    /// resid_mid (exact maths, other rounding): in passes whose hooks only cache, and in unhooked
    /// passes (forward and backward) where it pays or a workspace asks for it.
    pub fold_w_in_layer0: bool,
    /// No hook ran (hooks may replace activations, so a hooked pass has no backward).
    pub differentiable: bool,
}

/// Buffers reused across calls: after the first step of a given batch shape, a training step
/// allocates nothing large.
#[derive(Default, Debug)]
pub struct Workspace {
    batch: usize,
    n_pos: usize,
    /// What the last forward did.
    plan: Plan,
    /// `[p]`: 0..p.
    all_pos: Vec<usize>,
    /// The last block's query positions.
    last_q: Vec<usize>,
    /// `[b·p]`: layer 0's row of each (batch, position).
    map0: Vec<u32>,
    /// `[r]`: the (token, position) of each layer-0 row.
    uniq: Vec<(u32, u32)>,
    /// `[d_vocab·n_ctx]`: scratch for building `map0`.
    slot: Vec<u32>,
    /// `[b·p]`: the identity map of the other layers.
    ident: Vec<u32>,
    layers: Vec<LayerBufs>,
    /// `resid[l]`: input of block l (`[r, d]` for l = 0, `[b·p, d]` after); `resid[n_layers]`: the
    /// last block's output, `[b·q, d]`.
    resid: Vec<Vec<f32>>,
    /// `[r, d]` each (only when a hook wants them, or vector tokens).
    embed: Vec<f32>,
    /// Vector tokens: the input `[b·p, d_vocab]` (for W_E's gradient).
    x_in: Vec<f32>,
    pos: Vec<f32>,
    /// `[b·p·h·d_head]`: q/k/v in TransformerLens' order for their hooks.
    head_tmp: Vec<f32>,
    /// The Q/K/V projections' packed operands (`projections.rs`).
    packed: projections::Packed,
    lnf: LnBufs,
    /// `[b·q, v]`.
    logits: Vec<f32>,
    /// `[b·q]` each.
    targets: Vec<u32>,
    row_loss: Vec<RowLoss>,
    // backward
    /// `[b·q, v]`.
    dlogits: Vec<f32>,
    /// d residual, alternating: `[b·q, d]` or `[r, d]`.
    dres_a: Vec<f32>,
    dres_b: Vec<f32>,
    /// d of a LayerNorm's output or of x1, up to `[r, d]`.
    dx: Vec<f32>,
    /// `[b·q, m]`.
    dhidden: Vec<f32>,
    /// `[b·q, h·d_head]`.
    dz: Vec<f32>,
    /// `[h, r, d_head]` each.
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    /// `[h, r, d]`.
    dvo: Vec<f32>,
    /// The W_in fold's gradients: d (v·W_O·W_in) `[h, r, m]`, d (W_O·W_in) `[h·d_head, m]`,
    /// d (resid_pre·W_in) and d resid_pre at the own rows `[own, m]` and `[own, d]`, and
    /// d mlp_pre summed over rows `[m]` (for b_O).
    dvow: Vec<f32>,
    /// The fold's share of d pattern `[b, h, q, p]`, and which examples use each table row.
    dfold: Vec<f32>,
    key_rows: crate::engine::fold::KeyRows,
    dwo_in: Vec<f32>,
    dxin: Vec<f32>,
    dxown: Vec<f32>,
    dpre_sum: Vec<f32>,
    /// Whether unhooked passes take the W_in fold (None: where it pays, the default).
    w_in_fold: Option<bool>,
    /// Whether the last forward's layer 0 took the W_in fold.
    w_in_folded: bool,
    /// Take no shortcut (every activation at every position, one row per example and position),
    /// so that a backward can record each activation's gradient.
    plain: bool,
    /// The next forward starts at this block with this residual stream `[b·p, d]` (hooked passes:
    /// `run_with_hooks_at`).
    start_at: Option<(usize, Vec<f32>)>,
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take layer 0's W_in fold in the unhooked passes that use this workspace (training and
    /// evaluation) or not; `None`, the default, takes it where its cost model says it pays for
    /// the batch's shapes (Nanda's model: yes). Exact maths, other rounding; forcing it is for
    /// tests and benchmarks that compare it with the general path.
    pub fn set_w_in_fold(&mut self, fold: Option<bool>) {
        self.w_in_fold = fold;
    }

    /// Whether the last forward folded W_in into layer 0's rows.
    pub fn w_in_folded(&self) -> bool {
        self.w_in_folded
    }

    /// Buffers for `n_layers` blocks.
    fn ensure_layers(&mut self, n_layers: usize) {
        if self.layers.len() != n_layers {
            self.layers.resize_with(n_layers, LayerBufs::default);
            self.resid.resize_with(n_layers + 1, Vec::new);
        }
    }
}

#[inline]
fn buf<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() != n {
        v.resize(n, T::default());
    }
    &mut v[..]
}

impl Transformer {
    /// A freshly initialised model (deterministic in `cfg.seed`).
    pub fn new(cfg: TransformerConfig) -> Result<Self> {
        cfg.validate("model.")?;
        let layout = Layout::new(&cfg);
        let params = layout.init(&cfg);
        Ok(Transformer {
            rotary: cfg.rotary().then(|| positions::Rotary::new(&cfg)),
            cfg,
            layout,
            params,
        })
    }

    /// A model with the given parameters (flat, in layout order).
    pub fn from_params(cfg: TransformerConfig, params: Vec<f32>) -> Result<Self> {
        cfg.validate("model.")?;
        let layout = Layout::new(&cfg);
        if params.len() != layout.total {
            return Err(Error::Input(format!(
                "expected {} parameters, got {}",
                layout.total,
                params.len()
            )));
        }
        Ok(Transformer {
            rotary: cfg.rotary().then(|| positions::Rotary::new(&cfg)),
            cfg,
            layout,
            params,
        })
    }

    /// The parameter called `name`, as an array of its TransformerLens shape.
    pub fn param(&self, name: &str) -> Option<ndarray::ArrayViewD<'_, f32>> {
        let s = self.layout.find(name)?;
        ndarray::ArrayViewD::from_shape(IxDyn(&s.shape), &self.params[s.range()]).ok()
    }

    pub fn check_tokens(&self, tokens: ArrayView2<u32>) -> Result<()> {
        if self.cfg.vector_tokens {
            return Err(Error::Input(format!(
                "this model reads vectors [batch, pos, {}], not token ids",
                self.cfg.d_vocab
            )));
        }
        let (b, p) = tokens.dim();
        if b == 0 || p == 0 {
            return Err(Error::Input(format!(
                "empty input: tokens have shape [{b}, {p}]"
            )));
        }
        if p > self.cfg.n_ctx {
            return Err(Error::Input(format!(
                "input has {p} positions but the model's n_ctx is {}",
                self.cfg.n_ctx
            )));
        }
        if let Some(((bi, pi), &t)) = tokens
            .indexed_iter()
            .find(|(_, &t)| t as usize >= self.cfg.d_vocab)
        {
            return Err(Error::Input(format!(
                "token {t} at [batch {bi}, position {pi}] is outside the vocabulary (d_vocab = {})",
                self.cfg.d_vocab
            )));
        }
        Ok(())
    }

    /// Vector tokens `[batch, pos, d_vocab]`: a `vector_tokens` model's input, finite.
    pub fn check_vectors(&self, x: ArrayView3<f32>) -> Result<()> {
        let (b, p, d_in) = x.dim();
        if !self.cfg.vector_tokens {
            return Err(Error::Input(format!(
                "this model reads token ids [batch, pos]; got vectors of shape [{b}, {p}, {d_in}]"
            )));
        }
        if b == 0 || p == 0 || d_in != self.cfg.d_vocab {
            return Err(Error::Input(format!(
                "vector tokens have shape [{b}, {p}, {d_in}]; the model takes [batch, pos, {}]",
                self.cfg.d_vocab
            )));
        }
        if p > self.cfg.n_ctx {
            return Err(Error::Input(format!(
                "input has {p} positions but the model's n_ctx is {}",
                self.cfg.n_ctx
            )));
        }
        if let Some(((bi, pi, _), _)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Input(format!(
                "vector token at [batch {bi}, position {pi}] is not finite"
            )));
        }
        Ok(())
    }

    fn check_input(&self, input: SeqInput) -> Result<()> {
        match input {
            SeqInput::Tokens(t) => self.check_tokens(t),
            SeqInput::Vectors(x) => self.check_vectors(x),
        }
    }

    /// The lowest block whose parameters `wanted` touches (0 when it touches an embedding, the
    /// number of blocks when it touches only the final LayerNorm and the unembedding): where a
    /// backward that fills `wanted` may stop.
    fn lowest_block_wanted(&self, wanted: &[std::ops::Range<usize>]) -> usize {
        let touches =
            |r: std::ops::Range<usize>| wanted.iter().any(|w| w.start < r.end && r.start < w.end);
        let mut lowest = self.cfg.n_layers;
        for s in &self.layout.specs {
            if !touches(s.range()) {
                continue;
            }
            match s.name.strip_prefix("blocks.") {
                Some(rest) => {
                    let l = rest.split('.').next().and_then(|l| l.parse().ok());
                    lowest = lowest.min(l.unwrap_or(0));
                }
                None if s.name.starts_with("ln_final") || s.name.starts_with("unembed") => {}
                None => return 0,
            }
        }
        lowest
    }

    /// A gradient buffer of one entry per parameter.
    fn check_grads(&self, grads: &[f32]) -> Result<()> {
        if grads.len() != self.layout.total {
            return Err(Error::Input(format!(
                "gradient buffer has {} entries, the model {}",
                grads.len(),
                self.layout.total
            )));
        }
        Ok(())
    }

    /// A vector batch: its inputs, loss positions and targets `[batch, loss positions, d_vocab_out]`.
    fn check_sequence_batch(&self, batch: &SequenceBatch) -> Result<()> {
        self.check_vectors(batch.x.view())?;
        check_positions(&batch.loss_pos, batch.x.dim().1)?;
        let want = (
            batch.x.dim().0,
            batch.loss_pos.len(),
            self.cfg.d_vocab_out(),
        );
        if batch.y.dim() != want {
            return Err(Error::Input(format!(
                "targets have shape {:?}, expected [{}, {}, {}]",
                batch.y.shape(),
                want.0,
                want.1,
                want.2
            )));
        }
        Ok(())
    }

    fn check_batch(&self, batch: &TokenBatch) -> Result<()> {
        self.check_tokens(batch.tokens.view())?;
        let (b, p) = batch.tokens.dim();
        if batch.loss_pos.is_empty()
            || batch.loss_pos.windows(2).any(|w| w[0] >= w[1])
            || batch.loss_pos.iter().any(|&x| x >= p)
        {
            return Err(Error::Input(format!(
                "loss positions {:?} must be increasing and below the input length {p}",
                batch.loss_pos
            )));
        }
        if batch.targets.dim() != (b, batch.loss_pos.len()) {
            return Err(Error::Input(format!(
                "targets have shape {:?}, expected [{b}, {}]",
                batch.targets.shape(),
                batch.loss_pos.len()
            )));
        }
        let v = self.cfg.d_vocab_out();
        if let Some(&t) = batch.targets.iter().find(|&&t| t as usize >= v) {
            return Err(Error::Input(format!(
                "target {t} is outside the output vocabulary (d_vocab_out = {v})"
            )));
        }
        Ok(())
    }

    /// Logits `[batch, pos, d_vocab_out]` at every position (no hooks).
    pub fn forward(&self, tokens: ArrayView2<u32>) -> Result<Array3<f32>> {
        self.run(tokens, Hooks::new(), None).map(|(l, _)| l)
    }

    /// Logits and the activations the filter selects, keyed by TransformerLens hook name.
    pub fn run_with_cache(
        &self,
        tokens: ArrayView2<u32>,
        filter: CacheFilter,
    ) -> Result<(Array3<f32>, ActivationCache)> {
        self.run(tokens, Hooks::new(), Some(filter))
    }

    /// Logits with hooks that read or replace activations.
    pub fn run_with_hooks(&self, tokens: ArrayView2<u32>, hooks: Hooks) -> Result<Array3<f32>> {
        self.run(tokens, hooks, None).map(|(l, _)| l)
    }

    /// The general entry point: hooks and, optionally, a cache, at every position.
    pub fn run(
        &self,
        tokens: ArrayView2<u32>,
        hooks: Hooks,
        filter: Option<CacheFilter>,
    ) -> Result<(Array3<f32>, ActivationCache)> {
        self.run_input(tokens.into(), hooks, filter)
    }

    /// [`Transformer::run`] of token ids or vector tokens.
    pub fn run_input(
        &self,
        input: SeqInput,
        hooks: Hooks,
        filter: Option<CacheFilter>,
    ) -> Result<(Array3<f32>, ActivationCache)> {
        self.check_input(input)?;
        let names: Vec<String> = Site::all(&self.cfg).iter().map(Site::name).collect();
        if let (true, Some(filter), SeqInput::Tokens(tokens)) =
            (hooks.is_empty(), filter.as_ref(), input)
        {
            if let Some(split) = prefix::PrefixSplit::find(tokens) {
                // Check the filter's names first (the split passes filter by predicate).
                HookRunner::new(
                    &names,
                    Hooks::new(),
                    Some((&mut ActivationCache::default(), filter)),
                )?;
                let mut ws = take_run_workspace();
                let out = self.run_split(&mut ws, tokens, (&names, filter), &split);
                put_run_workspace(ws);
                return out;
            }
        }
        let mut cache = ActivationCache::default();
        let mut icpt: forward::Interceptor =
            HookRunner::new(&names, hooks, filter.as_ref().map(|f| (&mut cache, f)))?;
        let (b, p) = input.dim();
        let mut ws = take_run_workspace();
        let all_pos: Vec<usize> = (0..p).collect();
        self.forward_impl(&mut ws, input, &all_pos, Some(&mut icpt));
        let finished = icpt.finish();
        let v = self.cfg.d_vocab_out();
        let logits = Array3::from_shape_vec((b, p, v), ws.logits[..b * p * v].to_vec())
            .expect("logits shape");
        put_run_workspace(ws);
        finished?;
        Ok((logits, cache))
    }

    /// One forward with a cache and one backward of a scalar function of the logits: `metric`
    /// gives its value and d metric / d logits `[b, p, v]`. Returns the logits, the cache, the
    /// value and the gradient of the metric with respect to every activation TransformerLens's
    /// backward hooks see (`hook_embed`, `hook_pos_embed`, each block's residual points,
    /// `hook_attn_out`, `hook_mlp_out`, q, k, v, z and the pattern), under the same names and in
    /// the same shapes. No shortcut is taken in this pass. Not yet for the options TransformerLens's
    /// standard model lacks: no gradient for `hook_pos_embed` in shortformer models, nor for
    /// `hook_rot_q`, `hook_rot_k` or `hook_smeared_k` (q and k's are those of `hook_q`, `hook_k`).
    #[allow(clippy::type_complexity)]
    pub fn run_with_grads(
        &self,
        tokens: ArrayView2<u32>,
        filter: CacheFilter,
        metric: impl FnOnce(ndarray::ArrayView3<f32>) -> Result<(f64, Array3<f32>)>,
    ) -> Result<(Array3<f32>, ActivationCache, f64, ActivationCache)> {
        self.check_tokens(tokens)?;
        let names: Vec<String> = Site::all(&self.cfg).iter().map(Site::name).collect();
        let (b, p) = tokens.dim();
        let (d, h, dh, v) = (
            self.cfg.d_model,
            self.cfg.n_heads,
            self.cfg.d_head,
            self.cfg.d_vocab_out(),
        );
        // The pattern's gradient is computed below from z's and v's: keep v.
        let mut cache = ActivationCache::default();
        let mut ws = Workspace {
            plain: true,
            ..Workspace::default()
        };
        let all_pos: Vec<usize> = (0..p).collect();
        let want = |n: &str| filter.keeps(n) || n.ends_with("attn.hook_v");
        let full = CacheFilter::Predicate(Box::new(want));
        {
            let mut icpt = HookRunner::new(&names, Hooks::new(), Some((&mut cache, &full)))?;
            self.forward_impl(&mut ws, tokens, &all_pos, Some(&mut icpt));
            icpt.finish()?;
        }
        let logits = Array3::from_shape_vec((b, p, v), ws.logits[..b * p * v].to_vec())
            .expect("logits shape");
        let (value, dlogits) = metric(logits.view())?;
        if dlogits.dim() != (b, p, v) {
            return Err(Error::Input(format!(
                "the metric's gradient has shape {:?}, the logits {:?}",
                dlogits.shape(),
                logits.shape()
            )));
        }
        ws.dlogits.clear();
        ws.dlogits.extend(dlogits.iter());
        let mut record = Vec::new();
        let mut sink = vec![0.0f32; self.layout.total];
        self.backward_recording(&mut ws, &mut sink, Some(&mut record), 0);
        let mut grads = ActivationCache::default();
        let put = |g: &mut ActivationCache, site: Site, shape: &[usize], data: Vec<f32>| {
            g.map.insert(
                site.name(),
                ndarray::ArrayD::from_shape_vec(shape, data).expect("gradient shape"),
            );
        };
        for (site, data) in record {
            match site {
                Site::Q(_) | Site::K(_) | Site::V(_) => {
                    // head-major [h, b·p, dh] → [b, p, h, dh]
                    let a = ndarray::Array3::from_shape_vec((h, b * p, dh), data).expect("heads");
                    let t = a.permuted_axes([1, 0, 2]).as_standard_layout().to_owned();
                    put(
                        &mut grads,
                        site,
                        &[b, p, h, dh],
                        t.into_raw_vec_and_offset().0,
                    );
                }
                Site::Z(l) => {
                    let dz = ndarray::Array4::from_shape_vec((b, p, h, dh), data).expect("z");
                    let vv = cache.get(&Site::V(l).name())?;
                    let vv = vv.view().into_dimensionality::<ndarray::Ix4>().expect("v");
                    // d pattern[b, h, q, k] = dz[b, q, h, :] · v[b, k, h, :]
                    // (at masked keys too, as for TransformerLens's z = Σ_k pattern·v over all k).
                    let dpat = ndarray::Array4::from_shape_fn((b, h, p, p), |(bi, hh, q, k)| {
                        (0..dh)
                            .map(|i| dz[[bi, q, hh, i]] * vv[[bi, k, hh, i]])
                            .sum()
                    });
                    put(
                        &mut grads,
                        Site::Pattern(l),
                        &[b, h, p, p],
                        dpat.into_raw_vec_and_offset().0,
                    );
                    put(
                        &mut grads,
                        site,
                        &[b, p, h, dh],
                        dz.into_raw_vec_and_offset().0,
                    );
                }
                Site::ResidPre(l) => {
                    if l == 0 {
                        put(&mut grads, Site::Embed, &[b, p, d], data.clone());
                        // (Shortformer's W_pos feeds every block's queries and keys instead.)
                        if self.cfg.pos_in_resid() {
                            put(&mut grads, Site::PosEmbed, &[b, p, d], data.clone());
                        }
                    }
                    put(&mut grads, site, &[b, p, d], data);
                }
                Site::ResidMid(l) => {
                    put(&mut grads, Site::AttnOut(l), &[b, p, d], data.clone());
                    put(&mut grads, site, &[b, p, d], data);
                }
                Site::ResidPost(l) => {
                    let also = if self.cfg.has_mlp() {
                        Site::MlpOut(l)
                    } else {
                        Site::AttnOut(l)
                    };
                    put(&mut grads, also, &[b, p, d], data.clone());
                    put(&mut grads, site, &[b, p, d], data);
                }
                _ => {}
            }
        }
        if !(0..self.cfg.n_layers).any(|l| filter.keeps(&Site::V(l).name())) {
            cache.map.retain(|k, _| !k.ends_with("attn.hook_v"));
        }
        Ok((logits, cache, value, grads))
    }

    /// Whether a hook at `name` sees its full tensor in a pass whose last block computes only some
    /// positions' outputs: a site before that block, or one of its sites computed at every
    /// position whatever the queries (the residual before it, its first LayerNorm, q, k, v).
    pub fn full_under_restricted_queries(&self, name: &str) -> bool {
        let last = self.cfg.n_layers - 1;
        match Site::parse(&self.cfg, name) {
            Ok(Site::Embed | Site::PosEmbed) => true,
            Ok(
                Site::ResidPre(l)
                | Site::Ln1Scale(l)
                | Site::Ln1Normalized(l)
                | Site::Q(l)
                | Site::K(l)
                | Site::V(l)
                | Site::RotQ(l)
                | Site::RotK(l)
                | Site::SmearedK(l),
            ) => l <= last,
            Ok(site) => site.layer().is_some_and(|l| l < last),
            Err(_) => false,
        }
    }

    /// [`Self::run_with_hooks`] with the last block computing only `positions` (increasing): the
    /// logits `[b, positions, v]`; and, with `from = (l, resid_pre)`, starting at block `l` from
    /// that residual stream `[b, p, d]` (the blocks before it skipped: the caller has their
    /// output). Every hook must sit at block `l` or later, and see its full tensor in such a pass
    /// ([`Self::full_under_restricted_queries`]) unless `partial`: then a hook at one of the last
    /// block's other sites sees only the rows of `positions` (`[b, positions, ...]`; patterns
    /// `[b, h, positions, p]`), which its caller must expect.
    pub fn run_with_hooks_at(
        &self,
        tokens: ArrayView2<u32>,
        hooks: Hooks,
        positions: &[usize],
        from: Option<(usize, ndarray::ArrayView3<f32>)>,
        partial: bool,
    ) -> Result<Array3<f32>> {
        self.check_tokens(tokens)?;
        let (b, p) = tokens.dim();
        check_positions(positions, p)?;
        if let Some(n) = hooks
            .names()
            .find(|n| !partial && !self.full_under_restricted_queries(n))
        {
            return Err(Error::Input(format!(
                "a hook at `{n}` needs every position of the last block computed"
            )));
        }
        if let Some((l, resid)) = &from {
            let d = self.cfg.d_model;
            if *l >= self.cfg.n_layers || resid.dim() != (b, p, d) {
                return Err(Error::Input(format!(
                    "a pass resumed at block {l} needs its residual stream [{b}, {p}, {d}]; got {:?}",
                    resid.shape()
                )));
            }
            let early = hooks.names().find(|n| match Site::parse(&self.cfg, n) {
                Ok(Site::Embed | Site::PosEmbed) => true,
                Ok(s) => s.layer().is_some_and(|sl| sl < *l),
                Err(_) => true,
            });
            if let Some(n) = early {
                return Err(Error::Input(format!(
                    "a hook at `{n}` comes before block {l}, where the pass starts"
                )));
            }
        }
        // A hooked pass (one row per input, as `from` gives them) even with no hook of the
        // caller's.
        let at = from.as_ref().map_or(0, |(l, _)| *l);
        let hooks = hooks.add(
            Site::ResidPre(at).name(),
            |_: &mut ndarray::ArrayViewMutD<f32>| {},
        );
        let names: Vec<String> = Site::all(&self.cfg).iter().map(Site::name).collect();
        let mut icpt: forward::Interceptor = HookRunner::new(&names, hooks, None)?;
        let mut ws = take_run_workspace();
        ws.start_at = from.map(|(l, r)| (l, r.iter().copied().collect()));
        self.forward_impl(&mut ws, tokens, positions, Some(&mut icpt));
        let finished = icpt.finish();
        let v = self.cfg.d_vocab_out();
        let n = positions.len();
        let logits = Array3::from_shape_vec((b, n, v), ws.logits[..b * n * v].to_vec())
            .expect("logits shape");
        put_run_workspace(ws);
        finished?;
        Ok(logits)
    }

    /// Logits `[batch, positions, d_vocab_out]` at the given increasing positions only (forward with
    /// the shortcuts: the last block runs at those positions alone).
    pub fn logits_at(
        &self,
        ws: &mut Workspace,
        tokens: ArrayView2<u32>,
        positions: &[usize],
    ) -> Result<Array3<f32>> {
        self.check_tokens(tokens)?;
        let (b, p) = tokens.dim();
        check_positions(positions, p)?;
        self.forward_impl(ws, tokens, positions, None);
        let v = self.cfg.d_vocab_out();
        let n = positions.len();
        Ok(
            Array3::from_shape_vec((b, n, v), ws.logits[..b * n * v].to_vec())
                .expect("logits shape"),
        )
    }

    /// Mean loss and accuracy on a batch (forward only, with the shortcuts).
    pub fn evaluate(&self, ws: &mut Workspace, batch: &TokenBatch) -> Result<LossStats> {
        self.check_batch(batch)?;
        self.forward_impl(ws, batch.tokens.view(), &batch.loss_pos, None);
        Ok(self.loss_stats(ws, batch, false))
    }

    /// Loss on a batch and its gradient with respect to every parameter, written to `grads` (flat,
    /// layout order; overwritten).
    pub fn loss_and_grad(
        &self,
        ws: &mut Workspace,
        batch: &TokenBatch,
        grads: &mut [f32],
    ) -> Result<LossStats> {
        self.loss_and_grad_above(ws, batch, grads, 0)
    }

    /// [`Transformer::loss_and_grad`] with the backward stopping above block `floor`.
    fn loss_and_grad_above(
        &self,
        ws: &mut Workspace,
        batch: &TokenBatch,
        grads: &mut [f32],
        floor: usize,
    ) -> Result<LossStats> {
        self.check_batch(batch)?;
        self.check_grads(grads)?;
        self.forward_impl(ws, batch.tokens.view(), &batch.loss_pos, None);
        let stats = self.loss_stats(ws, batch, true);
        grads.fill(0.0);
        self.backward_above(ws, grads, floor);
        Ok(stats)
    }

    /// Mean squared error on a vector batch and, with `grads`, its gradient (overwritten): the
    /// mean over examples, loss positions and outputs of (ŷ − y)², as PyTorch's `mse_loss`.
    pub fn squared_error(
        &self,
        ws: &mut Workspace,
        batch: &SequenceBatch,
        grads: Option<&mut [f32]>,
    ) -> Result<LossStats> {
        self.squared_error_above(ws, batch, grads, 0)
    }

    /// [`Transformer::squared_error`] with the backward stopping above block `floor`.
    fn squared_error_above(
        &self,
        ws: &mut Workspace,
        batch: &SequenceBatch,
        grads: Option<&mut [f32]>,
        floor: usize,
    ) -> Result<LossStats> {
        self.check_sequence_batch(batch)?;
        if let Some(g) = &grads {
            self.check_grads(g)?;
        }
        self.forward_impl(ws, SeqInput::Vectors(batch.x.view()), &batch.loss_pos, None);
        let (b, nl, v) = batch.y.dim();
        let n = (b * nl * v) as f64;
        let mut per_position = vec![0.0f64; nl];
        let y = batch.y.as_standard_layout();
        let y = y.as_slice().expect("standard layout is contiguous");
        for (i, (pred, target)) in ws.logits[..b * nl * v]
            .chunks_exact(v)
            .zip(y.chunks_exact(v))
            .enumerate()
        {
            per_position[i % nl] += pred
                .iter()
                .zip(target)
                .map(|(p, t)| f64::from(p - t).powi(2))
                .sum::<f64>();
        }
        if let Some(grads) = grads {
            let scale = (2.0 / n) as f32;
            let dl = buf(&mut ws.dlogits, b * nl * v);
            for ((d, p), t) in dl.iter_mut().zip(&ws.logits).zip(y) {
                *d = scale * (p - t);
            }
            grads.fill(0.0);
            self.backward_above(ws, grads, floor);
        }
        let loss = per_position.iter().sum::<f64>() / n;
        Ok(LossStats {
            loss,
            accuracy: f64::NAN,
            per_position_loss: per_position.iter().map(|x| x / (b * v) as f64).collect(),
            per_position_accuracy: vec![f64::NAN; nl],
            exact_match: f64::NAN,
        })
    }

    fn loss_stats(&self, ws: &mut Workspace, batch: &TokenBatch, with_grad: bool) -> LossStats {
        let v = self.cfg.d_vocab_out();
        let nl = batch.loss_pos.len();
        let rows = batch.tokens.nrows() * nl;
        let targets = buf(&mut ws.targets, rows);
        for (t, &x) in targets.iter_mut().zip(batch.targets.iter()) {
            *t = x;
        }
        let out = buf(&mut ws.row_loss, rows);
        let grad = if with_grad {
            Some((buf(&mut ws.dlogits, rows * v), 1.0 / rows as f64))
        } else {
            None
        };
        loss::cross_entropy(&ws.logits, v, &ws.targets, out, grad);
        let mut pl = vec![0.0f64; nl];
        let mut pa = vec![0.0f64; nl];
        for (i, r) in ws.row_loss.iter().enumerate() {
            pl[i % nl] += r.loss;
            pa[i % nl] += f64::from(u8::from(r.correct));
        }
        let b = batch.tokens.nrows() as f64;
        let exact = ws
            .row_loss
            .chunks_exact(nl.max(1))
            .filter(|ex| ex.iter().all(|r| r.correct))
            .count();
        LossStats {
            loss: loss::mean(&ws.row_loss),
            accuracy: pa.iter().sum::<f64>() / rows as f64,
            per_position_loss: pl.iter().map(|x| x / b).collect(),
            per_position_accuracy: pa.iter().map(|x| x / b).collect(),
            exact_match: exact as f64 / b.max(1.0),
        }
    }
}

/// Positions to compute: increasing, below the input length `p`.
fn check_positions(positions: &[usize], p: usize) -> Result<()> {
    if positions.is_empty()
        || positions.windows(2).any(|w| w[0] >= w[1])
        || positions.iter().any(|&x| x >= p)
    {
        return Err(Error::Input(format!(
            "positions {positions:?} must be increasing and below the input length {p}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The model interface.

fn load_kind(cfg: &serde_json::Value) -> Result<Box<dyn Model>> {
    let cfg: TransformerConfig = crate::models::parse_config("transformer", cfg)?;
    let n = Layout::new(&cfg).total;
    Ok(Box::new(Transformer::from_params(cfg, vec![0.0; n])?))
}

pub const KIND: Kind = Kind::of::<TransformerSection>(load_kind);

impl Model for Transformer {
    crate::model_basics!("transformer");
    fn tensors(&self) -> Vec<TensorSpec> {
        self.layout
            .specs
            .iter()
            .map(|s| TensorSpec {
                name: s.name.clone(),
                shape: s.shape.clone(),
                range: s.range(),
                trainable: s.trainable,
            })
            .collect()
    }
    /// TransformerLens' `attn.mask` (bool, lower-triangular `[n_ctx, n_ctx]`) and `attn.IGNORE`
    /// (scalar −inf) of every block.
    fn buffers(&self) -> Vec<Buffer> {
        let n = self.cfg.n_ctx;
        let mask: Vec<u8> = (0..n * n).map(|i| u8::from(i % n <= i / n)).collect();
        (0..self.cfg.n_layers)
            .flat_map(|l| {
                [
                    Buffer {
                        name: format!("blocks.{l}.attn.mask"),
                        dtype: "BOOL",
                        shape: vec![n, n],
                        bytes: mask.clone(),
                    },
                    Buffer {
                        name: format!("blocks.{l}.attn.IGNORE"),
                        dtype: "F32",
                        shape: vec![],
                        bytes: f32::NEG_INFINITY.to_le_bytes().to_vec(),
                    },
                ]
            })
            .collect()
    }
    fn hook_names(&self) -> Vec<String> {
        Site::all(&self.cfg).iter().map(Site::name).collect()
    }
    fn same_activations(&self) -> Vec<(String, Option<String>)> {
        let mut same = vec![(Site::UnembedOut.name(), None)];
        if self.layout.ln_final.is_none() {
            let last = Site::ResidPost(self.cfg.n_layers - 1).name();
            same.push((Site::UnembedIn.name(), Some(last)));
        }
        same
    }
    fn example_input(&self) -> Batch {
        if self.cfg.vector_tokens {
            return Batch::Sequences(SequenceBatch {
                x: Array3::zeros((1, self.cfg.n_ctx, self.cfg.d_vocab)),
                loss_pos: vec![self.cfg.n_ctx - 1],
                y: Array3::zeros((1, 1, self.cfg.d_vocab_out())),
            });
        }
        Batch::Tokens(TokenBatch {
            tokens: ndarray::Array2::zeros((1, self.cfg.n_ctx)),
            loss_pos: vec![self.cfg.n_ctx - 1],
            targets: ndarray::Array2::zeros((1, 1)),
        })
    }
    fn evaluate(&self, scratch: &mut Scratch, batch: &Batch) -> Result<LossStats> {
        if let Batch::Sequences(b) = batch {
            return self.squared_error(scratch.get::<Workspace>(), b, None);
        }
        Transformer::evaluate(
            self,
            scratch.get::<Workspace>(),
            crate::models::token_batch(batch, "transformer")?,
        )
    }
    fn loss_and_grad(
        &self,
        scratch: &mut Scratch,
        batch: &Batch,
        grads: &mut [f32],
    ) -> Result<LossStats> {
        if let Batch::Sequences(b) = batch {
            return self.squared_error(scratch.get::<Workspace>(), b, Some(grads));
        }
        Transformer::loss_and_grad(
            self,
            scratch.get::<Workspace>(),
            crate::models::token_batch(batch, "transformer")?,
            grads,
        )
    }
    fn loss_and_grad_of(
        &self,
        scratch: &mut Scratch,
        batch: &Batch,
        grads: &mut [f32],
        wanted: &[std::ops::Range<usize>],
    ) -> Result<LossStats> {
        let floor = self.lowest_block_wanted(wanted);
        let ws = scratch.get::<Workspace>();
        match batch {
            Batch::Sequences(b) => self.squared_error_above(ws, b, Some(grads), floor),
            _ => self.loss_and_grad_above(
                ws,
                crate::models::token_batch(batch, "transformer")?,
                grads,
                floor,
            ),
        }
    }
    fn run(
        &self,
        input: Input,
        hooks: Hooks,
        filter: Option<CacheFilter>,
    ) -> Result<(ndarray::ArrayD<f32>, ActivationCache)> {
        let input = match input {
            Input::Tokens(tokens) => SeqInput::Tokens(tokens),
            Input::Sequences(x) => SeqInput::Vectors(x),
            Input::Dense(_) => {
                return Err(batch_mismatch("transformer", "tokens or vector tokens"))
            }
        };
        let (logits, cache) = Transformer::run_input(self, input, hooks, filter)?;
        Ok((logits.into_dyn(), cache))
    }
}
