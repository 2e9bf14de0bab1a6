//! TransformerLens `LN`: `xc = x − mean(x)`, `scale = sqrt(mean(xc²) + eps)`, `y = xc/scale · w + b`.
//! The forward is split in two so a hook on `hook_scale` sits exactly where TransformerLens has it.

use super::simd::{vectorized, with_scratch, ROW_CHUNK, SUM_BLOCK_ROWS};
use rayon::prelude::*;

/// First half: `xc = x − mean(x)` per row, `scale = sqrt(mean(xc²) + eps)`.
pub fn center_and_scale(x: &[f32], xc: &mut [f32], scale: &mut [f32], d: usize, eps: f32) {
    let rows = scale.len();
    xc[..rows * d]
        .par_chunks_mut(ROW_CHUNK * d)
        .zip(x[..rows * d].par_chunks(ROW_CHUNK * d))
        .zip(scale.par_chunks_mut(ROW_CHUNK))
        .for_each(|((xc, x), scale)| {
            vectorized(
                #[inline(always)]
                || {
                    for ((xc, x), s) in xc
                        .chunks_exact_mut(d)
                        .zip(x.chunks_exact(d))
                        .zip(scale.iter_mut())
                    {
                        let mean = x.iter().sum::<f32>() / d as f32;
                        let mut ss = 0.0f32;
                        for (c, &v) in xc.iter_mut().zip(x) {
                            *c = v - mean;
                            ss += *c * *c;
                        }
                        *s = (ss / d as f32 + eps).sqrt();
                    }
                },
            )
        });
}

/// Second half: `xhat = xc/scale` (kept for backward) and `y = xhat·w + b`.
pub fn normalize(xc: &[f32], scale: &[f32], w: &[f32], b: &[f32], xhat: &mut [f32], y: &mut [f32]) {
    let d = w.len();
    let rows = scale.len();
    xhat[..rows * d]
        .par_chunks_mut(ROW_CHUNK * d)
        .zip(y[..rows * d].par_chunks_mut(ROW_CHUNK * d))
        .zip(xc[..rows * d].par_chunks(ROW_CHUNK * d))
        .zip(scale.par_chunks(ROW_CHUNK))
        .for_each(|(((xhat, y), xc), scale)| {
            vectorized(
                #[inline(always)]
                || {
                    for (((xh, y), xc), &s) in xhat
                        .chunks_exact_mut(d)
                        .zip(y.chunks_exact_mut(d))
                        .zip(xc.chunks_exact(d))
                        .zip(scale)
                    {
                        for i in 0..d {
                            xh[i] = xc[i] / s;
                            y[i] = xh[i] * w[i] + b[i];
                        }
                    }
                },
            )
        });
}

/// Backward. `dx` is overwritten, or added to when `accumulate`; `dw`, `db` are added to.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dy: &[f32],
    xhat: &[f32],
    scale: &[f32],
    w: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let d = w.len();
    let rows = scale.len();
    // Per-block partial sums of dw and db (scratch, reused), added in block order: the same result
    // for any thread count.
    let n_blocks = rows.div_ceil(SUM_BLOCK_ROWS);
    with_scratch(2 * n_blocks * d, |partials| {
        partials
            .par_chunks_mut(2 * d)
            .zip(dx[..rows * d].par_chunks_mut(SUM_BLOCK_ROWS * d))
            .zip(dy[..rows * d].par_chunks(SUM_BLOCK_ROWS * d))
            .zip(xhat[..rows * d].par_chunks(SUM_BLOCK_ROWS * d))
            .zip(scale.par_chunks(SUM_BLOCK_ROWS))
            .for_each(|((((part, dx), dy), xhat), scale)| {
                let (pw, pb) = part.split_at_mut(d);
                vectorized(
                    #[inline(always)]
                    || {
                        for (((dx, dy), xh), &s) in dx
                            .chunks_exact_mut(d)
                            .zip(dy.chunks_exact(d))
                            .zip(xhat.chunks_exact(d))
                            .zip(scale)
                        {
                            let (mut m1, mut m2) = (0.0f32, 0.0f32);
                            for i in 0..d {
                                let g = dy[i] * w[i];
                                m1 += g;
                                m2 += g * xh[i];
                                pw[i] += dy[i] * xh[i];
                                pb[i] += dy[i];
                            }
                            m1 /= d as f32;
                            m2 /= d as f32;
                            for i in 0..d {
                                let g = (dy[i] * w[i] - m1 - xh[i] * m2) / s;
                                if accumulate {
                                    dx[i] += g;
                                } else {
                                    dx[i] = g;
                                }
                            }
                        }
                    },
                )
            });
        for part in partials.chunks_exact(2 * d) {
            for i in 0..d {
                dw[i] += part[i];
                db[i] += part[d + i];
            }
        }
    });
}

/// `y = xhat·w + b` (used after a hook has changed `xhat`).
pub fn affine(xhat: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let d = w.len();
    y.par_chunks_mut(ROW_CHUNK * d)
        .zip(xhat.par_chunks(ROW_CHUNK * d))
        .for_each(|(y, xh)| {
            vectorized(
                #[inline(always)]
                || {
                    for (y, xh) in y.chunks_exact_mut(d).zip(xh.chunks_exact(d)) {
                        for i in 0..d {
                            y[i] = xh[i] * w[i] + b[i];
                        }
                    }
                },
            )
        });
}
