//! The geometry of a trained superposition model, and the paper's intro figure.
//!
//! Per instance: each feature's column W_f (its direction in the hidden space), its norm ‖W_f‖ (near 1:
//! represented; near 0: dropped), its dimensionality D_f = ‖W_f‖² / Σ_j (Ŵ_f·W_j)² (1: a dimension of
//! its own; 1/2: sharing with an antipodal feature; 2/5: one of a pentagon's five), and the instance's
//! dimensions per feature, n_hidden / ‖W‖²_F.

use crate::models::superposition::Superposition;
use serde::Serialize;

/// A feature counts as represented when its column's norm is above this.
pub const REPRESENTED_NORM: f64 = 0.5;

#[derive(Clone, Debug, Serialize)]
pub struct InstanceGeometry {
    pub feature_probability: f64,
    /// `W[i, f, :]` per feature.
    pub columns: Vec<Vec<f64>>,
    pub norms: Vec<f64>,
    pub dimensionality: Vec<f64>,
    pub dims_per_feature: f64,
    /// Features whose norm is above [`REPRESENTED_NORM`].
    pub represented: Vec<usize>,
}

pub fn geometry(m: &Superposition) -> Vec<InstanceGeometry> {
    let c = &m.cfg;
    let (nf, nh) = (c.n_features, c.n_hidden);
    let probs = c.feature_probability();
    (0..c.n_instances)
        .map(|i| {
            let cols: Vec<Vec<f64>> = (0..nf)
                .map(|f| {
                    m.w()[(i * nf + f) * nh..][..nh]
                        .iter()
                        .map(|&x| x as f64)
                        .collect()
                })
                .collect();
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            let norms: Vec<f64> = cols.iter().map(|w| dot(w, w).sqrt()).collect();
            let dimensionality = (0..nf)
                .map(|f| {
                    let n2 = norms[f] * norms[f];
                    if n2 < 1e-12 {
                        return 0.0;
                    }
                    let denom: f64 = cols.iter().map(|wj| dot(&cols[f], wj).powi(2) / n2).sum();
                    n2 / denom
                })
                .collect();
            let frob: f64 = norms.iter().map(|n| n * n).sum();
            InstanceGeometry {
                feature_probability: probs[i],
                norms: norms.clone(),
                dimensionality,
                dims_per_feature: nh as f64 / frob.max(1e-12),
                represented: (0..nf).filter(|&f| norms[f] > REPRESENTED_NORM).collect(),
                columns: cols,
            }
        })
        .collect()
}
