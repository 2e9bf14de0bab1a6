//! Cross-entropy that keeps tiny losses exact in f32 logits.
//!
//! The grokking regime lives at losses of 1e-7…1e-9. `logsumexp(l) − l_c` in f32 rounds those to 0 or
//! to multiples of 6e-8, and so does the gradient `p_c − 1`. Here, per row, in f64: when the correct
//! class is the maximum, loss = log1p(Σ_{j≠c} exp(l_j − l_c)) and its gradient −Σ_{j≠c} p_j, both
//! exact for tiny values; otherwise the usual `m − l_c + log Σ exp(l_j − m)`. The exponentials are
//! f32 (vectorised, relative error ~1e-7, which the loss inherits), their sums f64.

use super::simd::{exp_f32, vectorized};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowLoss {
    pub loss: f64,
    pub correct: bool,
}

/// Rows per task: a ToyMLP minibatch of 64 is two tasks (measured: 0.40–0.44 against 0.47–0.50
/// ms per W2 step with 64). Each row's loss is the same bits for any split.
const ROWS_PER_TASK: usize = 32;

/// Loss of one row; `e` receives exp(l_j − max) (the gradient buffer, or scratch).
#[inline(always)]
fn one_row(l: &[f32], c: usize, e: &mut [f32]) -> (RowLoss, f64, f64) {
    // Max in 16 lanes (vectorises), then its first index (torch's argmax).
    let mut lanes = [f32::NEG_INFINITY; 16];
    let head = l.len() / 16 * 16;
    for ch in l[..head].chunks_exact(16) {
        for i in 0..16 {
            lanes[i] = lanes[i].max(ch[i]);
        }
    }
    let m = lanes
        .iter()
        .chain(&l[head..])
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let arg = l.iter().position(|&x| x == m).unwrap_or(0);
    for (e, &x) in e.iter_mut().zip(l) {
        *e = exp_f32(x - m);
    }
    // Σ_{j≠c} e_j in f64, in 8 lanes with a fixed order (deterministic).
    let ec = std::mem::replace(&mut e[c], 0.0);
    let mut acc = [0.0f64; 8];
    let head8 = e.len() / 8 * 8;
    for ch in e[..head8].chunks_exact(8) {
        for i in 0..8 {
            acc[i] += ch[i] as f64;
        }
    }
    let mut rest =
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for &v in &e[head8..] {
        rest += v as f64;
    }
    e[c] = ec;
    let lc = l[c];
    let loss = if lc == m {
        libm::log1p(rest)
    } else {
        (m as f64 - lc as f64) + libm::log(rest + e[c] as f64)
    };
    let total = rest + e[c] as f64;
    (
        RowLoss {
            loss,
            correct: arg == c,
        },
        rest,
        total,
    )
}

/// Loss per row of `logits [rows, n_classes]` against `targets [rows]`. When `grad` is given, it gets
/// `scale · d loss_row / d logits` (scale is usually 1/number of rows, for a mean).
pub fn cross_entropy(
    logits: &[f32],
    n_classes: usize,
    targets: &[u32],
    out: &mut [RowLoss],
    grad: Option<(&mut [f32], f64)>,
) {
    let rows = targets.len();
    let logits = &logits[..rows * n_classes];
    match grad {
        Some((g, scale)) => out[..rows]
            .par_chunks_mut(ROWS_PER_TASK)
            .zip(g[..rows * n_classes].par_chunks_mut(ROWS_PER_TASK * n_classes))
            .zip(logits.par_chunks(ROWS_PER_TASK * n_classes))
            .zip(targets.par_chunks(ROWS_PER_TASK))
            .for_each(|(((o, g), l), t)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (((o, g), l), &c) in o
                            .iter_mut()
                            .zip(g.chunks_exact_mut(n_classes))
                            .zip(l.chunks_exact(n_classes))
                            .zip(t)
                        {
                            let c = c as usize;
                            let (r, rest, total) = one_row(l, c, g);
                            *o = r;
                            // softmax·scale, and for the correct class −Σ_{j≠c} p_j·scale (not p_c − 1,
                            // which rounds tiny values away).
                            let f = (scale / total) as f32;
                            for v in g.iter_mut() {
                                *v *= f;
                            }
                            g[c] = (-(rest / total) * scale) as f32;
                        }
                    },
                )
            }),
        None => out[..rows]
            .par_chunks_mut(ROWS_PER_TASK)
            .zip(logits.par_chunks(ROWS_PER_TASK * n_classes))
            .zip(targets.par_chunks(ROWS_PER_TASK))
            .for_each(|((o, l), t)| {
                let mut e = vec![0.0f32; n_classes];
                vectorized(
                    #[inline(always)]
                    || {
                        for ((o, l), &c) in o.iter_mut().zip(l.chunks_exact(n_classes)).zip(t) {
                            *o = one_row(l, c as usize, &mut e).0;
                        }
                    },
                )
            }),
    }
}

/// Mean of row losses, summed in order in f64 (deterministic).
pub fn mean(rows: &[RowLoss]) -> f64 {
    rows.iter().map(|r| r.loss).sum::<f64>() / rows.len().max(1) as f64
}
