//! What crosses between tasks and models: a task makes batches, a model takes them and returns its
//! loss statistics. Neither side needs to know the other's kind.

use crate::engine::rng::Rng;
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};

/// Token inputs with classification targets. `targets[b, i]` is the answer at position `loss_pos[i]`
/// (increasing). A model without positions (the ToyMLP) reads one row of tokens per example and
/// takes `targets[b, 0]`.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    pub tokens: Array2<u32>,
    pub loss_pos: Vec<usize>,
    pub targets: Array2<u32>,
}

/// Real-valued inputs `x [batch, n_in]` with regression targets `y [batch, n_out]`; `y` absent means
/// the target is the input itself (an autoencoder, as the superposition model).
#[derive(Clone, Debug)]
pub struct DenseBatch {
    pub x: Array2<f32>,
    pub y: Option<Array2<f32>>,
}

/// Sequences of real vectors `x [batch, pos, d_in]` with real targets `y [batch, i, d_out]` at the
/// positions `loss_pos[i]` (increasing), scored by squared error: in-context regression, where each
/// token is a vector.
#[derive(Clone, Debug)]
pub struct SequenceBatch {
    pub x: Array3<f32>,
    pub loss_pos: Vec<usize>,
    pub y: Array3<f32>,
}

/// A batch of any task.
#[derive(Clone, Debug)]
pub enum Batch {
    Tokens(TokenBatch),
    Dense(DenseBatch),
    Sequences(SequenceBatch),
}

impl From<TokenBatch> for Batch {
    fn from(b: TokenBatch) -> Self {
        Batch::Tokens(b)
    }
}

impl From<DenseBatch> for Batch {
    fn from(b: DenseBatch) -> Self {
        Batch::Dense(b)
    }
}

impl From<SequenceBatch> for Batch {
    fn from(b: SequenceBatch) -> Self {
        Batch::Sequences(b)
    }
}

impl Batch {
    /// Examples in the batch.
    pub fn len(&self) -> usize {
        match self {
            Batch::Tokens(b) => b.tokens.nrows(),
            Batch::Dense(b) => b.x.nrows(),
            Batch::Sequences(b) => b.x.dim().0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inputs alone (what a forward pass with hooks takes).
    pub fn input(&self) -> Input<'_> {
        match self {
            Batch::Tokens(b) => Input::Tokens(b.tokens.view()),
            Batch::Dense(b) => Input::Dense(b.x.view()),
            Batch::Sequences(b) => Input::Sequences(b.x.view()),
        }
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn head(&self, n: usize) -> Batch {
        let n = n.min(self.len());
        match self {
            Batch::Tokens(b) => Batch::Tokens(TokenBatch {
                tokens: b.tokens.slice(ndarray::s![..n, ..]).to_owned(),
                loss_pos: b.loss_pos.clone(),
                targets: b.targets.slice(ndarray::s![..n, ..]).to_owned(),
            }),
            Batch::Dense(b) => Batch::Dense(DenseBatch {
                x: b.x.slice(ndarray::s![..n, ..]).to_owned(),
                y: b.y
                    .as_ref()
                    .map(|y| y.slice(ndarray::s![..n, ..]).to_owned()),
            }),
            Batch::Sequences(b) => Batch::Sequences(SequenceBatch {
                x: b.x.slice(ndarray::s![..n, .., ..]).to_owned(),
                loss_pos: b.loss_pos.clone(),
                y: b.y.slice(ndarray::s![..n, .., ..]).to_owned(),
            }),
        }
    }

    /// The examples of `parts` (of one kind and width) one after another.
    pub fn concat(parts: &[Batch]) -> Option<Batch> {
        let first = parts.first()?;
        let ax = ndarray::Axis(0);
        Some(match first {
            Batch::Tokens(t0) => {
                let mut tokens = Vec::new();
                let mut targets = Vec::new();
                for p in parts {
                    let Batch::Tokens(t) = p else { return None };
                    if t.loss_pos != t0.loss_pos {
                        return None;
                    }
                    tokens.push(t.tokens.view());
                    targets.push(t.targets.view());
                }
                Batch::Tokens(TokenBatch {
                    tokens: ndarray::concatenate(ax, &tokens).ok()?,
                    loss_pos: t0.loss_pos.clone(),
                    targets: ndarray::concatenate(ax, &targets).ok()?,
                })
            }
            Batch::Dense(d0) => {
                let mut xs = Vec::new();
                let mut ys = Vec::new();
                for p in parts {
                    let Batch::Dense(d) = p else { return None };
                    xs.push(d.x.view());
                    if let Some(y) = &d.y {
                        ys.push(y.view());
                    }
                }
                Batch::Dense(DenseBatch {
                    x: ndarray::concatenate(ax, &xs).ok()?,
                    y: match &d0.y {
                        Some(_) => Some(ndarray::concatenate(ax, &ys).ok()?),
                        None => None,
                    },
                })
            }
            Batch::Sequences(s0) => {
                let mut xs = Vec::new();
                let mut ys = Vec::new();
                for p in parts {
                    let Batch::Sequences(s) = p else { return None };
                    if s.loss_pos != s0.loss_pos {
                        return None;
                    }
                    xs.push(s.x.view());
                    ys.push(s.y.view());
                }
                Batch::Sequences(SequenceBatch {
                    x: ndarray::concatenate(ax, &xs).ok()?,
                    loss_pos: s0.loss_pos.clone(),
                    y: ndarray::concatenate(ax, &ys).ok()?,
                })
            }
        })
    }

    /// The examples at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Batch {
        let ax = ndarray::Axis(0);
        match self {
            Batch::Tokens(b) => Batch::Tokens(TokenBatch {
                tokens: b.tokens.select(ax, rows),
                loss_pos: b.loss_pos.clone(),
                targets: b.targets.select(ax, rows),
            }),
            Batch::Dense(b) => Batch::Dense(DenseBatch {
                x: b.x.select(ax, rows),
                y: b.y.as_ref().map(|y| y.select(ax, rows)),
            }),
            Batch::Sequences(b) => Batch::Sequences(SequenceBatch {
                x: b.x.select(ax, rows),
                loss_pos: b.loss_pos.clone(),
                y: b.y.select(ax, rows),
            }),
        }
    }
}

/// The inputs of a forward pass: tokens `[batch, pos]`, features `[batch, n_in]` or vector
/// tokens `[batch, pos, d_in]`.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Tokens(ArrayView2<'a, u32>),
    Dense(ArrayView2<'a, f32>),
    Sequences(ArrayView3<'a, f32>),
}

/// Mean loss and accuracy over all loss positions, and per loss position (per instance for the
/// superposition model, whose `loss` is the sum over instances).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossStats {
    pub loss: f64,
    pub accuracy: f64,
    pub per_position_loss: Vec<f64>,
    pub per_position_accuracy: Vec<f64>,
    /// Fraction of examples right at every loss position (a whole answer, as an n-digit sum).
    pub exact_match: f64,
}

/// What a task feeds a model and asks of it. A model kind sizes itself from this alone, never from
/// the task's kind, so any model that takes a task's batches trains on it.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskIo {
    /// Token sequences of `n_ctx` positions over `d_vocab` tokens, classified into `d_vocab_out`
    /// classes at the loss positions. `pair_vocab`: `Some(p)` where every example is two tokens
    /// below p (then fixed tokens) with one label below p, which a model without positions (the
    /// ToyMLP) can take.
    Tokens {
        d_vocab: usize,
        d_vocab_out: usize,
        n_ctx: usize,
        pair_vocab: Option<usize>,
    },
    /// Real vectors in, real vectors out (regression: squared error).
    Vectors { n_in: usize, n_out: usize },
    /// Sequences of `n_ctx` real vectors of width `d_in`, with real targets of width `d_out` at the
    /// loss positions (in-context regression: squared error).
    VectorSequences {
        d_in: usize,
        d_out: usize,
        n_ctx: usize,
    },
    /// Sparse features to reconstruct through a bottleneck, one model per instance (Toy Models of
    /// Superposition): the data's own parameters, which the model's loss weights by.
    SparseFeatures(FeatureSpec),
}

/// Toy Models of Superposition's data: `n_features` features, each present with an instance's
/// probability (log-spaced from `max_feature_probability` down to `min_feature_probability` over
/// `n_instances`), uniform in [0, 1) when present; feature f has importance `importance_decay^f`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSpec {
    pub n_features: usize,
    pub n_instances: usize,
    pub importance_decay: f64,
    pub max_feature_probability: f64,
    pub min_feature_probability: f64,
    /// Seed of the sampled inputs.
    pub data_seed: u64,
}

impl FeatureSpec {
    /// Range checks, naming the `data.` keys.
    pub fn validate(&self) -> crate::error::Result<()> {
        use crate::error::Error;
        for (k, v) in [
            ("data.n_features", self.n_features),
            ("data.n_instances", self.n_instances),
        ] {
            if v == 0 {
                return Err(Error::config(k, "must be at least 1 (got 0)"));
            }
        }
        for (k, v) in [
            ("data.max_feature_probability", self.max_feature_probability),
            ("data.min_feature_probability", self.min_feature_probability),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::config(
                    k,
                    format!("a probability must be in (0, 1] (got {v})"),
                ));
            }
        }
        let d = self.importance_decay;
        if !(d > 0.0 && d.is_finite()) {
            return Err(Error::config(
                "data.importance_decay",
                format!("must be a positive number (got {d})"),
            ));
        }
        Ok(())
    }

    /// Importance of each feature.
    pub fn importance(&self) -> Vec<f32> {
        (0..self.n_features)
            .map(|f| self.importance_decay.powi(f as i32) as f32)
            .collect()
    }

    /// Feature probability of each instance: log-spaced from max to min (max · (min/max)^(i/(n−1))).
    pub fn feature_probability(&self) -> Vec<f64> {
        let n = self.n_instances;
        let (hi, lo) = (self.max_feature_probability, self.min_feature_probability);
        (0..n)
            .map(|i| {
                if n == 1 {
                    hi
                } else {
                    hi * libm::pow(lo / hi, i as f64 / (n - 1) as f64)
                }
            })
            .collect()
    }

    /// A batch `[batch, n_instances, n_features]`: each feature present with its instance's
    /// probability, then uniform in [0, 1).
    pub fn sample(&self, rng: &mut Rng, batch: usize) -> Vec<f32> {
        let probs = self.feature_probability();
        let mut x = Vec::with_capacity(batch * self.n_instances * self.n_features);
        for _ in 0..batch {
            for &p in &probs {
                for _ in 0..self.n_features {
                    let value = rng.uniform() as f32;
                    let present = rng.uniform() < p;
                    x.push(if present { value } else { 0.0 });
                }
            }
        }
        x
    }

    /// The training batch of update `step`: a pure function of (data seed, step).
    pub fn train_batch(&self, step: u64, batch: usize) -> Vec<f32> {
        self.sample(
            &mut Rng::new(self.data_seed ^ step.wrapping_mul(0xA076_1D64_78BD_642F)),
            batch,
        )
    }

    /// The fixed evaluation batch.
    pub fn eval_batch(&self, n: usize) -> Vec<f32> {
        self.sample(&mut Rng::new(self.data_seed ^ 0xE7A1_0000_0000_0005), n)
    }
}

impl TaskIo {
    /// A short description for errors ("token sequences", ...).
    pub fn describe(&self) -> &'static str {
        match self {
            TaskIo::Tokens { .. } => "token sequences",
            TaskIo::Vectors { .. } => "real vectors with real targets",
            TaskIo::VectorSequences { .. } => "sequences of real vectors with real targets",
            TaskIo::SparseFeatures(_) => "sparse features to reconstruct",
        }
    }
}
