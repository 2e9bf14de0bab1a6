//! Matrix products through the `gemm` crate (runtime SIMD dispatch, rayon threads).
//!
//! `gemm` splits work over output tiles, never over the inner dimension, so a product is bit-for-bit
//! the same for any thread count.

use gemm::Parallelism;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Products smaller than this many multiply-adds run on the calling thread: waking the pool costs more
/// (measured: the per-head Q/K/V products on layer 0's few hundred distinct rows ran 2× slower on
/// two threads than on one).
const PARALLEL_MIN_FLOPS: usize = 1 << 22;

/// `c = a · b`, or `c += a · b` when `accumulate`. Any strides (transposes are free: pass `.t()`).
pub fn matmul(
    c: &mut ArrayViewMut2<f32>,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    accumulate: bool,
) {
    matmul_threads(c, a, b, accumulate, rayon::current_num_threads());
}

/// [`matmul`] on at most `threads` threads.
pub fn matmul_threads(
    c: &mut ArrayViewMut2<f32>,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    accumulate: bool,
    threads: usize,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "matmul: inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "matmul: output shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let par = if threads > 1 && m * n * k >= PARALLEL_MIN_FLOPS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let (cs, ca, cb) = (c.strides().to_vec(), a.strides(), b.strides());
    // SAFETY: the views are valid for their shapes and strides, `c` is borrowed mutably so it does
    // not alias `a` or `b`, and gemm reads/writes only within those shapes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            cs[1],
            cs[0],
            accumulate,
            a.as_ptr(),
            ca[1],
            ca[0],
            b.as_ptr(),
            cb[1],
            cb[0],
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Row-major `[rows, cols]` view of a flat slice.
#[inline]
pub fn view(s: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), &s[..rows * cols]).expect("slice shape")
}

/// Mutable row-major `[rows, cols]` view of a flat slice.
#[inline]
pub fn view_mut(s: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), &mut s[..rows * cols]).expect("slice shape")
}

/// `y[r, :] = x[r, :] · w + b` for row-major `x [rows, n_in]`, `w [n_in, n_out]`.
pub fn linear(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    n_in: usize,
    n_out: usize,
) {
    let y = &mut y[..rows * n_out];
    match b {
        Some(b) => {
            for row in y.chunks_exact_mut(n_out) {
                row.copy_from_slice(b);
            }
        }
        None => y.fill(0.0),
    }
    matmul(
        &mut view_mut(y, rows, n_out),
        &view(x, rows, n_in),
        &view(w, n_in, n_out),
        true,
    );
}

/// Backward of [`linear`]: `dw += xᵀ·dy`, `db += Σ_rows dy`, and `dx (+)= dy·wᵀ` when asked.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<(&mut [f32], bool)>,
    rows: usize,
    n_in: usize,
    n_out: usize,
) {
    let dyv = view(dy, rows, n_out);
    let weight_grad = |dw: &mut [f32], db: Option<&mut [f32]>, threads: usize| {
        matmul_threads(
            &mut view_mut(dw, n_in, n_out),
            &view(x, rows, n_in).t(),
            &dyv,
            true,
            threads,
        );
        if let Some(db) = db {
            crate::engine::simd::column_sums_add(db, dy, rows, n_out);
        }
    };
    let input_grad = |dx: &mut [f32], accumulate: bool, threads: usize| {
        matmul_threads(
            &mut view_mut(dx, rows, n_in),
            &dyv,
            &view(w, n_in, n_out).t(),
            accumulate,
            threads,
        );
    };
    let threads = rayon::current_num_threads();
    match dx {
        // Two independent products of equal size: one per thread beats splitting each across both
        // (no synchronisation inside gemm). Each is still computed by one thread: deterministic.
        Some((dx, acc)) if threads >= 2 && rows * n_in * n_out >= PARALLEL_MIN_FLOPS => {
            let half = threads / 2;
            rayon::join(
                || weight_grad(dw, db, half),
                || input_grad(dx, acc, threads - half),
            );
        }
        Some((dx, acc)) => {
            weight_grad(dw, db, threads);
            input_grad(dx, acc, threads);
        }
        None => weight_grad(dw, db, threads),
    }
}
