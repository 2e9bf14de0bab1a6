//! Layer 0's W_in fold (see `models/transformer/forward.rs`): each MLP row's pre-activation mixed
//! from a few d_mlp-wide table rows by the attention pattern, and the backward of that mix.
//!
//! Both walk the d_mlp columns in fixed blocks of [`COLS`], one task per block, every row passing
//! through each block: a block of the tables (and of their gradients) stays in L2 while the rows
//! pass, where a row-by-row walk gathers whole table rows (megabytes of them) from L3 for every
//! row. The block width is a constant, so the sums are the same on every machine and thread count.

use super::activation::{self, ActFn};
use super::attention::{axpy, dot, Geometry};
use super::simd::{vectorized, SendPtr};
use rayon::prelude::*;

/// Columns per block: 64 floats of a table row. Tables of 4 heads × 227 rows (Nanda's model)
/// take 232 KiB a block, and their gradients as much: within the L2 of the CPUs we run on.
pub const COLS: usize = 64;

/// A full block of a slice, as an array (so that loops over it have known trip counts and
/// vectorise whole).
#[inline(always)]
fn block(x: &[f32]) -> &[f32; COLS] {
    assert!(x.len() >= COLS);
    // SAFETY: at least COLS floats (asserted); [f32; COLS] has f32's alignment.
    unsafe { &*(x.as_ptr() as *const [f32; COLS]) }
}

#[inline(always)]
fn block_mut(x: &mut [f32]) -> &mut [f32; COLS] {
    assert!(x.len() >= COLS);
    // SAFETY: as in `block`, and the borrow is exclusive.
    unsafe { &mut *(x.as_mut_ptr() as *mut [f32; COLS]) }
}

/// [`dot`] of two full blocks: the same lanes and tree, so the same bits.
#[inline(always)]
fn dot_block(a: &[f32; COLS], b: &[f32; COLS]) -> f32 {
    let mut acc = [0.0f32; 16];
    for c in 0..COLS / 16 {
        for l in 0..16 {
            acc[l] += a[c * 16 + l] * b[c * 16 + l];
        }
    }
    // Through memory: the accumulation above then vectorises 16 lanes wide, instead of being
    // paired with the tree's first level into 2-wide operations.
    let acc = std::hint::black_box(acc);
    let mut a8 = [0.0f32; 8];
    for i in 0..8 {
        a8[i] = acc[i] + acc[i + 8];
    }
    let mut a4 = [0.0f32; 4];
    for i in 0..4 {
        a4[i] = a8[i] + a8[i + 4];
    }
    (a4[0] + a4[2]) + (a4[1] + a4[3])
}

/// `y += a·x` over a block, or over the partial last block.
#[inline(always)]
fn axpy_cols(y: &mut [f32], a: f32, x: &[f32]) {
    if y.len() == COLS {
        let (y, x) = (block_mut(y), block(x));
        for i in 0..COLS {
            y[i] += a * x[i];
        }
    } else {
        axpy(y, a, x);
    }
}

#[inline(always)]
fn dot_cols(a: &[f32], b: &[f32]) -> f32 {
    if a.len() == COLS {
        dot_block(block(a), block(b))
    } else {
        dot(a, b)
    }
}

/// The number of column blocks of a width-`m` row (the backward's partial sums of d pattern).
pub fn blocks(m: usize) -> usize {
    m.div_ceil(COLS)
}

/// The row stride of the fold's tables of width `m`: a line more than a multiple of 16 floats, so
/// that one block's rows spread over the cache's sets (at a power-of-two stride such as 512
/// floats they would share an eighth of them, and evict each other).
pub fn table_stride(m: usize) -> usize {
    m.next_multiple_of(16) + 16
}

/// `pre[r] = own[row(b, q_pos[i])] + bias + Σ_h Σ_j pattern[b, h, i, j] · vals[h, row(b, j)]` and
/// `post[r] = act(pre[r])` for each row r = b·q + i (pre not written where it is None: a ReLU's
/// backward needs post only). `own` `[n_rows, m]`, `vals` `[n_heads, n_rows,
/// m]` at row stride `vs`, `pre` and `post` `[b·q, m]`. Terms are added in that order (heads, then keys) and zero
/// weights skipped, as [`super::attention::mix_projected_each`] does: the same bits.
#[allow(clippy::too_many_arguments)]
pub fn mix(
    g: &Geometry,
    pattern: &[f32],
    own: &[f32],
    (vals, vs): (&[f32], usize),
    bias: &[f32],
    act: ActFn,
    pre: Option<&mut [f32]>,
    post: &mut [f32],
) {
    let m = bias.len();
    let (h_n, p_n, nq, n_rows) = (g.n_heads, g.n_pos, g.nq(), g.n_rows);
    let rq = g.batch * nq;
    assert!(own.len() >= n_rows * m && vs >= m && vals.len() >= h_n * n_rows * vs);
    assert!(pre.as_ref().is_none_or(|p| p.len() >= rq * m) && post.len() >= rq * m);
    let pre_p = pre.map(|p| SendPtr(p.as_mut_ptr()));
    let post_p = SendPtr(post.as_mut_ptr());
    (0..blocks(m)).into_par_iter().for_each(|c| {
        let (lo, w) = (c * COLS, COLS.min(m - c * COLS));
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
                            let (src, bias) = (block(src), block(&bias[lo..]));
                            let mut o = [0.0f32; COLS];
                            for k in 0..COLS {
                                o[k] = src[k] + bias[k];
                            }
                            for h in 0..h_n {
                                let pat = &pattern[((b * h_n + h) * nq + i) * p_n..][..p_n];
                                for (j, &wt) in pat.iter().enumerate() {
                                    if wt != 0.0 {
                                        let at = (h * n_rows + g.row(b, j)) * vs + lo;
                                        let v = block(&vals[at..]);
                                        for k in 0..COLS {
                                            o[k] += wt * v[k];
                                        }
                                    }
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
                                        let at = (h * n_rows + g.row(b, j)) * vs + lo;
                                        axpy(o, wt, &vals[at..][..w]);
                                    }
                                }
                            }
                            emit(r, o);
                        }
                    }
                }
            },
        )
    });
}

/// Backward of [`mix`]'s mixed terms, given `dout` = d pre (`[b·q, m]`): `dvals[h, row(b, j)] +=
/// pattern[b, h, i, j] · dout[r]` (rows in batch order), and d pattern's share in partial sums,
/// one per column block c: `dp_parts[c, r, h, j] = dout[r] · vals[h, row(b, j)]` over that block's
/// columns (`[blocks(m), b·q, n_heads, n_pos]`, keys after the query left unwritten). `vals` and
/// `dvals` at row stride `vs`.
#[allow(clippy::too_many_arguments)]
pub fn mix_backward(
    g: &Geometry,
    pattern: &[f32],
    vals: &[f32],
    dout: &[f32],
    (m, vs): (usize, usize),
    dvals: &mut [f32],
    dp_parts: &mut [f32],
) {
    let (h_n, p_n, nq, n_rows) = (g.n_heads, g.n_pos, g.nq(), g.n_rows);
    let rq = g.batch * nq;
    assert!(vs >= m && vals.len() >= h_n * n_rows * vs && dvals.len() >= h_n * n_rows * vs);
    assert!(dout.len() >= rq * m && dp_parts.len() >= blocks(m) * rq * h_n * p_n);
    let (dv_p, dp_p) = (SendPtr(dvals.as_mut_ptr()), SendPtr(dp_parts.as_mut_ptr()));
    (0..blocks(m)).into_par_iter().for_each(|c| {
        let (lo, w) = (c * COLS, COLS.min(m - c * COLS));
        // SAFETY: block c's partial sums are this task's alone.
        let parts = unsafe {
            std::slice::from_raw_parts_mut({ &dp_p }.0.add(c * rq * h_n * p_n), rq * h_n * p_n)
        };
        vectorized(
            #[inline(always)]
            || {
                for b in 0..g.batch {
                    for (i, &qp) in g.q_pos.iter().enumerate() {
                        let r = b * nq + i;
                        let gi = &dout[r * m + lo..][..w];
                        for h in 0..h_n {
                            let pat = &pattern[((b * h_n + h) * nq + i) * p_n..][..p_n];
                            let out = &mut parts[(r * h_n + h) * p_n..][..p_n];
                            for j in 0..=qp {
                                let at = (h * n_rows + g.row(b, j)) * vs + lo;
                                out[j] = dot_cols(gi, &vals[at..][..w]);
                                // SAFETY: in bounds (asserted above); columns lo..lo + w of
                                // every row belong to this task.
                                let dv = unsafe {
                                    std::slice::from_raw_parts_mut({ &dv_p }.0.add(at), w)
                                };
                                axpy_cols(dv, pat[j], gi);
                            }
                        }
                    }
                }
            },
        )
    });
}
