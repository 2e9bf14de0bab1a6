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

    /// Whether a query's products with the keys (rows of `width`) are taken with the keys in
    /// lanes, from a transposed tile ([`dot_keys`]), rather than one dot product per key: where
    /// rows are narrow and keys many (W4, d_head 16 and 32 keys: a dot product of 16 is one
    /// multiply and a horizontal sum). With 3 keys (Nanda's) or rows of 128 (digits5) the tile
    /// costs more than it saves. Either way the same bits at every vector width, but not the
    /// same bits as each other: the choice depends on the shapes alone.
    pub(crate) fn keys_in_lanes(&self, width: usize) -> bool {
        width <= 2 * KEY_LANES && self.n_pos >= KEY_LANES / 2
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

/// Keys taken at a time by the key-parallel kernels: one lane per key, the sum over the head's
/// dimensions in order within each lane, so the bits do not depend on the vector width (a dot
/// product per key would sum 16-wide rows across lanes, with a horizontal sum per key).
const KEY_LANES: usize = 16;

/// The row length of a transposed tile over `n_pos` keys: whole groups of [`KEY_LANES`].
fn tile_stride(n_pos: usize) -> usize {
    n_pos.next_multiple_of(KEY_LANES)
}

/// `tile[e · stride + j] = rows[row(b, j), e]` for the keys j of batch `b` (`rows` one head's
/// `[n_rows, width]`): that batch's keys (or values) transposed, so that a query's products with
/// all of them run across lanes. The columns after `n_pos` are left as they are.
#[inline(always)]
fn gather_transposed(g: &Geometry, b: usize, rows: &[f32], width: usize, tile: &mut [f32]) {
    let stride = tile_stride(g.n_pos);
    for j in 0..g.n_pos {
        let r = g.row(b, j);
        for (e, &x) in rows[r * width..(r + 1) * width].iter().enumerate() {
            tile[e * stride + j] = x;
        }
    }
}

/// `out[j] = Σ_e x[e] · tile[e · stride + j]` for every `j < out.len()` (whole lane groups), the
/// sum in order of e.
#[inline(always)]
fn dot_keys(x: &[f32], tile: &[f32], stride: usize, out: &mut [f32]) {
    for (c, o) in out.chunks_exact_mut(KEY_LANES).enumerate() {
        let mut acc = [0.0f32; KEY_LANES];
        for (e, &a) in x.iter().enumerate() {
            let t: &[f32; KEY_LANES] = tile[e * stride + c * KEY_LANES..][..KEY_LANES]
                .try_into()
                .expect("tile rows are whole lane groups");
            for l in 0..KEY_LANES {
                acc[l] += a * t[l];
            }
        }
        o.copy_from_slice(&acc);
    }
}

/// The first `n` keys rounded up to whole lane groups: the kernels work on padded rows so that
/// every loop runs whole vectors (a remainder loop of up to 15 exponentials, one at a time, cost
/// more than the vectors).
#[inline(always)]
fn padded(n: usize) -> usize {
    n.next_multiple_of(KEY_LANES)
}

/// `out += Σ_t w_t · x_t` over `terms` in order: each lane's sum kept in a register from zero,
/// [`KEY_LANES`] lanes at a time, then added to `out` (one store per output instead of one per term).
#[inline(always)]
fn add_weighted_rows<'a>(out: &mut [f32], terms: impl Iterator<Item = (f32, &'a [f32])> + Clone) {
    let n = out.len();
    let mut c0 = 0;
    while c0 + KEY_LANES <= n {
        let mut acc = [0.0f32; KEY_LANES];
        for (w, x) in terms.clone() {
            let x: &[f32; KEY_LANES] = x[c0..c0 + KEY_LANES].try_into().expect("a whole group");
            for l in 0..KEY_LANES {
                acc[l] += w * x[l];
            }
        }
        for (o, a) in out[c0..c0 + KEY_LANES].iter_mut().zip(acc) {
            *o += a;
        }
        c0 += KEY_LANES;
    }
    if c0 < n {
        let mut acc = [0.0f32; KEY_LANES];
        for (w, x) in terms {
            for (a, &x) in acc.iter_mut().zip(&x[c0..n]) {
                *a += w * x;
            }
        }
        for (o, a) in out[c0..].iter_mut().zip(acc) {
            *o += a;
        }
    }
}

/// `scores[b, h, i, j] = q[b, q_pos[i]] · k[b, j] / attn_scale`, or `IGNORE` for keys after the query.
pub fn scores(g: &Geometry, q: &[f32], k: &[f32], scores: &mut [f32]) {
    scores_rows(g, q, k, scores, false);
}

/// [`scores`], each row then turned into its softmax where `softmax`.
fn scores_rows(g: &Geometry, q: &[f32], k: &[f32], scores: &mut [f32], softmax: bool) {
    let (h_n, dh, p_n, nq) = (g.n_heads, g.d_head, g.n_pos, g.nq());
    let per_b = h_n * nq * p_n;
    let stride = tile_stride(p_n);
    scores[..g.batch * per_b]
        .par_chunks_mut(per_b)
        .enumerate()
        .for_each(|(b, sb)| {
            let tile_len = if g.keys_in_lanes(dh) { dh * stride } else { 0 };
            with_scratch(tile_len + stride, |scratch| {
                let (tile, row) = scratch.split_at_mut(tile_len);
                vectorized(
                    #[inline(always)]
                    || {
                        for h in 0..h_n {
                            let qh = &q[h * g.n_rows * dh..(h + 1) * g.n_rows * dh];
                            let kh = &k[h * g.n_rows * dh..(h + 1) * g.n_rows * dh];
                            let lanes = g.keys_in_lanes(dh);
                            if lanes {
                                gather_transposed(g, b, kh, dh, tile);
                            }
                            for (i, &qp) in g.q_pos.iter().enumerate() {
                                let qr = g.row(b, qp);
                                let out = &mut sb[(h * nq + i) * p_n..(h * nq + i + 1) * p_n];
                                let row = &mut row[..padded(qp + 1)];
                                let qv = &qh[qr * dh..(qr + 1) * dh];
                                if lanes {
                                    dot_keys(qv, tile, stride, row);
                                } else {
                                    for (j, o) in row[..=qp].iter_mut().enumerate() {
                                        let kr = g.row(b, j);
                                        *o = dot(qv, &kh[kr * dh..(kr + 1) * dh]);
                                    }
                                }
                                for o in row.iter_mut() {
                                    *o /= g.attn_scale;
                                }
                                row[qp + 1..].fill(IGNORE);
                                if softmax {
                                    softmax_padded(row);
                                    out[qp + 1..].fill(0.0);
                                } else {
                                    out[qp + 1..].fill(IGNORE);
                                }
                                out[..=qp].copy_from_slice(&row[..=qp]);
                            }
                        }
                    },
                )
            })
        });
}

/// Softmax in place over a padded row (whole lane groups, the causal mask's keys at `IGNORE`,
/// exp = 0): each lane's maximum and sum over the groups, then the 16 lanes in a fixed tree (the
/// same bits at any vector width). A row with no finite score gives zeros (TransformerLens turns
/// the NaN it gets there into 0).
#[inline(always)]
fn softmax_padded(x: &mut [f32]) {
    let mut m16 = [f32::NEG_INFINITY; KEY_LANES];
    for c in x.chunks_exact(KEY_LANES) {
        for l in 0..KEY_LANES {
            m16[l] = m16[l].max(c[l]);
        }
    }
    // The maximum does not depend on the order it is taken in.
    let m = m16.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mut acc = [0.0f32; KEY_LANES];
    for c in x.chunks_exact_mut(KEY_LANES) {
        for l in 0..KEY_LANES {
            c[l] = exp_f32(c[l] - m);
            acc[l] += c[l];
        }
    }
    let a8: [f32; 8] = std::array::from_fn(|i| acc[i] + acc[i + 8]);
    let a4: [f32; 4] = std::array::from_fn(|i| a8[i] + a8[i + 4]);
    let a2 = [a4[0] + a4[2], a4[1] + a4[3]];
    let sum = a2[0] + a2[1];
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Row-wise softmax over keys (see [`softmax_padded`]); the causal mask's trailing keys
/// (`IGNORE`) are found from each row's end.
pub fn softmax(scores: &[f32], pattern: &mut [f32], n_keys: usize) {
    pattern
        .par_chunks_mut(n_keys * 64)
        .zip(scores.par_chunks(n_keys * 64))
        .for_each(|(p, s)| {
            with_scratch(padded(n_keys), |row| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (p, s) in p.chunks_exact_mut(n_keys).zip(s.chunks_exact(n_keys)) {
                            let live =
                                s.len() - s.iter().rev().take_while(|&&x| x == IGNORE).count();
                            let row = &mut row[..padded(live)];
                            row[..live].copy_from_slice(&s[..live]);
                            row[live..].fill(IGNORE);
                            softmax_padded(row);
                            p[..live].copy_from_slice(&row[..live]);
                            p[live..].fill(0.0);
                        }
                    },
                )
            })
        });
}

/// [`scores`] then [`softmax`] in one pass, for a forward that keeps no scores: the same bits in
/// `pattern`.
pub fn scores_softmax(g: &Geometry, q: &[f32], k: &[f32], pattern: &mut [f32]) {
    scores_rows(g, q, k, pattern, true);
}

/// `z[b, i, h, :] = Σ_j pattern[b, h, i, j] · v[b, j, h, :]`.
pub fn mix(g: &Geometry, pattern: &[f32], v: &[f32], z: &mut [f32]) {
    mix_rows(g, pattern, v, z, false);
}

/// [`mix`] of a pattern that no hook has written: every weight after its query is 0 (as the
/// softmax leaves them), so each row is read only up to the query.
pub fn mix_causal(g: &Geometry, pattern: &[f32], v: &[f32], z: &mut [f32]) {
    mix_rows(g, pattern, v, z, true);
}

/// `causal`: rows read up to the query; else up to their last non-zero weight.
fn mix_rows(g: &Geometry, pattern: &[f32], v: &[f32], z: &mut [f32], causal: bool) {
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
                            // Up to the row's last non-zero weight: the query's position where the
                            // causal mask holds, the whole row where a hook wrote past it.
                            let row = &pattern[((b * h_n + h) * nq + i) * p_n..][..p_n];
                            let live = if causal {
                                g.q_pos[i] + 1
                            } else {
                                p_n - row.iter().rev().take_while(|&&w| w == 0.0).count()
                            };
                            let pat = &row[..live];
                            let out = &mut zb[(i * h_n + h) * dh..][..dh];
                            let terms = pat.iter().enumerate().map(|(j, &w)| {
                                let vr = g.row(b, j);
                                (w, &vh[vr * dh..(vr + 1) * dh])
                            });
                            add_weighted_rows(out, terms);
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
/// are identical for any thread count. Each head by [`head_in_lanes`] or [`head_by_key`], as
/// [`Geometry::keys_in_lanes`] says.
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
    let shared = Shared {
        g,
        width,
        pattern,
        out_at: &out_at,
        dout,
        fold_dpattern,
    };
    let lanes = g.keys_in_lanes(width);
    (0..h_n).into_par_iter().for_each(|h| {
        // SAFETY: head h touches only its own block of each gradient buffer (bounds asserted above).
        let (dq, dk, dvals) = unsafe {
            (
                std::slice::from_raw_parts_mut({ dqp }.0.add(h * blk), blk),
                std::slice::from_raw_parts_mut({ dkp }.0.add(h * blk), blk),
                std::slice::from_raw_parts_mut({ dvp }.0.add(h * vblk), vblk),
            )
        };
        let head = Head {
            h,
            q: &q[h * blk..(h + 1) * blk],
            k: &k[h * blk..(h + 1) * blk],
            vals: &vals[h * vblk..(h + 1) * vblk],
            dq,
            dk,
            dvals,
        };
        if lanes {
            head_in_lanes(&shared, head);
        } else {
            head_by_key(&shared, head);
        }
    });
}

/// What every head of [`backward_impl`] reads.
struct Shared<'a, F> {
    g: &'a Geometry<'a>,
    width: usize,
    pattern: &'a [f32],
    out_at: &'a F,
    dout: &'a [f32],
    fold_dpattern: Option<&'a [f32]>,
}

/// One head's blocks of q, k and the values, and of their gradients.
struct Head<'a> {
    h: usize,
    q: &'a [f32],
    k: &'a [f32],
    vals: &'a [f32],
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dvals: &'a mut [f32],
}

/// One head's backward with the keys in lanes: d pattern from the values' tile, then each row of
/// d values, keys and queries summed in a register and added once per example.
fn head_in_lanes<F: Fn(usize, usize, usize) -> usize>(sh: &Shared<F>, head: Head) {
    let Shared {
        g,
        width,
        pattern,
        out_at,
        dout,
        fold_dpattern,
    } = *sh;
    let (h_n, dh, p_n, nq) = (g.n_heads, g.d_head, g.n_pos, g.nq());
    let Head {
        h,
        q: qh,
        k: kh,
        vals: vh,
        dq: dqh,
        dk: dkh,
        dvals: dvh,
    } = head;
    let stride = tile_stride(p_n);
    // Scratch: the values' tile, d scores `[q, stride]` (padded rows), one padded pattern row.
    with_scratch(width * stride + nq * stride + stride, |scratch| {
        let (tile, rest) = scratch.split_at_mut(width * stride);
        let (ds, pp) = rest.split_at_mut(nq * stride);
        vectorized(
            #[inline(always)]
            || {
                for b in 0..g.batch {
                    let pat = |i: usize| &pattern[((b * h_n + h) * nq + i) * p_n..][..p_n];
                    let di = |i: usize| &dout[out_at(b, i, h)..][..width];
                    // d scores, query by query: d pattern, then back through the softmax
                    // (padded rows: the pattern is 0 after the query).
                    gather_transposed(g, b, vh, width, tile);
                    for (i, &qp) in g.q_pos.iter().enumerate() {
                        let n = padded(qp + 1);
                        let dsi = &mut ds[i * stride..][..n];
                        dot_keys(di(i), tile, stride, dsi);
                        if let Some(f) = fold_dpattern {
                            let df = &f[((b * h_n + h) * nq + i) * p_n..][..=qp];
                            for (d, &x) in dsi.iter_mut().zip(df) {
                                *d += x;
                            }
                        }
                        let p = &mut pp[..n];
                        let live = n.min(p_n);
                        p[..live].copy_from_slice(&pat(i)[..live]);
                        p[live..].fill(0.0);
                        let s = dot(p, dsi);
                        for (d, &pj) in dsi.iter_mut().zip(p.iter()) {
                            *d = pj * (*d - s) / g.attn_scale;
                        }
                    }
                    // Each output row once per example: d values and d keys key by key (over
                    // the queries at or after it), d queries query by query.
                    for j in 0..p_n {
                        let from = g.q_pos.partition_point(|&qp| qp < j);
                        let r = g.row(b, j);
                        let terms = (from..nq).map(|i| (pat(i)[j], di(i)));
                        add_weighted_rows(&mut dvh[r * width..(r + 1) * width], terms);
                        let terms = (from..nq).map(|i| {
                            let qr = g.row(b, g.q_pos[i]);
                            (ds[i * stride + j], &qh[qr * dh..(qr + 1) * dh])
                        });
                        add_weighted_rows(&mut dkh[r * dh..(r + 1) * dh], terms);
                    }
                    for (i, &qp) in g.q_pos.iter().enumerate() {
                        let qr = g.row(b, qp);
                        let terms = ds[i * stride..][..=qp].iter().enumerate().map(|(j, &w)| {
                            let kr = g.row(b, j);
                            (w, &kh[kr * dh..(kr + 1) * dh])
                        });
                        add_weighted_rows(&mut dqh[qr * dh..(qr + 1) * dh], terms);
                    }
                }
            },
        )
    });
}

/// One head's backward with one dot product per key, d values, keys and queries added term by
/// term into their rows.
fn head_by_key<F: Fn(usize, usize, usize) -> usize>(sh: &Shared<F>, head: Head) {
    let Shared {
        g,
        width,
        pattern,
        out_at,
        dout,
        fold_dpattern,
    } = *sh;
    let (h_n, dh, p_n, nq) = (g.n_heads, g.d_head, g.n_pos, g.nq());
    let Head {
        h,
        q: qh,
        k: kh,
        vals: vh,
        dq: dqh,
        dk: dkh,
        dvals: dvh,
    } = head;
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
}
