//! Tasks: datasets with their inputs, targets and train/test splits, and the metrics a run logs.
//! A task makes [`Batch`]es; any model that takes that kind of batch trains on it.
//!
//! Every task's training batches are pure functions of (data seed, step), so a resumed run sees
//! exactly the batches an uninterrupted one does and no RNG state needs saving.

pub mod digits;
pub mod modular;
pub mod regression;
pub mod superposition;

use crate::batch::{Batch, LossStats};
use crate::engine::rng::Rng;
use crate::error::Result;
use crate::models::{Model, Scratch};
use modular::{ModularTask, Op, Split};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// A task's data for one run: training batches by step, and the metrics evaluated on its sets.
pub trait TaskData: Send {
    /// Names of the values [`TaskData::metrics`] returns, in order.
    fn columns(&self) -> Vec<String>;
    /// The batch of update `step` (1-based).
    fn train_batch(&mut self, step: u64) -> Cow<'_, Batch>;
    /// The values of [`TaskData::columns`] for `model` now; `last` is the last update's batch
    /// statistics (what "train" reports where every step draws fresh samples).
    fn metrics(
        &mut self,
        model: &dyn Model,
        scratch: &mut Scratch,
        last: Option<&LossStats>,
    ) -> Result<Vec<f64>>;
    /// The whole fixed training set as one batch (None where every step draws fresh samples).
    fn train_set(&self) -> Option<Batch>;
}

/// Minibatch order over a fixed train set: each epoch is a shuffle of `0..n` seeded by (seed, epoch),
/// cut into batches of `bs` (the last one may be short). A pure function of the step; the current
/// epoch's shuffle is kept, so a step costs its batch, not a shuffle of the whole set.
pub struct EpochOrder {
    n: usize,
    bs: usize,
    seed: u64,
    epoch: Option<u64>,
    perm: Vec<usize>,
}

impl EpochOrder {
    pub fn new(n: usize, bs: usize, seed: u64) -> Self {
        EpochOrder {
            n,
            bs,
            seed,
            epoch: None,
            perm: Vec::new(),
        }
    }

    /// Indices of update `step`'s minibatch (1-based).
    pub fn batch(&mut self, step: u64) -> &[usize] {
        let per_epoch = self.n.div_ceil(self.bs) as u64;
        let (epoch, k) = ((step - 1) / per_epoch, ((step - 1) % per_epoch) as usize);
        if self.epoch != Some(epoch) {
            self.perm = (0..self.n).collect();
            Rng::new(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut self.perm);
            self.epoch = Some(epoch);
        }
        &self.perm[k * self.bs..((k + 1) * self.bs).min(self.n)]
    }
}

/// `train_loss, train_acc, test_loss, test_acc` of two stats.
pub(crate) fn loss_acc(train: &LossStats, test: &LossStats) -> Vec<f64> {
    vec![train.loss, train.accuracy, test.loss, test.accuracy]
}

pub(crate) const LOSS_ACC_COLUMNS: [&str; 4] = ["train_loss", "train_acc", "test_loss", "test_acc"];

/// What a checkpoint records about the task it was trained on (metadata `toylens.task`). Fields of
/// the split are absent when unknown (an imported checkpoint without its config, say).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskInfo {
    Modular {
        p: usize,
        #[serde(default)]
        op: Op,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frac_train: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        split: Option<Split>,
    },
    /// n-digit addition (see [`digits::DigitsTask`]).
    Digits { n_digits: usize, reverse_sum: bool },
    /// Toy Models of Superposition; the features and their probabilities are in the model config.
    Superposition {},
    /// Linear regression on Gaussian inputs (see [`regression::RegressionTask`]).
    Regression(regression::RegressionTask),
}

impl TaskInfo {
    pub fn from_modular(t: &ModularTask) -> Self {
        TaskInfo::Modular {
            p: t.p,
            op: t.op,
            frac_train: Some(t.frac_train),
            seed: Some(t.seed),
            split: Some(t.split),
        }
    }

    /// The full modular task when its split is known.
    pub fn modular_task(&self) -> Option<ModularTask> {
        match *self {
            TaskInfo::Modular {
                p,
                op,
                frac_train: Some(frac_train),
                seed: Some(seed),
                split: Some(split),
            } => Some(ModularTask {
                p,
                op,
                frac_train,
                seed,
                split,
            }),
            _ => None,
        }
    }
}
