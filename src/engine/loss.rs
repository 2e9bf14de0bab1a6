//! Cross-entropy that keeps tiny losses exact in f32 logits.
//!
//! The grokking regime lives at losses of 1e-7…1e-9. `logsumexp(l) − l_c` in f32 rounds those to 0 or
//! to multiples of 6e-8, and so does the gradient `p_c − 1`. Here, per row, in f64: when the correct
//! class is the maximum, loss = log1p(Σ_{j≠c} exp(l_j − l_c)) and its gradient −Σ_{j≠c} p_j, both
//! exact for tiny values; otherwise the usual `m − l_c + log Σ exp(l_j − m)`.

use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowLoss {
    pub loss: f64,
    pub correct: bool,
}

const ROWS_PER_TASK: usize = 64;

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
    let one_row = |l: &[f32], c: usize, g: Option<&mut [f32]>, scale: f64| -> RowLoss {
        let (mut m, mut arg) = (f32::NEG_INFINITY, 0);
        for (j, &x) in l.iter().enumerate() {
            if x > m {
                m = x;
                arg = j;
            }
        }
        let lc = l[c];
        let c_is_max = lc == m;
        // Σ_{j≠c} exp(l_j − m) and the total, in f64.
        let mut rest = 0.0f64;
        for (j, &x) in l.iter().enumerate() {
            if j != c {
                rest += ((x - m) as f64).exp();
            }
        }
        let lc_term = ((lc - m) as f64).exp(); // 1 when c is the max
        let total = rest + lc_term;
        let loss = if c_is_max {
            rest.ln_1p()
        } else {
            (m as f64 - lc as f64) + total.ln()
        };
        if let Some(g) = g {
            for (j, (gj, &x)) in g.iter_mut().zip(l).enumerate() {
                if j != c {
                    *gj = (((x - m) as f64).exp() / total * scale) as f32;
                }
            }
            g[c] = (-(rest / total) * scale) as f32;
        }
        RowLoss {
            loss,
            correct: arg == c,
        }
    };
    match grad {
        Some((g, scale)) => out[..rows]
            .par_chunks_mut(ROWS_PER_TASK)
            .zip(g[..rows * n_classes].par_chunks_mut(ROWS_PER_TASK * n_classes))
            .zip(logits.par_chunks(ROWS_PER_TASK * n_classes))
            .zip(targets.par_chunks(ROWS_PER_TASK))
            .for_each(|(((o, g), l), t)| {
                for (((o, g), l), &c) in o
                    .iter_mut()
                    .zip(g.chunks_exact_mut(n_classes))
                    .zip(l.chunks_exact(n_classes))
                    .zip(t)
                {
                    *o = one_row(l, c as usize, Some(g), scale);
                }
            }),
        None => out[..rows]
            .par_chunks_mut(ROWS_PER_TASK)
            .zip(logits.par_chunks(ROWS_PER_TASK * n_classes))
            .zip(targets.par_chunks(ROWS_PER_TASK))
            .for_each(|((o, l), t)| {
                for ((o, l), &c) in o.iter_mut().zip(l.chunks_exact(n_classes)).zip(t) {
                    *o = one_row(l, c as usize, None, 1.0);
                }
            }),
    }
}

/// Mean of row losses, summed in order in f64 (deterministic).
pub fn mean(rows: &[RowLoss]) -> f64 {
    rows.iter().map(|r| r.loss).sum::<f64>() / rows.len().max(1) as f64
}
