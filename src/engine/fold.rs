//! Layer 0's W_in fold in training (see `models/transformer/forward.rs`): each MLP row's
//! pre-activation mixed from a few d_mlp-wide table rows by the attention pattern. Its backward
//! runs inside the attention's (`attention::FoldedMix`), which walks the same rows by head.
//!
//! The mix walks the d_mlp columns in fixed blocks of [`COLS`], one task per block, every row
//! passing through each block: a row's block sum stays in registers (a whole d_mlp-wide row would
//! not), and each task reads only its block of the tables, first copied together (see [`mix`]).

use super::activation::{self, ActFn};
use super::attention::{axpy, Geometry};
use super::simd::{self, vectorized, SendPtr};
use rayon::prelude::*;

/// Columns per block: 64 floats, four AVX-512 or eight AVX2 registers of sums.
pub const COLS: usize = 64;

/// A full block of a slice, as an array (so that loops over it have known trip counts and
/// vectorise whole).
#[inline(always)]
fn block(x: &[f32]) -> &[f32; COLS] {
    assert!(x.len() >= COLS);
    // SAFETY: at least COLS floats (asserted); [f32; COLS] has f32's alignment.
    unsafe { &*(x.as_ptr() as *const [f32; COLS]) }
}

/// `pre[r] = own[row(b, q_pos[i])] + bias + Σ_h Σ_j pattern[b, h, i, j] · vals[h, row(b, j)]` and
/// `post[r] = act(pre[r])` for each row r = b·q + i; pre is not written where it is None (a
/// ReLU's backward needs post only). `own` `[n_rows, m]`, `vals` `[n_heads, n_rows, m]`, `pre`
/// and `post` `[b·q, m]`. Terms are added in that order (heads, then keys),
/// zero weights skipped, as [`super::attention::mix_projected_each`] does: the same bits.
#[allow(clippy::too_many_arguments)]
pub fn mix(
    g: &Geometry,
    pattern: &[f32],
    own: &[f32],
    vals: &[f32],
    bias: &[f32],
    act: ActFn,
    pre: Option<&mut [f32]>,
    post: &mut [f32],
) {
    let m = bias.len();
    let (h_n, nq, n_rows) = (g.n_heads, g.nq(), g.n_rows);
    let rq = g.batch * nq;
    assert!(own.len() >= n_rows * m && vals.len() >= h_n * n_rows * m);
    assert!(pre.as_ref().is_none_or(|p| p.len() >= rq * m) && post.len() >= rq * m);
    let pre_p = pre.map(|p| SendPtr(p.as_mut_ptr()));
    let post_p = SendPtr(post.as_mut_ptr());
    let n_vals = h_n * n_rows;
    (0..m.div_ceil(COLS)).into_par_iter().for_each(|c| {
        let (lo, w) = (c * COLS, COLS.min(m - c * COLS));
        // The block's pieces of the table rows, side by side. In place they lie a d_mlp row apart
        // (2 KB at d_mlp 512), so they fall into few cache sets and evict each other even where
        // the block's share of the table (232 KB for Nanda's) would fit in L2.
        simd::with_scratch(n_vals * COLS, |tbl| {
            for (t, row) in tbl.chunks_exact_mut(COLS).zip(vals.chunks_exact(m)) {
                t[..w].copy_from_slice(&row[lo..lo + w]);
            }
            let tbl: &[f32] = tbl;
            mix_block(g, pattern, own, tbl, bias, act, (lo, w, m), &pre_p, &post_p)
        })
    });
}

/// One column block of [`mix`]: `tbl [h·n_rows, COLS]` holds the block's columns of `vals`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mix_block(
    g: &Geometry,
    pattern: &[f32],
    own: &[f32],
    tbl: &[f32],
    bias: &[f32],
    act: ActFn,
    (lo, w, m): (usize, usize, usize),
    pre_p: &Option<SendPtr>,
    post_p: &SendPtr,
) {
    let (h_n, p_n, nq, n_rows) = (g.n_heads, g.n_pos, g.nq(), g.n_rows);
    {
        vectorized(
            #[inline(always)]
            || {
                // Row r's block, written to pre and post.
                let emit = |r: usize, o: &[f32]| {
                    // SAFETY: in bounds (asserted above); columns lo..lo + w of every row
                    // belong to this task.
                    let post_r =
                        unsafe { std::slice::from_raw_parts_mut({ &post_p }.0.add(r * m + lo), w) };
                    if let Some(p) = &pre_p {
                        // SAFETY: as for post.
                        unsafe { std::slice::from_raw_parts_mut(p.0.add(r * m + lo), w) }
                            .copy_from_slice(o);
                    }
                    match act {
                        ActFn::Relu => {
                            for (y, &x) in post_r.iter_mut().zip(o) {
                                *y = x.max(0.0);
                            }
                        }
                        _ => activation::apply(act, o, post_r),
                    }
                };
                let mut partial = [0.0f32; COLS];
                for b in 0..g.batch {
                    for (i, &qp) in g.q_pos.iter().enumerate() {
                        let r = b * nq + i;
                        let src = &own[g.row(b, qp) * m + lo..][..w];
                        if w == COLS {
                            // A full block: the sum stays in registers.
                            let mut o = [0.0f32; COLS];
                            {
                                let (src, bias) = (block(src), block(&bias[lo..]));
                                let mut acc = [0.0f32; COLS];
                                for k in 0..COLS {
                                    acc[k] = src[k] + bias[k];
                                }
                                for h in 0..h_n {
                                    let pat = &pattern[((b * h_n + h) * nq + i) * p_n..][..p_n];
                                    for (j, &wt) in pat.iter().enumerate() {
                                        if wt != 0.0 {
                                            let at = (h * n_rows + g.row(b, j)) * COLS;
                                            let v = block(&tbl[at..]);
                                            for k in 0..COLS {
                                                acc[k] += wt * v[k];
                                            }
                                        }
                                    }
                                }
                                // Copied out element by element, so that `acc` itself never has
                                // its address taken and can stay in registers.
                                #[allow(clippy::manual_memcpy)]
                                for k in 0..COLS {
                                    o[k] = acc[k];
                                }
                            }
                            emit(r, &o);
                        } else {
                            let o = &mut partial[..w];
                            for ((o, &x), &c) in o.iter_mut().zip(src).zip(&bias[lo..lo + w]) {
                                *o = x + c;
                            }
                            for h in 0..h_n {
                                let pat = &pattern[((b * h_n + h) * nq + i) * p_n..][..p_n];
                                for (j, &wt) in pat.iter().enumerate() {
                                    if wt != 0.0 {
                                        let at = (h * n_rows + g.row(b, j)) * COLS;
                                        axpy(o, wt, &tbl[at..][..w]);
                                    }
                                }
                            }
                            emit(r, o);
                        }
                    }
                }
            },
        )
    }
}
