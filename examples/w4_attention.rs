//! W4's attention kernels timed alone (batch 64, 32 positions, 4 heads × 16, every query):
//! scores with the softmax, the mix, the backward.
//!
//!     cargo run --release --example w4_attention -- [threads]

use std::time::Instant;
use toylens::engine::attention::{self, Geometry};
use toylens::engine::rng::Rng;

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..200)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let threads: usize = std::env::args().nth(1).map_or(1, |s| s.parse().unwrap());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let (b, p, h, dh) = (64usize, 32usize, 4usize, 16usize);
    let q_pos: Vec<usize> = (0..p).collect();
    let row_of: Vec<u32> = (0..(b * p) as u32).collect();
    let g = Geometry::new(b, p, h, dh, &q_pos, &row_of, b * p);
    let mut rng = Rng::new(1);
    let mut randn = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
    let n = h * b * p * dh;
    let (q, k, v, dz) = (randn(n), randn(n), randn(n), randn(n));
    let mut pattern = vec![0.0f32; b * h * p * p];
    let mut z = vec![0.0f32; n];
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    rayon::scope(|_| {
        let t_scores = time(|| attention::scores_softmax(&g, &q, &k, &mut pattern));
        let t_mix = time(|| attention::mix_causal(&g, &pattern, &v, &mut z));
        let t_back =
            time(|| attention::backward(&g, &q, &k, &v, &pattern, &dz, &mut dq, &mut dk, &mut dv));
        println!("scores+softmax {t_scores:.3} ms, mix {t_mix:.3} ms, backward {t_back:.3} ms (medians of 200)");
    });
}
