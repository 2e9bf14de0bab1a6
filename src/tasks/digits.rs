//! n-digit addition, as in the progress-measures paper's appendix.
//!
//! Tokens: the digits 0–9, `+` (10) and `=` (11). A sequence is the n digits of a (most significant
//! first, zero-padded), `+`, the n digits of b, `=`, then the n + 1 digits of the sum (zero-padded;
//! least significant first when `reverse_sum`): 3n + 3 tokens. The model is trained next-token on the
//! sum only: the loss positions are the n + 1 positions from `=` on, each predicting the following sum
//! digit, so outputs are the 10 digits.

use super::{EpochOrder, TaskData, LOSS_ACC_COLUMNS};
use crate::batch::{Batch, LossStats, TokenBatch};
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use crate::models::{Model, Scratch};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashSet;

pub const PLUS: u32 = 10;
pub const EQUALS: u32 = 11;
/// Most digits per operand (sums then fit in u64 with room to spare).
pub const MAX_DIGITS: usize = 10;
/// Largest fixed train set; beyond it, use fresh samples (`data.infinite=true`).
pub const MAX_TRAIN: usize = 1_000_000;
/// Up to this many pairs in all, a finite split shuffles them all; beyond, it samples.
const ENUMERATE_UP_TO: u64 = 4_000_000;

/// An operand pair `(a, b)`.
pub type Operands = (u64, u64);

#[derive(Clone, Debug, PartialEq)]
pub struct DigitsTask {
    pub n_digits: usize,
    pub reverse_sum: bool,
    pub infinite: bool,
    pub frac_train: f64,
    pub n_eval: usize,
    pub seed: u64,
}

/// The train and evaluation data of a run.
pub struct DigitsData {
    /// The fixed train set (empty with fresh samples).
    pub train: Vec<Operands>,
    /// The train examples evaluated (at most `n_eval` of `train`).
    pub train_eval: TokenBatch,
    pub test: TokenBatch,
}

impl DigitsTask {
    pub fn d_vocab(&self) -> usize {
        12
    }
    pub fn d_vocab_out(&self) -> usize {
        10
    }
    pub fn n_ctx(&self) -> usize {
        3 * self.n_digits + 3
    }

    /// 10^n: the number of values of each operand.
    fn base(&self) -> u64 {
        10u64.pow(self.n_digits as u32)
    }

    /// Place value (the k of 10^k) of the digit each loss position predicts, in position order.
    pub fn places(&self) -> Vec<usize> {
        let n = self.n_digits;
        (0..=n)
            .map(|j| if self.reverse_sum { j } else { n - j })
            .collect()
    }

    /// Number of fixed training pairs: `floor(frac_train · 10^(2n))`.
    pub fn n_train(&self) -> usize {
        (self.frac_train * (self.base() as f64).powi(2)).floor() as usize
    }

    pub fn validate(&self, prefix: &str) -> Result<()> {
        if !(1..=MAX_DIGITS).contains(&self.n_digits) {
            return Err(Error::config(
                format!("{prefix}n_digits"),
                format!("must be between 1 and {MAX_DIGITS} (got {})", self.n_digits),
            ));
        }
        if self.n_eval == 0 {
            return Err(Error::config(
                format!("{prefix}n_eval"),
                "must be at least 1",
            ));
        }
        if !self.infinite {
            let k = format!("{prefix}frac_train");
            if !(self.frac_train > 0.0 && self.frac_train < 1.0) {
                return Err(Error::config(
                    k,
                    format!("must be strictly between 0 and 1 (got {})", self.frac_train),
                ));
            }
            let n = self.n_train();
            if n == 0 {
                return Err(Error::config(
                    k,
                    format!(
                        "{} of the 10^{} pairs is less than one pair",
                        self.frac_train,
                        2 * self.n_digits
                    ),
                ));
            }
            if n > MAX_TRAIN {
                return Err(Error::config(
                    k,
                    format!(
                        "gives {n} training pairs, more than {MAX_TRAIN}; use data.infinite=true for fresh samples every step"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The token sequence and answer digits of `a + b`.
    pub fn encode(&self, (a, b): Operands, tokens: &mut [u32], targets: &mut [u32]) {
        let n = self.n_digits;
        let digit = |x: u64, place: usize| ((x / 10u64.pow(place as u32)) % 10) as u32;
        for i in 0..n {
            tokens[i] = digit(a, n - 1 - i);
            tokens[n + 1 + i] = digit(b, n - 1 - i);
        }
        tokens[n] = PLUS;
        tokens[2 * n + 1] = EQUALS;
        let s = a + b;
        for (j, place) in self.places().into_iter().enumerate() {
            let d = digit(s, place);
            tokens[2 * n + 2 + j] = d;
            targets[j] = d;
        }
    }

    pub fn batch(&self, pairs: &[Operands]) -> TokenBatch {
        let (l, k) = (self.n_ctx(), self.n_digits + 1);
        let mut tokens = Array2::zeros((pairs.len(), l));
        let mut targets = Array2::zeros((pairs.len(), k));
        for (i, &p) in pairs.iter().enumerate() {
            self.encode(
                p,
                tokens.row_mut(i).as_slice_mut().expect("row"),
                targets.row_mut(i).as_slice_mut().expect("row"),
            );
        }
        TokenBatch {
            tokens,
            loss_pos: (2 * self.n_digits + 1..=3 * self.n_digits + 1).collect(),
            targets,
        }
    }

    /// `n` uniform pairs from `rng`.
    pub fn sample(&self, rng: &mut Rng, n: usize) -> Vec<Operands> {
        let base = self.base();
        (0..n).map(|_| (rng.below(base), rng.below(base))).collect()
    }

    /// Fresh training pairs of update `step` (with `infinite`): a pure function of (seed, step).
    pub fn fresh_batch(&self, step: u64, batch_size: usize) -> TokenBatch {
        let mut rng = Rng::new(self.seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
        self.batch(&self.sample(&mut rng, batch_size))
    }

    /// The fixed train set (finite data) and the evaluation sets. The test pairs are never train pairs.
    pub fn data(&self) -> DigitsData {
        let mut rng = Rng::new(self.seed ^ 0x7E57_0000_0000_0001);
        let n_eval = self.n_eval;
        if self.infinite {
            let test = self.sample(&mut rng, n_eval);
            return DigitsData {
                train: Vec::new(),
                train_eval: self.batch(&[]),
                test: self.batch(&test),
            };
        }
        let base = self.base();
        let n_train = self.n_train();
        let (train, test) = if base * base <= ENUMERATE_UP_TO {
            let mut all: Vec<u64> = (0..base * base).collect();
            rng.shuffle(&mut all);
            let pair = |i: &u64| (i / base, i % base);
            let train: Vec<Operands> = all[..n_train].iter().map(pair).collect();
            let test: Vec<Operands> = all[n_train..].iter().take(n_eval).map(pair).collect();
            (train, test)
        } else {
            let mut seen = HashSet::with_capacity(n_train + n_eval);
            let mut draw = |rng: &mut Rng, k: usize| {
                let mut out = Vec::with_capacity(k);
                while out.len() < k {
                    let p = (rng.below(base), rng.below(base));
                    if seen.insert(p) {
                        out.push(p);
                    }
                }
                out
            };
            let train = draw(&mut rng, n_train);
            let test = draw(&mut rng, n_eval);
            (train, test)
        };
        DigitsData {
            train_eval: self.batch(&train[..n_train.min(n_eval)]),
            test: self.batch(&test),
            train,
        }
    }
}

/// Column names of per-digit metrics, most significant digit first: `{split}_{loss|acc}_d{k}` where
/// k is the digit's place (10^k).
pub fn digit_columns(task: &DigitsTask) -> Vec<String> {
    let mut places = task.places();
    places.sort_unstable_by(|a, b| b.cmp(a));
    let mut cols = Vec::new();
    for split in ["train", "test"] {
        for what in ["loss", "acc"] {
            for &k in &places {
                cols.push(format!("{split}_{what}_d{k}"));
            }
        }
    }
    cols
}

/// Per-digit values in [`digit_columns`] order, for one split's stats (loss then accuracy).
fn digit_values(task: &DigitsTask, s: &LossStats) -> Vec<f64> {
    let places = task.places();
    let mut order: Vec<usize> = (0..places.len()).collect();
    order.sort_unstable_by(|&a, &b| places[b].cmp(&places[a]));
    let mut v: Vec<f64> = order.iter().map(|&i| s.per_position_loss[i]).collect();
    v.extend(order.iter().map(|&i| s.per_position_accuracy[i]));
    v
}

/// `data:` of `task: digits`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitsSection {
    /// Digits of each operand, 1..=10.
    pub n_digits: usize,
    /// Predict the sum least significant digit first.
    pub reverse_sum: bool,
    /// Fresh samples every step (true) or a fixed train set (false).
    pub infinite: bool,
    /// Fraction of all 10^(2n) pairs in the fixed train set (when `infinite` is false).
    pub frac_train: f64,
    /// Examples in each evaluation set (test, and the train subset evaluated).
    pub n_eval: usize,
    /// Seed of the data; null means the top-level `seed`.
    pub seed: Option<u64>,
}

impl super::TaskSection for DigitsSection {
    const NAME: &'static str = "digits";
    fn configure(self, seed: u64) -> Result<std::sync::Arc<dyn super::Task>> {
        let task = DigitsTask {
            n_digits: self.n_digits,
            reverse_sum: self.reverse_sum,
            infinite: self.infinite,
            frac_train: self.frac_train,
            n_eval: self.n_eval,
            seed: self.seed.unwrap_or(seed),
        };
        task.validate("data.")?;
        Ok(std::sync::Arc::new(task))
    }
}

impl super::Task for DigitsTask {
    fn io(&self) -> crate::batch::TaskIo {
        crate::batch::TaskIo::Tokens {
            d_vocab: self.d_vocab(),
            d_vocab_out: self.d_vocab_out(),
            n_ctx: self.n_ctx(),
            pair_vocab: None,
        }
    }
    fn fresh_samples(&self) -> bool {
        self.infinite
    }
    fn make_data(&self, batch_size: Option<usize>) -> Result<Box<dyn TaskData>> {
        Ok(Box::new(DigitsRun::new(self.clone(), batch_size)))
    }
    fn info(&self) -> Option<super::TaskInfo> {
        Some(super::TaskInfo::Digits {
            n_digits: self.n_digits,
            reverse_sum: self.reverse_sum,
        })
    }
    fn footprint(&self, batch_size: Option<usize>) -> super::Footprint {
        let train = if self.infinite {
            0.0
        } else {
            self.n_train() as f64
        };
        let at_once = batch_size
            .map_or(train, |b| b as f64)
            .max(self.n_eval as f64);
        super::Footprint {
            examples_at_once: at_once,
            data_bytes: (train + 2.0 * self.n_eval as f64) * self.n_ctx() as f64 * 8.0,
        }
    }
    fn describe(&self) -> String {
        format!(
            "{}-digit addition{}",
            self.n_digits,
            if self.reverse_sum {
                ", sum reversed"
            } else {
                ""
            }
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A run's digits data: fresh samples every step, or a fixed train set (whole or in minibatches).
pub struct DigitsRun {
    task: DigitsTask,
    data: DigitsData,
    batch_size: Option<usize>,
    /// The whole train set as one batch (full-batch training on fixed data only).
    full: Option<Batch>,
    order: Option<EpochOrder>,
}

impl DigitsRun {
    /// `batch_size` None means the whole fixed train set every step (validated: fresh samples need
    /// a batch size).
    pub fn new(task: DigitsTask, batch_size: Option<usize>) -> Self {
        let data = task.data();
        let full = (!task.infinite && batch_size.is_none()).then(|| task.batch(&data.train).into());
        let order = batch_size
            .filter(|_| !task.infinite)
            .map(|bs| EpochOrder::new(data.train.len(), bs, task.seed));
        DigitsRun {
            task,
            data,
            batch_size,
            full,
            order,
        }
    }
}

impl TaskData for DigitsRun {
    fn columns(&self) -> Vec<String> {
        let mut c: Vec<String> = LOSS_ACC_COLUMNS.map(String::from).to_vec();
        c.extend(["train_exact", "test_exact"].map(String::from));
        c.extend(digit_columns(&self.task));
        c
    }
    fn train_batch(&mut self, step: u64) -> Cow<'_, Batch> {
        if let Some(full) = &self.full {
            return Cow::Borrowed(full);
        }
        match (&mut self.order, self.batch_size) {
            (Some(order), _) => {
                let pairs: Vec<Operands> = order
                    .batch(step)
                    .iter()
                    .map(|&i| self.data.train[i])
                    .collect();
                Cow::Owned(self.task.batch(&pairs).into())
            }
            (None, bs) => Cow::Owned(
                self.task
                    .fresh_batch(
                        step,
                        bs.expect("validated: fresh samples need a batch size"),
                    )
                    .into(),
            ),
        }
    }
    fn metrics(
        &mut self,
        model: &dyn Model,
        scratch: &mut Scratch,
        last: Option<&LossStats>,
    ) -> Result<Vec<f64>> {
        // With fresh samples, "train" is the last step's batch (before its update); at step 0, the
        // test set's distribution is the train distribution.
        let te = model.evaluate(scratch, &Batch::Tokens(self.data.test.clone()))?;
        let tr = if self.task.infinite {
            last.cloned().unwrap_or_else(|| te.clone())
        } else {
            model.evaluate(scratch, &Batch::Tokens(self.data.train_eval.clone()))?
        };
        let mut v = vec![tr.loss, tr.accuracy, te.loss, te.accuracy];
        v.extend([tr.exact_match, te.exact_match]);
        v.extend(digit_values(&self.task, &tr));
        v.extend(digit_values(&self.task, &te));
        Ok(v)
    }
    fn train_set(&self) -> Option<Batch> {
        (!self.task.infinite).then(|| self.task.batch(&self.data.train).into())
    }
    fn test_set(&self) -> Option<Batch> {
        Some(Batch::Tokens(self.data.test.clone()))
    }
    /// `train` and `test`, and each answer digit's (`test_d{place}`, as the metric columns):
    /// the loss at that digit alone.
    fn named_sets(&self) -> Vec<super::NamedSet> {
        let mut sets = Vec::new();
        let places = self.task.places();
        let mut splits = vec![("test", self.data.test.clone())];
        if !self.task.infinite {
            splits.insert(0, ("train", self.task.batch(&self.data.train)));
        }
        for (split, b) in splits {
            sets.push(super::NamedSet::whole(split, split, b.clone().into()));
            for (i, k) in places.iter().enumerate() {
                let one = TokenBatch {
                    tokens: b.tokens.clone(),
                    loss_pos: vec![b.loss_pos[i]],
                    targets: b.targets.slice(ndarray::s![.., i..=i]).to_owned(),
                };
                sets.push(super::NamedSet::whole(
                    &format!("{split}_d{k}"),
                    &format!("the {split} set's answer digit of place {k}"),
                    one.into(),
                ));
            }
        }
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: usize, reverse_sum: bool) -> DigitsTask {
        DigitsTask {
            n_digits: n,
            reverse_sum,
            infinite: false,
            frac_train: 0.5,
            n_eval: 100,
            seed: 3,
        }
    }

    #[test]
    fn encodes_as_the_original_code() {
        // 95 + 17 = 112: "9 5 + 1 7 = 1 1 2", loss from `=` on.
        let b = task(2, false).batch(&[(95, 17)]);
        assert_eq!(
            b.tokens.row(0).to_vec(),
            vec![9, 5, PLUS, 1, 7, EQUALS, 1, 1, 2]
        );
        assert_eq!(b.loss_pos, vec![5, 6, 7]);
        assert_eq!(b.targets.row(0).to_vec(), vec![1, 1, 2]);
        let r = task(2, true).batch(&[(95, 17)]);
        assert_eq!(
            r.tokens.row(0).to_vec(),
            vec![9, 5, PLUS, 1, 7, EQUALS, 2, 1, 1]
        );
        assert_eq!(r.targets.row(0).to_vec(), vec![2, 1, 1]);
        assert_eq!(task(2, false).places(), vec![2, 1, 0]);
        assert_eq!(task(2, true).places(), vec![0, 1, 2]);
        // Zero padding and the largest operands.
        let t = task(10, false);
        let b = t.batch(&[(9_999_999_999, 1)]);
        assert_eq!(b.targets.row(0).to_vec(), {
            let mut v = vec![1];
            v.extend(std::iter::repeat_n(0, 10));
            v
        });
        assert_eq!(b.tokens.ncols(), t.n_ctx());
    }

    #[test]
    fn splits_are_disjoint_and_deterministic() {
        for n in [2, 4] {
            let t = DigitsTask {
                frac_train: if n == 2 { 0.5 } else { 1e-4 },
                ..task(n, false)
            };
            let d = t.data();
            assert_eq!(d.train.len(), t.n_train());
            let train: HashSet<Vec<u32>> = d
                .train
                .iter()
                .map(|&p| t.batch(&[p]).tokens.row(0).to_vec())
                .collect();
            assert_eq!(train.len(), d.train.len(), "train pairs are distinct");
            for row in d.test.tokens.rows() {
                assert!(!train.contains(&row.to_vec()), "a test pair is in train");
            }
            assert_eq!(t.data().train, d.train);
        }
        let t = DigitsTask {
            infinite: true,
            ..task(3, false)
        };
        assert_eq!(t.fresh_batch(7, 16).tokens, t.fresh_batch(7, 16).tokens);
        assert_ne!(t.fresh_batch(7, 16).tokens, t.fresh_batch(8, 16).tokens);
    }

    #[test]
    fn bad_sizes_name_the_key() {
        for n in [0, 11] {
            let e = task(n, false).validate("data.").unwrap_err().to_string();
            assert!(
                e.contains("data.n_digits") && e.contains("between 1 and 10"),
                "{e}"
            );
        }
        let e = DigitsTask {
            frac_train: 0.5,
            ..task(5, false)
        }
        .validate("data.")
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("data.frac_train") && e.contains("data.infinite=true"),
            "{e}"
        );
    }
}
