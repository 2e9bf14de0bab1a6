//! In-context repetition, the task induction heads solve (Olsson et al. 2022).
//!
//! A sequence is `n_ctx` tokens drawn uniformly from `d_vocab`, in which one segment of
//! `min_repeat..=max_repeat` tokens (its length drawn per sequence) is copied to a later position,
//! both positions drawn per sequence. The model predicts every next token. Only the copy's tokens
//! after its first are predictable, and only in context: at the copy's j-th token, the same token
//! earlier in the sequence was followed by the copy's next one. Every other token is a fresh uniform
//! draw, with loss ln(d_vocab) at best.
//!
//! The offsets are random on purpose: with the copy always at the same offset (the classic "first
//! half repeated"), position alone says where to look, and a one-layer model solves it without an
//! induction head.

use super::{Footprint, Task, TaskData, TaskSection, LOSS_ACC_COLUMNS};
use crate::batch::{Batch, Input, LossStats, TaskIo, TokenBatch};
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use crate::models::{Model, Scratch};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// `data:` of `task: induction`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InductionSection {
    /// Tokens in the vocabulary.
    pub d_vocab: usize,
    /// Tokens per sequence.
    pub n_ctx: usize,
    /// Shortest repeated segment (at least 2: a copy's first token is never predictable).
    pub min_repeat: usize,
    /// Longest repeated segment (the segment and its copy fit in the context: at most n_ctx / 2).
    pub max_repeat: usize,
    /// Sequences in the evaluation set.
    pub n_eval: usize,
    /// Seed of the data; null means the top-level `seed`.
    pub seed: Option<u64>,
}

impl TaskSection for InductionSection {
    const NAME: &'static str = "induction";
    fn configure(self, seed: u64) -> Result<Arc<dyn Task>> {
        let task = InductionTask {
            d_vocab: self.d_vocab,
            n_ctx: self.n_ctx,
            min_repeat: self.min_repeat,
            max_repeat: self.max_repeat,
            n_eval: self.n_eval,
            seed: self.seed.unwrap_or(seed),
        };
        task.validate()?;
        Ok(Arc::new(task))
    }
}

/// Longest context: attention is quadratic in it, and a toy task's contexts are short.
pub const MAX_CTX: usize = 1 << 16;

#[derive(Clone, Debug, PartialEq)]
pub struct InductionTask {
    pub d_vocab: usize,
    pub n_ctx: usize,
    pub min_repeat: usize,
    pub max_repeat: usize,
    pub n_eval: usize,
    pub seed: u64,
}

/// Where a sequence's copy lies: the segment `[from, from + len)` is repeated at `[to, to + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeat {
    pub from: usize,
    pub to: usize,
    pub len: usize,
}

impl Repeat {
    /// Whether loss position `j` (predicting token `j + 1`) is predictable in context: the copy's
    /// tokens after its first.
    pub fn predictable(&self, j: usize) -> bool {
        j >= self.to && j + 1 < self.to + self.len
    }
}

/// Sequences, and which of their loss positions only the context predicts.
#[derive(Clone, Debug)]
pub struct Sequences {
    pub batch: TokenBatch,
    /// `[sequences, loss positions]`: the next token is predictable in context (a copy's tokens
    /// after its first; a trigger's output after the trigger's first occurrence).
    pub predictable: Array2<bool>,
}

/// A task of token sequences some of whose next tokens only the context predicts: it draws them,
/// and a run of it ([`InductionRun`]) trains on fresh ones and measures on a fixed set.
pub trait SequenceSource: Clone + Send + Sync + 'static {
    /// `n` sequences drawn from `rng`.
    fn sample(&self, rng: &mut Rng, n: usize) -> Sequences;
    /// The data's seed.
    fn data_seed(&self) -> u64;
    /// Sequences in the evaluation set.
    fn eval_size(&self) -> usize;

    /// The batch of update `step`: a pure function of (seed, step).
    fn fresh_batch(&self, step: u64, batch_size: usize) -> TokenBatch {
        let mut rng = Rng::new(self.data_seed() ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
        self.sample(&mut rng, batch_size).batch
    }

    /// The fixed evaluation set.
    fn eval_set(&self) -> Sequences {
        let mut rng = Rng::new(self.data_seed() ^ 0x7E57_0000_0000_0001);
        self.sample(&mut rng, self.eval_size())
    }
}

impl InductionTask {
    pub fn validate(&self) -> Result<()> {
        let key = |k: &str| format!("data.{k}");
        if self.d_vocab < 2 {
            return Err(Error::config(
                key("d_vocab"),
                format!("must be at least 2 (got {})", self.d_vocab),
            ));
        }
        if self.d_vocab > u32::MAX as usize {
            return Err(Error::config(key("d_vocab"), "is too large for token ids"));
        }
        if self.min_repeat < 2 {
            return Err(Error::config(
                key("min_repeat"),
                format!(
                    "must be at least 2: only a copy's tokens after its first are predictable (got {})",
                    self.min_repeat
                ),
            ));
        }
        if self.n_ctx < 4 {
            return Err(Error::config(
                key("n_ctx"),
                format!(
                    "must be at least 4: a segment of 2 tokens and its copy (got {})",
                    self.n_ctx
                ),
            ));
        }
        if self.n_ctx > MAX_CTX {
            return Err(Error::config(
                key("n_ctx"),
                format!("must be at most {MAX_CTX} tokens (got {})", self.n_ctx),
            ));
        }
        if self.min_repeat > self.n_ctx / 2 {
            return Err(Error::config(
                key("min_repeat"),
                format!(
                    "a segment of {} tokens and its copy do not fit in data.n_ctx = {} tokens (at most n_ctx / 2 = {})",
                    self.min_repeat,
                    self.n_ctx,
                    self.n_ctx / 2
                ),
            ));
        }
        if self.max_repeat < self.min_repeat {
            return Err(Error::config(
                key("max_repeat"),
                format!(
                    "must be at least data.min_repeat = {} (got {})",
                    self.min_repeat, self.max_repeat
                ),
            ));
        }
        if self.max_repeat > self.n_ctx / 2 {
            return Err(Error::config(
                key("max_repeat"),
                format!(
                    "a segment of {} tokens and its copy do not fit in data.n_ctx = {} tokens (at most n_ctx / 2 = {})",
                    self.max_repeat,
                    self.n_ctx,
                    self.n_ctx / 2
                ),
            ));
        }
        if self.n_eval == 0 {
            return Err(Error::config(key("n_eval"), "must be at least 1"));
        }
        Ok(())
    }

    /// Loss positions: every position but the last, each predicting the next token.
    pub fn loss_positions(&self) -> Vec<usize> {
        (0..self.n_ctx - 1).collect()
    }

    /// Each sequence's copy, and the sequences (as [`SequenceSource::sample`]).
    pub fn sample_with_repeats(&self, rng: &mut Rng, n: usize) -> (Sequences, Vec<Repeat>) {
        let (t, v) = (self.n_ctx, self.d_vocab as u64);
        let mut tokens = Array2::<u32>::zeros((n, t));
        let mut repeats = Vec::with_capacity(n);
        for mut row in tokens.rows_mut() {
            for x in row.iter_mut() {
                *x = rng.below(v) as u32;
            }
            let span = (self.max_repeat - self.min_repeat + 1) as u64;
            let len = self.min_repeat + rng.below(span) as usize;
            // The segment starts anywhere its copy still fits after it, uniformly; the copy anywhere
            // after it, uniformly given the start.
            let from = rng.below((t - 2 * len + 1) as u64) as usize;
            let to = from + len + rng.below((t - from - 2 * len + 1) as u64) as usize;
            for k in 0..len {
                row[to + k] = row[from + k];
            }
            repeats.push(Repeat { from, to, len });
        }
        let loss_pos = self.loss_positions();
        let predictable =
            Array2::from_shape_fn((n, loss_pos.len()), |(e, j)| repeats[e].predictable(j));
        let seqs = sequences(tokens, predictable);
        (seqs, repeats)
    }
}

/// Sequences predicting every next token (loss at every position but the last).
pub(crate) fn sequences(tokens: Array2<u32>, predictable: Array2<bool>) -> Sequences {
    let (n, t) = tokens.dim();
    let loss_pos: Vec<usize> = (0..t - 1).collect();
    let targets = Array2::from_shape_fn((n, t - 1), |(e, j)| tokens[[e, j + 1]]);
    Sequences {
        batch: TokenBatch {
            tokens,
            loss_pos,
            targets,
        },
        predictable,
    }
}

impl SequenceSource for InductionTask {
    fn sample(&self, rng: &mut Rng, n: usize) -> Sequences {
        self.sample_with_repeats(rng, n).0
    }
    fn data_seed(&self) -> u64 {
        self.seed
    }
    fn eval_size(&self) -> usize {
        self.n_eval
    }
}

impl Task for InductionTask {
    fn io(&self) -> TaskIo {
        TaskIo::Tokens {
            d_vocab: self.d_vocab,
            d_vocab_out: self.d_vocab,
            n_ctx: self.n_ctx,
            pair_vocab: None,
        }
    }
    fn fresh_samples(&self) -> bool {
        true
    }
    fn make_data(&self, batch_size: Option<usize>) -> Result<Box<dyn TaskData>> {
        Ok(Box::new(InductionRun::new(self.clone(), batch_size)))
    }
    fn info(&self) -> Option<super::TaskInfo> {
        None
    }
    fn footprint(&self, batch_size: Option<usize>) -> Footprint {
        let at_once = batch_size.unwrap_or(0).max(self.n_eval) as f64;
        Footprint {
            examples_at_once: at_once,
            // The evaluation set's tokens and targets, and its logits when measured.
            data_bytes: self.n_eval as f64 * self.n_ctx as f64 * (8.0 + 4.0 * self.d_vocab as f64),
        }
    }
    fn describe(&self) -> String {
        format!(
            "in-context repetition: {} tokens over {}, a segment of {}–{} repeated at a random offset",
            self.n_ctx, self.d_vocab, self.min_repeat, self.max_repeat
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The columns beyond loss and accuracy, in order.
pub const INDUCTION_COLUMNS: [&str; 4] = [
    "test_loss_first",
    "test_loss_repeat",
    "test_acc_repeat",
    "icl_score",
];

/// A run's data: fresh sequences every step, one fixed evaluation set.
pub struct InductionRun<S: SequenceSource = InductionTask> {
    task: S,
    eval: Sequences,
    /// None where the data only evaluates (analyses, the report).
    batch_size: Option<usize>,
}

/// What one evaluation measures on sequences with known copies (per-token losses from the logits,
/// in f64).
#[derive(Clone, Debug, PartialEq)]
pub struct InductionStats {
    pub loss: f64,
    pub accuracy: f64,
    /// Mean loss on tokens no context predicts (everything but the copies' predictable tokens).
    pub loss_first: f64,
    /// Mean loss and accuracy on the copies' predictable tokens.
    pub loss_repeat: f64,
    pub acc_repeat: f64,
    /// Olsson et al.'s in-context learning score on this context: the mean loss over the last tenth
    /// of the loss positions minus that over the second tenth (their 500th token against their
    /// 50th of 512); negative when later tokens, having more context, are predicted better.
    pub icl_score: f64,
    /// Mean loss at each loss position.
    pub per_position_loss: Vec<f64>,
}

/// [`InductionStats`] of `model` on `seqs`.
pub fn measure(model: &dyn Model, seqs: &Sequences) -> Result<InductionStats> {
    let b = &seqs.batch;
    let logits = model.forward(Input::Tokens(b.tokens.view()))?; // [batch, pos, vocab]
    let (n, positions) = (b.tokens.nrows(), b.loss_pos.len());
    let mut per_position = vec![0.0f64; positions];
    let (mut right, mut first, mut n_first) = (0usize, 0.0f64, 0usize);
    let (mut repeat, mut n_repeat, mut right_repeat) = (0.0f64, 0usize, 0usize);
    for e in 0..n {
        for (j, &p) in b.loss_pos.iter().enumerate() {
            let row = logits.slice(ndarray::s![e, p, ..]);
            let target = b.targets[[e, j]] as usize;
            let loss = super::token_loss(row, target);
            let argmax = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |(i, m), (k, &x)| {
                        if x > m {
                            (k, x)
                        } else {
                            (i, m)
                        }
                    },
                )
                .0;
            let hit = argmax == target;
            per_position[j] += loss;
            right += usize::from(hit);
            if seqs.predictable[[e, j]] {
                repeat += loss;
                n_repeat += 1;
                right_repeat += usize::from(hit);
            } else {
                first += loss;
                n_first += 1;
            }
        }
    }
    for l in &mut per_position {
        *l /= n as f64;
    }
    let k = (positions / 10).max(1);
    let mean = |r: std::ops::Range<usize>| {
        let len = r.len() as f64;
        per_position[r].iter().sum::<f64>() / len
    };
    let icl_score =
        mean(positions - k..positions) - mean(k.min(positions - k)..(2 * k).min(positions));
    let ratio = |a: f64, c: usize| if c == 0 { f64::NAN } else { a / c as f64 };
    Ok(InductionStats {
        loss: per_position.iter().sum::<f64>() / positions as f64,
        accuracy: right as f64 / (n * positions) as f64,
        loss_first: ratio(first, n_first),
        loss_repeat: ratio(repeat, n_repeat),
        acc_repeat: ratio(right_repeat as f64, n_repeat),
        icl_score,
        per_position_loss: per_position,
    })
}

impl<S: SequenceSource> InductionRun<S> {
    pub fn new(task: S, batch_size: Option<usize>) -> Self {
        InductionRun {
            eval: task.eval_set(),
            task,
            batch_size,
        }
    }
}

impl<S: SequenceSource> TaskData for InductionRun<S> {
    fn columns(&self) -> Vec<String> {
        LOSS_ACC_COLUMNS
            .iter()
            .chain(INDUCTION_COLUMNS.iter())
            .map(|c| c.to_string())
            .collect()
    }
    fn train_batch(&mut self, step: u64) -> Cow<'_, Batch> {
        let batch_size = self
            .batch_size
            .expect("validated: fresh samples need a batch size");
        Cow::Owned(self.task.fresh_batch(step, batch_size).into())
    }
    fn metrics(
        &mut self,
        model: &dyn Model,
        _scratch: &mut Scratch,
        last: Option<&LossStats>,
    ) -> Result<Vec<f64>> {
        let s = measure(model, &self.eval)?;
        // "train" is the last step's batch (before its update); at step 0, the evaluation set,
        // which is drawn from the same distribution.
        let (train_loss, train_acc) = last.map_or((s.loss, s.accuracy), |l| (l.loss, l.accuracy));
        Ok(vec![
            train_loss,
            train_acc,
            s.loss,
            s.accuracy,
            s.loss_first,
            s.loss_repeat,
            s.acc_repeat,
            s.icl_score,
        ])
    }
    fn train_set(&self) -> Option<Batch> {
        None
    }
    fn test_set(&self) -> Option<Batch> {
        Some(Batch::Tokens(self.eval.batch.clone()))
    }
    fn named_sets(&self) -> Vec<super::NamedSet> {
        let batch = Batch::Tokens(self.eval.batch.clone());
        let marked = |name: &str, about: &str, positions| super::NamedSet {
            name: name.into(),
            about: about.into(),
            batch: batch.clone(),
            positions: Some(positions),
        };
        vec![
            super::NamedSet::whole("test", "the evaluation set", batch.clone()),
            marked(
                "test_first",
                "the evaluation set's tokens no context predicts",
                self.eval.predictable.mapv(|p| !p),
            ),
            marked(
                "test_repeat",
                "the evaluation set's tokens predictable in context",
                self.eval.predictable.clone(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> InductionTask {
        InductionTask {
            d_vocab: 50,
            n_ctx: 40,
            min_repeat: 4,
            max_repeat: 20,
            n_eval: 64,
            seed: 5,
        }
    }

    #[test]
    fn copies_lie_at_random_offsets_and_are_exact() {
        let t = task();
        let (s, repeats) = t.sample_with_repeats(&mut Rng::new(1), 2000);
        let mut offsets = std::collections::HashSet::new();
        let mut lens = std::collections::HashSet::new();
        for (e, r) in repeats.iter().enumerate() {
            assert!((4..=20).contains(&r.len));
            assert!(r.from + r.len <= r.to && r.to + r.len <= t.n_ctx, "{r:?}");
            let row = s.batch.tokens.row(e);
            for k in 0..r.len {
                assert_eq!(row[r.to + k], row[r.from + k]);
            }
            for j in 0..t.n_ctx - 1 {
                assert_eq!(s.batch.targets[[e, j]], row[j + 1]);
            }
            assert_eq!(
                (0..t.n_ctx - 1).filter(|&j| r.predictable(j)).count(),
                r.len - 1
            );
            for j in 0..t.n_ctx - 1 {
                assert_eq!(s.predictable[[e, j]], r.predictable(j));
            }
            offsets.insert(r.to - r.from);
            lens.insert(r.len);
        }
        assert!(offsets.len() > 20, "offsets vary: {}", offsets.len());
        assert_eq!(lens.len(), 17, "every length occurs");
        assert!(s.batch.tokens.iter().all(|&x| x < 50));
        // The longest segment exactly fills the context.
        let full = InductionTask {
            min_repeat: 20,
            ..task()
        };
        let (_, repeats) = full.sample_with_repeats(&mut Rng::new(2), 10);
        assert!(repeats.iter().all(|r| r.from == 0 && r.to == 20));
        // Fresh batches are a function of the step.
        assert_eq!(t.fresh_batch(3, 8).tokens, t.fresh_batch(3, 8).tokens);
        assert_ne!(t.fresh_batch(3, 8).tokens, t.fresh_batch(4, 8).tokens);
    }

    #[test]
    fn bad_sizes_name_the_key() {
        let cases: [(InductionTask, &str); 5] = [
            (
                InductionTask {
                    max_repeat: 21,
                    ..task()
                },
                "data.max_repeat",
            ),
            (
                InductionTask {
                    min_repeat: 1,
                    ..task()
                },
                "data.min_repeat",
            ),
            (
                InductionTask {
                    max_repeat: 3,
                    ..task()
                },
                "data.max_repeat",
            ),
            (
                InductionTask {
                    d_vocab: 1,
                    ..task()
                },
                "data.d_vocab",
            ),
            (
                InductionTask {
                    n_eval: 0,
                    ..task()
                },
                "data.n_eval",
            ),
        ];
        for (t, key) in cases {
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = InductionTask {
            max_repeat: 21,
            ..task()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("do not fit") && e.contains("n_ctx = 40"), "{e}");
    }
}
