//! Matrix products through `gemm`'s kernels, at the SIMD level in force (`simd::level`).
//!
//! The same bits on every CPU, at every level, on any thread count. `gemm` computes each output
//! as one FMA chain over the depth of a block and adds the block to the destination; it splits
//! work over output tiles, never over the depth, so the thread count changes nothing. Three of its
//! choices do depend on the CPU, and are taken from it here:
//! - the kernel: chosen by us from `simd::level`, not by `gemm` from the CPU (so tests can force
//!   each level);
//! - the block depth: `gemm` derives it from the L1 cache's geometry and the microkernel's height,
//!   which differ between CPUs and levels. Here the depth is split by a rule of the shape alone
//!   ([`depth_block`]): a product goes to `gemm` in one call where its own split is that rule's
//!   (on every CPU seen so far), else one call per block (one block each);
//! - two paths that sum across a vector's lanes (so by its width): the matrix-vector products
//!   (one row or one column of output) are computed here by [`vector_product`], and small outputs'
//!   "horizontal" kernels are left out (the packed kernels take them).

use crate::engine::attention::axpy;
use crate::engine::simd::{self, vectorized, Level};
use gemm_common::Parallelism;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Products smaller than this many multiply-adds run on the calling thread: waking the pool costs more
/// (measured: the per-head Q/K/V products on layer 0's few hundred distinct rows ran 2× slower on
/// two threads than on one).
const PARALLEL_MIN_FLOPS: usize = 1 << 22;

/// The block depth of the fixed rule (see the module's note). 512 is what `gemm` chose itself on
/// the CPUs this project has run on (AMD Zen 3, 4 and 5, Intel Xeon), and [`depth_block`] is its
/// own split at that depth, so results there are what they were.
const DEPTH_BLOCK: usize = 512;

/// The depth of each block of a product of output `[m, n]` and depth `k` (the last may be shorter):
/// `gemm`'s rule at a block depth of 512, fixed here. Small outputs take whole blocks of 512;
/// larger ones split the depth into equal blocks.
fn depth_block(m: usize, n: usize, k: usize) -> usize {
    if m <= 64 && n <= 64 {
        k.min(DEPTH_BLOCK)
    } else {
        k.div_ceil(k.div_ceil(DEPTH_BLOCK))
    }
}

/// Whether `gemm`, at `level` on this CPU, splits every depth as [`depth_block`] does: always for
/// outputs of at most 64 × 64; for larger ones where its block depth from the cache comes to 512
/// (on every CPU this project has run on).
fn gemm_splits_depth_as_we_do(level: Level) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static SAME: [OnceLock<bool>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        *SAME[level as usize].get_or_init(|| {
            use gemm_f32::microkernel::{avx512f, fma, scalar};
            let (mr, nr) = match level {
                Level::Avx512 => (avx512f::f32::MR_DIV_N * 16, avx512f::f32::NR),
                Level::Avx2 => (fma::f32::MR_DIV_N * 8, fma::f32::NR),
                Level::Baseline => (scalar::f32::MR_DIV_N, scalar::f32::NR),
            };
            // Its block depth does not depend on the output's shape; on a long depth it is the
            // cache's figure (at least 512) spread evenly.
            let kc = gemm_common::cache::kernel_params(4096, 4096, 1 << 20, mr, nr, 4).kc;
            kc == depth_block(4096, 4096, 1 << 20)
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level;
        true
    }
}

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
    if m == 1 {
        return vector_product(c, a, b, accumulate);
    }
    if n == 1 {
        // cᵀ = bᵀ·aᵀ: one row of output.
        return vector_product(
            &mut c.view_mut().reversed_axes(),
            &b.t(),
            &a.t(),
            accumulate,
        );
    }
    let par = if threads > 1 && m * n * k >= PARALLEL_MIN_FLOPS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let level = simd::level();
    let block = if (m <= 64 && n <= 64) || gemm_splits_depth_as_we_do(level) {
        // One call: gemm's own blocks are ours (and a call per block would pay its packing
        // set-up each time).
        k
    } else {
        depth_block(m, n, k)
    };
    gemm_in_blocks(c, a, b, accumulate, par, level, block);
}

/// `c (+)= a · b` by `gemm` at `level`, one call per `block` of the depth.
fn gemm_in_blocks(
    c: &mut ArrayViewMut2<f32>,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    accumulate: bool,
    par: Parallelism,
    level: Level,
    block: usize,
) {
    let ((m, k), n) = (a.dim(), b.ncols());
    let strides = |s: &[isize]| {
        assert!(s.iter().all(|&s| s >= 0), "matmul: negative strides");
        (s[0], s[1])
    };
    let ((cr, cc), (ar, ac), (br, bc)) = (
        strides(c.strides()),
        strides(a.strides()),
        strides(b.strides()),
    );
    let (c_ptr, a_ptr, b_ptr) = (c.as_mut_ptr(), a.as_ptr(), b.as_ptr());
    for start in (0..k).step_by(block) {
        let depth = block.min(k - start);
        // SAFETY: the views are valid for their shapes and (non-negative) strides, `c` is
        // borrowed mutably so it does not alias `a` or `b`, the offsets stay inside the depth
        // range, and gemm reads/writes only within those shapes.
        unsafe {
            gemm_at(
                level,
                Product {
                    m,
                    n,
                    k: depth,
                    dst: (c_ptr, cr, cc),
                    read_dst: accumulate || start > 0,
                    lhs: (a_ptr.offset(start as isize * ac), ar, ac),
                    rhs: (b_ptr.offset(start as isize * br), br, bc),
                },
                par,
            );
        }
    }
}

/// One `gemm` call's operands: pointers with (row, column) strides.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, isize, isize),
    read_dst: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
}

/// `dst (+)= lhs · rhs` by `gemm`'s packed kernels for `level`, without its horizontal kernels
/// (their sums cross vector lanes). As `gemm::gemm` does, a row-major destination is computed as
/// its transpose, which the microkernels prefer.
///
/// # Safety
/// The pointers and strides must describe valid, non-overlapping matrices of the given shapes
/// (the destination writable), with non-negative strides; `p.k` ≥ 1; `p.m`, `p.n` ≥ 2.
unsafe fn gemm_at(level: Level, p: Product, par: Parallelism) {
    let Product {
        m,
        n,
        k,
        dst: (dst, dst_rs, dst_cs),
        read_dst,
        lhs: (lhs, lhs_rs, lhs_cs),
        rhs: (rhs, rhs_rs, rhs_cs),
    } = p;
    let (m, n, dst_rs, dst_cs, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs) = if dst_cs < dst_rs {
        (
            n, m, dst_cs, dst_rs, rhs, rhs_cs, rhs_rs, lhs, lhs_cs, lhs_rs,
        )
    } else {
        (
            m, n, dst_rs, dst_cs, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs,
        )
    };
    #[cfg(target_arch = "x86_64")]
    macro_rules! call {
        ($simd:expr, $kernels:path, $n:expr) => {{
            use $kernels as kernels;
            gemm_common::gemm::gemm_basic_generic::<
                _,
                f32,
                { $n },
                { kernels::MR_DIV_N * $n },
                { kernels::NR },
                { kernels::MR_DIV_N },
                0,
                0,
            >(
                $simd,
                m,
                n,
                k,
                dst,
                dst_cs,
                dst_rs,
                read_dst,
                lhs,
                lhs_cs,
                lhs_rs,
                rhs,
                rhs_cs,
                rhs_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                |a, b, c| a * b + c,
                &kernels::UKR,
                &[],
                false,
                par,
            )
        }};
    }
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => call!(
            gemm_common::simd::V4::new_unchecked(),
            gemm_f32::microkernel::avx512f::f32,
            16
        ),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => call!(
            gemm_common::simd::V3::new_unchecked(),
            gemm_f32::microkernel::fma::f32,
            8
        ),
        #[cfg(target_arch = "x86_64")]
        Level::Baseline => call!(
            gemm_common::simd::Scalar,
            gemm_f32::microkernel::scalar::f32,
            1
        ),
        #[cfg(not(target_arch = "x86_64"))]
        _ => gemm::gemm(
            m, n, k, dst, dst_cs, dst_rs, read_dst, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 1.0,
            1.0, false, false, false, par,
        ),
    }
}

/// Columns per group in [`vector_product`]'s column form: independent sums side by side.
const GROUP: usize = 8;

/// `c (+)= a · b` for one row of output (`a [1, k]`, `b [k, n]`, `c [1, n]`): each output summed
/// in depth order from zero, then added to `c`, as `gemm`'s kernels do (with separate multiply
/// and add: the same bits at every level, and whichever way `b` is laid out).
fn vector_product(
    c: &mut ArrayViewMut2<f32>,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    accumulate: bool,
) {
    let (k, n) = b.dim();
    let a = a.row(0);
    debug_assert_eq!(a.len(), k);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    simd::with_scratch(n, |acc| {
        vectorized(
            #[inline(always)]
            || {
                if b_rs == 1 && b_cs != 1 {
                    // b's columns are contiguous: each output's sum runs down its column, GROUP
                    // columns side by side (independent sums, so they overlap in time).
                    for (g, acc) in acc.chunks_mut(GROUP).enumerate() {
                        let mut s = [0.0f32; GROUP];
                        for (d, &x) in a.iter().enumerate() {
                            for (i, s) in s.iter_mut().enumerate().take(acc.len()) {
                                // SAFETY: d < k and g·GROUP + i < n: inside b.
                                *s += x * unsafe { *b.uget((d, g * GROUP + i)) };
                            }
                        }
                        acc.copy_from_slice(&s[..acc.len()]);
                    }
                } else {
                    // Along b's rows: one multiply-add per output at each depth.
                    for (x, row) in a.iter().zip(b.rows()) {
                        match row.as_slice() {
                            Some(row) => axpy(acc, *x, row),
                            None => {
                                for (s, &y) in acc.iter_mut().zip(row.iter()) {
                                    *s += x * y;
                                }
                            }
                        }
                    }
                }
            },
        );
        for (c, &s) in c.row_mut(0).iter_mut().zip(acc.iter()) {
            *c = if accumulate { *c + s } else { s };
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rng::Rng;

    #[test]
    fn one_call_and_a_call_per_block_give_the_same_bits_where_gemm_splits_as_we_do() {
        let (m, k, n) = (130, 3001, 70);
        let mut rng = Rng::new(5);
        let mut draw = |len| {
            let mut v = vec![0.0f32; len];
            rng.fill_normal_f32(&mut v);
            v
        };
        let (a, b, c0) = (draw(m * k), draw(k * n), draw(m * n));
        let block = depth_block(m, n, k);
        assert_eq!(block, 501);
        for level in Level::available() {
            if !gemm_splits_depth_as_we_do(level) {
                continue;
            }
            for accumulate in [false, true] {
                let run = |block| {
                    let mut c = c0.clone();
                    gemm_in_blocks(
                        &mut view_mut(&mut c, m, n),
                        &view(&a, m, k),
                        &view(&b, k, n),
                        accumulate,
                        Parallelism::None,
                        level,
                        block,
                    );
                    c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                assert!(
                    run(k) == run(block),
                    "{level:?}: gemm's blocks are not ours"
                );
                assert!(run(k) != run(512), "{level:?}: the split should matter");
            }
        }
    }
}
