//! Essential dynamics (Hoogland et al. 2024, "The developmental landscape of in-context learning"):
//! a model's outputs on one fixed set of inputs at every checkpoint, as one vector per checkpoint,
//! projected on their principal components; the trajectory's turns mark candidate developmental
//! stages, to read beside the learning coefficient.
//!
//! Outputs: for token models the log-probabilities at every loss position of every example
//! (log-softmax removes the logits' free shift), for dense models the outputs. PCA over the
//! checkpoints: the vectors centred by their mean over checkpoints, the K × K Gram matrix in f64 (one
//! summation order on every CPU), its eigenvectors u_k and eigenvalues μ_k; checkpoint i's score on
//! PC k is √μ_k·u_k[i], the explained share μ_k / Σμ. Each PC's sign makes its largest |score|
//! positive.
//!
//! Turns (toylens's rule, stated because the paper reads its cusps by eye from smoothed
//! trajectories): the trajectory in the top PCs is the polyline through the checkpoints; at each
//! checkpoint, with arc length s and a window h (a fraction of the whole length), the turning angle
//! is the angle between the chord from the point at s − h to s and the chord from s to s + h. A turn
//! is a checkpoint whose angle is at least `min_angle` and the largest within h of arc length either
//! side; checkpoints within h of either end are not judged. The window measures turns at one scale of
//! the path, so jitter between close checkpoints does not count.

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::tasks::NamedSet;
use ndarray::Array2;
use serde::Serialize;

/// How the trajectory is read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DynamicsConfig {
    /// Principal components kept (at least 2).
    pub components: usize,
    /// The turn window h as a fraction of the trajectory's length, in (0, 0.5).
    pub window: f64,
    /// The least turning angle of a turn, in degrees (0, 180).
    pub min_angle: f64,
    /// PCs the turns are read in (the top ones; at least 2, at most `components`).
    pub turn_components: usize,
}

impl Default for DynamicsConfig {
    fn default() -> Self {
        DynamicsConfig {
            components: 3,
            window: 0.1,
            min_angle: 45.0,
            turn_components: 3,
        }
    }
}

impl DynamicsConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, why: String| Err(Error::Input(format!("--{k}: {why}")));
        if self.components < 2 {
            return bad(
                "components",
                format!("needs at least 2 (got {})", self.components),
            );
        }
        if !(self.window > 0.0 && self.window < 0.5) {
            return bad(
                "window",
                format!(
                    "a fraction of the path's length in (0, 0.5) (got {})",
                    self.window
                ),
            );
        }
        if !(self.min_angle > 0.0 && self.min_angle < 180.0) {
            return bad(
                "min-angle",
                format!("degrees in (0, 180) (got {})", self.min_angle),
            );
        }
        if self.turn_components < 2 || self.turn_components > self.components {
            return bad(
                "turn-components",
                format!(
                    "between 2 and --components = {} (got {})",
                    self.components, self.turn_components
                ),
            );
        }
        Ok(())
    }
}

/// One turn of the trajectory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Turn {
    /// The checkpoint's index and step.
    pub index: usize,
    pub step: u64,
    /// The turning angle there, in degrees.
    pub angle: f64,
}

/// The trajectory of a run's outputs.
#[derive(Clone, Debug, Serialize)]
pub struct Dynamics {
    pub steps: Vec<u64>,
    /// `[checkpoint][component]`.
    pub scores: Vec<Vec<f64>>,
    /// Each kept component's share of the variance over checkpoints.
    pub explained: Vec<f64>,
    /// The turning angle at every checkpoint (NaN within the window of either end).
    pub angles: Vec<f64>,
    pub turns: Vec<Turn>,
    /// The length of each checkpoint's output vector.
    pub dims: usize,
}

/// `model`'s outputs on `set` as one vector: log-probabilities at every loss position the set
/// counts for token batches (the same positions at every checkpoint), the predictions at the loss
/// positions for vector sequences (in-context regression's ŷ, as Hoogland et al. take them), the
/// outputs for dense ones.
pub fn outputs(model: &dyn Model, set: &NamedSet) -> Result<Vec<f32>> {
    let out = model.forward(set.batch.input())?;
    if let (Batch::Sequences(b), 3) = (&set.batch, out.ndim()) {
        let mut v = Vec::with_capacity(b.x.dim().0 * b.loss_pos.len() * out.shape()[2]);
        for e in 0..b.x.dim().0 {
            for &p in &b.loss_pos {
                v.extend(out.slice(ndarray::s![e, p, ..]).iter());
            }
        }
        return Ok(v);
    }
    let Batch::Tokens(b) = &set.batch else {
        return Ok(out.iter().copied().collect());
    };
    let rows: Vec<ndarray::ArrayView1<f32>> = match out.ndim() {
        // [batch, pos, vocab]: the loss positions (those the set marks).
        3 => {
            let mut rows = Vec::new();
            for e in 0..b.tokens.nrows() {
                for (j, &p) in b.loss_pos.iter().enumerate() {
                    if set.positions.as_ref().is_none_or(|m| m[[e, j]]) {
                        rows.push(out.slice(ndarray::s![e, p, ..]));
                    }
                }
            }
            rows
        }
        // [batch, vocab]: one answer per example.
        2 => (0..out.shape()[0])
            .map(|e| out.slice(ndarray::s![e, ..]))
            .collect(),
        n => {
            return Err(Error::Input(format!(
                "essential dynamics reads logits of 2 or 3 axes; this `{}` model gives {n}",
                model.arch()
            )))
        }
    };
    let mut v = Vec::with_capacity(rows.iter().map(|r| r.len()).sum());
    for row in rows {
        let lse = crate::tasks::log_sum_exp(row);
        v.extend(row.iter().map(|&x| (f64::from(x) - lse) as f32));
    }
    Ok(v)
}

/// The principal components of `outputs` (one vector per checkpoint at `steps`) and the turns of
/// the trajectory they trace.
pub fn essential_dynamics(
    steps: &[u64],
    outputs: &[Vec<f32>],
    cfg: &DynamicsConfig,
) -> Result<Dynamics> {
    cfg.validate()?;
    let k = outputs.len();
    if k < 3 {
        return Err(Error::Input(format!(
            "essential dynamics needs at least 3 checkpoints (got {k})"
        )));
    }
    let dims = outputs[0].len();
    if dims == 0 {
        return Err(Error::Input(
            "the outputs are empty: the set counts no loss position".into(),
        ));
    }
    if outputs.iter().any(|o| o.len() != dims) {
        return Err(Error::Input(
            "the checkpoints' outputs differ in length: the runs' models differ".into(),
        ));
    }
    if let Some(i) = outputs
        .iter()
        .position(|o| o.iter().any(|x| !x.is_finite()))
    {
        return Err(Error::Input(format!(
            "the outputs at step {} are not finite (the model diverged there)",
            steps[i]
        )));
    }
    let mean: Vec<f64> = (0..dims)
        .map(|d| outputs.iter().map(|o| f64::from(o[d])).sum::<f64>() / k as f64)
        .collect();
    let centred: Vec<Vec<f64>> = outputs
        .iter()
        .map(|o| {
            o.iter()
                .zip(&mean)
                .map(|(&x, m)| f64::from(x) - m)
                .collect()
        })
        .collect();
    let mut gram = Array2::<f64>::zeros((k, k));
    for i in 0..k {
        for j in 0..=i {
            let g: f64 = centred[i].iter().zip(&centred[j]).map(|(a, b)| a * b).sum();
            gram[[i, j]] = g;
            gram[[j, i]] = g;
        }
    }
    let svd = crate::analysis::circuits::factored::svd(gram.view());
    let total: f64 = svd.s.iter().sum();
    let n_pc = cfg.components.min(k - 1);
    let mut scores = vec![vec![0.0f64; n_pc]; k];
    let mut explained = Vec::with_capacity(n_pc);
    for c in 0..n_pc {
        let mu = svd.s[c].max(0.0);
        let col: Vec<f64> = (0..k).map(|i| mu.sqrt() * svd.u[[i, c]]).collect();
        let largest = col
            .iter()
            .copied()
            .fold(0.0f64, |a, x| if x.abs() > a.abs() { x } else { a });
        let sign = if largest < 0.0 { -1.0 } else { 1.0 };
        for (row, x) in scores.iter_mut().zip(&col) {
            row[c] = sign * x;
        }
        explained.push(if total > 0.0 { mu / total } else { 0.0 });
    }
    let used = cfg.turn_components.min(n_pc);
    let points: Vec<Vec<f64>> = scores.iter().map(|s| s[..used].to_vec()).collect();
    let angles = turning_angles(&points, cfg.window);
    let turns = pick_turns(&points, &angles, cfg)
        .into_iter()
        .map(|i| Turn {
            index: i,
            step: steps[i],
            angle: angles[i],
        })
        .collect();
    Ok(Dynamics {
        steps: steps.to_vec(),
        scores,
        explained,
        angles,
        turns,
        dims,
    })
}

/// Cumulative arc length at each point of a polyline.
fn arc_lengths(points: &[Vec<f64>]) -> Vec<f64> {
    let mut s = vec![0.0f64; points.len()];
    for i in 1..points.len() {
        s[i] = s[i - 1] + distance(&points[i - 1], &points[i]);
    }
    s
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The point at arc length `t` along the polyline.
fn at_length(points: &[Vec<f64>], s: &[f64], t: f64) -> Vec<f64> {
    let i = s.partition_point(|&x| x < t).clamp(1, points.len() - 1);
    let (a, b) = (&points[i - 1], &points[i]);
    let seg = s[i] - s[i - 1];
    let f = if seg > 0.0 {
        ((t - s[i - 1]) / seg).clamp(0.0, 1.0)
    } else {
        0.0
    };
    a.iter().zip(b).map(|(x, y)| x + f * (y - x)).collect()
}

/// The turning angle (degrees) at each point, over chords of `window` × the whole length; NaN where
/// the window runs past an end.
fn turning_angles(points: &[Vec<f64>], window: f64) -> Vec<f64> {
    let s = arc_lengths(points);
    let total = *s.last().expect("at least 3 points");
    let h = window * total;
    (0..points.len())
        .map(|i| {
            if total <= 0.0 || s[i] - h < 0.0 || s[i] + h > total {
                return f64::NAN;
            }
            let (before, after) = (
                at_length(points, &s, s[i] - h),
                at_length(points, &s, s[i] + h),
            );
            let here = &points[i];
            let u: Vec<f64> = here.iter().zip(&before).map(|(a, b)| a - b).collect();
            let v: Vec<f64> = after.iter().zip(here).map(|(a, b)| a - b).collect();
            let (nu, nv) = (norm(&u), norm(&v));
            if nu == 0.0 || nv == 0.0 {
                return f64::NAN;
            }
            let cos = u.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>() / (nu * nv);
            libm::acos(cos.clamp(-1.0, 1.0)).to_degrees()
        })
        .collect()
}

/// Checkpoints whose angle is at least the threshold and the largest within the window either side.
fn pick_turns(points: &[Vec<f64>], angles: &[f64], cfg: &DynamicsConfig) -> Vec<usize> {
    let s = arc_lengths(points);
    let h = cfg.window * s.last().copied().unwrap_or(0.0);
    (0..points.len())
        .filter(|&i| angles[i] >= cfg.min_angle)
        .filter(|&i| {
            (0..points.len()).all(|j| {
                j == i
                    || (s[j] - s[i]).abs() > h
                    || !(angles[j] > angles[i] || (angles[j] == angles[i] && j < i))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_l_shaped_path_turns_once_at_its_corner() {
        // Ten steps along x, then ten along y, in a 5-dimensional output space.
        let mut outputs = Vec::new();
        for i in 0..=10 {
            outputs.push(vec![i as f32, 0.0, 0.0, 0.0, 0.0]);
        }
        for i in 1..=10 {
            outputs.push(vec![10.0, i as f32, 0.0, 0.0, 0.0]);
        }
        let steps: Vec<u64> = (0..outputs.len() as u64).map(|s| s * 100).collect();
        let d = essential_dynamics(&steps, &outputs, &DynamicsConfig::default()).unwrap();
        assert_eq!(d.turns.len(), 1, "{:?}", d.turns);
        assert_eq!(d.turns[0].step, 1000);
        assert!(
            (d.turns[0].angle - 90.0).abs() < 1e-6,
            "{}",
            d.turns[0].angle
        );
        // Two directions of variance: the third component explains nothing.
        assert!(d.explained[2] < 1e-12, "{:?}", d.explained);
        assert!((d.explained[0] + d.explained[1] - 1.0).abs() < 1e-12);
        // The projections keep the distances between checkpoints.
        let dist = |a: &[f64], b: &[f64]| distance(&a[..2], &b[..2]);
        assert!((dist(&d.scores[0], &d.scores[20]) - 200f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn a_straight_path_has_no_turn_and_too_few_checkpoints_are_an_error() {
        let outputs: Vec<Vec<f32>> = (0..8).map(|i| vec![i as f32, 2.0 * i as f32]).collect();
        let steps: Vec<u64> = (0..8).collect();
        let d = essential_dynamics(&steps, &outputs, &DynamicsConfig::default()).unwrap();
        assert!(d.turns.is_empty(), "{:?}", d.turns);
        let e = essential_dynamics(&steps[..2], &outputs[..2], &DynamicsConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 3 checkpoints (got 2)"), "{e}");
        let bad = DynamicsConfig {
            window: 0.7,
            ..DynamicsConfig::default()
        };
        let e = essential_dynamics(&steps, &outputs, &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--window"), "{e}");
    }
}
