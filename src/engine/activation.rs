//! MLP nonlinearities, as TransformerLens names them: `relu`, `gelu` (exact, erf form, as torch's
//! `F.gelu`) and `gelu_new` (tanh form, GPT-2).

use super::simd::vectorized;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActFn {
    Relu,
    Gelu,
    GeluNew,
}

/// `e^x`, correctly rounded in all but the rarest cases: through f64, as glibc's `expf` computes
/// it, but from the `libm` crate, so the same on every machine whatever its C library. (`libm`'s
/// own `expf` is off by an ulp in a tenth of inputs, and that jitter broke a finite-difference
/// check of GELU's backward.)
#[inline(always)]
fn exp(x: f32) -> f32 {
    libm::exp(x as f64) as f32
}

const PAR_CHUNK: usize = 1 << 14;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `post = act(pre)`.
pub fn forward(act: ActFn, pre: &[f32], post: &mut [f32]) {
    post.par_chunks_mut(PAR_CHUNK)
        .zip(pre.par_chunks(PAR_CHUNK))
        .for_each(|(y, x)| apply(act, x, y));
}

/// `post = act(pre)` on this thread (for a row a fused loop has just computed).
pub fn apply(act: ActFn, x: &[f32], y: &mut [f32]) {
    match act {
        ActFn::Relu => vectorized(
            #[inline(always)]
            || {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x.max(0.0);
                }
            },
        ),
        ActFn::Gelu => {
            for (y, &x) in y.iter_mut().zip(x) {
                // 1 + erf(z) as erfc(-z): no cancellation for negative x, where erf(z) is near -1.
                *y = 0.5 * x * libm::erfcf(-x * INV_SQRT_2);
            }
        }
        ActFn::GeluNew => {
            // 0.5·x·(1 + tanh u) = x·σ(2u): the same function without the cancellation of
            // 1 + tanh u for negative x.
            for (y, &x) in y.iter_mut().zip(x) {
                let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                *y = x / (1.0 + exp(-2.0 * u));
            }
        }
    }
}

/// `post = relu(pre + b)` for rows of width `b.len()`: bias and activation in one pass (`pre` is left
/// without the bias).
pub fn bias_relu(pre: &[f32], b: &[f32], post: &mut [f32]) {
    let n = b.len();
    let chunk = (PAR_CHUNK / n).max(1) * n;
    post.par_chunks_mut(chunk)
        .zip(pre.par_chunks(chunk))
        .for_each(|(y, x)| {
            vectorized(
                #[inline(always)]
                || {
                    for (y, x) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                        for i in 0..n {
                            y[i] = (x[i] + b[i]).max(0.0);
                        }
                    }
                },
            )
        });
}

/// In place: `grad` holds d/d(post) on entry and d/d(pre) on return. ReLU reads its mask from `post`
/// (post > 0 exactly where pre > 0), so `pre` need not hold the bias for it.
pub fn backward(act: ActFn, pre: &[f32], post: &[f32], grad: &mut [f32]) {
    let x_for = if act == ActFn::Relu { post } else { pre };
    grad.par_chunks_mut(PAR_CHUNK)
        .zip(x_for.par_chunks(PAR_CHUNK))
        .for_each(|(g, x)| match act {
            ActFn::Relu => vectorized(
                #[inline(always)]
                || {
                    for (g, &y) in g.iter_mut().zip(x) {
                        if y <= 0.0 {
                            *g = 0.0;
                        }
                    }
                },
            ),
            ActFn::Gelu => {
                for (g, &x) in g.iter_mut().zip(x) {
                    let cdf = 0.5 * libm::erfcf(-x * INV_SQRT_2);
                    let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
                    *g *= cdf + x * pdf;
                }
            }
            ActFn::GeluNew => {
                // d/dx x·σ(2u) = σ + 2x·σ(1 − σ)·u'.
                for (g, &x) in g.iter_mut().zip(x) {
                    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
                    let s = 1.0 / (1.0 + exp(-2.0 * u));
                    *g *= s + 2.0 * x * s * (1.0 - s) * du;
                }
            }
        });
}
