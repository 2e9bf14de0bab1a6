//! A TransformerLens-compatible transformer: the same config fields, parameter names and shapes, hook
//! names and activation shapes, computed by toylens' own engine with an explicit backward.
//!
//! One forward serves training and interpretability. Without hooks or cache it takes two exact
//! shortcuts: layer 0 computes everything before attention (LN, Q/K/V) once per distinct
//! (token, position) pair and indexes into it, and the last block computes attention queries, MLP and
//! unembedding only at the positions that carry loss. With hooks or a cache every activation is
//! computed at every position, so a hook always sees (and can replace) the full tensor.

mod config;
mod params;
mod sites;

pub use config::{InitScheme, Normalization, TransformerConfig};
pub use params::{BlockIds, Layout, LnIds, MlpIds, ParamSpec};
pub use sites::{patch_axes, Site};

use crate::batch::{Batch, Input, LossStats, TokenBatch};
use crate::engine::activation::ActFn;
use crate::engine::attention::{self, Geometry};
use crate::engine::loss::{self, RowLoss};
use crate::engine::matmul::{linear, linear_backward, matmul, view, view_mut};
use crate::engine::{activation, layernorm, simd};
use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, CacheFilter, HookRunner, Hooks};
use crate::models::{batch_mismatch, Buffer, Kind, Model, Scratch, TensorSpec};
use ndarray::{Array3, ArrayView2, IxDyn};
use rayon::prelude::*;

/// A transformer: its config, the parameter layout and the flat parameter buffer.
#[derive(Clone, Debug)]
pub struct Transformer {
    pub cfg: TransformerConfig,
    pub layout: Layout,
    pub params: Vec<f32>,
}

#[derive(Default, Debug)]
struct LnBufs {
    xc: Vec<f32>,
    scale: Vec<f32>,
    xhat: Vec<f32>,
    y: Vec<f32>,
}

#[derive(Default, Debug)]
struct LayerBufs {
    ln1: LnBufs,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
    pattern: Vec<f32>,
    z: Vec<f32>,
    /// Layer 0 fast path: v·W_O per head, `[n_heads, n_rows, d_model]`.
    vo: Vec<f32>,
    attn_out: Vec<f32>,
    resid_mid: Vec<f32>,
    ln2: LnBufs,
    pre: Vec<f32>,
    post: Vec<f32>,
    mlp_out: Vec<f32>,
}

/// Buffers reused across calls: after the first step of a given batch shape, a training step
/// allocates nothing large.
#[derive(Default, Debug)]
pub struct Workspace {
    batch: usize,
    n_pos: usize,
    /// Whether the last forward took the shortcuts (and so can be differentiated).
    fast: bool,
    all_pos: Vec<usize>,
    last_q: Vec<usize>,
    /// Layer 0: physical row of each (batch, position), the (token, position) of each physical row.
    map0: Vec<u32>,
    uniq: Vec<(u32, u32)>,
    slot: Vec<u32>,
    ident: Vec<u32>,
    layers: Vec<LayerBufs>,
    /// `resid[l]`: input of block l (physical rows); `resid[n_layers]`: output of the last block.
    resid: Vec<Vec<f32>>,
    embed: Vec<f32>,
    pos: Vec<f32>,
    head_tmp: Vec<f32>,
    lnf: LnBufs,
    logits: Vec<f32>,
    targets: Vec<u32>,
    row_loss: Vec<RowLoss>,
    // backward
    dlogits: Vec<f32>,
    dres_a: Vec<f32>,
    dres_b: Vec<f32>,
    dx: Vec<f32>,
    dhidden: Vec<f32>,
    dz: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dvo: Vec<f32>,
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }
}

#[inline]
fn buf<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() != n {
        v.resize(n, T::default());
    }
    &mut v[..]
}

type Interceptor<'h, 'c> = HookRunner<'h, 'c>;

/// Run the hooks at `site` on `data` viewed with `shape` (no copy).
fn intercept(hk: &mut Option<&mut Interceptor>, site: Site, data: &mut [f32], shape: &[usize]) {
    if let Some(hk) = hk.as_deref_mut() {
        hk.run(&site.name(), data, shape);
    }
}

/// Whether a hook or the cache wants `site`.
fn wants(hk: &Option<&mut Interceptor>, site: Site) -> bool {
    hk.as_deref().is_some_and(|h| h.wants(&site.name()))
}

/// Hooks on q/k/v: our layout is head-major `[head, row, d_head]`, TransformerLens' is
/// `[batch, pos, head, d_head]`; copy out, run, copy back.
#[allow(clippy::too_many_arguments)]
fn intercept_heads(
    hk: &mut Option<&mut Interceptor>,
    site: Site,
    data: &mut [f32],
    tmp: &mut Vec<f32>,
    b: usize,
    p: usize,
    h: usize,
    dh: usize,
) {
    if !wants(hk, site) {
        return;
    }
    let rows = b * p;
    let t = buf(tmp, rows * h * dh);
    for hh in 0..h {
        for r in 0..rows {
            t[(r * h + hh) * dh..][..dh].copy_from_slice(&data[(hh * rows + r) * dh..][..dh]);
        }
    }
    intercept(hk, site, t, &[b, p, h, dh]);
    for hh in 0..h {
        for r in 0..rows {
            data[(hh * rows + r) * dh..][..dh].copy_from_slice(&t[(r * h + hh) * dh..][..dh]);
        }
    }
}

/// LayerNorm forward with its two hook points; the output is in `ln.y`.
#[allow(clippy::too_many_arguments)]
fn ln_forward(
    ln: &mut LnBufs,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    rows: usize,
    d: usize,
    eps: f32,
    hk: &mut Option<&mut Interceptor>,
    sites: (Site, Site),
    shape: (usize, usize),
) {
    let xc = buf(&mut ln.xc, rows * d);
    let scale = buf(&mut ln.scale, rows);
    layernorm::center_and_scale(x, xc, scale, d, eps);
    intercept(hk, sites.0, scale, &[shape.0, shape.1, 1]);
    let xhat = buf(&mut ln.xhat, rows * d);
    let y = buf(&mut ln.y, rows * d);
    layernorm::normalize(&ln.xc, &ln.scale, w, b, xhat, y);
    // TransformerLens' hook_normalized is x/scale, before the gain and bias.
    if wants(hk, sites.1) {
        intercept(hk, sites.1, &mut ln.xhat, &[shape.0, shape.1, d]);
        layernorm::affine(&ln.xhat, w, b, &mut ln.y);
    }
}

/// `dst[map(i)] += src[i]` over rows of width `d`, in row order (rows that share a destination are
/// added in the same order for any thread count). Sequential: it is memory-bound and short.
fn scatter_add_rows(dst: &mut [f32], src: &[f32], d: usize, map: impl Fn(usize) -> usize) {
    simd::vectorized(
        #[inline(always)]
        || {
            for (i, row) in src.chunks_exact(d).enumerate() {
                let r = map(i);
                for (o, s) in dst[r * d..(r + 1) * d].iter_mut().zip(row) {
                    *o += s;
                }
            }
        },
    );
}

impl Transformer {
    /// A freshly initialised model (deterministic in `cfg.seed`).
    pub fn new(cfg: TransformerConfig) -> Result<Self> {
        cfg.validate("model.")?;
        let layout = Layout::new(&cfg);
        let params = layout.init(&cfg);
        Ok(Transformer {
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
        self.check_tokens(tokens)?;
        let names: Vec<String> = Site::all(&self.cfg).iter().map(Site::name).collect();
        let mut cache = ActivationCache::default();
        let mut icpt = HookRunner::new(&names, hooks, filter.as_ref().map(|f| (&mut cache, f)))?;
        let (b, p) = tokens.dim();
        let mut ws = Workspace::new();
        let all_pos: Vec<usize> = (0..p).collect();
        self.forward_impl(&mut ws, tokens, &all_pos, Some(&mut icpt));
        icpt.finish()?;
        let v = self.cfg.d_vocab_out();
        let logits = Array3::from_shape_vec((b, p, v), ws.logits[..b * p * v].to_vec())
            .expect("logits shape");
        Ok((logits, cache))
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
        if positions.is_empty()
            || positions.windows(2).any(|w| w[0] >= w[1])
            || positions.iter().any(|&x| x >= p)
        {
            return Err(Error::Input(format!(
                "positions {positions:?} must be increasing and below the input length {p}"
            )));
        }
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
        self.check_batch(batch)?;
        if grads.len() != self.layout.total {
            return Err(Error::Input(format!(
                "gradient buffer has {} entries, the model {}",
                grads.len(),
                self.layout.total
            )));
        }
        self.forward_impl(ws, batch.tokens.view(), &batch.loss_pos, None);
        let stats = self.loss_stats(ws, batch, true);
        grads.fill(0.0);
        self.backward_impl(ws, grads);
        Ok(stats)
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

    /// Forward pass. `last_q`: positions the last block computes (loss positions, or all). With an
    /// interceptor (hooks/cache) nothing is deduplicated and `last_q` must be all positions.
    fn forward_impl(
        &self,
        ws: &mut Workspace,
        tokens: ArrayView2<u32>,
        last_q: &[usize],
        mut hk: Option<&mut Interceptor>,
    ) {
        let cfg = &self.cfg;
        let lay = &self.layout;
        let w = &self.params[..];
        let (b_n, p_n) = tokens.dim();
        let (d, h_n, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
        let hd = h_n * dh;
        let n_layers = cfg.n_layers;
        let eps = cfg.eps as f32;
        let fast = hk.is_none();
        ws.batch = b_n;
        ws.n_pos = p_n;
        ws.fast = fast;
        ws.all_pos.clear();
        ws.all_pos.extend(0..p_n);
        ws.last_q.clear();
        ws.last_q.extend_from_slice(last_q);
        if ws.layers.len() != n_layers {
            ws.layers.resize_with(n_layers, LayerBufs::default);
            ws.resid.resize_with(n_layers + 1, Vec::new);
        }
        let ident = buf(&mut ws.ident, b_n * p_n);
        for (i, x) in ident.iter_mut().enumerate() {
            *x = i as u32;
        }

        // Layer-0 rows: one per distinct (token, position) on the fast path, else one per (b, p).
        let map0 = buf(&mut ws.map0, b_n * p_n);
        ws.uniq.clear();
        if fast {
            let slot = buf(&mut ws.slot, cfg.d_vocab * cfg.n_ctx);
            slot.fill(u32::MAX);
            for ((bi, pi), &t) in tokens.indexed_iter() {
                let key = t as usize * cfg.n_ctx + pi;
                if slot[key] == u32::MAX {
                    slot[key] = ws.uniq.len() as u32;
                    ws.uniq.push((t, pi as u32));
                }
                map0[bi * p_n + pi] = slot[key];
            }
        } else {
            for ((bi, pi), &t) in tokens.indexed_iter() {
                map0[bi * p_n + pi] = (bi * p_n + pi) as u32;
                ws.uniq.push((t, pi as u32));
            }
        }
        let n_rows0 = ws.uniq.len();

        // Embedding + positional embedding.
        {
            let w_e = lay.get(w, lay.w_e);
            let w_pos = lay.get(w, lay.w_pos);
            let resid0 = buf(&mut ws.resid[0], n_rows0 * d);
            let hooked = wants(&hk, Site::Embed) || wants(&hk, Site::PosEmbed);
            if hooked {
                let emb = buf(&mut ws.embed, n_rows0 * d);
                let pos = buf(&mut ws.pos, n_rows0 * d);
                for (r, &(t, p)) in ws.uniq.iter().enumerate() {
                    emb[r * d..][..d].copy_from_slice(&w_e[t as usize * d..][..d]);
                    pos[r * d..][..d].copy_from_slice(&w_pos[p as usize * d..][..d]);
                }
                intercept(&mut hk, Site::Embed, emb, &[b_n, p_n, d]);
                intercept(&mut hk, Site::PosEmbed, pos, &[b_n, p_n, d]);
                for ((o, e), p) in resid0.iter_mut().zip(&ws.embed).zip(&ws.pos) {
                    *o = e + p;
                }
            } else {
                for (r, &(t, p)) in ws.uniq.iter().enumerate() {
                    let (e, q) = (&w_e[t as usize * d..][..d], &w_pos[p as usize * d..][..d]);
                    for ((o, e), q) in resid0[r * d..][..d].iter_mut().zip(e).zip(q) {
                        *o = e + q;
                    }
                }
            }
        }

        for l in 0..n_layers {
            let ids = &lay.blocks[l];
            let last = l + 1 == n_layers;
            let q_pos: &[usize] = if last { &ws.last_q } else { &ws.all_pos };
            let nq = q_pos.len();
            let rq = b_n * nq;
            let (map, n_rows): (&[u32], usize) = if l == 0 {
                (&ws.map0, n_rows0)
            } else {
                (&ws.ident, b_n * p_n)
            };
            let (res_lo, res_hi) = ws.resid.split_at_mut(l + 1);
            let res_in = &mut res_lo[l][..n_rows * d];
            let res_out = &mut res_hi[0];
            let lb = &mut ws.layers[l];

            intercept(&mut hk, Site::ResidPre(l), res_in, &[b_n, p_n, d]);
            let res_in: &[f32] = res_in;
            let x1: &[f32] = match ids.ln1 {
                Some(ln) => {
                    ln_forward(
                        &mut lb.ln1,
                        res_in,
                        lay.get(w, ln.w),
                        lay.get(w, ln.b),
                        n_rows,
                        d,
                        eps,
                        &mut hk,
                        (Site::Ln1Scale(l), Site::Ln1Normalized(l)),
                        (b_n, p_n),
                    );
                    &lb.ln1.y
                }
                None => res_in,
            };

            // Q, K, V: head-major [head, row, d_head].
            let blk = n_rows * dh;
            for (dst, wid, bid) in [
                (&mut lb.q, ids.w_q, ids.b_q),
                (&mut lb.k, ids.w_k, ids.b_k),
                (&mut lb.v, ids.w_v, ids.b_v),
            ] {
                let out = buf(dst, h_n * blk);
                let (wq, bq) = (lay.get(w, wid), lay.get(w, bid));
                for h in 0..h_n {
                    linear(
                        &mut out[h * blk..(h + 1) * blk],
                        x1,
                        &wq[h * d * dh..(h + 1) * d * dh],
                        Some(&bq[h * dh..(h + 1) * dh]),
                        n_rows,
                        d,
                        dh,
                    );
                }
            }
            intercept_heads(
                &mut hk,
                Site::Q(l),
                &mut lb.q,
                &mut ws.head_tmp,
                b_n,
                p_n,
                h_n,
                dh,
            );
            intercept_heads(
                &mut hk,
                Site::K(l),
                &mut lb.k,
                &mut ws.head_tmp,
                b_n,
                p_n,
                h_n,
                dh,
            );
            intercept_heads(
                &mut hk,
                Site::V(l),
                &mut lb.v,
                &mut ws.head_tmp,
                b_n,
                p_n,
                h_n,
                dh,
            );

            let g = Geometry::new(b_n, p_n, h_n, dh, q_pos, map, n_rows);
            let n_scores = b_n * h_n * nq * p_n;
            attention::scores(&g, &lb.q, &lb.k, buf(&mut lb.scores, n_scores));
            intercept(
                &mut hk,
                Site::AttnScores(l),
                &mut lb.scores,
                &[b_n, h_n, nq, p_n],
            );
            attention::softmax(&lb.scores, buf(&mut lb.pattern, n_scores), p_n);
            intercept(
                &mut hk,
                Site::Pattern(l),
                &mut lb.pattern,
                &[b_n, h_n, nq, p_n],
            );
            let attn_out = buf(&mut lb.attn_out, rq * d);
            if fast && l == 0 {
                // Layer 0 on the fast path: v has one row per distinct (token, position), so project
                // those through W_O first and skip the big z·W_O product (exact; no hook wants z).
                let vo = buf(&mut lb.vo, h_n * n_rows * d);
                let w_o = lay.get(w, ids.w_o);
                for h in 0..h_n {
                    matmul(
                        &mut view_mut(&mut vo[h * n_rows * d..], n_rows, d),
                        &view(&lb.v[h * n_rows * dh..], n_rows, dh),
                        &view(&w_o[h * dh * d..], dh, d),
                        false,
                    );
                }
                attention::mix_projected(&g, &lb.pattern, &lb.vo, d, lay.get(w, ids.b_o), attn_out);
            } else {
                attention::mix(&g, &lb.pattern, &lb.v, buf(&mut lb.z, rq * hd));
                intercept(&mut hk, Site::Z(l), &mut lb.z, &[b_n, nq, h_n, dh]);
                linear(
                    attn_out,
                    &lb.z,
                    lay.get(w, ids.w_o),
                    Some(lay.get(w, ids.b_o)),
                    rq,
                    hd,
                    d,
                );
            }
            intercept(&mut hk, Site::AttnOut(l), attn_out, &[b_n, nq, d]);

            // Residual: resid_mid[b, i] = resid_pre[b, q_pos[i]] + attn_out[b, i].
            let mid = buf(&mut lb.resid_mid, rq * d);
            mid.par_chunks_mut(d).enumerate().for_each(|(r, out)| {
                let (bi, i) = (r / nq, r % nq);
                let src = map[bi * p_n + q_pos[i]] as usize;
                for ((o, a), x) in out
                    .iter_mut()
                    .zip(&lb.attn_out[r * d..][..d])
                    .zip(&res_in[src * d..][..d])
                {
                    *o = x + a;
                }
            });

            let res_out = buf(res_out, rq * d);
            match ids.mlp {
                Some(m) => {
                    intercept(&mut hk, Site::ResidMid(l), &mut lb.resid_mid, &[b_n, nq, d]);
                    let x2: &[f32] = match ids.ln2 {
                        Some(ln) => {
                            ln_forward(
                                &mut lb.ln2,
                                &lb.resid_mid,
                                lay.get(w, ln.w),
                                lay.get(w, ln.b),
                                rq,
                                d,
                                eps,
                                &mut hk,
                                (Site::Ln2Scale(l), Site::Ln2Normalized(l)),
                                (b_n, nq),
                            );
                            &lb.ln2.y
                        }
                        None => &lb.resid_mid,
                    };
                    let dm = cfg.d_mlp();
                    let pre = buf(&mut lb.pre, rq * dm);
                    let post = buf(&mut lb.post, rq * dm);
                    if fast && cfg.act() == ActFn::Relu {
                        // Bias and ReLU in one pass over the product (backward masks with post).
                        matmul(
                            &mut view_mut(pre, rq, dm),
                            &view(x2, rq, d),
                            &view(lay.get(w, m.w_in), d, dm),
                            false,
                        );
                        activation::bias_relu(pre, lay.get(w, m.b_in), post);
                    } else {
                        linear(
                            pre,
                            x2,
                            lay.get(w, m.w_in),
                            Some(lay.get(w, m.b_in)),
                            rq,
                            d,
                            dm,
                        );
                        intercept(&mut hk, Site::MlpPre(l), pre, &[b_n, nq, dm]);
                        activation::forward(cfg.act(), &lb.pre, post);
                    }
                    intercept(&mut hk, Site::MlpPost(l), post, &[b_n, nq, dm]);
                    let mo = buf(&mut lb.mlp_out, rq * d);
                    linear(
                        mo,
                        &lb.post,
                        lay.get(w, m.w_out),
                        Some(lay.get(w, m.b_out)),
                        rq,
                        dm,
                        d,
                    );
                    intercept(&mut hk, Site::MlpOut(l), mo, &[b_n, nq, d]);
                    simd::add(res_out, &lb.resid_mid, &lb.mlp_out);
                }
                None => res_out.copy_from_slice(&lb.resid_mid),
            }
            intercept(&mut hk, Site::ResidPost(l), res_out, &[b_n, nq, d]);
        }

        // Final LayerNorm and unembedding, at the last block's query positions.
        let nq = ws.last_q.len();
        let rq = b_n * nq;
        let res = &mut ws.resid[n_layers][..rq * d];
        let xf: &mut [f32] = match lay.ln_final {
            Some(ln) => {
                ln_forward(
                    &mut ws.lnf,
                    res,
                    lay.get(w, ln.w),
                    lay.get(w, ln.b),
                    rq,
                    d,
                    eps,
                    &mut hk,
                    (Site::LnFinalScale, Site::LnFinalNormalized),
                    (b_n, nq),
                );
                &mut ws.lnf.y
            }
            None => res,
        };
        intercept(&mut hk, Site::UnembedIn, xf, &[b_n, nq, d]);
        let v = cfg.d_vocab_out();
        let logits = buf(&mut ws.logits, rq * v);
        linear(
            logits,
            xf,
            lay.get(w, lay.w_u),
            Some(lay.get(w, lay.b_u)),
            rq,
            d,
            v,
        );
        intercept(&mut hk, Site::UnembedOut, logits, &[b_n, nq, v]);
    }

    /// Backward of the last (fast) forward; `ws.dlogits` holds d loss / d logits. Adds into `grads`.
    fn backward_impl(&self, ws: &mut Workspace, grads: &mut [f32]) {
        assert!(ws.fast, "backward needs a forward without hooks");
        let cfg = &self.cfg;
        let lay = &self.layout;
        let w = &self.params[..];
        let (b_n, p_n) = (ws.batch, ws.n_pos);
        let (d, h_n, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
        let hd = h_n * dh;
        let n_layers = cfg.n_layers;
        let v = cfg.d_vocab_out();
        let nq_last = ws.last_q.len();
        let rq = b_n * nq_last;

        // Unembedding and final LayerNorm.
        let xf: &[f32] = if lay.ln_final.is_some() {
            &ws.lnf.y
        } else {
            &ws.resid[n_layers]
        };
        // d(final residual): straight from the unembedding when there is no final LayerNorm.
        let mut dres = std::mem::take(&mut ws.dres_a);
        let mut dres_next = std::mem::take(&mut ws.dres_b);
        {
            let dxf = if lay.ln_final.is_some() {
                buf(&mut ws.dx, rq * d)
            } else {
                buf(&mut dres, rq * d)
            };
            let (gw, gb) = two_mut(
                grads,
                lay.specs[lay.w_u].range(),
                lay.specs[lay.b_u].range(),
            );
            linear_backward(
                &ws.dlogits,
                xf,
                lay.get(w, lay.w_u),
                gw,
                cfg.unembed_bias.then_some(gb),
                Some((dxf, false)),
                rq,
                d,
                v,
            );
        }
        if let Some(ln) = lay.ln_final {
            let out = buf(&mut dres, rq * d);
            let (gw, gb) = two_mut(grads, lay.specs[ln.w].range(), lay.specs[ln.b].range());
            layernorm::backward(
                &ws.dx,
                &ws.lnf.xhat,
                &ws.lnf.scale,
                lay.get(w, ln.w),
                out,
                false,
                gw,
                gb,
            );
        }

        for l in (0..n_layers).rev() {
            let ids = &lay.blocks[l];
            let last = l + 1 == n_layers;
            let q_pos: &[usize] = if last { &ws.last_q } else { &ws.all_pos };
            let nq = q_pos.len();
            let rq = b_n * nq;
            let (map, n_rows): (&[u32], usize) = if l == 0 {
                (&ws.map0, ws.uniq.len())
            } else {
                (&ws.ident, b_n * p_n)
            };
            let lb = &ws.layers[l];
            let res_in = &ws.resid[l][..n_rows * d];

            // MLP: `dres` holds d resid_post, and becomes d resid_mid.
            if let Some(m) = ids.mlp {
                let dm = cfg.d_mlp();
                let dh_buf = buf(&mut ws.dhidden, rq * dm);
                let (gw, gb) = two_mut(
                    grads,
                    lay.specs[m.w_out].range(),
                    lay.specs[m.b_out].range(),
                );
                linear_backward(
                    &dres[..rq * d],
                    &lb.post,
                    lay.get(w, m.w_out),
                    gw,
                    Some(gb),
                    Some((&mut *dh_buf, false)),
                    rq,
                    dm,
                    d,
                );
                activation::backward(cfg.act(), &lb.pre, &lb.post, dh_buf);
                let x2: &[f32] = if ids.ln2.is_some() {
                    &lb.ln2.y
                } else {
                    &lb.resid_mid
                };
                let (gw, gb) = two_mut(grads, lay.specs[m.w_in].range(), lay.specs[m.b_in].range());
                match ids.ln2 {
                    Some(ln) => {
                        let dx2 = buf(&mut ws.dx, rq * d);
                        linear_backward(
                            &ws.dhidden,
                            x2,
                            lay.get(w, m.w_in),
                            gw,
                            Some(gb),
                            Some((dx2, false)),
                            rq,
                            d,
                            dm,
                        );
                        let (gw, gb) =
                            two_mut(grads, lay.specs[ln.w].range(), lay.specs[ln.b].range());
                        layernorm::backward(
                            &ws.dx,
                            &lb.ln2.xhat,
                            &lb.ln2.scale,
                            lay.get(w, ln.w),
                            &mut dres[..rq * d],
                            true,
                            gw,
                            gb,
                        );
                    }
                    None => {
                        linear_backward(
                            &ws.dhidden,
                            x2,
                            lay.get(w, m.w_in),
                            gw,
                            Some(gb),
                            Some((&mut dres[..rq * d], true)),
                            rq,
                            d,
                            dm,
                        );
                    }
                }
            }

            // Attention: output projection, then scores and values.
            let blk = n_rows * dh;
            let g = Geometry::new(b_n, p_n, h_n, dh, q_pos, map, n_rows);
            let dq = buf(&mut ws.dq, h_n * blk);
            let dk = buf(&mut ws.dk, h_n * blk);
            let dv = buf(&mut ws.dv, h_n * blk);
            dq.fill(0.0);
            dk.fill(0.0);
            let (gw, gb) = two_mut(
                grads,
                lay.specs[ids.w_o].range(),
                lay.specs[ids.b_o].range(),
            );
            if l == 0 {
                // The forward folded W_O into v (see mix_projected): differentiate that form.
                if cfg.attn_bias {
                    simd::column_sums_add(gb, &dres[..rq * d], rq, d);
                }
                let dvo = buf(&mut ws.dvo, h_n * n_rows * d);
                dvo.fill(0.0);
                attention::backward_projected(
                    &g,
                    &lb.q,
                    &lb.k,
                    &lb.vo,
                    d,
                    &lb.pattern,
                    &dres[..rq * d],
                    dq,
                    dk,
                    dvo,
                );
                let w_o = lay.get(w, ids.w_o);
                for h in 0..h_n {
                    let dvo_h = view(&ws.dvo[h * n_rows * d..], n_rows, d);
                    // dv_h = dvo_h · W_O[h]ᵀ ; dW_O[h] += v_hᵀ · dvo_h
                    matmul(
                        &mut view_mut(&mut dv[h * blk..], n_rows, dh),
                        &dvo_h,
                        &view(&w_o[h * dh * d..], dh, d).t(),
                        false,
                    );
                    matmul(
                        &mut view_mut(&mut gw[h * dh * d..], dh, d),
                        &view(&lb.v[h * blk..], n_rows, dh).t(),
                        &dvo_h,
                        true,
                    );
                }
            } else {
                let dz = buf(&mut ws.dz, rq * hd);
                linear_backward(
                    &dres[..rq * d],
                    &lb.z,
                    lay.get(w, ids.w_o),
                    gw,
                    cfg.attn_bias.then_some(gb),
                    Some((dz, false)),
                    rq,
                    hd,
                    d,
                );
                dv.fill(0.0);
                attention::backward(&g, &lb.q, &lb.k, &lb.v, &lb.pattern, &ws.dz, dq, dk, dv);
            }

            // Q/K/V projections, per head, into d x1.
            let x1: &[f32] = if ids.ln1.is_some() { &lb.ln1.y } else { res_in };
            let dx1 = buf(&mut ws.dx, n_rows * d);
            let mut first = true;
            for (dsrc, wid, bid) in [
                (&ws.dq, ids.w_q, ids.b_q),
                (&ws.dk, ids.w_k, ids.b_k),
                (&ws.dv, ids.w_v, ids.b_v),
            ] {
                let wfull = lay.get(w, wid);
                let (gw, gb) = two_mut(grads, lay.specs[wid].range(), lay.specs[bid].range());
                for h in 0..h_n {
                    let gbh = cfg.attn_bias.then_some(&mut gb[h * dh..(h + 1) * dh]);
                    linear_backward(
                        &dsrc[h * blk..(h + 1) * blk],
                        x1,
                        &wfull[h * d * dh..(h + 1) * d * dh],
                        &mut gw[h * d * dh..(h + 1) * d * dh],
                        gbh,
                        Some((&mut *dx1, !first)),
                        n_rows,
                        d,
                        dh,
                    );
                    first = false;
                }
            }
            // d resid_pre (physical rows) = LN1 backward + the residual path from resid_mid.
            let dpre = buf(&mut dres_next, n_rows * d);
            match ids.ln1 {
                Some(ln) => {
                    let (gw, gb) = two_mut(grads, lay.specs[ln.w].range(), lay.specs[ln.b].range());
                    layernorm::backward(
                        &ws.dx,
                        &lb.ln1.xhat,
                        &lb.ln1.scale,
                        lay.get(w, ln.w),
                        dpre,
                        false,
                        gw,
                        gb,
                    );
                }
                None => dpre.copy_from_slice(&ws.dx[..n_rows * d]),
            }
            scatter_add_rows(dpre, &dres[..rq * d], d, |r| {
                map[(r / nq) * p_n + q_pos[r % nq]] as usize
            });
            std::mem::swap(&mut dres, &mut dres_next);
        }

        // Embeddings: scatter each physical row of layer 0 back to its token and position.
        let (ge, gp) = two_mut(
            grads,
            lay.specs[lay.w_e].range(),
            lay.specs[lay.w_pos].range(),
        );
        for (r, &(t, p)) in ws.uniq.iter().enumerate() {
            let src = &dres[r * d..][..d];
            for (o, s) in ge[t as usize * d..][..d].iter_mut().zip(src) {
                *o += s;
            }
            for (o, s) in gp[p as usize * d..][..d].iter_mut().zip(src) {
                *o += s;
            }
        }
        ws.dres_a = dres;
        ws.dres_b = dres_next;
    }
}

/// Two disjoint mutable sub-slices of one buffer.
fn two_mut(
    data: &mut [f32],
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
) -> (&mut [f32], &mut [f32]) {
    assert!(
        a.end <= b.start || b.end <= a.start,
        "overlapping parameter ranges"
    );
    if a.start < b.start {
        let (lo, hi) = data.split_at_mut(b.start);
        (&mut lo[a], &mut hi[..b.end - b.start])
    } else {
        let (lo, hi) = data.split_at_mut(a.start);
        let bl = b.end - b.start;
        (&mut hi[..a.end - a.start], &mut lo[b.start..b.start + bl])
    }
}

// ---------------------------------------------------------------------------------------------
// The model interface.

fn load_kind(cfg: &serde_json::Value) -> Result<Box<dyn Model>> {
    let cfg: TransformerConfig = crate::models::parse_config("transformer", cfg)?;
    let n = Layout::new(&cfg).total;
    Ok(Box::new(Transformer::from_params(cfg, vec![0.0; n])?))
}

pub const KIND: Kind = Kind {
    arch: "transformer",
    zeros: load_kind,
};

fn token_batch(batch: &Batch) -> Result<&TokenBatch> {
    match batch {
        Batch::Tokens(b) => Ok(b),
        Batch::Dense(_) => Err(batch_mismatch("transformer", "token batches")),
    }
}

impl Model for Transformer {
    fn arch(&self) -> &'static str {
        "transformer"
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("config json")
    }
    fn params(&self) -> &[f32] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }
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
    fn example_input(&self) -> Batch {
        Batch::Tokens(TokenBatch {
            tokens: ndarray::Array2::zeros((1, self.cfg.n_ctx)),
            loss_pos: vec![self.cfg.n_ctx - 1],
            targets: ndarray::Array2::zeros((1, 1)),
        })
    }
    fn evaluate(&self, scratch: &mut Scratch, batch: &Batch) -> Result<LossStats> {
        Transformer::evaluate(self, scratch.get::<Workspace>(), token_batch(batch)?)
    }
    fn loss_and_grad(
        &self,
        scratch: &mut Scratch,
        batch: &Batch,
        grads: &mut [f32],
    ) -> Result<LossStats> {
        Transformer::loss_and_grad(self, scratch.get::<Workspace>(), token_batch(batch)?, grads)
    }
    fn run(
        &self,
        input: Input,
        hooks: Hooks,
        filter: Option<CacheFilter>,
    ) -> Result<(ndarray::ArrayD<f32>, ActivationCache)> {
        let Input::Tokens(tokens) = input else {
            return Err(batch_mismatch("transformer", "tokens"));
        };
        let (logits, cache) = Transformer::run(self, tokens, hooks, filter)?;
        Ok((logits.into_dyn(), cache))
    }
    fn clone_box(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
