//! Modular arithmetic, Nanda et al.'s grokking task: inputs `[a, b, =]` with `=` the token `p`, the
//! answer `(a op b) mod p` predicted at the last position.

use super::TaskData;
use crate::batch::TokenBatch;
use crate::error::{Error, Result};
use crate::models::{Model, Scratch};
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
    /// `+`, `-` or `*`.
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
        }
    }

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
    pub fn all_pairs_batch(p: usize, op: Op) -> TokenBatch {
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
    pub fn batch(&self, pairs: &[Pair]) -> TokenBatch {
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
        TokenBatch {
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
    model: &dyn Model,
    p: usize,
    op: Op,
    split: Option<&ModularTask>,
) -> Result<ModularEval> {
    let mut scratch = Scratch::new();
    let all = model
        .evaluate(&mut scratch, &ModularTask::all_pairs_batch(p, op).into())
        .map_err(|e| {
            Error::Input(format!(
                "the model does not fit modular arithmetic with p = {p}: {e}"
            ))
        })?;
    let mut out = ModularEval {
        loss_all: all.loss,
        acc_all: all.accuracy,
        ..Default::default()
    };
    if let Some(s) = split {
        let (train, test) = s.split_pairs();
        let tr = model.evaluate(&mut scratch, &s.batch(&train).into())?;
        let te = model.evaluate(&mut scratch, &s.batch(&test).into())?;
        out.loss_train = Some(tr.loss);
        out.acc_train = Some(tr.accuracy);
        out.loss_test = Some(te.loss);
        out.acc_test = Some(te.accuracy);
    }
    Ok(out)
}

/// `data:` of `task: modular`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModularSection {
    pub p: usize,
    pub op: Op,
    /// Fraction of the p² pairs in train (Python's `int(frac_train·p²)` of them).
    pub frac_train: f64,
    /// `random` (toylens' seeded shuffle) or `reference` (the original code's CPython shuffle).
    pub split: Split,
    /// Seed of the split; null means the top-level `seed`.
    pub seed: Option<u64>,
}

impl super::TaskSection for ModularSection {
    const NAME: &'static str = "modular";
    fn configure(self, seed: u64) -> Result<std::sync::Arc<dyn super::Task>> {
        let task = ModularTask {
            p: self.p,
            op: self.op,
            frac_train: self.frac_train,
            seed: self.seed.unwrap_or(seed),
            split: self.split,
        };
        task.validate("data.")?;
        Ok(std::sync::Arc::new(task))
    }
}

/// Inputs `a b =` (n_ctx 3), p + 1 tokens in and out as in the original code.
impl super::Task for ModularTask {
    fn io(&self) -> crate::batch::TaskIo {
        crate::batch::TaskIo::Tokens {
            d_vocab: self.p + 1,
            d_vocab_out: self.p + 1,
            n_ctx: 3,
            pair_vocab: Some(self.p),
        }
    }
    fn fresh_samples(&self) -> bool {
        false
    }
    fn make_data(&self, batch_size: Option<usize>) -> Result<Box<dyn TaskData>> {
        let (train, test) = self.split_pairs();
        Ok(Box::new(super::FixedSets::new(
            self.batch(&train).into(),
            self.batch(&test).into(),
            batch_size,
            self.seed,
        )))
    }
    fn info(&self) -> Option<super::TaskInfo> {
        Some(super::TaskInfo::from_modular(self))
    }
    fn footprint(&self, _: Option<usize>) -> super::Footprint {
        // Evaluation runs all p² pairs at once.
        let pairs = (self.p as f64).powi(2);
        super::Footprint {
            examples_at_once: pairs,
            data_bytes: pairs * 4.0 * 4.0,
        }
    }
    fn describe(&self) -> String {
        format!(
            "(a {} b) mod {}, {:.0}% of pairs in train",
            self.op.symbol(),
            self.p,
            100.0 * self.frac_train
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
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
