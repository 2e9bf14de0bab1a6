//! The Q/K/V projections of every head as one matrix product, forward and backward.
//!
//! The weights are TransformerLens's `[h, d, d_head]` per projection and the activations stay
//! head-major (`[h, r, d_head]`, what the attention kernels read); a product per head was
//! `[r, d] · [d, d_head]`, too narrow for the matrix kernels (W4's step: 12 products of
//! 2048 × 64 × 16 per layer). Here the projections that share an input are packed side by side
//! into `[d, n·h·d_head]`, multiplied once, and the result unpacked. Each output is still its bias
//! plus one multiply-add chain over d (the same bits as a product per head, which adds its chain
//! to rows holding the bias); the input's gradient is one chain over n·h·d_head instead of a sum
//! of per-head chains. Only where heads are narrow ([`packs`]).
//!
//! Shapes: r rows, d the input's width, h heads, e = d_head, c = n·h·e packed columns, where
//! column `(i·h + hh)·e + j` is projection i's head hh, dimension j.

use super::backward::two_mut;
use super::buf;
use crate::engine::matmul::{linear, linear_backward, matmul, view, view_mut};
use std::ops::Range;

/// Packed operands, reused across calls.
#[derive(Default, Debug)]
pub(super) struct Packed {
    /// `[d, c]` weights.
    w: Vec<f32>,
    /// `[r, c]`: the outputs (forward) or their gradients (backward).
    y: Vec<f32>,
    /// `[d, c]` and `[c]`: the gradients being accumulated.
    dw: Vec<f32>,
    db: Vec<f32>,
}

/// Head-major `[h, d, e]` blocks (one per projection) into `out [d, c]`.
fn pack_weights(blocks: &[&[f32]], out: &mut [f32], (d, h, e): (usize, usize, usize)) {
    let c = blocks.len() * h * e;
    for (i, w) in blocks.iter().enumerate() {
        for hh in 0..h {
            let col = (i * h + hh) * e;
            for k in 0..d {
                out[k * c + col..][..e].copy_from_slice(&w[(hh * d + k) * e..][..e]);
            }
        }
    }
}

/// Projection i's columns of packed `[d, c]` weights back into its `[h, d, e]` block `w`.
fn unpack_weights(
    packed: &[f32],
    i: usize,
    c: usize,
    w: &mut [f32],
    (d, h, e): (usize, usize, usize),
) {
    for hh in 0..h {
        let col = (i * h + hh) * e;
        for k in 0..d {
            w[(hh * d + k) * e..][..e].copy_from_slice(&packed[k * c + col..][..e]);
        }
    }
}

/// `dst = src`, or `dst = src + bias`, for one head's row: at d_head 16 a single vector (a call to
/// `memcpy` per 64 bytes took a tenth of W4's step).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32], bias: Option<&[f32]>) {
    const E: usize = 16;
    if dst.len() == E {
        // Fixed lengths: the compiler keeps these in registers.
        let (d, s): (&mut [f32; E], &[f32; E]) = (dst.try_into().unwrap(), src.try_into().unwrap());
        match bias {
            Some(b) => {
                let b: &[f32; E] = b.try_into().expect("a bias per column");
                for j in 0..E {
                    d[j] = s[j] + b[j];
                }
            }
            None => *d = *s,
        }
        return;
    }
    match bias {
        Some(b) => {
            for ((d, &s), &b) in dst.iter_mut().zip(src).zip(b) {
                *d = s + b;
            }
        }
        None => dst.copy_from_slice(src),
    }
}

/// Head-major `[h, r, e]` activations (one per projection) into packed rows `[r, c]`.
fn pack_rows(heads: &[&[f32]], rows: &mut [f32], (r, h, e): (usize, usize, usize)) {
    let c = heads.len() * h * e;
    for (i, a) in heads.iter().enumerate() {
        for hh in 0..h {
            let col = (i * h + hh) * e;
            let src = a[hh * r * e..(hh + 1) * r * e].chunks_exact(e);
            for (packed, x) in rows[..r * c].chunks_exact_mut(c).zip(src) {
                copy_row(&mut packed[col..col + e], x, None);
            }
        }
    }
}

/// The inverse of [`pack_rows`], adding each projection's bias (`[h, e]`).
fn unpack_rows(
    rows: &[f32],
    heads: &mut [&mut [f32]],
    biases: &[&[f32]],
    (r, h, e): (usize, usize, usize),
) {
    let c = heads.len() * h * e;
    for (i, a) in heads.iter_mut().enumerate() {
        for hh in 0..h {
            let col = (i * h + hh) * e;
            let bias = &biases[i][hh * e..(hh + 1) * e];
            let dst = a[hh * r * e..(hh + 1) * r * e].chunks_exact_mut(e);
            for (packed, x) in rows[..r * c].chunks_exact(c).zip(dst) {
                copy_row(x, &packed[col..col + e], Some(bias));
            }
        }
    }
}

/// `outs[i] = x [r, d] · W_i + b_i` per head (`W_i [h, d, e]`, `b_i [h, e]`, `outs[i]` head-major
/// `[h, r, e]`), all projections in one product.
pub(super) fn project(
    pk: &mut Packed,
    x: &[f32],
    params: &[(&[f32], &[f32])],
    outs: &mut [&mut [f32]],
    (r, d, h, e): (usize, usize, usize, usize),
) {
    if !packs(e) {
        for ((w, b), out) in params.iter().zip(outs.iter_mut()) {
            for hh in 0..h {
                let (w, b) = (&w[hh * d * e..(hh + 1) * d * e], &b[hh * e..(hh + 1) * e]);
                linear(
                    &mut out[hh * r * e..(hh + 1) * r * e],
                    x,
                    w,
                    Some(b),
                    r,
                    d,
                    e,
                );
            }
        }
        return;
    }
    let c = params.len() * h * e;
    let ws = first_three(params.iter().map(|p| p.0));
    pack_weights(&ws[..params.len()], buf(&mut pk.w, d * c), (d, h, e));
    // The product from zero, each bias added as the rows are unpacked: bias + chain, as a product
    // into rows holding the bias gives.
    let y = buf(&mut pk.y, r * c);
    matmul(
        &mut view_mut(y, r, c),
        &view(x, r, d),
        &view(&pk.w, d, c),
        false,
    );
    let biases = first_three(params.iter().map(|p| p.1));
    unpack_rows(&pk.y, outs, &biases[..params.len()], (r, h, e));
}

/// Whether projections of `d_head` e are packed into one product: where a head's product is
/// narrow. From 64 columns on, a product per head runs near the kernels' peak and packing would
/// only add its copies (digits5, d_head 128: 9% slower a step).
fn packs(e: usize) -> bool {
    e < 64
}

/// The (at most three: Q, K, V) slices of `it` in a fixed array: no allocation in a step.
fn first_three<'a>(it: impl Iterator<Item = &'a [f32]>) -> [&'a [f32]; 3] {
    let mut out: [&[f32]; 3] = [&[]; 3];
    for (o, x) in out.iter_mut().zip(it) {
        *o = x;
    }
    out
}

/// Where one projection's weights and bias sit among the parameters (and their gradients).
pub(super) struct ProjectionIds {
    pub w: Range<usize>,
    pub b: Range<usize>,
}

/// Backward of [`project`] for projections `ids` with output gradients `dys` (head-major
/// `[h, r, e]` each): their weight gradients and (with `bias`) bias gradients in `grads` are added
/// to, and `dx [r, d]` is set (or added to, with `accumulate`) to Σ_i dy_i·W_iᵀ.
#[allow(clippy::too_many_arguments)]
pub(super) fn project_backward(
    pk: &mut Packed,
    x: &[f32],
    params: &[f32],
    grads: &mut [f32],
    ids: &[ProjectionIds],
    dys: &[&[f32]],
    bias: bool,
    (dx, accumulate): (&mut [f32], bool),
    (r, d, h, e): (usize, usize, usize, usize),
) {
    if !packs(e) {
        let mut accumulate = accumulate;
        for (id, dy) in ids.iter().zip(dys) {
            let (gw, gb) = two_mut(grads, id.w.clone(), id.b.clone());
            let w = &params[id.w.clone()];
            for hh in 0..h {
                linear_backward(
                    &dy[hh * r * e..(hh + 1) * r * e],
                    x,
                    &w[hh * d * e..(hh + 1) * d * e],
                    &mut gw[hh * d * e..(hh + 1) * d * e],
                    bias.then_some(&mut gb[hh * e..(hh + 1) * e]),
                    Some((&mut *dx, accumulate)),
                    r,
                    d,
                    e,
                );
                accumulate = true;
            }
        }
        return;
    }
    let c = ids.len() * h * e;
    let ws = first_three(ids.iter().map(|p| &params[p.w.clone()]));
    pack_weights(&ws[..ids.len()], buf(&mut pk.w, d * c), (d, h, e));
    let gws = first_three(ids.iter().map(|p| &grads[p.w.clone()]));
    pack_weights(&gws[..ids.len()], buf(&mut pk.dw, d * c), (d, h, e));
    let db = buf(&mut pk.db, c);
    for (i, p) in ids.iter().enumerate() {
        db[i * h * e..][..h * e].copy_from_slice(&grads[p.b.clone()]);
    }
    pack_rows(dys, buf(&mut pk.y, r * c), (r, h, e));
    linear_backward(
        &pk.y,
        x,
        &pk.w,
        &mut pk.dw,
        bias.then_some(&mut pk.db[..]),
        Some((dx, accumulate)),
        r,
        d,
        c,
    );
    // Back into the parameters' layout.
    for (i, p) in ids.iter().enumerate() {
        unpack_weights(&pk.dw, i, c, &mut grads[p.w.clone()], (d, h, e));
        if bias {
            grads[p.b.clone()].copy_from_slice(&pk.db[i * h * e..][..h * e]);
        }
    }
}
