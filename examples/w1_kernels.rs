//! W1's kernels (Nanda's model, p = 113, full batch of 3830) timed alone, away from the rest of a
//! step: each of the step's products, a 2048³ product for the peak, layer 0's attention backward
//! with and without the W_in fold's share (`fold::share_backward`), and the fold's mix. A 7.8 MB fill (the size of one
//! mlp_pre) is the memory yardstick.
//!
//!     cargo run --release --example w1_kernels -- [threads]
//!
//! Prints the median and the minimum of 40 calls each (docs/PERFORMANCE.md has the figures).

use ndarray::ArrayView2;
use std::time::Instant;
use toylens::engine::activation::ActFn;
use toylens::engine::attention::{self, Geometry};
use toylens::engine::fold;
use toylens::engine::matmul::{matmul, view, view_mut};

/// Median and minimum of 40 timed calls, in ms.
fn time(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..40)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(2, |s| s.parse().expect("threads"));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    let (p, batch, h_n, d_head, d, m) = (113usize, 3830usize, 4usize, 32usize, 128usize, 512usize);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    // Layer 0's distinct rows: (a, pos 0), (b, pos 1) and the one "=" at pos 2; examples in a
    // scrambled order, as a shuffled training set has them.
    let n_rows = 2 * p + 1;
    let row_of: Vec<u32> = (0..batch)
        .flat_map(|e| {
            let x = e * 7919 % (p * p);
            [(x / p) as u32, (p + x % p) as u32, (2 * p) as u32]
        })
        .collect();
    let q_pos = [2usize];
    let g = Geometry::new(batch, 3, h_n, d_head, &q_pos, &row_of, n_rows);
    let mut pattern = vec![0f32; batch * h_n * 3];
    for w in pattern.chunks_mut(3) {
        let x: [f32; 3] = std::array::from_fn(|_| uniform().abs() + 0.1);
        let sum: f32 = x.iter().sum();
        for (w, x) in w.iter_mut().zip(x) {
            *w = x / sum;
        }
    }
    let mut filled = |n: usize| -> Vec<f32> { (0..n).map(|_| uniform()).collect() };
    let report = |name: &str, (median, min): (f64, f64)| {
        println!("{name:<44} {median:7.3} ms median, {min:7.3} min");
    };
    let (own, vals, bias) = (filled(n_rows * m), filled(h_n * n_rows * m), filled(m));
    let (q, k, vo) = (
        filled(h_n * n_rows * d_head),
        filled(h_n * n_rows * d_head),
        filled(h_n * n_rows * d),
    );
    let (dout, dpre) = (filled(batch * d), filled(batch * m));
    let mut post = vec![0f32; batch * m];
    let (mut dq, mut dk) = (
        vec![0f32; h_n * n_rows * d_head],
        vec![0f32; h_n * n_rows * d_head],
    );
    let (mut dvo, mut dvow) = (vec![0f32; h_n * n_rows * d], vec![0f32; h_n * n_rows * m]);

    println!("{threads} threads");
    products(&mut filled, &report);
    report(
        "fill 7.8 MB",
        time(|| {
            use rayon::prelude::*;
            post.par_chunks_mut(1 << 16).for_each(|c| c.fill(1.5));
        }),
    );
    report(
        "fold::mix (ReLU, post only)",
        time(|| {
            fold::mix(
                &g,
                &pattern,
                &own,
                &vals,
                &bias,
                ActFn::Relu,
                None,
                &mut post,
            )
        }),
    );
    report(
        "attention backward",
        time(|| {
            attention::backward_projected(
                &g, &q, &k, &vo, d, &pattern, &dout, &mut dq, &mut dk, &mut dvo, None,
            )
        }),
    );
    let (mut keys, mut dfold) = (fold::KeyRows::default(), vec![0f32; pattern.len()]);
    report(
        "fold::share_backward (and its index)",
        time(|| {
            keys.build(&g);
            fold::share_backward(&g, &keys, &pattern, &vals, &dpre, m, &mut dvow, &mut dfold)
        }),
    );
    report(
        "attention backward with the fold's share",
        time(|| {
            keys.build(&g);
            fold::share_backward(&g, &keys, &pattern, &vals, &dpre, m, &mut dvow, &mut dfold);
            attention::backward_projected(
                &g,
                &q,
                &k,
                &vo,
                d,
                &pattern,
                &dout,
                &mut dq,
                &mut dk,
                &mut dvo,
                Some(&dfold),
            )
        }),
    );
    // Keeps the outputs alive.
    println!("(checksum {})", post[9] + dq[3] + dvow[7] + dvo[1]);
}

/// The step's products at their shapes (the MLP at the last position, the unembedding), each with
/// its rate from the median.
fn products(filled: &mut dyn FnMut(usize) -> Vec<f32>, report: &dyn Fn(&str, (f64, f64))) {
    let (b, d, m, v) = (3830usize, 128usize, 512usize, 113usize);
    let (x, w_in, dpre, w_out) = (filled(b * d), filled(d * m), filled(b * m), filled(m * d));
    let (w_u, dlogits) = (filled(d * v), filled(b * v));
    let (x, w_in, dpre) = (view(&x, b, d), view(&w_in, d, m), view(&dpre, b, m));
    let (w_out, w_u, dlogits) = (view(&w_out, m, d), view(&w_u, d, v), view(&dlogits, b, v));
    let mut out = vec![0f32; b * m];
    // `c (+)= a·b`, as the step computes it (`accumulate` where the step adds into a gradient).
    let mut product = |name: &str, a: ArrayView2<f32>, b: ArrayView2<f32>, accumulate: bool| {
        let ((rows, inner), cols) = (a.dim(), b.dim().1);
        let t = time(|| matmul(&mut view_mut(&mut out, rows, cols), &a, &b, accumulate));
        let gflop_s = 2.0 * (rows * inner * cols) as f64 / t.0 / 1e6;
        report(&format!("{name} {gflop_s:.0} GFLOP/s"), t);
    };
    product("mlp_pre = x·W_in", x, w_in, false);
    product("mlp_out = post·W_out", dpre, w_out, false);
    product("dW_in = xᵀ·d pre", x.t(), dpre, true);
    product("dx = d pre·W_inᵀ", dpre, w_in.t(), true);
    product("dW_out = postᵀ·d out", dpre.t(), x, true);
    product("d post = d out·W_outᵀ", x, w_out.t(), false);
    product("logits = x·W_U", x, w_u, false);
    product("dW_U = xᵀ·d logits", x.t(), dlogits, true);
    let n = 2048;
    let (p, q) = (filled(n * n), filled(n * n));
    let mut big = vec![0f32; n * n];
    let t = time(|| {
        matmul(
            &mut view_mut(&mut big, n, n),
            &view(&p, n, n),
            &view(&q, n, n),
            false,
        )
    });
    report(
        &format!("2048³ {:.0} GFLOP/s", 2.0 * (n * n * n) as f64 / t.0 / 1e6),
        t,
    );
    println!("(checksum {})", out[5] + big[1]);
}
