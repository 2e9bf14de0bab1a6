//! Bietti et al. 2023 ("Birth of a Transformer: A Memory Viewpoint"): in-weights bigrams and
//! in-context associations in one sequence.
//!
//! A fixed random bigram distribution over `d_vocab` tokens (drawn once from the data seed: each
//! row a softmax of `bigram_scale`·N(0, 1) logits) generates the sequence, except after one of
//! `n_triggers` fixed trigger tokens (also drawn once): a trigger is followed by an output token
//! drawn per sequence and trigger, the same at every occurrence of that trigger in the sequence.
//! Outputs and the first token are drawn from the bigram's stationary (unigram) distribution, as
//! Bietti et al. do, outputs among the tokens that are not triggers: a trigger's output that is a
//! trigger would lock the rest of the sequence into a cycle (q q q …, or q q′ q q′ …) that one
//! attention layer predicts by copying the last token or the one before (tried: a one-layer model
//! then got 43% of the "in-context" outputs right within 200 steps). The model predicts every next token: the bigram's part
//! is learnable in the weights, a trigger's output only in context, from its earlier occurrence
//! (an induction head's job). The measured columns are the induction task's: `test_loss_repeat`
//! on outputs of triggers seen before in the sequence, `test_loss_first` on every other token.
//! Bietti et al. draw the bigram from character counts of Shakespeare; a random one has the same
//! role here and needs no data file.

use super::induction::{sequences, InductionRun, SequenceSource, Sequences, MAX_CTX};
use super::{Footprint, Task, TaskData, TaskSection};
use crate::batch::TaskIo;
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The largest vocabulary: the bigram's table holds d_vocab² numbers (32 GB at this size).
pub const MAX_VOCAB: usize = 1 << 16;

/// `data:` of `task: triggers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggersSection {
    /// Tokens in the vocabulary (triggers included).
    pub d_vocab: usize,
    /// Tokens per sequence.
    pub n_ctx: usize,
    /// Trigger tokens (fewer than the vocabulary).
    pub n_triggers: usize,
    /// How peaked the bigram rows are: each is softmax(bigram_scale · N(0, 1) logits).
    pub bigram_scale: f64,
    /// Sequences in the evaluation set.
    pub n_eval: usize,
    /// Seed of the data (the bigram, the triggers, the sequences); null means the top-level `seed`.
    pub seed: Option<u64>,
}

impl TaskSection for TriggersSection {
    const NAME: &'static str = "triggers";
    fn configure(self, seed: u64) -> Result<Arc<dyn Task>> {
        let key = |k: &str| format!("data.{k}");
        if !(2..=MAX_VOCAB).contains(&self.d_vocab) {
            return Err(Error::config(
                key("d_vocab"),
                format!(
                    "must be 2 to {MAX_VOCAB} tokens (the bigram is a table of d_vocab² numbers; got {})",
                    self.d_vocab
                ),
            ));
        }
        if self.n_triggers == 0 || self.n_triggers >= self.d_vocab {
            return Err(Error::config(
                key("n_triggers"),
                format!(
                    "must be at least 1 and fewer than the vocabulary's data.d_vocab = {} tokens (got {})",
                    self.d_vocab, self.n_triggers
                ),
            ));
        }
        if self.n_ctx < 4 || self.n_ctx > MAX_CTX {
            return Err(Error::config(
                key("n_ctx"),
                format!(
                    "must be 4 to {MAX_CTX} tokens (a trigger, its output, and both again; got {})",
                    self.n_ctx
                ),
            ));
        }
        if !(self.bigram_scale.is_finite() && self.bigram_scale >= 0.0) {
            return Err(Error::config(
                key("bigram_scale"),
                format!("must be a number ≥ 0 (got {})", self.bigram_scale),
            ));
        }
        if self.n_eval == 0 {
            return Err(Error::config(key("n_eval"), "must be at least 1"));
        }
        Ok(Arc::new(TriggersTask {
            seed: self.seed.unwrap_or(seed),
            section: self,
        }))
    }
}

/// The task as configured; its tables ([`TriggerSource`]) are drawn only when a run makes its
/// data, after the memory check (d_vocab² of them).
#[derive(Clone, Debug, PartialEq)]
pub struct TriggersTask {
    pub section: TriggersSection,
    pub seed: u64,
}

/// The task with its bigram, unigram and triggers drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggerSource {
    pub section: TriggersSection,
    pub seed: u64,
    /// `[d_vocab, d_vocab]`: each row's cumulative distribution of the next token.
    cumulative: Vec<f64>,
    /// `[d_vocab]`: the cumulative stationary distribution.
    unigram: Vec<f64>,
    /// The trigger tokens, and for each token its trigger index (usize::MAX if none).
    pub triggers: Vec<u32>,
    trigger_of: Vec<usize>,
}

impl TriggersTask {
    /// The tables, drawn from the data seed.
    pub fn source(&self) -> TriggerSource {
        let (section, seed) = (self.section.clone(), self.seed);
        let v = section.d_vocab;
        let mut rng = Rng::new(seed ^ 0xB16A_0000_0000_0001);
        let mut cumulative = Vec::with_capacity(v * v);
        for _ in 0..v {
            let w: Vec<f64> = (0..v)
                .map(|_| libm::exp(section.bigram_scale * rng.normal()))
                .collect();
            let total: f64 = w.iter().sum();
            let mut acc = 0.0;
            for x in w {
                acc += x / total;
                cumulative.push(acc);
            }
        }
        // The stationary distribution, by power iteration from uniform (rows are dense and
        // positive, so it converges fast; 1000 rounds of 64² are nothing next to training).
        let mut pi = vec![1.0 / v as f64; v];
        for _ in 0..1000 {
            let mut next = vec![0.0; v];
            for (a, &pa) in pi.iter().enumerate() {
                let row = &cumulative[a * v..(a + 1) * v];
                let mut prev = 0.0;
                for (n, &c) in next.iter_mut().zip(row) {
                    *n += pa * (c - prev);
                    prev = c;
                }
            }
            pi = next;
        }
        let mut acc = 0.0;
        let unigram: Vec<f64> = pi
            .iter()
            .map(|p| {
                acc += p;
                acc
            })
            .collect();
        // The triggers: the first n_triggers of a random permutation.
        let mut order: Vec<u32> = (0..v as u32).collect();
        rng.shuffle(&mut order);
        let triggers = order[..section.n_triggers].to_vec();
        let mut trigger_of = vec![usize::MAX; v];
        for (k, &t) in triggers.iter().enumerate() {
            trigger_of[t as usize] = k;
        }
        TriggerSource {
            section,
            seed,
            cumulative,
            unigram,
            triggers,
            trigger_of,
        }
    }
}

impl TriggerSource {
    /// The next token after `t` under the bigram, from a uniform draw `u` in [0, 1).
    fn bigram_next(&self, t: usize, u: f64) -> u32 {
        let v = self.section.d_vocab;
        draw(&self.cumulative[t * v..(t + 1) * v], u)
    }
}

/// The token a uniform draw `u` in [0, 1) picks from a cumulative distribution.
fn draw(cumulative: &[f64], u: f64) -> u32 {
    cumulative
        .iter()
        .position(|&c| u < c)
        .unwrap_or(cumulative.len() - 1) as u32
}

impl SequenceSource for TriggerSource {
    fn sample(&self, rng: &mut Rng, n: usize) -> Sequences {
        let t_n = self.section.n_ctx;
        let k_n = self.triggers.len();
        let mut tokens = Array2::<u32>::zeros((n, t_n));
        let mut predictable = Array2::from_elem((n, t_n - 1), false);
        let mut seen = vec![false; k_n];
        let mut outputs = vec![0u32; k_n];
        for (e, mut row) in tokens.rows_mut().into_iter().enumerate() {
            for (o, s) in outputs.iter_mut().zip(seen.iter_mut()) {
                // Redrawn until not a trigger (triggers are fewer than the vocabulary).
                *o = loop {
                    let t = draw(&self.unigram, rng.uniform());
                    if self.trigger_of[t as usize] == usize::MAX {
                        break t;
                    }
                };
                *s = false;
            }
            row[0] = draw(&self.unigram, rng.uniform());
            for j in 0..t_n - 1 {
                let cur = row[j] as usize;
                row[j + 1] = match self.trigger_of[cur] {
                    usize::MAX => self.bigram_next(cur, rng.uniform()),
                    k => {
                        // Predictable in context once the trigger has been followed before.
                        predictable[[e, j]] = seen[k];
                        seen[k] = true;
                        outputs[k]
                    }
                };
            }
        }
        sequences(tokens, predictable)
    }
    fn data_seed(&self) -> u64 {
        self.seed
    }
    fn eval_size(&self) -> usize {
        self.section.n_eval
    }
}

impl Task for TriggersTask {
    fn io(&self) -> TaskIo {
        TaskIo::Tokens {
            d_vocab: self.section.d_vocab,
            d_vocab_out: self.section.d_vocab,
            n_ctx: self.section.n_ctx,
            pair_vocab: None,
        }
    }
    fn fresh_samples(&self) -> bool {
        true
    }
    fn make_data(&self, batch_size: Option<usize>) -> Result<Box<dyn TaskData>> {
        Ok(Box::new(InductionRun::new(self.source(), batch_size)))
    }
    fn info(&self) -> Option<super::TaskInfo> {
        None
    }
    fn footprint(&self, batch_size: Option<usize>) -> Footprint {
        let s = &self.section;
        Footprint {
            examples_at_once: batch_size.unwrap_or(0).max(s.n_eval) as f64,
            data_bytes: s.n_eval as f64 * s.n_ctx as f64 * (9.0 + 4.0 * s.d_vocab as f64)
                + 8.0 * (s.d_vocab as f64).powi(2),
        }
    }
    fn describe(&self) -> String {
        let s = &self.section;
        format!(
            "Bietti et al.'s triggers: {} tokens over {} from a random bigram, {} triggers each followed by its sequence's own output",
            s.n_ctx, s.d_vocab, s.n_triggers
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TriggerSource {
        let s = TriggersSection {
            d_vocab: 20,
            n_ctx: 64,
            n_triggers: 3,
            bigram_scale: 1.0,
            n_eval: 16,
            seed: Some(3),
        };
        match s
            .configure(0)
            .unwrap()
            .as_any()
            .downcast_ref::<TriggersTask>()
        {
            Some(t) => t.source(),
            None => unreachable!(),
        }
    }

    #[test]
    fn a_trigger_is_followed_by_its_sequences_output_and_predictable_after_its_first() {
        let t = task();
        let s = t.sample(&mut Rng::new(1), 200);
        let mut n_predictable = 0;
        for e in 0..200 {
            let row = s.batch.tokens.row(e);
            let mut out: Vec<Option<u32>> = vec![None; 3];
            for j in 0..63 {
                let k = t.triggers.iter().position(|&x| x == row[j]);
                let expect_predictable = match k {
                    Some(k) => {
                        assert!(!t.triggers.contains(&row[j + 1]), "an output is no trigger");
                        let known = out[k].is_some();
                        if let Some(o) = out[k] {
                            assert_eq!(row[j + 1], o, "the same output at every occurrence");
                        }
                        out[k] = Some(row[j + 1]);
                        known
                    }
                    None => false,
                };
                assert_eq!(s.predictable[[e, j]], expect_predictable);
                n_predictable += usize::from(expect_predictable);
            }
        }
        assert!(n_predictable > 200, "triggers recur: {n_predictable}");
        // The bigram's rows and the unigram sum to one; the unigram is stationary.
        for r in t.cumulative.chunks_exact(20) {
            assert!((r[19] - 1.0).abs() < 1e-12);
        }
        assert!((t.unigram[19] - 1.0).abs() < 1e-9);
        let p = |c: &[f64], i: usize| c[i] - if i == 0 { 0.0 } else { c[i - 1] };
        for b in 0..20 {
            let flow: f64 = (0..20)
                .map(|a| p(&t.unigram, a) * p(&t.cumulative[a * 20..(a + 1) * 20], b))
                .sum();
            assert!((flow - p(&t.unigram, b)).abs() < 1e-9, "token {b}");
        }
    }

    #[test]
    fn a_vocabulary_no_larger_than_the_trigger_set_is_refused_naming_the_key() {
        let s = TriggersSection {
            d_vocab: 3,
            n_triggers: 3,
            ..task().section
        };
        let e = s.configure(0).unwrap_err().to_string();
        assert!(
            e.contains("data.n_triggers") && e.contains("d_vocab = 3"),
            "{e}"
        );
    }
}
