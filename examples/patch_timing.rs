//! Scratch timing: patching sweeps on the grokked model.
use ndarray::Array2;
use std::time::Instant;
use toylens::analysis::circuits::patching::{self, Metric, Sweep};
use toylens::hooks::CacheFilter;
fn main() {
    let l = toylens::io::load_any(std::path::Path::new(
        "../shared/fixtures/progress-measures/wd_10-1_mod_addition_loss_curve.pth",
    ))
    .unwrap();
    let m = l.transformer().unwrap();
    let n = 64;
    let clean = Array2::from_shape_fn((n, 3), |(i, j)| {
        if j == 2 {
            113
        } else {
            ((i * 7 + j * 13) % 113) as u32
        }
    });
    let corr = Array2::from_shape_fn((n, 3), |(i, j)| {
        if j == 2 {
            113
        } else {
            ((i * 5 + j * 11 + 3) % 113) as u32
        }
    });
    let metric = Metric::LogitDiff {
        answers: vec![1; n],
        wrong: vec![2; n],
    };
    let (_, cache) = m.run_with_cache(clean.view(), CacheFilter::All).unwrap();
    for sweep in [
        Sweep::AttnHeadOutByPos,
        Sweep::AttnHeadQByPos,
        Sweep::AttnHeadPatternByPos,
    ] {
        for _ in 0..2 {
            patching::patch_sweep(m, corr.view(), &cache, sweep, &metric).unwrap();
        }
        let k = 10;
        let t0 = Instant::now();
        for _ in 0..k {
            patching::patch_sweep(m, corr.view(), &cache, sweep, &metric).unwrap();
        }
        println!(
            "{:?}: {:.3} ms",
            sweep,
            t0.elapsed().as_secs_f64() * 1e3 / k as f64
        );
    }
}
