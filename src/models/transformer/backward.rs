//! The backward pass of the last (unhooked) forward, stage by stage in reverse, following the
//! forward's recorded [`Plan`]: where it folded W_O into v in layer 0, the backward differentiates
//! that form; where it deduplicated layer 0's rows, gradients are scattered back through the same
//! map. Shapes as in `forward.rs`; `dres` is d loss / d (the residual stream at the current point),
//! `[b·q, d]` of the block being differentiated.

use super::forward::BlockRows;
use super::{buf, Transformer, Workspace};
use crate::engine::attention;
use crate::engine::matmul::{linear_backward, matmul, view, view_mut};
use crate::engine::{activation, layernorm, simd};

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

impl Transformer {
    /// Backward of the last forward; `ws.dlogits` holds d loss / d logits. Adds into `grads`.
    pub(super) fn backward_impl(&self, ws: &mut Workspace, grads: &mut [f32]) {
        assert!(
            ws.plan.differentiable,
            "backward needs a forward without hooks"
        );
        let mut dres = std::mem::take(&mut ws.dres_a);
        let mut dres_next = std::mem::take(&mut ws.dres_b);
        self.unembed_backward(ws, &mut dres, grads);
        let (b_n, p_n) = (ws.batch, ws.n_pos);
        for l in (0..self.cfg.n_layers).rev() {
            let last = l + 1 == self.cfg.n_layers;
            let rows = BlockRows {
                b: b_n,
                p: p_n,
                q_pos: if last { &ws.last_q } else { &ws.all_pos },
                map: if l == 0 { &ws.map0 } else { &ws.ident },
                n_rows: if l == 0 { ws.uniq.len() } else { b_n * p_n },
            };
            // `dres`: d resid_post, then d resid_mid; `dres_next`: d resid_pre (physical rows).
            self.mlp_backward(l, ws, rows.b * rows.q_pos.len(), &mut dres, grads);
            self.attention_backward(l, ws, &dres, &mut dres_next, grads);
            std::mem::swap(&mut dres, &mut dres_next);
        }
        self.embed_backward(ws, &dres, grads);
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
        if self.folds_w_in(l, &ws.plan) {
            // W_in's input was the fold's mix (forward.rs): d mlp_pre stays in `dhidden` for the
            // attention's backward, which takes it back through the fold's rows. Here only b_in.
            simd::column_sums_add(&mut grads[lay.specs[m.b_in].range()], &ws.dhidden, rq, dm);
            return;
        }
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
        // The W_in fold (forward.rs): d mlp_pre, in `dhidden`, reaches the pattern and v·W_O
        // through the mixed rows v·W_O·W_in, and resid_pre and b_O through their own terms below.
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
            let fold = if fold_w_in {
                let dvow = buf(&mut ws.dvow, h_n * n_rows * dm);
                dvow.fill(0.0);
                Some(attention::FoldedMix {
                    vals: &lb.vow,
                    width: dm,
                    dout: &ws.dhidden[..rq * dm],
                    dvals: dvow,
                })
            } else {
                None
            };
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
                fold,
            );
            if fold_w_in {
                // vow = vo·W_in: dvo += dvow·W_inᵀ and dW_in += voᵀ·dvow, one product per thread.
                let mlp = ids.mlp.expect("the W_in fold has an MLP");
                let rows_v = h_n * n_rows;
                let dvow = view(&ws.dvow, rows_v, dm);
                let w_in = view(lay.get(w, mlp.w_in), d, dm);
                let gw_in = &mut grads[lay.specs[mlp.w_in].range()];
                let vo = view(&lb.vo, rows_v, d);
                rayon::join(
                    || matmul(&mut view_mut(dvo, rows_v, d), &dvow, &w_in.t(), true),
                    || matmul(&mut view_mut(gw_in, d, dm), &vo.t(), &dvow, true),
                );
            }
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

        // Q/K/V projections, per head, into d x1 `[r, d]`.
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
            let dxin = buf(&mut ws.dxin, n_rows * dm);
            dxin.fill(0.0);
            scatter_add_rows(dxin, &ws.dhidden[..rq * dm], dm, own_row);
            linear_backward(
                &ws.dxin,
                res_in,
                w_in,
                gw_in,
                None,
                Some((dpre, true)),
                n_rows,
                d,
                dm,
            );
            if cfg.attn_bias {
                // b_O's term (the fold's bias holds b_O·W_in): with s = Σ_rows d mlp_pre,
                // d b_O += W_in·s and dW_in += b_O ⊗ s.
                let sum = buf(&mut ws.dpre_sum, dm);
                sum.fill(0.0);
                simd::column_sums_add(sum, &ws.dxin, n_rows, dm);
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
    }
}
