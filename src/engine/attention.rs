//! Causal multi-head attention core: scores → softmax → weighted sum of values, and its backward.
//!
//! Layouts: `q`, `k`, `v` are head-major `[n_heads, n_rows, d_head]` over *physical* rows; a row map
//! sends each (batch, position) to its physical row. In layer 0 many (batch, position) pairs share
//! one physical row (one per distinct (token, position)), which is where the deduplication pays off.
//! Scores and pattern are `[batch, n_heads, n_query, n_pos]` (TransformerLens order when all positions
//! are queried); `z` is `[batch, n_query, n_heads·d_head]`. Only the listed query positions are
//! computed: the last block needs just the positions that carry loss.

use super::simd::{exp_f32, vectorized, with_scratch, SendPtr};
use rayon::prelude::*;

/// The value masked scores hold (TransformerLens' `IGNORE` buffer).
pub const IGNORE: f32 = f32::NEG_INFINITY;

pub struct Geometry<'a> {
    pub batch: usize,
    pub n_pos: usize,
    pub n_heads: usize,
    pub d_head: usize,
    /// Query positions to compute, ascending.
    pub q_pos: &'a [usize],
    /// `[batch · n_pos]`: physical row of q/k/v for each (batch, position).
    pub row_of: &'a [u32],
    /// Number of physical rows in q/k/v.
    pub n_rows: usize,
    /// Scores are divided by this (TransformerLens `attn_scale`, sqrt(d_head)).
    pub attn_scale: f32,
}

impl<'a> Geometry<'a> {
    /// Scores scaled by sqrt(d_head), as TransformerLens' default `attn_scale`.
    pub fn new(
        batch: usize,
        n_pos: usize,
        n_heads: usize,
        d_head: usize,
        q_pos: &'a [usize],
        row_of: &'a [u32],
        n_rows: usize,
    ) -> Self {
        Geometry {
            batch,
            n_pos,
            n_heads,
            d_head,
            q_pos,
            row_of,
            n_rows,
            attn_scale: (d_head as f32).sqrt(),
        }
    }

    pub(crate) fn nq(&self) -> usize {
        self.q_pos.len()
    }
    #[inline]
    pub(crate) fn row(&self, b: usize, p: usize) -> usize {
        self.row_of[b * self.n_pos + p] as usize
    }
}

/// Dot product in 16 independent lanes summed in a fixed tree: vectorises (a plain `.sum()` is a
/// strict-order chain that LLVM must not reorder) and still gives the same bits on every run.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let head = n / 16 * 16;
    let mut acc = [0.0f32; 16];
    for (ca, cb) in a[..head].chunks_exact(16).zip(b[..head].chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += ca[i] * cb[i];
        }
    }
    // Through black_box the lanes stay one register wide; without it this loop was compiled two
    // lanes at a time. The same bits; the attention backward at W1's shapes took 1.63–1.70 ms
    // against 2.18–2.27 (medians, `examples/w1_kernels.rs`, PERFORMANCE.md).
    let acc = std::hint::black_box(acc);
    // Fixed pairwise tree (the same order every time).
    let a8: [f32; 8] = std::array::from_fn(|i| acc[i] + acc[i + 8]);
    let a4: [f32; 4] = std::array::from_fn(|i| a8[i] + a8[i + 4]);
    let a2 = [a4[0] + a4[2], a4[1] + a4[3]];
    let mut s = a2[0] + a2[1];
    for i in head..n {
        s += a[i] * b[i];
    }
    s
}

/// `y += a·x` over equal-length slices.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `scores[b, h, i, j] = q[b, q_pos[i]] · k[b, j] / attn_scale`, or `IGNORE` for keys after the query.
pub fn scores(g: &Geometry, q: &[f32], k: &[f32], scores: &mut [f32]) {
    let (h_n, dh, p_n, nq) = (g.n_heads, g.d_head, g.n_pos, g.nq());
    let per_b = h_n * nq * p_n;
    scores[..g.batch * per_b]
        .par_chunks_mut(per_b)
        .enumerate()
        .for_each(|(b, sb)| {
            vectorized(
                #[inline(always)]
                || {
                    for h in 0..h_n {
                        let qh = &q[h * g.n_rows * dh..(h + 1) * g.n_rows * dh];
                        let kh = &k[h * g.n_rows * dh..(h + 1) * g.n_rows * dh];
                        for (i, &qp) in g.q_pos.iter().enumerate() {
                            let qr = g.row(b, qp);
                            let qv = &qh[qr * dh..(qr + 1) * dh];
                            let out = &mut sb[(h * nq + i) * p_n..(h * nq + i + 1) * p_n];
                            for (j, o) in out.iter_mut().enumerate() {
                                *o = if j > qp {
                                    IGNORE
                                } else {
                                    let kr = g.row(b, j);
                                    dot(qv, &kh[kr * dh..(kr + 1) * dh]) / g.attn_scale
                                };
                            }
                        }
                    }
                },
            )
        });
}

/// Row-wise softmax over keys. A row with no finite score gives zeros (TransformerLens turns the
/// NaN it gets there into 0).
pub fn softmax(scores: &[f32], pattern: &mut [f32], n_keys: usize) {
    pattern
        .par_chunks_mut(n_keys * 64)
        .zip(scores.par_chunks(n_keys * 64))
        .for_each(|(p, s)| {
            vectorized(
                #[inline(always)]
                || {
                    for (p, s) in p.chunks_exact_mut(n_keys).zip(s.chunks_exact(n_keys)) {
                        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        if m == f32::NEG_INFINITY {
                            p.fill(0.0);
                            continue;
                        }
                        // The causal mask's trailing keys give exp = 0, which adds nothing to the
                        // sum: left out, with the same bits. The exponentials in a loop of their
                        // own (it vectorises), then the sum in key order.
                        let n = s.len() - s.iter().rev().take_while(|&&x| x == IGNORE).count();
                        let (live, masked) = p.split_at_mut(n);
                        for (p, &s) in live.iter_mut().zip(s) {
                            *p = exp_f32(s - m);
                        }
                        masked.fill(0.0);
                        let mut sum = 0.0f32;
                        for &e in live.iter() {
                            sum += e;
                        }
                        for p in live.iter_mut() {
                            *p /= sum;
                        }
                    }
                },
            )
        });
}

/// `z[b, i, h, :] = Σ_j pattern[b, h, i, j] · v[b, j, h, :]`.
pub fn mix(g: &Geometry, pattern: &[f32], v: &[f32], z: &mut [f32]) {
    let (h_n, dh, p_n, nq) = (g.n_heads, g.d_head, g.n_pos, g.nq());
    let per_b = nq * h_n * dh;
    z[..g.batch * per_b]
        .par_chunks_mut(per_b)
        .enumerate()
        .for_each(|(b, zb)| {
            vectorized(
                #[inline(always)]
                || {
                    zb.fill(0.0);
                    for h in 0..h_n {
                        let vh = &v[h * g.n_rows * dh..(h + 1) * g.n_rows * dh];
                        for i in 0..nq {
                            let pat = &pattern[((b * h_n + h) * nq + i) * p_n..][..p_n];
                            let out = &mut zb[(i * h_n + h) * dh..][..dh];
                            for (j, &w) in pat.iter().enumerate() {
                                if w != 0.0 {
                                    let vr = g.row(b, j);
                                    for (o, &x) in out.iter_mut().zip(&vh[vr * dh..(vr + 1) * dh]) {
                                        *o += w * x;
                                    }
                                }
                            }
                        }
                    }
                },
            )
        });
}

/// Attention output with the output projection folded in: `out[b, i] = bias + Σ_h Σ_j
/// pattern[b, h, i, j] · vo[h, row(b, j)]`, where `vo[h] = v[h]·W_O[h]` (`[n_heads, n_rows, d]`).
/// The same as `mix` followed by `z·W_O + b_O`, but when v has few distinct rows (layer 0: one per
/// (token, position)) projecting those first skips the big `z·W_O` product.
pub fn mix_projected(
    g: &Geometry,
    pattern: &[f32],
    vo: &[f32],
    d: usize,
    bias: &[f32],
    out: &mut [f32],
) {
    let nq = g.nq();
    let per_b = nq * d;
    out[..g.batch * per_b]
        .par_chunks_mut(per_b)
        .enumerate()
        .for_each(|(b, ob)| {
            vectorized(
                #[inline(always)]
                || {
                    for (i, o) in ob.chunks_exact_mut(d).enumerate() {
                        o.copy_from_slice(bias);
                        mix_row_into(g, pattern, vo, b, i, o);
                    }
                },
            )
        });
}

/// `o += Σ_h Σ_j pattern[b, h, i, j] · vo[h, row(b, j)]`: one output row of a projected mix
/// (`vo` `[n_heads, n_rows, o.len()]`).
#[inline(always)]
fn mix_row_into(g: &Geometry, pattern: &[f32], vo: &[f32], b: usize, i: usize, o: &mut [f32]) {
    let (h_n, p_n, nq, d) = (g.n_heads, g.n_pos, g.nq(), o.len());
    for h in 0..h_n {
        let pat = &pattern[((b * h_n + h) * nq + i) * p_n..][..p_n];
        for (j, &w) in pat.iter().enumerate() {
            if w != 0.0 {
                axpy(o, w, &vo[(h * g.n_rows + g.row(b, j)) * d..][..d]);
            }
        }
    }
}

/// [`mix_projected`] one row at a time, for a product whose input is a mix (layer 0's W_in fold):
/// each row (r = b·q + i) is started by `init(r, row)` instead of a bias, mixed in a scratch row
/// that stays in cache, and handed to `emit(r, row)`, which writes it (and what follows from it,
/// the activation) wherever the caller keeps it. Rows are emitted once each, in parallel by input.
pub fn mix_projected_each(
    g: &Geometry,
    pattern: &[f32],
    vo: &[f32],
    d: usize,
    init: impl Fn(usize, &mut [f32]) + Sync,
    emit: impl Fn(usize, &[f32]) + Sync,
) {
    let nq = g.nq();
    (0..g.batch).into_par_iter().for_each(|b| {
        with_scratch(d, |o| {
            for i in 0..nq {
                init(b * nq + i, o);
                vectorized(
                    #[inline(always)]
                    || mix_row_into(g, pattern, vo, b, i, o),
                );
                emit(b * nq + i, o);
            }
        })
    });
}

/// Backward through mix, softmax and scores. `dq`, `dk`, `dv` (physical layout) are added to.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pattern: &[f32],
    dz: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (h_n, dh, nq) = (g.n_heads, g.d_head, g.nq());
    backward_impl(
        g,
        q,
        k,
        v,
        dh,
        pattern,
        |b, i, h| ((b * nq + i) * h_n + h) * dh,
        dz,
        dq,
        dk,
        dv,
        None,
    );
}

/// Backward of [`mix_projected`] (bias excluded): adds into `dq`, `dk` and `dvo`
/// (`[n_heads, n_rows, d]`), and with `fold` into a second mix's value gradients.
#[allow(clippy::too_many_arguments)]
pub fn backward_projected(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    vo: &[f32],
    d: usize,
    pattern: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dvo: &mut [f32],
    fold_dpattern: Option<&[f32]>,
) {
    let nq = g.nq();
    backward_impl(
        g,
        q,
        k,
        vo,
        d,
        pattern,
        |b, i, _| (b * nq + i) * d,
        dout,
        dq,
        dk,
        dvo,
        fold_dpattern,
    );
}

/// The shared backward: values (`[n_heads, n_rows, width]`) were mixed by the pattern into outputs
/// whose gradient for (batch b, query i, head h) starts at `dout[out_at(b, i, h)]`. With
/// `fold_dpattern` (`[b, h, q, p]`) the pattern also mixed a second set of values (layer 0's W_in
/// fold, `fold.rs`), whose share of d pattern joins this mix's. Split by head: each head owns
/// disjoint slices of `dq/dk/dvals`, and within a head the batch is walked in order, so the sums
/// are identical for any thread count.
#[allow(clippy::too_many_arguments)]
fn backward_impl(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    vals: &[f32],
    width: usize,
    pattern: &[f32],
    out_at: impl Fn(usize, usize, usize) -> usize + Sync,
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dvals: &mut [f32],
    fold_dpattern: Option<&[f32]>,
) {
    let (h_n, dh, p_n, nq) = (g.n_heads, g.d_head, g.n_pos, g.nq());
    let (blk, vblk) = (g.n_rows * dh, g.n_rows * width);
    assert!(dq.len() >= h_n * blk && dk.len() >= h_n * blk && dvals.len() >= h_n * vblk);
    assert!(fold_dpattern.is_none_or(|f| f.len() >= g.batch * h_n * nq * p_n));
    let (dqp, dkp, dvp) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dvals.as_mut_ptr()),
    );
    (0..h_n).into_par_iter().for_each(|h| {
        // SAFETY: head h touches only its own block of each gradient buffer (bounds asserted above).
        let (dqh, dkh, dvh) = unsafe {
            (
                std::slice::from_raw_parts_mut({ dqp }.0.add(h * blk), blk),
                std::slice::from_raw_parts_mut({ dkp }.0.add(h * blk), blk),
                std::slice::from_raw_parts_mut({ dvp }.0.add(h * vblk), vblk),
            )
        };
        let qh = &q[h * blk..(h + 1) * blk];
        let kh = &k[h * blk..(h + 1) * blk];
        let vh = &vals[h * vblk..(h + 1) * vblk];
        // Scratch for one query's d pattern: on the stack for any realistic context.
        let mut stack = [0.0f32; 256];
        let mut heap = Vec::new();
        let dp: &mut [f32] = if p_n <= stack.len() {
            &mut stack[..p_n]
        } else {
            heap.resize(p_n, 0.0);
            &mut heap
        };
        vectorized(
            #[inline(always)]
            || {
                for b in 0..g.batch {
                    for (i, &qp) in g.q_pos.iter().enumerate() {
                        let pat = &pattern[((b * h_n + h) * nq + i) * p_n..][..p_n];
                        let di = &dout[out_at(b, i, h)..][..width];
                        let dfold = fold_dpattern.map(|f| &f[((b * h_n + h) * nq + i) * p_n..]);
                        // d pattern and d values
                        let mut s = 0.0f32;
                        for j in 0..=qp {
                            let r = g.row(b, j);
                            dp[j] = dot(di, &vh[r * width..(r + 1) * width]);
                            if let Some(df) = dfold {
                                dp[j] += df[j];
                            }
                            s += pat[j] * dp[j];
                            axpy(&mut dvh[r * width..(r + 1) * width], pat[j], di);
                        }
                        // softmax backward, then scores backward
                        let qr = g.row(b, qp);
                        for j in 0..=qp {
                            let ds = pat[j] * (dp[j] - s) / g.attn_scale;
                            if ds == 0.0 {
                                continue;
                            }
                            let kr = g.row(b, j);
                            axpy(
                                &mut dqh[qr * dh..(qr + 1) * dh],
                                ds,
                                &kh[kr * dh..(kr + 1) * dh],
                            );
                            axpy(
                                &mut dkh[kr * dh..(kr + 1) * dh],
                                ds,
                                &qh[qr * dh..(qr + 1) * dh],
                            );
                        }
                    }
                }
            },
        );
    });
}
