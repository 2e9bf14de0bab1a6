//! Linear-regression data and its least-squares fit, for the learning-coefficient tests.

use toylens::batch::{Batch, DenseBatch};
use toylens::engine::rng::Rng;
use toylens::models::linear::{Linear, LinearConfig};

/// Linear regression in `d` inputs (true weights N(0, 1) from seed 7, noise σ = 1, data seed 3)
/// at its least-squares weights on `n` examples; with `bias`, a bias of 0 after them (the
/// minimum along the weights, and near it along the bias since the inputs' mean is near 0).
pub fn fitted_regression(n: usize, d: usize, bias: bool) -> (Linear, Batch) {
    let mut rng = Rng::new(7);
    let w_true: Vec<f32> = (0..d).map(|_| rng.normal() as f32).collect();
    let data = regression_data(n, d, &w_true, 1.0, 3);
    let mut w = least_squares(&data);
    if bias {
        w.push(0.0);
    }
    let cfg = LinearConfig {
        n_in: d,
        n_out: 1,
        bias,
        seed: 0,
    };
    (Linear::from_params(cfg, w).unwrap(), data)
}

/// x ~ N(0, I) `[n, d]`, y = x·w + σ·ε.
pub fn regression_data(n: usize, d: usize, w: &[f32], sigma: f64, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
    let y: Vec<f32> = x
        .chunks_exact(d)
        .map(|r| r.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + (sigma * rng.normal()) as f32)
        .collect();
    Batch::Dense(DenseBatch {
        x: ndarray::Array2::from_shape_vec((n, d), x).unwrap(),
        y: Some(ndarray::Array2::from_shape_vec((n, 1), y).unwrap()),
    })
}

/// The least-squares weights of a dense batch (normal equations, Gaussian elimination in f64).
pub fn least_squares(b: &Batch) -> Vec<f32> {
    let Batch::Dense(DenseBatch { x, .. }) = b else {
        unreachable!()
    };
    least_squares_on(b, &(0..x.ncols()).collect::<Vec<_>>())
}

/// The least-squares weights using only the columns `cols` (the others 0).
pub fn least_squares_on(b: &Batch, cols: &[usize]) -> Vec<f32> {
    let Batch::Dense(DenseBatch { x, y: Some(y) }) = b else {
        unreachable!()
    };
    let x = x.select(ndarray::Axis(1), cols);
    let d = x.ncols();
    let mut a = vec![vec![0.0f64; d + 1]; d];
    for (r, t) in x.rows().into_iter().zip(y.iter()) {
        for i in 0..d {
            for j in 0..d {
                a[i][j] += f64::from(r[i]) * f64::from(r[j]);
            }
            a[i][d] += f64::from(r[i]) * f64::from(*t);
        }
    }
    for c in 0..d {
        let piv = a[c][c];
        a[c][c..].iter_mut().for_each(|v| *v /= piv);
        let pivot_row = a[c].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != c {
                let f = row[c];
                for (x, p) in row[c..].iter_mut().zip(&pivot_row[c..]) {
                    *x -= f * p;
                }
            }
        }
    }
    let mut w = vec![0.0f32; x_width(b)];
    for (&c, row) in cols.iter().zip(&a) {
        w[c] = row[d] as f32;
    }
    w
}

pub fn x_width(b: &Batch) -> usize {
    let Batch::Dense(DenseBatch { x, .. }) = b else {
        unreachable!()
    };
    x.ncols()
}
