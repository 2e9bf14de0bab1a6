//! Modular arithmetic, Nanda et al.'s grokking task: inputs `[a, b, =]` with `=` the token `p`, the
//! answer `(a op b) mod p` predicted at the last position.

use crate::error::{Error, Result};
use crate::models::transformer::{Batch, Transformer, Workspace};
use crate::pyrandom::PyRandom;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    #[default]
    Add,
    Sub,
    Mul,
}

impl Op {
    pub fn apply(self, a: u64, b: u64, p: u64) -> u64 {
        match self {
            Op::Add => (a + b) % p,
            Op::Sub => (a + p - b) % p,
            Op::Mul => (a * b) % p,
        }
    }
}

/// An input pair `(a, b)`.
pub type Pair = (u32, u32);

/// How pairs are split into train and test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// toylens' own seeded shuffle.
    #[default]
    Random,
    /// The original code's: all (i, j), i major, `random.seed(seed); random.shuffle(pairs)` in CPython,
    /// the first `int(frac_train·p·p)` pairs train.
    Reference,
}

/// The task description stored with checkpoints (metadata `toylens.task`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModularTask {
    pub p: usize,
    #[serde(default)]
    pub op: Op,
    pub frac_train: f64,
    pub seed: u64,
    #[serde(default)]
    pub split: Split,
}

impl ModularTask {
    pub fn validate(&self, prefix: &str) -> Result<()> {
        if self.p < 2 {
            return Err(Error::config(
                format!("{prefix}p"),
                format!("must be at least 2 (got {})", self.p),
            ));
        }
        if !(self.frac_train > 0.0 && self.frac_train < 1.0) {
            return Err(Error::config(
                format!("{prefix}frac_train"),
                format!("must be strictly between 0 and 1 (got {})", self.frac_train),
            ));
        }
        Ok(())
    }

    /// Every pair `(a, b)`, a major.
    pub fn all_pairs(&self) -> Vec<Pair> {
        let p = self.p as u32;
        (0..p).flat_map(|a| (0..p).map(move |b| (a, b))).collect()
    }

    /// Number of training pairs, computed as Python's `int(frac_train * p * p)` (same rounding).
    pub fn n_train(&self) -> usize {
        (self.frac_train * self.p as f64 * self.p as f64) as usize
    }

    /// (train, test) pairs.
    pub fn split_pairs(&self) -> (Vec<Pair>, Vec<Pair>) {
        let mut pairs = self.all_pairs();
        match self.split {
            Split::Reference => PyRandom::new(self.seed as i128).shuffle(&mut pairs),
            Split::Random => crate::engine::rng::Rng::new(self.seed).shuffle(&mut pairs),
        }
        let test = pairs.split_off(self.n_train());
        (pairs, test)
    }

    /// Every pair `(a, b)` as one batch (a major), for evaluation and analysis.
    pub fn all_pairs_batch(p: usize, op: Op) -> Batch {
        let t = ModularTask {
            p,
            op,
            frac_train: 0.5,
            seed: 0,
            split: Split::Random,
        };
        t.batch(&t.all_pairs())
    }

    /// Inputs `[a, b, p]`, loss at position 2, targets `(a op b) mod p`.
    pub fn batch(&self, pairs: &[Pair]) -> Batch {
        let p = self.p as u32;
        let tokens = Array2::from_shape_fn((pairs.len(), 3), |(i, j)| match j {
            0 => pairs[i].0,
            1 => pairs[i].1,
            _ => p,
        });
        let targets = Array2::from_shape_fn((pairs.len(), 1), |(i, _)| {
            self.op
                .apply(pairs[i].0 as u64, pairs[i].1 as u64, p as u64) as u32
        });
        Batch {
            tokens,
            loss_pos: vec![2],
            targets,
        }
    }
}

/// Loss and accuracy of a modular-arithmetic model on all p² pairs, and on train and test when the
/// split is known.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModularEval {
    pub loss_all: f64,
    pub acc_all: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_train: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_train: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_test: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_test: Option<f64>,
}

/// Evaluate `model` on modulus `p` with `op`; `split` (when known) adds train and test figures.
pub fn evaluate(
    model: &Transformer,
    p: usize,
    op: Op,
    split: Option<&ModularTask>,
) -> Result<ModularEval> {
    let cfg = &model.cfg;
    if cfg.d_vocab < p + 1 || cfg.d_vocab_out() < p || cfg.n_ctx < 3 {
        return Err(Error::Input(format!(
            "the model (d_vocab {}, d_vocab_out {}, n_ctx {}) does not fit modular arithmetic with p = {p}: it needs d_vocab ≥ p+1, d_vocab_out ≥ p, n_ctx ≥ 3",
            cfg.d_vocab,
            cfg.d_vocab_out(),
            cfg.n_ctx
        )));
    }
    let mut ws = Workspace::new();
    let all = model.evaluate(&mut ws, &ModularTask::all_pairs_batch(p, op))?;
    let mut out = ModularEval {
        loss_all: all.loss,
        acc_all: all.accuracy,
        ..Default::default()
    };
    if let Some(s) = split {
        let (train, test) = s.split_pairs();
        let tr = model.evaluate(&mut ws, &s.batch(&train))?;
        let te = model.evaluate(&mut ws, &s.batch(&test))?;
        out.loss_train = Some(tr.loss);
        out.acc_train = Some(tr.accuracy);
        out.loss_test = Some(te.loss);
        out.acc_test = Some(te.accuracy);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_split_matches_the_original_code() {
        // Printed by CPython: random.seed(1); random.shuffle(pairs) for p = 113.
        let t = ModularTask {
            p: 113,
            op: Op::Add,
            frac_train: 0.3,
            seed: 1,
            split: Split::Reference,
        };
        let (train, test) = t.split_pairs();
        assert_eq!(train.len(), 3830);
        assert_eq!(test.len(), 113 * 113 - 3830);
        assert_eq!(&train[..4], &[(58, 58), (76, 57), (60, 23), (100, 89)]);
        assert_eq!(train[3829], (25, 50));
        assert_eq!(*test.last().unwrap(), (19, 54));
    }
}
