//! Tasks: datasets with their inputs, targets and train/test splits, and the metrics a run logs.
//! A task makes [`Batch`]es; any model that takes that kind of batch trains on it.
//!
//! Every task's training batches are pure functions of (data seed, step), so a resumed run sees
//! exactly the batches an uninterrupted one does and no RNG state needs saving.

pub mod digits;
pub mod files;
pub mod icl_regression;
pub mod induction;
pub mod modular;
pub mod regression;
pub mod superposition;
pub mod triggers;

use crate::batch::{Batch, LossStats, TaskIo};
use crate::engine::rng::Rng;
use crate::error::{closest, typed_section, Error, Result};
use crate::models::{Model, Scratch};
use modular::{ModularTask, Op, Split};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

/// Every task kind, as `data.task` names them: the one registration point. A task is its own file
/// with a [`TaskSection`] and a [`Task`], plus its line here.
/// Whether a task is one of the in-context tasks whose runs `analyze` reads for a phase change
/// (their metric columns are [`induction::INDUCTION_COLUMNS`]).
pub fn in_context(task: &dyn Task) -> bool {
    task.downcast::<induction::InductionTask>().is_some()
        || task.downcast::<triggers::TriggersTask>().is_some()
}

pub const TASKS: &[TaskKind] = &[
    TaskKind::of::<modular::ModularSection>(),
    TaskKind::of::<digits::DigitsSection>(),
    TaskKind::of::<superposition::SuperpositionSection>(),
    TaskKind::of::<regression::RegressionSection>(),
    TaskKind::of::<files::FilesSection>(),
    TaskKind::of::<induction::InductionSection>(),
    TaskKind::of::<triggers::TriggersSection>(),
    TaskKind::of::<icl_regression::IclRegressionSection>(),
];

/// A task's config section (`data:` without its `task` tag), as YAML holds it: a serde struct
/// with `deny_unknown_fields`, whose field names are the keys that errors name (`data.<field>`).
pub trait TaskSection: Serialize + DeserializeOwned {
    /// Its name in `data.task`.
    const NAME: &'static str;
    /// The task, range-checked (errors name `data.<key>`); `seed` is the experiment's.
    fn configure(self, seed: u64) -> Result<Arc<dyn Task>>;
}

/// A registered task kind: its name and its section's two steps, typed by [`TaskKind::of`].
pub struct TaskKind {
    pub name: &'static str,
    /// The section typed and back, every field present (errors name the key).
    pub normalize: fn(Value, &str) -> Result<Value>,
    /// A normalized section checked and resolved, with the experiment's seed.
    pub configure: fn(&Value, u64) -> Result<Arc<dyn Task>>,
}

impl TaskKind {
    pub const fn of<S: TaskSection>() -> TaskKind {
        TaskKind {
            name: S::NAME,
            normalize: normalize_as::<S>,
            configure: configure_as::<S>,
        }
    }
}

fn normalize_as<S: TaskSection>(section: Value, source: &str) -> Result<Value> {
    crate::error::normalized::<S>(section, "data", source)
}

fn configure_as<S: TaskSection>(section: &Value, seed: u64) -> Result<Arc<dyn Task>> {
    typed_section::<S>(section.clone(), "data", "data")?.configure(seed)
}

/// The task kind called `name`; the error names `data.task` and suggests the nearest.
pub fn task_kind(name: &str) -> Result<&'static TaskKind> {
    TASKS.iter().find(|k| k.name == name).ok_or_else(|| {
        let names: Vec<&str> = TASKS.iter().map(|k| k.name).collect();
        let near = closest(name, names.iter().copied(), 1);
        Error::config(
            "data.task",
            format!(
                "unknown `{name}`{}; one of {}",
                near.first()
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default(),
                names.join(", ")
            ),
        )
    })
}

/// A task resolved from its section: what it feeds a model, its data, and what runs record of it.
pub trait Task: std::fmt::Debug + Send + Sync + Any {
    /// Inputs and outputs, which a model sizes itself from.
    fn io(&self) -> TaskIo;
    /// Whether every step draws fresh samples (then there is no full batch).
    fn fresh_samples(&self) -> bool;
    /// A run's data, `batch_size` examples a step (None: the whole training set every step).
    fn make_data(&self, batch_size: Option<usize>) -> Result<Box<dyn TaskData>>;
    /// What a checkpoint records about the task for analyses that need it (None: nothing beyond
    /// the experiment, which every checkpoint records).
    fn info(&self) -> Option<TaskInfo>;
    /// For the memory estimate: the most examples a run evaluates or trains on at once, and the
    /// bytes the task's own data holds.
    fn footprint(&self, batch_size: Option<usize>) -> Footprint;
    /// One line for titles, such as "(a + b) mod 113, 30% of pairs in train".
    fn describe(&self) -> String;
    /// A checksum of data read from outside the config (files), which checkpoints record so that a
    /// resume on changed data is refused; None where the config and seed make the data.
    fn data_checksum(&self) -> Option<String> {
        None
    }
    fn as_any(&self) -> &dyn Any;
}

impl dyn Task {
    /// The task as its concrete type, if it is one.
    pub fn downcast<T: Task>(&self) -> Option<&T> {
        self.as_any().downcast_ref::<T>()
    }
}

/// What a task holds and feeds at once, for the memory estimate (f64: absurd sizes cannot
/// overflow).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Footprint {
    pub examples_at_once: f64,
    pub data_bytes: f64,
}

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
    /// The held-out set the metrics' "test" columns are evaluated on.
    fn test_set(&self) -> Option<Batch>;
    /// The named example sets a λ̂ can be sampled on or observed on (the data-refined LLC), named
    /// as the metric columns name them: `train` and `test` where the task has them; tasks add
    /// their own (each digit, first occurrences and repeats).
    fn named_sets(&self) -> Vec<NamedSet> {
        let mut sets = Vec::new();
        if let Some(b) = self.train_set() {
            sets.push(NamedSet::whole("train", "the training set", b));
        }
        if let Some(b) = self.test_set() {
            sets.push(NamedSet::whole("test", "the held-out set", b));
        }
        sets
    }
}

/// A named set of examples whose loss can be measured: all of a batch's loss positions, or only
/// those `positions` marks in each example.
#[derive(Clone, Debug)]
pub struct NamedSet {
    pub name: String,
    pub about: String,
    pub batch: Batch,
    /// `[examples, loss positions]`: the positions that count (token batches only); None: all.
    pub positions: Option<ndarray::Array2<bool>>,
}

impl NamedSet {
    pub fn whole(name: &str, about: &str, batch: Batch) -> Self {
        NamedSet {
            name: name.into(),
            about: about.into(),
            batch,
            positions: None,
        }
    }

    /// The first `n` examples.
    pub fn head(&self, n: usize) -> NamedSet {
        let n = n.min(self.batch.len());
        NamedSet {
            batch: self.batch.head(n),
            positions: self
                .positions
                .as_ref()
                .map(|p| p.slice(ndarray::s![..n, ..]).to_owned()),
            ..self.clone()
        }
    }

    /// The mean loss of `model` on the set: the model's own loss where every position counts,
    /// else the mean cross-entropy over the marked positions (from the logits, in f64).
    pub fn loss(&self, model: &dyn Model, scratch: &mut Scratch) -> Result<f64> {
        let Some(marks) = &self.positions else {
            return Ok(model.evaluate(scratch, &self.batch)?.loss);
        };
        let Batch::Tokens(b) = &self.batch else {
            return Err(Error::Input(format!(
                "the set `{}` marks loss positions but holds no tokens",
                self.name
            )));
        };
        let logits = model.forward(crate::batch::Input::Tokens(b.tokens.view()))?;
        if logits.ndim() != 3 {
            return Err(Error::Input(format!(
                "the set `{}` needs per-position logits; a `{}` model gives one output per example",
                self.name,
                model.arch()
            )));
        }
        let (mut total, mut count) = (0.0f64, 0usize);
        for e in 0..b.tokens.nrows() {
            for (j, &p) in b.loss_pos.iter().enumerate() {
                if marks[[e, j]] {
                    let row = logits.slice(ndarray::s![e, p, ..]);
                    total += token_loss(row, b.targets[[e, j]] as usize);
                    count += 1;
                }
            }
        }
        if count == 0 {
            return Err(Error::Input(format!(
                "the set `{}` marks no loss position in its examples",
                self.name
            )));
        }
        Ok(total / count as f64)
    }
}

/// −log softmax(row)[target], in f64.
pub(crate) fn token_loss(row: ndarray::ArrayView1<f32>, target: usize) -> f64 {
    log_sum_exp(row) - f64::from(row[target])
}

/// log Σ exp(row), in f64 with libm's exp and log (the same bits on every machine).
pub fn log_sum_exp(row: ndarray::ArrayView1<f32>) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    f64::from(max)
        + libm::log(
            row.iter()
                .map(|&x| libm::exp(f64::from(x) - f64::from(max)))
                .sum::<f64>(),
        )
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

/// A task's data when it has a fixed training set and a fixed test set: the whole training set every
/// step, or minibatches in epoch order; the metrics are the loss (and, for tokens, the accuracy) on
/// both sets.
pub struct FixedSets {
    train: Batch,
    test: Batch,
    order: Option<EpochOrder>,
}

impl FixedSets {
    /// `batch_size` None: the whole training set every step; minibatch order from `seed`.
    pub fn new(train: Batch, test: Batch, batch_size: Option<usize>, seed: u64) -> Self {
        FixedSets {
            order: batch_size.map(|bs| EpochOrder::new(train.len(), bs, seed)),
            train,
            test,
        }
    }
}

impl TaskData for FixedSets {
    fn columns(&self) -> Vec<String> {
        match self.train {
            Batch::Tokens(_) => LOSS_ACC_COLUMNS.map(String::from).to_vec(),
            Batch::Dense(_) | Batch::Sequences(_) => vec!["train_loss".into(), "test_loss".into()],
        }
    }
    fn train_batch(&mut self, step: u64) -> Cow<'_, Batch> {
        match &mut self.order {
            None => Cow::Borrowed(&self.train),
            Some(o) => Cow::Owned(self.train.select(o.batch(step))),
        }
    }
    fn metrics(
        &mut self,
        model: &dyn Model,
        scratch: &mut Scratch,
        _: Option<&LossStats>,
    ) -> Result<Vec<f64>> {
        let tr = model.evaluate(scratch, &self.train)?;
        let te = model.evaluate(scratch, &self.test)?;
        Ok(match self.train {
            Batch::Tokens(_) => loss_acc(&tr, &te),
            Batch::Dense(_) | Batch::Sequences(_) => vec![tr.loss, te.loss],
        })
    }
    fn train_set(&self) -> Option<Batch> {
        Some(self.train.clone())
    }
    fn test_set(&self) -> Option<Batch> {
        Some(self.test.clone())
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
