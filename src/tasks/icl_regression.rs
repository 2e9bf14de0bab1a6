//! In-context linear regression (Garg et al. 2022; Raventós et al. 2023; Hoogland et al. 2024,
//! "The Developmental Landscape of In-Context Learning"), encoded as timaeus-research/icl does.
//!
//! Each sequence has its own task vector w ∈ R^D (a fresh N(0, I) draw, or one of `num_tasks`
//! fixed draws), K inputs x_k ~ N(0, I) and outputs y_k = w·x_k + N(0, σ²). The sequence is 2K
//! vector tokens of width D + 1, alternating `[0, x_k]` and `[y_k, 0, …, 0]`; the model reads a
//! prediction of y_k at x_k's token (positions 0, 2, …, 2K − 2), having seen the k − 1 pairs before
//! it, and is scored by squared error.
//!
//! The Bayes-optimal predictor for Gaussian tasks is ridge regression on the context with penalty
//! σ² (the posterior mean of w); `ridge_gap` is the model's loss above it on the evaluation set.

use super::{Footprint, NamedSet, Task, TaskData, TaskSection};
use crate::batch::{Batch, LossStats, SequenceBatch, TaskIo};
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use crate::models::{Model, Scratch};
use ndarray::Array3;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// `data:` of `task: in_context_regression`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IclRegressionSection {
    /// D, the dimension of x and of the task vector.
    pub task_size: usize,
    /// K, the (x, y) pairs per sequence (2K tokens).
    pub max_examples: usize,
    /// M, how many task vectors training draws from (fixed, from the data seed); null: a fresh
    /// Gaussian task for every sequence (M = ∞).
    pub num_tasks: Option<usize>,
    /// σ², the variance of the noise on y.
    pub noise_variance: f64,
    /// Sequences in the evaluation set (Gaussian tasks).
    pub n_eval: usize,
    /// Seed of the data; null means the top-level `seed`.
    pub seed: Option<u64>,
}

impl TaskSection for IclRegressionSection {
    const NAME: &'static str = "in_context_regression";
    fn configure(self, seed: u64) -> Result<Arc<dyn Task>> {
        let task = IclRegressionTask {
            task_size: self.task_size,
            max_examples: self.max_examples,
            num_tasks: self.num_tasks,
            noise_variance: self.noise_variance,
            n_eval: self.n_eval,
            seed: self.seed.unwrap_or(seed),
        };
        task.validate()?;
        Ok(Arc::new(task))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IclRegressionTask {
    pub task_size: usize,
    pub max_examples: usize,
    pub num_tasks: Option<usize>,
    pub noise_variance: f64,
    pub n_eval: usize,
    pub seed: u64,
}

/// Sequences with the task vector each was drawn with.
#[derive(Clone, Debug)]
pub struct RegressionSequences {
    pub batch: SequenceBatch,
    /// `[n, D]`.
    pub tasks: ndarray::Array2<f32>,
}

impl IclRegressionTask {
    pub fn validate(&self) -> Result<()> {
        for (k, v) in [
            ("task_size", self.task_size),
            ("max_examples", self.max_examples),
            ("n_eval", self.n_eval),
        ] {
            if v == 0 {
                return Err(Error::config(
                    format!("data.{k}"),
                    "must be at least 1 (got 0)",
                ));
            }
        }
        if self.max_examples > super::induction::MAX_CTX / 2 {
            return Err(Error::config(
                "data.max_examples",
                format!(
                    "must be at most {} (got {})",
                    super::induction::MAX_CTX / 2,
                    self.max_examples
                ),
            ));
        }
        if self.num_tasks == Some(0) {
            return Err(Error::config(
                "data.num_tasks",
                "must be at least 1, or null for a fresh task per sequence (got 0)",
            ));
        }
        if !(self.noise_variance >= 0.0 && self.noise_variance.is_finite()) {
            return Err(Error::config(
                "data.noise_variance",
                format!("must be ≥ 0 (got {})", self.noise_variance),
            ));
        }
        Ok(())
    }

    /// Tokens per sequence (2K).
    pub fn n_ctx(&self) -> usize {
        2 * self.max_examples
    }

    /// The x tokens' positions, where y is predicted.
    pub fn loss_positions(&self) -> Vec<usize> {
        (0..self.max_examples).map(|k| 2 * k).collect()
    }

    /// The fixed task vectors of training, `[M, D]` (M finite only).
    pub fn task_set(&self) -> Option<Vec<f32>> {
        let m = self.num_tasks?;
        let mut rng = Rng::new(self.seed ^ 0x7A5C_0000_0000_0001);
        Some(
            (0..m * self.task_size)
                .map(|_| rng.normal() as f32)
                .collect(),
        )
    }

    /// `n` sequences from `rng`, their tasks drawn from `tasks` (`[M, D]`) or fresh when None.
    pub fn sample(&self, rng: &mut Rng, n: usize, tasks: Option<&[f32]>) -> RegressionSequences {
        let (d, k) = (self.task_size, self.max_examples);
        let width = d + 1;
        let sigma = self.noise_variance.sqrt();
        let mut x = Array3::<f32>::zeros((n, 2 * k, width));
        let mut y = Array3::<f32>::zeros((n, k, 1));
        let mut ws = ndarray::Array2::<f32>::zeros((n, d));
        for e in 0..n {
            let mut w = ws.row_mut(e);
            match tasks {
                Some(t) => {
                    let m = t.len() / d;
                    let i = rng.below(m as u64) as usize;
                    w.assign(&ndarray::ArrayView1::from(&t[i * d..][..d]));
                }
                None => w.iter_mut().for_each(|v| *v = rng.normal() as f32),
            }
            for j in 0..k {
                let mut dot = 0.0f32;
                for i in 0..d {
                    let xi = rng.normal() as f32;
                    x[[e, 2 * j, 1 + i]] = xi;
                    dot += w[i] * xi;
                }
                let yj = dot + (sigma * rng.normal()) as f32;
                x[[e, 2 * j + 1, 0]] = yj;
                y[[e, j, 0]] = yj;
            }
        }
        RegressionSequences {
            batch: SequenceBatch {
                x,
                loss_pos: self.loss_positions(),
                y,
            },
            tasks: ws,
        }
    }

    /// The batch of update `step`: a pure function of (seed, step).
    pub fn train_batch(
        &self,
        step: u64,
        batch_size: usize,
        tasks: Option<&[f32]>,
    ) -> SequenceBatch {
        let mut rng = Rng::new(self.seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
        self.sample(&mut rng, batch_size, tasks).batch
    }

    /// The fixed evaluation set, Gaussian tasks (`which` 0), or the training tasks (1).
    pub fn eval_set(&self, which: u64, tasks: Option<&[f32]>) -> RegressionSequences {
        let mut rng = Rng::new(self.seed ^ (0x7E57_0000_0000_0011 + which));
        self.sample(&mut rng, self.n_eval, tasks)
    }
}

/// The ridge predictions of every y from the pairs before it (penalty σ², so the posterior mean
/// under a N(0, I) prior on w), `[n, K]`, in f64. Without noise the penalty is σ²'s limit, a
/// vanishing one: the minimum-norm fit while fewer than D pairs pin w down.
pub fn ridge_predictions(batch: &SequenceBatch, noise_variance: f64) -> ndarray::Array2<f64> {
    let (n, p, width) = batch.x.dim();
    let (d, k) = (width - 1, p / 2);
    let noise_variance = noise_variance.max(1e-9);
    let mut out = ndarray::Array2::<f64>::zeros((n, k));
    for e in 0..n {
        // Running XᵀX + σ²I and Xᵀy over the context.
        let mut a = vec![0.0f64; d * d];
        for i in 0..d {
            a[i * d + i] = noise_variance;
        }
        let mut b = vec![0.0f64; d];
        for j in 0..k {
            let xj: Vec<f64> = (0..d)
                .map(|i| f64::from(batch.x[[e, 2 * j, 1 + i]]))
                .collect();
            if j > 0 {
                let w = solve(&a, &b, d);
                out[[e, j]] = w.iter().zip(&xj).map(|(w, x)| w * x).sum();
            }
            let yj = f64::from(batch.y[[e, j, 0]]);
            for r in 0..d {
                b[r] += xj[r] * yj;
                for c in 0..d {
                    a[r * d + c] += xj[r] * xj[c];
                }
            }
        }
    }
    out
}

/// A·w = b for symmetric positive definite `a [d, d]` (Cholesky), in f64.
fn solve(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut l = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = a[i * d + j] - (0..j).map(|m| l[i * d + m] * l[j * d + m]).sum::<f64>();
            l[i * d + j] = if i == j {
                s.max(f64::MIN_POSITIVE).sqrt()
            } else {
                s / l[j * d + j]
            };
        }
    }
    let mut z = vec![0.0f64; d];
    for i in 0..d {
        z[i] = (b[i] - (0..i).map(|m| l[i * d + m] * z[m]).sum::<f64>()) / l[i * d + i];
    }
    let mut w = vec![0.0f64; d];
    for i in (0..d).rev() {
        w[i] = (z[i] - (i + 1..d).map(|m| l[m * d + i] * w[m]).sum::<f64>()) / l[i * d + i];
    }
    w
}

/// Mean squared error of predictions `[n, K]` against a batch's targets, per position.
fn squared_errors(pred: &ndarray::Array2<f64>, batch: &SequenceBatch) -> Vec<f64> {
    let (n, k) = pred.dim();
    (0..k)
        .map(|j| {
            (0..n)
                .map(|e| (pred[[e, j]] - f64::from(batch.y[[e, j, 0]])).powi(2))
                .sum::<f64>()
                / n as f64
        })
        .collect()
}

impl Task for IclRegressionTask {
    fn io(&self) -> TaskIo {
        TaskIo::VectorSequences {
            d_in: self.task_size + 1,
            d_out: 1,
            n_ctx: self.n_ctx(),
        }
    }
    fn fresh_samples(&self) -> bool {
        true
    }
    fn make_data(&self, batch_size: Option<usize>) -> Result<Box<dyn TaskData>> {
        Ok(Box::new(IclRegressionRun::new(self.clone(), batch_size)))
    }
    fn info(&self) -> Option<super::TaskInfo> {
        None
    }
    fn footprint(&self, batch_size: Option<usize>) -> Footprint {
        let sets = if self.num_tasks.is_some() { 2.0 } else { 1.0 };
        // The evaluation sets' vectors and targets, and the training tasks.
        let tasks = self.num_tasks.unwrap_or(0) as f64 * self.task_size as f64 * 4.0;
        Footprint {
            examples_at_once: batch_size.unwrap_or(0).max(self.n_eval) as f64,
            data_bytes: sets
                * self.n_eval as f64
                * self.n_ctx() as f64
                * 4.0
                * (self.task_size as f64 + 2.0)
                + tasks,
        }
    }
    fn describe(&self) -> String {
        let m = match self.num_tasks {
            Some(m) => format!("{m} tasks"),
            None => "a fresh task per sequence".into(),
        };
        format!(
            "in-context linear regression: D = {}, K = {}, σ² = {}, {m}",
            self.task_size, self.max_examples, self.noise_variance
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The metric columns, in order (`test_loss_pretrain` only with finitely many tasks).
pub const ICL_REGRESSION_COLUMNS: [&str; 5] = [
    "train_loss",
    "test_loss",
    "test_loss_first",
    "test_loss_last",
    "ridge_gap",
];

/// A run's data: fresh sequences every step; a Gaussian-task evaluation set with its ridge loss,
/// and with finitely many tasks one from the training tasks too.
pub struct IclRegressionRun {
    task: IclRegressionTask,
    batch_size: Option<usize>,
    tasks: Option<Vec<f32>>,
    /// The evaluation sets as batches, built once (measured at every evaluation).
    eval: Batch,
    ridge_loss: f64,
    pretrain_eval: Option<Batch>,
}

impl IclRegressionRun {
    pub fn new(task: IclRegressionTask, batch_size: Option<usize>) -> Self {
        let tasks = task.task_set();
        let eval = task.eval_set(0, None).batch;
        let per_position = squared_errors(&ridge_predictions(&eval, task.noise_variance), &eval);
        let ridge_loss = per_position.iter().sum::<f64>() / per_position.len() as f64;
        let pretrain_eval = tasks
            .as_deref()
            .map(|t| Batch::Sequences(task.eval_set(1, Some(t)).batch));
        IclRegressionRun {
            task,
            batch_size,
            tasks,
            eval: Batch::Sequences(eval),
            ridge_loss,
            pretrain_eval,
        }
    }
}

impl TaskData for IclRegressionRun {
    fn columns(&self) -> Vec<String> {
        let mut c: Vec<String> = ICL_REGRESSION_COLUMNS.map(String::from).to_vec();
        if self.pretrain_eval.is_some() {
            c.push("test_loss_pretrain".into());
        }
        c
    }
    fn train_batch(&mut self, step: u64) -> Cow<'_, Batch> {
        let batch_size = self
            .batch_size
            .expect("validated: fresh samples need a batch size");
        Cow::Owned(Batch::Sequences(self.task.train_batch(
            step,
            batch_size,
            self.tasks.as_deref(),
        )))
    }
    fn metrics(
        &mut self,
        model: &dyn Model,
        scratch: &mut Scratch,
        last: Option<&LossStats>,
    ) -> Result<Vec<f64>> {
        let s = model.evaluate(scratch, &self.eval)?;
        let pl = &s.per_position_loss;
        // "train" is the last step's batch (before its update); at step 0 the evaluation set.
        let mut row = vec![
            last.map_or(s.loss, |l| l.loss),
            s.loss,
            pl.first().copied().unwrap_or(f64::NAN),
            pl.last().copied().unwrap_or(f64::NAN),
            s.loss - self.ridge_loss,
        ];
        if let Some(p) = &self.pretrain_eval {
            row.push(model.evaluate(scratch, p)?.loss);
        }
        Ok(row)
    }
    fn train_set(&self) -> Option<Batch> {
        None
    }
    fn test_set(&self) -> Option<Batch> {
        Some(self.eval.clone())
    }
    fn named_sets(&self) -> Vec<NamedSet> {
        let mut sets = vec![NamedSet::whole(
            "test",
            "the evaluation set (Gaussian tasks)",
            self.eval.clone(),
        )];
        if let Some(p) = &self.pretrain_eval {
            sets.push(NamedSet::whole(
                "test_pretrain",
                "sequences of the training tasks",
                p.clone(),
            ));
        }
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(num_tasks: Option<usize>) -> IclRegressionTask {
        IclRegressionTask {
            task_size: 4,
            max_examples: 16,
            num_tasks,
            noise_variance: 0.125,
            n_eval: 256,
            seed: 7,
        }
    }

    #[test]
    fn tokens_alternate_x_and_y_and_y_is_the_task_applied_to_x() {
        let t = task(None);
        let s = t.eval_set(0, None);
        let b = &s.batch;
        assert_eq!(b.x.dim(), (256, 32, 5));
        assert_eq!(b.loss_pos, (0..16).map(|k| 2 * k).collect::<Vec<_>>());
        let mut resid = 0.0f64;
        for e in 0..256 {
            for j in 0..16 {
                assert_eq!(b.x[[e, 2 * j, 0]], 0.0, "x tokens start with 0");
                assert!(
                    (1..5).all(|i| b.x[[e, 2 * j + 1, i]] == 0.0),
                    "y tokens end in 0s"
                );
                assert_eq!(b.x[[e, 2 * j + 1, 0]], b.y[[e, j, 0]]);
                let clean: f32 = (0..4)
                    .map(|i| s.tasks[[e, i]] * b.x[[e, 2 * j, 1 + i]])
                    .sum();
                resid += f64::from(b.y[[e, j, 0]] - clean).powi(2);
            }
        }
        let var = resid / (256.0 * 16.0);
        assert!((var - 0.125).abs() < 0.02, "noise variance {var}");
        // Pure in the seed and step; another step differs.
        assert_eq!(t.train_batch(3, 8, None).x, t.train_batch(3, 8, None).x);
        assert_ne!(t.train_batch(3, 8, None).x, t.train_batch(4, 8, None).x);
    }

    #[test]
    fn finitely_many_tasks_are_reused() {
        let t = task(Some(3));
        let set = t.task_set().unwrap();
        let s = t.sample(&mut Rng::new(1), 64, Some(&set));
        for e in 0..64 {
            let w: Vec<f32> = s.tasks.row(e).to_vec();
            assert!(set.chunks_exact(4).any(|c| c == &w[..]));
        }
    }

    #[test]
    fn ridge_matches_its_theory_first_and_last() {
        // At k = 1 nothing is known: the prediction is 0 and the loss E[y²] = D + σ². With 15 pairs
        // in context the posterior is tight: the loss approaches σ² (plus the posterior variance).
        let t = IclRegressionTask {
            n_eval: 4000,
            ..task(None)
        };
        let b = t.eval_set(0, None).batch;
        let pl = squared_errors(&ridge_predictions(&b, t.noise_variance), &b);
        assert!((pl[0] - 4.125).abs() < 0.25, "first {}", pl[0]);
        assert!(pl[15] < 0.2 && pl[15] > 0.125, "last {}", pl[15]);
        assert!(pl.windows(2).all(|w| w[1] < w[0] + 0.05), "{pl:?}");
    }

    #[test]
    fn without_noise_ridge_is_exact_once_d_pairs_are_seen() {
        let t = IclRegressionTask {
            noise_variance: 0.0,
            ..task(None)
        };
        let b = t.eval_set(0, None).batch;
        let pl = squared_errors(&ridge_predictions(&b, 0.0), &b);
        assert!(pl.iter().all(|l| l.is_finite()), "{pl:?}");
        // With 4 or more pairs w is determined: the prediction is exact.
        assert!(pl[4..].iter().all(|&l| l < 1e-6), "{pl:?}");
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (t, key) in [
            (
                IclRegressionTask {
                    task_size: 0,
                    ..task(None)
                },
                "data.task_size",
            ),
            (task(Some(0)), "data.num_tasks"),
            (
                IclRegressionTask {
                    noise_variance: -1.0,
                    ..task(None)
                },
                "data.noise_variance",
            ),
            (
                IclRegressionTask {
                    max_examples: 0,
                    ..task(None)
                },
                "data.max_examples",
            ),
        ] {
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
