//! The Fourier basis of Z_p and projections of logits onto functions of x + y.

use std::f64::consts::TAU;

/// Orthonormal Fourier basis of Z_p: row 0 constant, then cos k and sin k for k = 1..(p−1)/2 (for
/// even p the last row is the alternating cos(πx)).
pub struct FourierBasis {
    pub p: usize,
    /// `[p][p]`: row i is basis vector i over x = 0..p.
    pub rows: Vec<Vec<f64>>,
    /// Frequency of each row (0 for the constant).
    pub freq: Vec<usize>,
    pub names: Vec<String>,
}

impl FourierBasis {
    pub fn new(p: usize) -> Self {
        let mut rows = vec![vec![1.0 / (p as f64).sqrt(); p]];
        let mut freq = vec![0];
        let mut names = vec!["const".to_string()];
        for k in 1..=p / 2 {
            for (is_sin, name) in [(false, "cos"), (true, "sin")] {
                if is_sin && 2 * k == p {
                    continue; // sin(πx) is zero on integers
                }
                let mut v: Vec<f64> = (0..p)
                    .map(|x| {
                        let a = TAU * (k * x) as f64 / p as f64;
                        if is_sin {
                            a.sin()
                        } else {
                            a.cos()
                        }
                    })
                    .collect();
                let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter_mut().for_each(|x| *x /= n);
                rows.push(v);
                freq.push(k);
                names.push(format!("{name} {k}"));
            }
        }
        FourierBasis {
            p,
            rows,
            freq,
            names,
        }
    }

    /// Each basis row times `m` (whose rows are indexed by x): `[p][cols]`.
    pub fn transform_rows(&self, m: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let cols = m.first().map_or(0, |r| r.len());
        self.rows
            .iter()
            .map(|b| {
                (0..cols)
                    .map(|j| b.iter().zip(m).map(|(bx, row)| bx * row[j]).sum())
                    .collect()
            })
            .collect()
    }

    /// Combine per-component norms into per-frequency norms (√(cos² + sin²)), index = frequency.
    pub fn per_frequency(&self, component_norms: &[f64]) -> Vec<f64> {
        let mut sq = vec![0.0; self.p / 2 + 1];
        for (i, &n) in component_norms.iter().enumerate() {
            sq[self.freq[i]] += n * n;
        }
        sq.into_iter().map(f64::sqrt).collect()
    }
}

/// Logits over all p² inputs projected on the functions of the answer s = (x op y) mod p. For
/// addition and subtraction every answer has exactly p inputs, so the directions cos(w·s)·√2/p and
/// sin(w·s)·√2/p (w = 2πk/p) are orthonormal over the input grid and take one value per s: every
/// projection needs only the logits summed per answer. (Multiplication has no such basis: 0 is the
/// answer of 2p − 1 inputs.)
pub struct SumProjection {
    p: usize,
    /// Σ over inputs with x + y ≡ s of the logits: `[p][p]` (s, answer).
    by_s: Vec<Vec<f64>>,
    /// Mean logit per answer over all inputs (the constant component).
    mean: Vec<f64>,
}

impl SumProjection {
    /// `logits`: `[p·p][p]`, input (x, y) at row x·p + y; `answer(x, y)` the answer's index.
    pub fn new(logits: &[Vec<f64>], p: usize, answer: impl Fn(usize, usize) -> usize) -> Self {
        let mut by_s = vec![vec![0.0; p]; p];
        let mut mean = vec![0.0; p];
        for x in 0..p {
            for y in 0..p {
                let s = answer(x, y);
                for (c, &v) in logits[x * p + y].iter().enumerate() {
                    by_s[s][c] += v;
                    mean[c] += v;
                }
            }
        }
        mean.iter_mut().for_each(|m| *m /= (p * p) as f64);
        SumProjection { p, by_s, mean }
    }

    /// The cos/sin(w_k·s) components for frequencies `ks`, as a function of the answer s: `[p][p]`.
    pub fn components(&self, ks: &[usize]) -> Vec<Vec<f64>> {
        let p = self.p;
        let scale = 2.0f64.sqrt() / p as f64;
        let mut out = vec![vec![0.0; p]; p];
        for &k in ks {
            let trig = |s: usize| {
                let a = TAU * (k * s) as f64 / p as f64;
                (a.cos(), a.sin())
            };
            // Coefficients: (direction · logits) = scale · Σ_s trig(s) · by_s[s]. The directions have
            // unit norm, except cos(π(x+y)) for even p (squared norm 2; its sin is zero).
            let norm2 = if 2 * k == p { 2.0 } else { 1.0 };
            let mut a = vec![0.0; p];
            let mut b = vec![0.0; p];
            for s in 0..p {
                let (c, sn) = trig(s);
                for j in 0..p {
                    a[j] += scale * c * self.by_s[s][j];
                    b[j] += scale * sn * self.by_s[s][j];
                }
            }
            for (s, row) in out.iter_mut().enumerate() {
                let (c, sn) = trig(s);
                for j in 0..p {
                    row[j] += (scale * c * a[j] + scale * sn * b[j]) / norm2;
                }
            }
        }
        out
    }

    /// The logits restricted to the constant and the components of `ks`, as a function of s.
    pub fn restricted(&self, ks: &[usize]) -> Vec<Vec<f64>> {
        let mut out = self.components(ks);
        for row in &mut out {
            for (v, m) in row.iter_mut().zip(&self.mean) {
                *v += m;
            }
        }
        out
    }
}
