//! Layer 0's W_in fold in training (see `models/transformer/forward.rs`): each MLP row's
//! pre-activation mixed from a few d_mlp-wide table rows by the attention pattern
//! ([`mix`]), and its backward to d pattern and the tables ([`share_backward`], by table row).
//!
//! The mix walks the d_mlp columns in fixed blocks of [`COLS`], one task per block, every row
//! passing through each block: a row's block sum stays in registers (a whole d_mlp-wide row would
//! not), and each task reads only its block of the tables, first copied together (see [`mix`]).

use super::activation::{self, ActFn};
use super::attention::{axpy, dot, Geometry};
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
    vectorized(
        #[inline(always)]
        || {
            // Row r's block, written to pre and post.
            let emit = |r: usize, o: &[f32]| {
                // SAFETY: in bounds (asserted in `mix`); columns lo..lo + w of every row
                // belong to this task.
                let post_r = unsafe { std::slice::from_raw_parts_mut(post_p.0.add(r * m + lo), w) };
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

/// Which examples use each layer-0 row as a key: `starts [n_rows + 1]` into `batch` (each row's
/// examples in batch order) and each row's key position `pos [n_rows]`. Built per pass by a
/// counting sort; rows are distinct (token, position) pairs, so a row has one position.
#[derive(Default, Debug)]
pub struct KeyRows {
    starts: Vec<u32>,
    batch: Vec<u32>,
    pos: Vec<u32>,
    /// Scratch for the fill: each row's next free place.
    next: Vec<u32>,
}

impl KeyRows {
    /// The examples of every row at the key positions some query sees (j ≤ the largest q_pos).
    pub fn build(&mut self, g: &Geometry) {
        let n_keys = g.q_pos.iter().max().map_or(0, |&q| q + 1);
        self.starts.clear();
        self.starts.resize(g.n_rows + 1, 0);
        self.pos.clear();
        self.pos.resize(g.n_rows, u32::MAX);
        for b in 0..g.batch {
            for j in 0..n_keys {
                let r = g.row(b, j);
                assert!(
                    self.pos[r] == u32::MAX || self.pos[r] == j as u32,
                    "a key row at two positions"
                );
                self.pos[r] = j as u32;
                self.starts[r + 1] += 1;
            }
        }
        for r in 0..g.n_rows {
            self.starts[r + 1] += self.starts[r];
        }
        self.batch.clear();
        self.batch.resize(self.starts[g.n_rows] as usize, 0);
        // Filled in batch order: each row's examples ascending.
        self.next.clear();
        self.next.extend_from_slice(&self.starts[..g.n_rows]);
        for b in 0..g.batch {
            for j in 0..n_keys {
                let r = g.row(b, j);
                self.batch[self.next[r] as usize] = b as u32;
                self.next[r] += 1;
            }
        }
    }
}

/// The backward of [`mix`]'s table terms, by table row: `dpattern[b, h, i, j] = dout[b·q + i] ·
/// vals[h, row(b, j)]` (the fold's share of d pattern; keys after the query left alone), and
/// `dvals[h, r] += Σ pattern[b, h, i, j] · dout[b·q + i]` over the (b, i, j) that use row r.
/// `vals`, `dvals` `[n_heads, n_rows, m]`, `dout` `[b·q, m]`, `dpattern` `[b, h, q, p]`.
///
/// One task per row: its heads' table rows and their gradients stay in L1 while the examples
/// that use it pass, where walking the examples in order would fetch a table row (and its
/// gradient) from L3 for every key. Each gradient row adds its terms in batch and query order,
/// as a walk in example order would: the same bits, for any thread count.
#[allow(clippy::too_many_arguments)]
pub fn share_backward(
    g: &Geometry,
    keys: &KeyRows,
    pattern: &[f32],
    vals: &[f32],
    dout: &[f32],
    m: usize,
    dvals: &mut [f32],
    dpattern: &mut [f32],
) {
    let (h_n, p_n, nq, n_rows) = (g.n_heads, g.n_pos, g.nq(), g.n_rows);
    assert!(vals.len() >= h_n * n_rows * m && dvals.len() >= h_n * n_rows * m);
    assert!(dout.len() >= g.batch * nq * m);
    assert!(dpattern.len() >= g.batch * h_n * nq * p_n && pattern.len() >= dpattern.len());
    assert_eq!(
        keys.starts.len(),
        n_rows + 1,
        "KeyRows built for another geometry"
    );
    let (dv, dp) = (SendPtr(dvals.as_mut_ptr()), SendPtr(dpattern.as_mut_ptr()));
    (0..n_rows).into_par_iter().for_each(|r| {
        let examples = &keys.batch[keys.starts[r] as usize..keys.starts[r + 1] as usize];
        let j = keys.pos[r] as usize;
        vectorized(
            #[inline(always)]
            || {
                for &b in examples {
                    let b = b as usize;
                    for (i, _) in g.q_pos.iter().enumerate().filter(|&(_, &qp)| j <= qp) {
                        let gi = &dout[(b * nq + i) * m..][..m];
                        for h in 0..h_n {
                            let at = ((b * h_n + h) * nq + i) * p_n + j;
                            let row = (h * n_rows + r) * m;
                            // SAFETY: in bounds (asserted above); row r's gradient rows and the
                            // d pattern entries of its (b, i, j) belong to this task alone.
                            unsafe {
                                *{ &dp }.0.add(at) = dot(gi, &vals[row..][..m]);
                                let d = std::slice::from_raw_parts_mut({ &dv }.0.add(row), m);
                                axpy(d, pattern[at], gi);
                            }
                        }
                    }
                }
            },
        )
    });
}
