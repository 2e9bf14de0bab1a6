//! What crosses between tasks and models: a task makes batches, a model takes them and returns its
//! loss statistics. Neither side needs to know the other's kind.

use ndarray::{Array2, ArrayView2};

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

/// A batch of any task.
#[derive(Clone, Debug)]
pub enum Batch {
    Tokens(TokenBatch),
    Dense(DenseBatch),
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

impl Batch {
    /// Examples in the batch.
    pub fn len(&self) -> usize {
        match self {
            Batch::Tokens(b) => b.tokens.nrows(),
            Batch::Dense(b) => b.x.nrows(),
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
        }
    }
}

/// The inputs of a forward pass: tokens `[batch, pos]` or features `[batch, n_in]`.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Tokens(ArrayView2<'a, u32>),
    Dense(ArrayView2<'a, f32>),
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
