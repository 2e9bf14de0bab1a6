//! The forward pass, one function per stage: embeddings, each block's attention and MLP, the
//! unembedding. Shapes: b batch, p positions, q the positions a block computes (all, or in the last
//! block on the fast path only those that carry loss), r the physical rows of layer 0 (one per
//! distinct (token, position) on the fast path, else b·p), h heads, d d_model, m d_mlp, v the output
//! vocabulary. Which shortcuts a pass takes is decided once, in [`Plan`], and recorded in the
//! workspace for the backward to follow.

use super::prefix::RowDst;
use super::{buf, positions, projections, LayerBufs, LnBufs, Plan, Site, Transformer, Workspace};
use crate::engine::activation::ActFn;
use crate::engine::attention::{self, Geometry};
use crate::engine::matmul::{linear, matmul, matmul_threads, view, view_mut};
use crate::engine::{activation, fold, layernorm, simd};
use crate::hooks::{write_floats, HookRunner};
use ndarray::{ArrayView2, ArrayView3};
use rayon::prelude::*;

pub(super) type Interceptor<'h, 'c> = HookRunner<'h, 'c>;

/// What a forward reads: token ids `[b, p]`, or (`vector_tokens` models) vectors `[b, p, d_vocab]`.
#[derive(Clone, Copy, Debug)]
pub enum SeqInput<'a> {
    Tokens(ArrayView2<'a, u32>),
    Vectors(ArrayView3<'a, f32>),
}

impl SeqInput<'_> {
    /// (batch, positions).
    pub fn dim(&self) -> (usize, usize) {
        match self {
            SeqInput::Tokens(t) => t.dim(),
            SeqInput::Vectors(x) => (x.dim().0, x.dim().1),
        }
    }
}

impl<'a> From<ArrayView2<'a, u32>> for SeqInput<'a> {
    fn from(t: ArrayView2<'a, u32>) -> Self {
        SeqInput::Tokens(t)
    }
}

/// Run the hooks at `site` on `data` viewed with `shape` (no copy).
fn intercept(hk: &mut Option<&mut Interceptor>, site: Site, data: &mut [f32], shape: &[usize]) {
    if let Some(hk) = hk.as_deref_mut() {
        hk.run(&site.name(), data, shape);
    }
}

/// The token ids, flat (the rows of W_E that hook_embed holds).
fn tokens_flat(tokens: ArrayView2<u32>) -> Vec<u32> {
    tokens.iter().copied().collect()
}

/// Whether a hook or the cache wants `site`.
fn wants(hk: &Option<&mut Interceptor>, site: Site) -> bool {
    hk.as_deref().is_some_and(|h| h.wants(&site.name()))
}

/// Hooks on q/k/v: our layout is head-major `[h, r, d_head]`, TransformerLens' is
/// `[b, p, h, d_head]`; copy out, run, copy back.
fn intercept_heads(
    hk: &mut Option<&mut Interceptor>,
    site: Site,
    data: &mut [f32],
    tmp: &mut Vec<f32>,
    (b, p, h, dh): (usize, usize, usize, usize),
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

/// Cache `site` from rows of `data` (`[rows, width]`, or head-major `[h, rows, width / h]` when
/// `heads` is given): row `map[i]` for each of the `shape`'s leading `map.len()` entries. For the
/// deduplicated layer 0 of a pass with no hooks.
fn cache_gathered(
    hk: &mut Option<&mut Interceptor>,
    site: Site,
    data: &[f32],
    map: &[u32],
    n_rows: usize,
    heads: Option<usize>,
    shape: &[usize],
) {
    let Some(h) = hk.as_deref_mut() else { return };
    h.cache_with(&site.name(), || {
        let width: usize = shape[2..].iter().product();
        let n = map.len() * width;
        let mut out = crate::hooks::fresh_vec(n);
        // Straight into the uninitialised room: no pass of zeros first.
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(width)
            .zip(map)
            .for_each(|(o, &r)| match heads {
                None => write_floats(o, &data[r as usize * width..][..width]),
                Some(h_n) => {
                    let dh = width / h_n;
                    for (hh, oh) in o.chunks_exact_mut(dh).enumerate() {
                        write_floats(oh, &data[(hh * n_rows + r as usize) * dh..][..dh]);
                    }
                }
            });
        // SAFETY: every one of the n floats was written above (map.len() rows of width).
        unsafe { out.set_len(n) };
        ndarray::ArrayD::from_shape_vec(shape, out).expect("gathered shape")
    });
}

/// `y = x·w + b` over the rows of a split pass, `y` and `x` each dense or a cache array's
/// (`[b·q, n_out]` and `[b·q, n_in]` as rows): the bias into every row of `y`, then one product per
/// query position on strided views.
///
/// # Safety
/// Every row of `x` has been written, and nothing else reads or writes `x` or `y` meanwhile.
unsafe fn linear_rows(
    y: RowDst,
    x: RowDst,
    (w, bias): (&[f32], &[f32]),
    (n_in, n_out): (usize, usize),
    (b_n, nq): (usize, usize),
) {
    (0..b_n * nq)
        .into_par_iter()
        .with_min_len(simd::ROW_CHUNK)
        .for_each(|r| y.write(r, bias));
    for i in 0..nq {
        let x = x.position(i, b_n);
        matmul(
            &mut y.position(i, b_n),
            &x.view(),
            &view(w, n_in, n_out),
            true,
        );
    }
}

/// LayerNorm forward of `x [rows, d]` with its two hook points; the output is in `ln.y`.
#[allow(clippy::too_many_arguments)]
fn ln_forward(
    ln: &mut LnBufs,
    x: &[f32],
    (w, b): (&[f32], &[f32]),
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

/// The rows one block computes: `q_pos` (the positions of its queries and outputs), and where each
/// (batch, position) lives among its `n_rows` input rows (`map`).
#[derive(Clone, Copy)]
pub(super) struct BlockRows<'a> {
    pub b: usize,
    pub p: usize,
    pub q_pos: &'a [usize],
    pub map: &'a [u32],
    pub n_rows: usize,
}

impl BlockRows<'_> {
    pub fn geometry(&self, h: usize, dh: usize) -> Geometry<'_> {
        Geometry::new(self.b, self.p, h, dh, self.q_pos, self.map, self.n_rows)
    }

    /// The distinct input rows at the query positions, in order of first use, into `rows`, and
    /// each row's index among them into `slot [n_rows]` (u32::MAX where no query sits).
    pub fn own_rows(&self, rows: &mut Vec<u32>, slot: &mut [u32]) {
        rows.clear();
        slot.fill(u32::MAX);
        for bi in 0..self.b {
            for &qp in self.q_pos {
                let r = self.map[bi * self.p + qp] as usize;
                if slot[r] == u32::MAX {
                    slot[r] = rows.len() as u32;
                    rows.push(r as u32);
                }
            }
        }
    }
}

impl Transformer {
    /// Forward pass. `last_q`: positions the last block computes (loss positions, or all). With
    /// hooks `last_q` must be all positions, and nothing is deduplicated or folded (see
    /// [`Plan::choose`]); a cache pass restricts it only when it keeps none of the last block's
    /// query-side entries (`prefix.rs` assembles those).
    pub(super) fn forward_impl<'x>(
        &self,
        ws: &mut Workspace,
        input: impl Into<SeqInput<'x>>,
        last_q: &[usize],
        mut hk: Option<&mut Interceptor>,
    ) {
        let cfg = &self.cfg;
        let input = input.into();
        let (b_n, p_n) = input.dim();
        ws.plan = Plan::choose(cfg, hk.as_deref(), ws.w_in_fold, ws.plain);
        ws.batch = b_n;
        ws.n_pos = p_n;
        ws.all_pos.clear();
        ws.all_pos.extend(0..p_n);
        ws.last_q.clear();
        ws.last_q.extend_from_slice(last_q);
        ws.ensure_layers(cfg.n_layers);
        let ident = buf(&mut ws.ident, b_n * p_n);
        for (i, x) in ident.iter_mut().enumerate() {
            *x = i as u32;
        }
        match input {
            SeqInput::Tokens(tokens) => self.embed_forward(ws, tokens, &mut hk),
            SeqInput::Vectors(x) => self.embed_vectors_forward(ws, x, &mut hk),
        }
        if ws.plan.differentiable && ws.w_in_fold.is_none() {
            // Training and evaluation: the fold where its cost model says it pays for this
            // batch's shapes (never from the machine: the same choice, and bits, everywhere).
            let q0 = if cfg.n_layers == 1 {
                last_q
            } else {
                &ws.all_pos
            };
            ws.plan.fold_w_in_layer0 &= self.w_in_fold_pays(b_n, q0, &ws.uniq);
        }
        if ws.plan.differentiable && !self.folds_w_in(0, &ws.plan) {
            // W_O into v where that is less work than z·W_O (the W_in fold needs it, so it stays
            // with that fold), by the same kind of count, from the shapes alone.
            let q0 = if cfg.n_layers == 1 {
                last_q
            } else {
                &ws.all_pos
            };
            ws.plan.fold_wo_layer0 &= self.wo_fold_pays(b_n, q0, ws.uniq.len());
        }
        let plan = ws.plan;
        ws.w_in_folded = self.folds_w_in(0, &plan);
        // A pass resumed at a block: its residual stream given, the blocks before it skipped.
        let start = match ws.start_at.take() {
            Some((l, resid)) => {
                assert!(!plan.dedup_layer0, "a resumed pass has one row per input");
                buf(&mut ws.resid[l], resid.len()).copy_from_slice(&resid);
                l
            }
            None => 0,
        };
        for l in start..cfg.n_layers {
            let last = l + 1 == cfg.n_layers;
            let rows = BlockRows {
                b: b_n,
                p: p_n,
                q_pos: if last { &ws.last_q } else { &ws.all_pos },
                map: if l == 0 { &ws.map0 } else { &ws.ident },
                n_rows: if l == 0 { ws.uniq.len() } else { b_n * p_n },
            };
            let (res_lo, res_hi) = ws.resid.split_at_mut(l + 1);
            let res_in = &mut res_lo[l][..rows.n_rows * cfg.d_model];
            let lb = &mut ws.layers[l];
            let shortformer_pos = cfg.shortformer().then_some(&ws.pos[..]);
            self.attention_forward(
                l,
                lb,
                (res_in, shortformer_pos),
                rows,
                (&mut ws.head_tmp, &mut ws.packed),
                &plan,
                &mut hk,
            );
            self.mlp_forward(l, lb, res_in, &mut res_hi[0], rows, &plan, &mut hk);
        }
        self.unembed_forward(ws, &mut hk);
    }

    /// Token and positional embeddings into `resid[0] [r, d]`. On the fast path the rows are the
    /// distinct (token, position) pairs (`uniq`), and `map0 [b·p]` says which row each input uses.
    fn embed_forward(
        &self,
        ws: &mut Workspace,
        tokens: ArrayView2<u32>,
        hk: &mut Option<&mut Interceptor>,
    ) {
        let (cfg, lay, w) = (&self.cfg, &self.layout, &self.params[..]);
        let (b_n, p_n) = tokens.dim();
        let d = cfg.d_model;
        let map0 = buf(&mut ws.map0, b_n * p_n);
        ws.uniq.clear();
        if ws.plan.dedup_layer0 {
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
        let w_e = lay.get(w, lay.w_e);
        let w_pos = lay.w_pos.map(|id| lay.get(w, id));
        // Standard models add W_pos to the residual stream; shortformer ones keep it (hooked) in
        // `ws.pos` for every block's queries and keys; rotary ones have none.
        let pos_in_resid = cfg.pos_in_resid();
        let resid0 = buf(&mut ws.resid[0], n_rows0 * d);
        if ws.plan.dedup_layer0 {
            // No hooks on this path: the cache gets the full tensors, gathered.
            let w_pos = w_pos.expect("deduplicated rows are standard positions");
            let shape = [b_n, p_n, d];
            cache_gathered(
                hk,
                Site::Embed,
                w_e,
                &tokens_flat(tokens),
                cfg.d_vocab,
                None,
                &shape,
            );
            let pos: Vec<u32> = (0..b_n * p_n).map(|i| (i % p_n) as u32).collect();
            cache_gathered(hk, Site::PosEmbed, w_pos, &pos, cfg.n_ctx, None, &shape);
        }
        let hooked = wants(hk, Site::Embed) || wants(hk, Site::PosEmbed);
        if !ws.plan.dedup_layer0 && (hooked || cfg.shortformer()) {
            let emb = buf(&mut ws.embed, n_rows0 * d);
            for (r, &(t, _)) in ws.uniq.iter().enumerate() {
                emb[r * d..][..d].copy_from_slice(&w_e[t as usize * d..][..d]);
            }
            intercept(hk, Site::Embed, emb, &[b_n, p_n, d]);
            resid0.copy_from_slice(&ws.embed);
            if let Some(w_pos) = w_pos {
                let pos = buf(&mut ws.pos, n_rows0 * d);
                for (r, &(_, p)) in ws.uniq.iter().enumerate() {
                    pos[r * d..][..d].copy_from_slice(&w_pos[p as usize * d..][..d]);
                }
                intercept(hk, Site::PosEmbed, pos, &[b_n, p_n, d]);
                if pos_in_resid {
                    for (o, p) in resid0.iter_mut().zip(&ws.pos) {
                        *o += p;
                    }
                }
            }
        } else {
            for (r, &(t, p)) in ws.uniq.iter().enumerate() {
                let e = &w_e[t as usize * d..][..d];
                let o = &mut resid0[r * d..][..d];
                match w_pos.filter(|_| pos_in_resid) {
                    Some(w_pos) => {
                        for ((o, e), q) in o.iter_mut().zip(e).zip(&w_pos[p as usize * d..][..d]) {
                            *o = e + q;
                        }
                    }
                    None => o.copy_from_slice(e),
                }
            }
        }
    }

    /// Vector tokens' embedding: `x [b, p, d_vocab]`·W_E (+ W_pos) into `resid[0] [b·p, d]`, one
    /// row per input (nothing repeats); `x` is kept in `ws.x_in` for W_E's gradient.
    fn embed_vectors_forward(
        &self,
        ws: &mut Workspace,
        x: ArrayView3<f32>,
        hk: &mut Option<&mut Interceptor>,
    ) {
        let (cfg, lay, w) = (&self.cfg, &self.layout, &self.params[..]);
        let (b_n, p_n, d_in) = x.dim();
        let (d, rows) = (cfg.d_model, b_n * p_n);
        let map0 = buf(&mut ws.map0, rows);
        ws.uniq.clear();
        for (r, m) in map0.iter_mut().enumerate() {
            *m = r as u32;
            ws.uniq.push((0, (r % p_n) as u32));
        }
        ws.x_in.clear();
        ws.x_in.extend(x.iter());
        let emb = buf(&mut ws.embed, rows * d);
        linear(emb, &ws.x_in, lay.get(w, lay.w_e), None, rows, d_in, d);
        intercept(hk, Site::Embed, emb, &[b_n, p_n, d]);
        let resid0 = buf(&mut ws.resid[0], rows * d);
        resid0.copy_from_slice(&ws.embed);
        if let Some(w_pos) = lay.w_pos.map(|id| lay.get(w, id)) {
            let pos = buf(&mut ws.pos, rows * d);
            for (r, row) in pos.chunks_exact_mut(d).enumerate() {
                row.copy_from_slice(&w_pos[(r % p_n) * d..][..d]);
            }
            intercept(hk, Site::PosEmbed, pos, &[b_n, p_n, d]);
            if cfg.pos_in_resid() {
                for (o, p) in resid0.iter_mut().zip(&ws.pos) {
                    *o += p;
                }
            }
        }
    }

    /// Block `l`'s attention: `res_in [r, d]` → LN1 → q, k, v `[h, r, d_head]` → scores and pattern
    /// `[b, h, q, p]` → z `[b·q, h·d_head]` (or, folded, v·W_O `[h, r, d]`) → attn_out `[b·q, d]`,
    /// and `resid_mid [b·q, d]` = res_in at the query positions + attn_out. Shortformer models
    /// add `shortformer_pos [r, d]` to LN1's output for the queries and keys.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        l: usize,
        lb: &mut LayerBufs,
        (res_in, shortformer_pos): (&mut [f32], Option<&[f32]>),
        rows: BlockRows,
        (head_tmp, packed): (&mut Vec<f32>, &mut projections::Packed),
        plan: &Plan,
        hk: &mut Option<&mut Interceptor>,
    ) {
        let (cfg, lay, w) = (&self.cfg, &self.layout, &self.params[..]);
        let ids = &lay.blocks[l];
        let (d, h_n, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
        let (b_n, p_n, n_rows) = (rows.b, rows.p, rows.n_rows);
        let nq = rows.q_pos.len();
        let rq = b_n * nq;
        let dedup = l == 0 && plan.dedup_layer0;
        if dedup {
            let shape = [b_n, p_n, d];
            cache_gathered(
                hk,
                Site::ResidPre(l),
                res_in,
                rows.map,
                n_rows,
                None,
                &shape,
            );
        } else {
            intercept(hk, Site::ResidPre(l), res_in, &[b_n, p_n, d]);
        }
        let res_in: &[f32] = res_in;
        let x1: &[f32] = match ids.ln1 {
            Some(ln) => {
                let (s_scale, s_norm) = (Site::Ln1Scale(l), Site::Ln1Normalized(l));
                let mut no_hooks: Option<&mut Interceptor> = None;
                ln_forward(
                    &mut lb.ln1,
                    res_in,
                    (lay.get(w, ln.w), lay.get(w, ln.b)),
                    n_rows,
                    d,
                    cfg.eps as f32,
                    if dedup { &mut no_hooks } else { hk },
                    (s_scale, s_norm),
                    (b_n, p_n),
                );
                if dedup {
                    let (scale, norm) = ([b_n, p_n, 1], [b_n, p_n, d]);
                    cache_gathered(hk, s_scale, &lb.ln1.scale, rows.map, n_rows, None, &scale);
                    cache_gathered(hk, s_norm, &lb.ln1.xhat, rows.map, n_rows, None, &norm);
                }
                &lb.ln1.y
            }
            None => res_in,
        };
        let qk_in: &[f32] = match shortformer_pos {
            Some(pos) => {
                let o = buf(&mut lb.qk_in, n_rows * d);
                simd::add(o, x1, &pos[..n_rows * d]);
                &lb.qk_in
            }
            None => x1,
        };
        // Q, K, V: head-major [h, r, d_head], the projections that share an input in one product.
        let blk = n_rows * dh;
        let (q, k, v) = (
            buf(&mut lb.q, h_n * blk),
            buf(&mut lb.k, h_n * blk),
            buf(&mut lb.v, h_n * blk),
        );
        let wb = |wid, bid| (lay.get(w, wid), lay.get(w, bid));
        let (pq, pk, pv) = (
            wb(ids.w_q, ids.b_q),
            wb(ids.w_k, ids.b_k),
            wb(ids.w_v, ids.b_v),
        );
        let shape = (n_rows, d, h_n, dh);
        if shortformer_pos.is_some() {
            projections::project(packed, qk_in, &[pq, pk], &mut [q, k], shape);
            projections::project(packed, x1, &[pv], &mut [v], shape);
        } else {
            projections::project(packed, x1, &[pq, pk, pv], &mut [q, k, v], shape);
        }
        if dedup {
            let shape = [b_n, p_n, h_n, dh];
            for (site, x) in [
                (Site::Q(l), &lb.q),
                (Site::K(l), &lb.k),
                (Site::V(l), &lb.v),
            ] {
                cache_gathered(hk, site, x, rows.map, n_rows, Some(h_n), &shape);
            }
        } else {
            let shape = (b_n, p_n, h_n, dh);
            intercept_heads(hk, Site::Q(l), &mut lb.q, head_tmp, shape);
            intercept_heads(hk, Site::K(l), &mut lb.k, head_tmp, shape);
            intercept_heads(hk, Site::V(l), &mut lb.v, head_tmp, shape);
            if let Some(rot) = &self.rotary {
                rot.rotate(&mut lb.q, n_rows, p_n, dh, false);
                rot.rotate(&mut lb.k, n_rows, p_n, dh, false);
                intercept_heads(hk, Site::RotQ(l), &mut lb.q, head_tmp, shape);
                intercept_heads(hk, Site::RotK(l), &mut lb.k, head_tmp, shape);
            }
            if let Some(alpha) = ids.smear {
                let alpha = lay.get(w, alpha);
                positions::smear_forward(&mut lb.k, &mut lb.k_raw, alpha, n_rows, p_n, dh);
                intercept_heads(hk, Site::SmearedK(l), &mut lb.k, head_tmp, shape);
            }
        }

        let g = rows.geometry(h_n, dh);
        let n_scores = b_n * h_n * nq * p_n;
        if lb.keep_scores || wants(hk, Site::AttnScores(l)) {
            attention::scores(&g, &lb.q, &lb.k, buf(&mut lb.scores, n_scores));
            intercept(
                hk,
                Site::AttnScores(l),
                &mut lb.scores,
                &[b_n, h_n, nq, p_n],
            );
            attention::softmax(&lb.scores, buf(&mut lb.pattern, n_scores), p_n);
        } else {
            // Nothing reads the scores: the softmax taken row by row as they are computed.
            attention::scores_softmax(&g, &lb.q, &lb.k, buf(&mut lb.pattern, n_scores));
        }
        intercept(hk, Site::Pattern(l), &mut lb.pattern, &[b_n, h_n, nq, p_n]);
        let attn_out = buf(&mut lb.attn_out, rq * d);
        if l == 0 && plan.fold_wo_layer0 {
            // v has one row per distinct (token, position): project those through W_O first and
            // skip the big z·W_O product (exact; no hook wants z).
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
            let dl = &mut lb.direct;
            if dl.attn_out.is_some() || dl.resid_mid.is_some() {
                // A split cache pass: attn_out and resid_mid in one pass, each row written once,
                // straight into its cache array where there is one.
                let (map, q_pos, b_o) = (rows.map, rows.q_pos, lay.get(w, ids.b_o));
                let attn_to = RowDst::cache_or_dense(dl.attn_out.as_mut(), attn_out, q_pos, d);
                let mid = buf(&mut lb.resid_mid, rq * d);
                let mid_to = RowDst::cache_or_dense(dl.resid_mid.as_mut(), mid, q_pos, d);
                let res_in: &[f32] = res_in;
                let emit = |r: usize, a: &[f32]| {
                    let src = map[(r / nq) * p_n + q_pos[r % nq]] as usize;
                    simd::with_scratch(d, |y| {
                        for ((o, &x), &a) in y.iter_mut().zip(&res_in[src * d..][..d]).zip(a) {
                            *o = x + a;
                        }
                        // SAFETY: rows r < b·q, each emitted once.
                        unsafe {
                            attn_to.write(r, a);
                            mid_to.write(r, y);
                        }
                    })
                };
                let init = |_: usize, o: &mut [f32]| o.copy_from_slice(b_o);
                attention::mix_projected_each(&g, &lb.pattern, &lb.vo, d, init, emit);
                for c in [&mut dl.attn_out, &mut dl.resid_mid].into_iter().flatten() {
                    // SAFETY: every row at the block's query positions was written above.
                    unsafe { c.mark_whole() };
                }
                // The cache only watches on this path (a split pass caches no query side).
                debug_assert!(!wants(hk, Site::AttnOut(l)) && !wants(hk, Site::ResidMid(l)));
                return;
            }
            attention::mix_projected(&g, &lb.pattern, &lb.vo, d, lay.get(w, ids.b_o), attn_out);
            if wants(hk, Site::Z(l)) {
                // Only the cache watches (no hooks with this shortcut): z for it alone.
                attention::mix(&g, &lb.pattern, &lb.v, buf(&mut lb.z, rq * h_n * dh));
                intercept(hk, Site::Z(l), &mut lb.z, &[b_n, nq, h_n, dh]);
            }
        } else {
            let z = buf(&mut lb.z, rq * h_n * dh);
            if wants(hk, Site::AttnScores(l)) || wants(hk, Site::Pattern(l)) {
                attention::mix(&g, &lb.pattern, &lb.v, z);
            } else {
                attention::mix_causal(&g, &lb.pattern, &lb.v, z);
            }
            intercept(hk, Site::Z(l), &mut lb.z, &[b_n, nq, h_n, dh]);
            linear(
                attn_out,
                &lb.z,
                lay.get(w, ids.w_o),
                Some(lay.get(w, ids.b_o)),
                rq,
                h_n * dh,
                d,
            );
        }
        intercept(hk, Site::AttnOut(l), attn_out, &[b_n, nq, d]);
        // Residual: resid_mid[b, i] = resid_pre[b, q_pos[i]] + attn_out[b, i].
        let (map, q_pos) = (rows.map, rows.q_pos);
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
    }

    /// Block `l`'s MLP: resid_mid `[b·q, d]` → LN2 → pre, post `[b·q, m]` → mlp_out `[b·q, d]`,
    /// and `res_out [b·q, d]` = resid_mid + mlp_out (resid_mid alone without an MLP).
    #[allow(clippy::too_many_arguments)]
    fn mlp_forward(
        &self,
        l: usize,
        lb: &mut LayerBufs,
        res_in: &[f32],
        res_out: &mut Vec<f32>,
        rows: BlockRows,
        plan: &Plan,
        hk: &mut Option<&mut Interceptor>,
    ) {
        let (cfg, lay, w) = (&self.cfg, &self.layout, &self.params[..]);
        let ids = &lay.blocks[l];
        let d = cfg.d_model;
        let (b_n, nq) = (rows.b, rows.q_pos.len());
        let rq = b_n * nq;
        let res_out = buf(res_out, rq * d);
        let Some(m) = ids.mlp else {
            res_out.copy_from_slice(&lb.resid_mid);
            intercept(hk, Site::ResidPost(l), res_out, &[b_n, nq, d]);
            return;
        };
        intercept(hk, Site::ResidMid(l), &mut lb.resid_mid, &[b_n, nq, d]);
        let x2: &[f32] = match ids.ln2 {
            Some(ln) => {
                ln_forward(
                    &mut lb.ln2,
                    &lb.resid_mid,
                    (lay.get(w, ln.w), lay.get(w, ln.b)),
                    rq,
                    d,
                    cfg.eps as f32,
                    hk,
                    (Site::Ln2Scale(l), Site::Ln2Normalized(l)),
                    (b_n, nq),
                );
                &lb.ln2.y
            }
            None => &lb.resid_mid,
        };
        let dm = cfg.d_mlp();
        let folded = self.folds_w_in(l, plan);
        assert!(
            folded || lb.direct.is_empty(),
            "only the W_in fold writes into a split pass's cache arrays"
        );
        let pre = buf(&mut lb.pre, rq * dm);
        let post = buf(&mut lb.post, rq * dm);
        if folded {
            // resid_mid = resid_pre + Σ_h pattern·(v·W_O)_h + b_O, each term from the distinct rows
            // of layer 0: through W_in those rows first, then mix them (d_mlp-wide) per example.
            let (n_rows, h_n, dh) = (rows.n_rows, cfg.n_heads, cfg.d_head);
            let w_in = lay.get(w, m.w_in);
            // resid_pre·W_in only where a query sits (Nanda's model: the one "=" row).
            rows.own_rows(&mut lb.own_rows, buf(&mut lb.own_slot, n_rows));
            let n_own = lb.own_rows.len();
            let xown = buf(&mut lb.xown, n_own * d);
            for (x, &r) in xown.chunks_exact_mut(d).zip(&lb.own_rows) {
                x.copy_from_slice(&res_in[r as usize * d..][..d]);
            }
            let xin_own = buf(&mut lb.xin_own, n_own * dm);
            matmul(
                &mut view_mut(xin_own, n_own, dm),
                &view(&lb.xown, n_own, d),
                &view(w_in, d, dm),
                false,
            );
            let xin = buf(&mut lb.xin, n_rows * dm);
            for (x, &r) in lb.xin_own.chunks_exact(dm).zip(&lb.own_rows) {
                xin[r as usize * dm..][..dm].copy_from_slice(x);
            }
            // Each head's table v_h·(W_O·W_in)_h: the maths of (v_h·W_O_h)·W_in, with the
            // distinct rows' products d_head wide instead of d_model.
            let wo_in = buf(&mut lb.wo_in, h_n * dh * dm);
            matmul(
                &mut view_mut(wo_in, h_n * dh, dm),
                &view(lay.get(w, ids.w_o), h_n * dh, d),
                &view(w_in, d, dm),
                false,
            );
            let (v, wo_in) = (&lb.v, &lb.wo_in);
            let vow = buf(&mut lb.vow, h_n * n_rows * dm);
            vow.par_chunks_mut(n_rows * dm)
                .enumerate()
                .for_each(|(h, out)| {
                    matmul_threads(
                        &mut view_mut(out, n_rows, dm),
                        &view(&v[h * n_rows * dh..], n_rows, dh),
                        &view(&wo_in[h * dh * dm..], dh, dm),
                        false,
                        1,
                    )
                });
            let bias = buf(&mut lb.fold_bias, dm);
            bias.copy_from_slice(lay.get(w, m.b_in));
            for (k, &bo) in lay.get(w, ids.b_o).iter().enumerate() {
                for (x, &wv) in bias.iter_mut().zip(&w_in[k * dm..][..dm]) {
                    *x += bo * wv;
                }
            }
            let bias = &lb.fold_bias;
            let g = rows.geometry(h_n, cfg.d_head);
            let (map, q_pos, p_n) = (rows.map, rows.q_pos, rows.p);
            let (xin, act) = (&lb.xin, cfg.act());
            // Training by column blocks (fold.rs); a cache pass row by row, straight into its
            // arrays where it has them (a blocked mix was no faster there: PERFORMANCE.md).
            if hk.is_none() && lb.direct.is_empty() {
                // The same bits as row by row. Unhooked, with a ReLU, nothing reads mlp_pre (the
                // backward masks with post).
                let pre = (act != ActFn::Relu).then_some(pre);
                fold::mix(&g, &lb.pattern, xin, &lb.vow, bias, act, pre, post);
            } else {
                // pre = (xin of the row's own position + bias) + the mix; post = act(pre) in the same
                // pass, while the row is in cache.
                let init = |r: usize, o: &mut [f32]| {
                    let src = map[(r / nq) * p_n + q_pos[r % nq]] as usize;
                    for ((o, &x), &c) in o.iter_mut().zip(&xin[src * dm..][..dm]).zip(bias) {
                        *o = x + c;
                    }
                };
                let pre_to = RowDst::cache_or_dense(lb.direct.pre.as_mut(), pre, q_pos, dm);
                let post_to = RowDst::cache_or_dense(lb.direct.post.as_mut(), post, q_pos, dm);
                let emit = |r: usize, x: &[f32]| {
                    simd::with_scratch(dm, |y| {
                        activation::apply(act, x, y);
                        // SAFETY: rows r < b·q, each emitted once.
                        unsafe {
                            pre_to.write(r, x);
                            post_to.write(r, y);
                        }
                    })
                };
                attention::mix_projected_each(&g, &lb.pattern, &lb.vow, dm, init, emit);
                for c in [&mut lb.direct.pre, &mut lb.direct.post]
                    .into_iter()
                    .flatten()
                {
                    // SAFETY: the fold wrote every row at the block's query positions.
                    unsafe { c.mark_whole() };
                }
                if lb.direct.pre.is_none() {
                    // The cache only watches here (this fold is for passes without hooks).
                    intercept(hk, Site::MlpPre(l), &mut lb.pre, &[b_n, nq, dm]);
                }
            }
        } else if plan.fused_bias_relu {
            // Bias and ReLU in one pass over the product (the backward masks with post).
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
            intercept(hk, Site::MlpPre(l), pre, &[b_n, nq, dm]);
            activation::forward(cfg.act(), &lb.pre, post);
        }
        let mo = buf(&mut lb.mlp_out, rq * d);
        let (w_out, b_out) = (lay.get(w, m.w_out), lay.get(w, m.b_out));
        let dl = &mut lb.direct;
        if folded && !dl.is_empty() {
            // A split cache pass: rows read from and written to the cache's arrays where there
            // are some, one product per query position.
            let q_pos = rows.q_pos;
            let post_at = RowDst::cache_or_dense(dl.post.as_mut(), &mut lb.post, q_pos, dm);
            let mid_at = RowDst::cache_or_dense(dl.resid_mid.as_mut(), &mut lb.resid_mid, q_pos, d);
            let mo_to = RowDst::cache_or_dense(dl.mlp_out.as_mut(), mo, q_pos, d);
            let res_to = RowDst::cache_or_dense(dl.resid_post.as_mut(), res_out, q_pos, d);
            // SAFETY (both): post and resid_mid were written by the fold and the attention above;
            // rows r < b·q, each written by one task.
            unsafe { linear_rows(mo_to, post_at, (w_out, b_out), (dm, d), (b_n, nq)) };
            (0..rq)
                .into_par_iter()
                .with_min_len(simd::ROW_CHUNK)
                .for_each(|r| {
                    simd::with_scratch(d, |y| unsafe {
                        for ((o, &a), &b) in y.iter_mut().zip(mid_at.row(r)).zip(mo_to.row(r)) {
                            *o = a + b;
                        }
                        res_to.write(r, y);
                    })
                });
            for c in [&mut dl.mlp_out, &mut dl.resid_post].into_iter().flatten() {
                // SAFETY: every row at the block's query positions was written above.
                unsafe { c.mark_whole() };
            }
            debug_assert!(!wants(hk, Site::MlpPost(l)) && !wants(hk, Site::ResidPost(l)));
            return;
        }
        intercept(hk, Site::MlpPost(l), &mut lb.post, &[b_n, nq, dm]);
        linear(mo, &lb.post, w_out, Some(b_out), rq, dm, d);
        intercept(hk, Site::MlpOut(l), mo, &[b_n, nq, d]);
        simd::add(res_out, &lb.resid_mid, &lb.mlp_out);
        intercept(hk, Site::ResidPost(l), res_out, &[b_n, nq, d]);
    }

    /// Final LayerNorm and unembedding at the last block's query positions: `resid[n_layers]
    /// [b·q, d]` → `logits [b·q, v]`.
    fn unembed_forward(&self, ws: &mut Workspace, hk: &mut Option<&mut Interceptor>) {
        let (cfg, lay, w) = (&self.cfg, &self.layout, &self.params[..]);
        let d = cfg.d_model;
        let b_n = ws.batch;
        let nq = ws.last_q.len();
        let rq = b_n * nq;
        let v = cfg.d_vocab_out();
        let dl = &mut ws.layers[cfg.n_layers - 1].direct;
        if lay.ln_final.is_none() && (dl.resid_post.is_some() || dl.logits.is_some()) {
            // A split cache pass: the logits from the rows of resid_post and into those of the
            // logits' array, wherever each lies; one product per query position.
            let q_pos = &ws.last_q;
            let res = &mut ws.resid[cfg.n_layers];
            let x_at = RowDst::cache_or_dense(dl.resid_post.as_mut(), res, q_pos, d);
            let logits = buf(&mut ws.logits, rq * v);
            let to = RowDst::cache_or_dense(dl.logits.as_mut(), logits, q_pos, v);
            let (w_u, b_u) = (lay.get(w, lay.w_u), lay.get(w, lay.b_u));
            // SAFETY: resid_post's rows were all written above.
            unsafe { linear_rows(to, x_at, (w_u, b_u), (d, v), (b_n, nq)) };
            if let Some(c) = dl.logits.as_mut() {
                // SAFETY: every row at the last block's query positions was written above.
                unsafe { c.mark_whole() };
            }
            debug_assert!(!wants(hk, Site::UnembedIn) && !wants(hk, Site::UnembedOut));
            return;
        }
        let res = &mut ws.resid[cfg.n_layers][..rq * d];
        let xf: &mut [f32] = match lay.ln_final {
            Some(ln) => {
                ln_forward(
                    &mut ws.lnf,
                    res,
                    (lay.get(w, ln.w), lay.get(w, ln.b)),
                    rq,
                    d,
                    cfg.eps as f32,
                    hk,
                    (Site::LnFinalScale, Site::LnFinalNormalized),
                    (b_n, nq),
                );
                &mut ws.lnf.y
            }
            None => res,
        };
        intercept(hk, Site::UnembedIn, xf, &[b_n, nq, d]);
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
        intercept(hk, Site::UnembedOut, logits, &[b_n, nq, v]);
    }
}

impl Plan {
    /// The shortcuts a pass takes: all of them without hooks or a cache (each is exact), none with
    /// (a hook always sees, and may replace, the full tensor).
    /// A pass whose interceptor has no hooks (a cache only) keeps the layer-0 shortcuts, the
    /// cache getting full tensors gathered or computed beside them, and adds the forward-only
    /// W_in fold. Unhooked passes fold W_in as `w_in_fold` says (from
    /// [`super::Workspace::set_w_in_fold`]), or, where it says nothing, where
    /// [`Transformer::w_in_fold_pays`] (decided in the forward, once layer 0's rows are known).
    pub(super) fn choose(
        cfg: &super::TransformerConfig,
        hk: Option<&Interceptor>,
        w_in_fold: Option<bool>,
        plain: bool,
    ) -> Plan {
        let unhooked = hk.is_none();
        let cache_only = hk.is_some_and(|h| !h.has_hooks());
        if plain {
            return Plan {
                differentiable: unhooked || cache_only,
                ..Plan::default()
            };
        }
        Plan {
            dedup_layer0: (unhooked || cache_only) && cfg.rows_by_token_and_position(),
            fold_wo_layer0: unhooked || cache_only,
            fused_bias_relu: unhooked && cfg.has_mlp() && cfg.act() == ActFn::Relu,
            fold_w_in_layer0: cfg.has_mlp()
                && cfg.rows_by_token_and_position()
                && (cache_only || (unhooked && w_in_fold != Some(false))),
            differentiable: unhooked,
        }
    }
}

/// What one multiply-add of the fold's mix and of its backward share costs, in multiply-adds of a
/// matrix product: they gather d_mlp-wide table rows per example where a product streams packed
/// panels. Measured per thread on the AMD EPYC Zen 3 (AVX2) at Nanda's shapes
/// (`examples/w1_kernels.rs`, docs/PERFORMANCE.md): the mix 4.6–7.3, the share 5.3. A constant,
/// not a measurement at run time, so that every machine takes the same path (and bits).
const FOLD_GATHER_COST: usize = 6;

impl Transformer {
    /// Whether layer 0's W_in fold does less work than W_in's products on this batch, counted in
    /// product multiply-adds per d_mlp column (forward and backward scale alike): the fold's
    /// products (W_O·W_in, each head's table, the own rows' resid_pre·W_in) and its gathered mix
    /// of h·keys + 1 rows per query row, against W_in on every query row. Nanda's model (d_model
    /// 128, 4 heads, 3 keys, 227 distinct rows, 3830 queries): 0.34M against 0.49M, folded;
    /// grokking-tiny (d_model 32) is not, nor digits5 (W_O·W_in alone, 4·128·512 per column, costs
    /// more than W_in on its 64 × 6 answer rows).
    pub(super) fn w_in_fold_pays(&self, b_n: usize, q_pos: &[usize], rows: &[(u32, u32)]) -> bool {
        let cfg = &self.cfg;
        let (d, h, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
        let rq = b_n * q_pos.len();
        let own = rows
            .iter()
            .filter(|&&(_, p)| q_pos.contains(&(p as usize)))
            .count();
        let keys: usize = q_pos.iter().map(|&q| h * (q + 1) + 1).sum::<usize>() * b_n;
        let fold = h * dh * d + h * rows.len() * dh + own * d + FOLD_GATHER_COST * keys;
        fold < rq * d
    }

    /// Whether projecting layer 0's `n_rows` value rows through W_O first (then mixing d_model-wide
    /// rows) does fewer multiply-adds than mixing d_head-wide rows and multiplying z by W_O: Nanda's
    /// model (227 rows, one query row per input) folds, the induction preset (2048 rows, 32 query
    /// rows per input) does not.
    pub(super) fn wo_fold_pays(&self, b_n: usize, q_pos: &[usize], n_rows: usize) -> bool {
        let cfg = &self.cfg;
        let (d, h, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
        let keys: usize = q_pos.iter().map(|&q| q + 1).sum::<usize>() * b_n * h;
        let fold = h * n_rows * dh * d + keys * d;
        let plain = keys * dh + b_n * q_pos.len() * h * dh * d;
        fold < plain
    }

    /// Whether block `l`'s MLP takes its input through the W_in fold in a pass with `plan`: layer
    /// 0 with an MLP and no LayerNorm before it (its input is linear in layer 0's distinct rows).
    pub(super) fn folds_w_in(&self, l: usize, plan: &Plan) -> bool {
        let ids = &self.layout.blocks[l];
        l == 0 && plan.fold_w_in_layer0 && ids.mlp.is_some() && ids.ln2.is_none()
    }
}
