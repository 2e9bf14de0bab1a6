//! The backward pass of the last (unhooked) forward, stage by stage in reverse, following the
//! forward's recorded [`Plan`]: where it folded W_O into v in layer 0, the backward differentiates
//! that form; where it deduplicated layer 0's rows, gradients are scattered back through the same
//! map. Shapes as in `forward.rs`; `dres` is d loss / d (the residual stream at the current point),
//! `[b·q, d]` of the block being differentiated.

use super::forward::BlockRows;
use super::{buf, positions, projections, Site, Transformer, Workspace};
use crate::engine::attention;
use crate::engine::matmul::{linear_backward, matmul, matmul_threads, view, view_mut};
use crate::engine::{activation, fold, layernorm, simd};

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

/// Two disjoint mutable sub-slices of one buffer.
pub(super) fn two_mut(
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

/// Three disjoint mutable sub-slices of one buffer, in the order of the ranges given.
fn three_mut(
    data: &mut [f32],
    ranges: [std::ops::Range<usize>; 3],
) -> (&mut [f32], &mut [f32], &mut [f32]) {
    let mut order = [0, 1, 2];
    order.sort_by_key(|&i| ranges[i].start);
    let mut out: [&mut [f32]; 3] = [&mut [], &mut [], &mut []];
    let (mut rest, mut at) = (data, 0);
    for &i in &order {
        let r = &ranges[i];
        assert!(r.start >= at, "overlapping parameter ranges");
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - at);
        let (mine, tail) = tail.split_at_mut(r.end - r.start);
        out[i] = mine;
        (rest, at) = (tail, r.end);
    }
    let [a, b, c] = out;
    (a, b, c)
}

impl Transformer {
    /// Backward of the last forward, `ws.dlogits` holding d loss / d logits, adding into `grads`,
    /// stopping above block `floor` (0: the whole model): the blocks below it and the embeddings
    /// get no gradient (what a chain that samples none of them skips).
    pub(super) fn backward_above(&self, ws: &mut Workspace, grads: &mut [f32], floor: usize) {
        self.backward_recording(ws, grads, None, floor);
    }

    /// [`Self::backward_above`], copying d loss / d each activation into `record` as it passes
    /// (a pass without shortcuts: [`Workspace::plain`]): the residual points `[b·p, d]`, z `[b·p,
    /// h·d_head]` and q, k, v head-major `[h, b·p, d_head]`.
    pub(super) fn backward_recording(
        &self,
        ws: &mut Workspace,
        grads: &mut [f32],
        mut record: Option<&mut Vec<(Site, Vec<f32>)>>,
        floor: usize,
    ) {
        let recording = record.is_some();
        let d = self.cfg.d_model;
        // (Slices taken only when recording: a training pass's last block has fewer rows.)
        let mut keep = |site: Site, data: &[f32], n: usize| {
            if let Some(r) = record.as_deref_mut() {
                r.push((site, data[..n].to_vec()));
            }
        };
        assert!(
            ws.plan.differentiable,
            "backward needs a forward without hooks"
        );
        let mut dres = std::mem::take(&mut ws.dres_a);
        let mut dres_next = std::mem::take(&mut ws.dres_b);
        self.unembed_backward(ws, &mut dres, grads);
        let (b_n, p_n) = (ws.batch, ws.n_pos);
        let bp = b_n * p_n;
        for l in (floor..self.cfg.n_layers).rev() {
            let last = l + 1 == self.cfg.n_layers;
            let rows = BlockRows {
                b: b_n,
                p: p_n,
                q_pos: if last { &ws.last_q } else { &ws.all_pos },
                map: if l == 0 { &ws.map0 } else { &ws.ident },
                n_rows: if l == 0 { ws.uniq.len() } else { b_n * p_n },
            };
            // `dres`: d resid_post, then d resid_mid; `dres_next`: d resid_pre (physical rows).
            keep(Site::ResidPost(l), &dres, bp * d);
            self.mlp_backward(l, ws, rows.b * rows.q_pos.len(), &mut dres, grads);
            if self.cfg.has_mlp() {
                keep(Site::ResidMid(l), &dres, bp * d);
            }
            self.attention_backward(l, ws, &dres, &mut dres_next, grads);
            if recording {
                let hd = self.cfg.n_heads * self.cfg.d_head;
                keep(Site::Z(l), &ws.dz, bp * hd);
                keep(Site::Q(l), &ws.dq, bp * hd);
                keep(Site::K(l), &ws.dk, bp * hd);
                keep(Site::V(l), &ws.dv, bp * hd);
            }
            std::mem::swap(&mut dres, &mut dres_next);
            keep(Site::ResidPre(l), &dres, bp * d);
        }
        if floor == 0 {
            self.embed_backward(ws, &dres, grads);
        }
        ws.dres_a = dres;
        ws.dres_b = dres_next;
    }

    /// Unembedding and final LayerNorm: `dlogits [b·q, v]` → `dres [b·q, d]`.
    fn unembed_backward(&self, ws: &mut Workspace, dres: &mut Vec<f32>, grads: &mut [f32]) {
        let (cfg, lay, w) = (&self.cfg, &self.layout, &self.params[..]);
        let d = cfg.d_model;
        let v = cfg.d_vocab_out();
        let rq = ws.batch * ws.last_q.len();
        let xf: &[f32] = if lay.ln_final.is_some() {
            &ws.lnf.y
        } else {
            &ws.resid[cfg.n_layers]
        };
        // Straight into `dres` when there is no final LayerNorm.
        let dxf = if lay.ln_final.is_some() {
            buf(&mut ws.dx, rq * d)
        } else {
            buf(dres, rq * d)
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
        if let Some(ln) = lay.ln_final {
            let out = buf(dres, rq * d);
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
    }

    /// Block `l`'s MLP: `dres` holds d resid_post `[rq, d]` and becomes d resid_mid (the residual
    /// path plus the MLP's). Without an MLP the two are the same.
    fn mlp_backward(
        &self,
        l: usize,
        ws: &mut Workspace,
        rq: usize,
        dres: &mut [f32],
        grads: &mut [f32],
    ) {
        let (cfg, lay, w) = (&self.cfg, &self.layout, &self.params[..]);
        let ids = &lay.blocks[l];
        let Some(m) = ids.mlp else { return };
        let d = cfg.d_model;
        let dm = cfg.d_mlp();
        if self.folds_w_in(l, &ws.plan) {
            self.folded_mlp_backward(ws, rq, &dres[..rq * d], grads);
            return;
        }
        let lb = &ws.layers[l];
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
        // The fused bias+ReLU and the general activation share one backward (ReLU masks with post).
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
                let (gw, gb) = two_mut(grads, lay.specs[ln.w].range(), lay.specs[ln.b].range());
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

    /// Layer 0's MLP when W_in was folded (forward.rs): `dres` is d resid_post `[rq, d]` (and, no
    /// W_in product to add, stays d resid_mid). d mlp_pre goes back through the fold's rows by
    /// [`fold::share_backward`], into `ws.dfold` and `ws.dvow` for the attention's backward.
    /// dW_out, the longer product of its pair, runs on one thread; d post, the activation's
    /// backward, b_in's sum and the share, which needs only d mlp_pre, on the other, and the
    /// first thread takes up the share's tasks once it is done. Each product on one thread, each
    /// sum in a fixed order: the same bits for any thread count.
    fn folded_mlp_backward(&self, ws: &mut Workspace, rq: usize, dres: &[f32], grads: &mut [f32]) {
        let (cfg, lay, w) = (&self.cfg, &self.layout, &self.params[..]);
        let ids = &lay.blocks[0];
        let m = ids.mlp.expect("the W_in fold has an MLP");
        let (d, dm, h_n) = (cfg.d_model, cfg.d_mlp(), cfg.n_heads);
        let Workspace {
            batch,
            n_pos,
            all_pos,
            last_q,
            map0,
            uniq,
            layers,
            dhidden,
            dvow,
            dfold,
            key_rows,
            ..
        } = ws;
        let rows = BlockRows {
            b: *batch,
            p: *n_pos,
            q_pos: if cfg.n_layers == 1 { last_q } else { all_pos },
            map: map0,
            n_rows: uniq.len(),
        };
        let g = rows.geometry(h_n, cfg.d_head);
        let lb = &layers[0];
        let (gw_out, gb_out, gb_in) = three_mut(
            grads,
            [
                lay.specs[m.w_out].range(),
                lay.specs[m.b_out].range(),
                lay.specs[m.b_in].range(),
            ],
        );
        let w_out = lay.get(w, m.w_out);
        let dpre = buf(dhidden, rq * dm);
        let dvow = buf(dvow, h_n * rows.n_rows * dm);
        let dfold = buf(dfold, rows.b * h_n * rows.q_pos.len() * rows.p);
        rayon::join(
            || {
                matmul_threads(
                    &mut view_mut(gw_out, dm, d),
                    &view(&lb.post, rq, dm).t(),
                    &view(dres, rq, d),
                    true,
                    1,
                );
                simd::column_sums_add(gb_out, dres, rq, d);
            },
            || {
                matmul_threads(
                    &mut view_mut(dpre, rq, dm),
                    &view(dres, rq, d),
                    &view(w_out, dm, d).t(),
                    false,
                    1,
                );
                activation::backward(cfg.act(), &lb.pre, &lb.post, dpre);
                simd::column_sums_add(gb_in, dpre, rq, dm);
                key_rows.build(&g);
                dvow.fill(0.0);
                fold::share_backward(&g, key_rows, &lb.pattern, &lb.vow, dpre, dm, dvow, dfold);
            },
        );
    }

    /// Block `l`'s attention: from `dres` (d resid_mid `[b·q, d]`) through W_O, the pattern and
    /// Q/K/V into `dpre` (d resid_pre, `[r, d]`), plus the residual path.
    fn attention_backward(
        &self,
        l: usize,
        ws: &mut Workspace,
        dres: &[f32],
        dpre: &mut Vec<f32>,
        grads: &mut [f32],
    ) {
        let (cfg, lay, w) = (&self.cfg, &self.layout, &self.params[..]);
        let ids = &lay.blocks[l];
        let (d, h_n, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
        let hd = h_n * dh;
        let (b_n, p_n) = (ws.batch, ws.n_pos);
        let last = l + 1 == cfg.n_layers;
        let q_pos: &[usize] = if last { &ws.last_q } else { &ws.all_pos };
        let (map, n_rows): (&[u32], usize) = if l == 0 {
            (&ws.map0, ws.uniq.len())
        } else {
            (&ws.ident, b_n * p_n)
        };
        let rows = BlockRows {
            b: b_n,
            p: p_n,
            q_pos,
            map,
            n_rows,
        };
        let nq = q_pos.len();
        let rq = b_n * nq;
        let lb = &ws.layers[l];
        let res_in = &ws.resid[l][..n_rows * d];
        let blk = n_rows * dh;
        let g = rows.geometry(h_n, dh);
        let dq = buf(&mut ws.dq, h_n * blk);
        let dk = buf(&mut ws.dk, h_n * blk);
        let dv = buf(&mut ws.dv, h_n * blk);
        dq.fill(0.0);
        dk.fill(0.0);
        // The W_in fold (forward.rs): d mlp_pre reached the pattern and the tables v·(W_O·W_in)
        // in folded_mlp_backward (`ws.dfold`, `ws.dvow`); here they go on to v, W_O and W_in,
        // and resid_pre and b_O take their own terms below.
        let fold_w_in = self.folds_w_in(l, &ws.plan);
        let dm = cfg.d_mlp();
        if l == 0 && ws.plan.fold_wo_layer0 {
            // The forward folded W_O into v (see mix_projected): differentiate that form.
            if cfg.attn_bias {
                simd::column_sums_add(
                    &mut grads[lay.specs[ids.b_o].range()],
                    &dres[..rq * d],
                    rq,
                    d,
                );
            }
            let dvo = buf(&mut ws.dvo, h_n * n_rows * d);
            dvo.fill(0.0);
            // With the W_in fold, its share of d pattern is in `ws.dfold` (folded_mlp_backward).
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
                fold_w_in.then_some(&ws.dfold[..]),
            );
            let w_o = lay.get(w, ids.w_o);
            let gw = &mut grads[lay.specs[ids.w_o].range()];
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
            if fold_w_in {
                // vow_h = v_h·(W_O·W_in)_h: dv_h += dvow_h·(W_O·W_in)_hᵀ on one thread,
                // d (W_O·W_in)_h = v_hᵀ·dvow_h on the other; then, W_O·W_in being one product,
                // dW_O += d (W_O·W_in)·W_inᵀ and dW_in += W_Oᵀ·d (W_O·W_in), one per thread.
                let mlp = ids.mlp.expect("the W_in fold has an MLP");
                let (dvow, wo_in, v) = (&ws.dvow, &lb.wo_in, &lb.v);
                let dwo_in = buf(&mut ws.dwo_in, h_n * dh * dm);
                rayon::join(
                    || {
                        for h in 0..h_n {
                            matmul_threads(
                                &mut view_mut(&mut dv[h * blk..], n_rows, dh),
                                &view(&dvow[h * n_rows * dm..], n_rows, dm),
                                &view(&wo_in[h * dh * dm..], dh, dm).t(),
                                true,
                                1,
                            );
                        }
                    },
                    || {
                        for h in 0..h_n {
                            matmul_threads(
                                &mut view_mut(&mut dwo_in[h * dh * dm..], dh, dm),
                                &view(&v[h * blk..], n_rows, dh).t(),
                                &view(&dvow[h * n_rows * dm..], n_rows, dm),
                                false,
                                1,
                            );
                        }
                    },
                );
                let (gw_o, gw_in) = two_mut(
                    grads,
                    lay.specs[ids.w_o].range(),
                    lay.specs[mlp.w_in].range(),
                );
                let (w_in, dwo_in) = (lay.get(w, mlp.w_in), &ws.dwo_in);
                rayon::join(
                    || {
                        matmul_threads(
                            &mut view_mut(gw_o, h_n * dh, d),
                            &view(dwo_in, h_n * dh, dm),
                            &view(w_in, d, dm).t(),
                            true,
                            1,
                        )
                    },
                    || {
                        matmul_threads(
                            &mut view_mut(gw_in, d, dm),
                            &view(w_o, h_n * dh, d).t(),
                            &view(dwo_in, h_n * dh, dm),
                            true,
                            1,
                        )
                    },
                );
            }
        } else {
            let (gw, gb) = two_mut(
                grads,
                lay.specs[ids.w_o].range(),
                lay.specs[ids.b_o].range(),
            );
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
        // Back through what came after the projections (positions.rs): smearing, then rotation.
        if let Some(alpha) = ids.smear {
            let range = lay.specs[alpha].range();
            let alpha = &w[range.clone()];
            let (dk, k_raw) = (&mut ws.dk[..h_n * blk], &lb.k_raw);
            positions::smear_backward(dk, k_raw, alpha, &mut grads[range], n_rows, p_n, dh);
        }
        if let Some(rot) = &self.rotary {
            rot.rotate(&mut ws.dq[..h_n * blk], n_rows, p_n, dh, true);
            rot.rotate(&mut ws.dk[..h_n * blk], n_rows, p_n, dh, true);
        }

        // Q/K/V projections into d x1 `[r, d]`, those that share an input in one product
        // (shortformer: q and k from x1 + W_pos, whose share of d x1 goes to W_pos).
        let x1: &[f32] = if ids.ln1.is_some() { &lb.ln1.y } else { res_in };
        let dx1 = buf(&mut ws.dx, n_rows * d);
        let proj = |wid: usize, bid: usize| projections::ProjectionIds {
            w: lay.specs[wid].range(),
            b: lay.specs[bid].range(),
        };
        let (pq, pk, pv) = (
            proj(ids.w_q, ids.b_q),
            proj(ids.w_k, ids.b_k),
            proj(ids.w_v, ids.b_v),
        );
        let (dq, dk, dv) = (
            &ws.dq[..h_n * blk],
            &ws.dk[..h_n * blk],
            &ws.dv[..h_n * blk],
        );
        let shape = (n_rows, d, h_n, dh);
        let bias = cfg.attn_bias;
        if cfg.shortformer() {
            let qk_in = &lb.qk_in;
            projections::project_backward(
                &mut ws.packed,
                qk_in,
                w,
                grads,
                &[pq, pk],
                &[dq, dk],
                bias,
                (dx1, false),
                shape,
            );
            if let Some(w_pos) = lay.w_pos {
                // So far dx1 is d (x1 + W_pos): W_pos's share, row r at position r % p.
                scatter_add_rows(&mut grads[lay.specs[w_pos].range()], dx1, d, |r| r % p_n);
            }
            projections::project_backward(
                &mut ws.packed,
                x1,
                w,
                grads,
                &[pv],
                &[dv],
                bias,
                (dx1, true),
                shape,
            );
        } else {
            projections::project_backward(
                &mut ws.packed,
                x1,
                w,
                grads,
                &[pq, pk, pv],
                &[dq, dk, dv],
                bias,
                (dx1, false),
                shape,
            );
        }
        // d resid_pre (physical rows) = LN1 backward + the residual path from resid_mid.
        let dpre = buf(dpre, n_rows * d);
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
        let own_row = |r: usize| map[(r / nq) * p_n + q_pos[r % nq]] as usize;
        scatter_add_rows(dpre, &dres[..rq * d], d, own_row);
        if fold_w_in {
            // The fold's resid_pre term (xin = resid_pre·W_in, at each row's own position):
            // dxin by row, then dW_in += resid_preᵀ·dxin and d resid_pre += dxin·W_inᵀ.
            let mlp = ids.mlp.expect("the W_in fold has an MLP");
            let w_in = lay.get(w, mlp.w_in);
            let (gw_in, gb_o) = two_mut(
                grads,
                lay.specs[mlp.w_in].range(),
                lay.specs[ids.b_o].range(),
            );
            // Only the rows that queries sit at (forward.rs): d xin there, by row.
            let (own_rows, own_slot) = (&lb.own_rows, &lb.own_slot);
            let n_own = own_rows.len();
            let dxin = buf(&mut ws.dxin, n_own * dm);
            dxin.fill(0.0);
            scatter_add_rows(dxin, &ws.dhidden[..rq * dm], dm, |r| {
                own_slot[own_row(r)] as usize
            });
            let dxown = buf(&mut ws.dxown, n_own * d);
            linear_backward(
                &ws.dxin,
                &lb.xown,
                w_in,
                gw_in,
                None,
                Some((dxown, false)),
                n_own,
                d,
                dm,
            );
            for (dx, &r) in ws.dxown.chunks_exact(d).zip(own_rows) {
                for (o, x) in dpre[r as usize * d..][..d].iter_mut().zip(dx) {
                    *o += x;
                }
            }
            if cfg.attn_bias {
                // b_O's term (the fold's bias holds b_O·W_in): with s = Σ_rows d mlp_pre,
                // d b_O += W_in·s and dW_in += b_O ⊗ s.
                let sum = buf(&mut ws.dpre_sum, dm);
                sum.fill(0.0);
                simd::column_sums_add(sum, &ws.dxin, n_own, dm);
                let b_o = lay.get(w, ids.b_o);
                for k in 0..d {
                    let w_row = &w_in[k * dm..][..dm];
                    gb_o[k] += w_row
                        .iter()
                        .zip(&ws.dpre_sum)
                        .map(|(a, b)| a * b)
                        .sum::<f32>();
                    for (g, &s) in gw_in[k * dm..][..dm].iter_mut().zip(&ws.dpre_sum) {
                        *g += b_o[k] * s;
                    }
                }
            }
        }
    }

    /// Embeddings: scatter each physical row of layer 0 (`dres [r, d]`) back to its token and
    /// position.
    fn embed_backward(&self, ws: &Workspace, dres: &[f32], grads: &mut [f32]) {
        let lay = &self.layout;
        let d = self.cfg.d_model;
        let ge = &mut grads[lay.specs[lay.w_e].range()];
        if self.cfg.vector_tokens {
            // dW_E += xᵀ·dres over every row (vector tokens are embedded linearly).
            let (rows, d_in) = (ws.uniq.len(), self.cfg.d_vocab);
            matmul(
                &mut view_mut(ge, d_in, d),
                &view(&ws.x_in, rows, d_in).t(),
                &view(dres, rows, d),
                true,
            );
        } else {
            scatter_add_rows(ge, &dres[..ws.uniq.len() * d], d, |r| ws.uniq[r].0 as usize);
        }
        // Only standard models' W_pos is in the residual stream (shortformer's: attention_backward).
        if let (true, Some(w_pos)) = (self.cfg.pos_in_resid(), lay.w_pos) {
            let gp = &mut grads[lay.specs[w_pos].range()];
            scatter_add_rows(gp, &dres[..ws.uniq.len() * d], d, |r| ws.uniq[r].1 as usize);
        }
    }
}
