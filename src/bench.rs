//! Benchmark workloads, shared by `toylens bench` and the side-by-side comparison in `bench/`.

use crate::batch::TokenBatch;
use crate::engine::adamw::{AdamW, AdamWConfig};
use crate::error::Result;
use crate::models::transformer::{Transformer, TransformerConfig, Workspace};
use crate::tasks::modular::{ModularTask, Op, Split};
use std::time::Instant;

/// W1: one full-batch step of Nanda et al.'s grokking model (p = 113, the 3830 training pairs of the
/// original split, d_model 128, 4 heads × 32, d_mlp 512, ReLU, no LN; AdamW lr 1e-3, wd 1,
/// betas 0.9/0.98).
pub struct W1 {
    pub model: Transformer,
    pub task: ModularTask,
    pub batch: TokenBatch,
    pub optim: AdamWConfig,
}

impl W1 {
    /// Matmul FLOPs of one step: [`w1_step_flops`] with the batch's distinct (token, position)
    /// rows, those at the last position (the own rows of the W_in fold), and whether it `folded`.
    pub fn step_flops(&self, folded: bool) -> f64 {
        let mut seen = std::collections::HashSet::new();
        self.batch.tokens.indexed_iter().for_each(|((_, p), &x)| {
            seen.insert((x, p));
        });
        let last = self.batch.tokens.ncols() - 1;
        let own = seen.iter().filter(|&&(_, p)| p == last).count();
        let fold = folded.then_some(own);
        w1_step_flops(&self.model, self.batch.tokens.nrows(), seen.len(), fold)
    }

    pub fn new(seed: u64) -> Result<Self> {
        let cfg = TransformerConfig {
            seed: Some(seed),
            ..TransformerConfig::nanda(113)
        };
        let model = Transformer::new(cfg)?;
        let task = ModularTask {
            p: 113,
            op: Op::Add,
            frac_train: 0.3,
            seed: 1,
            split: Split::Reference,
        };
        let (train, _) = task.split_pairs();
        let batch = task.batch(&train);
        let optim = AdamWConfig {
            lr: 1e-3,
            weight_decay: 1.0,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
        };
        Ok(W1 {
            model,
            task,
            batch,
            optim,
        })
    }
}

/// Losses of each step and the wall time of each step in milliseconds.
pub struct StepTimes {
    pub losses: Vec<f64>,
    pub step_ms: Vec<f64>,
}

/// Train `steps` full-batch AdamW steps on `batch` at a constant learning rate.
pub fn train_steps(
    model: &mut Transformer,
    batch: &TokenBatch,
    optim: AdamWConfig,
    steps: usize,
) -> Result<StepTimes> {
    train_steps_in(&mut Workspace::new(), model, batch, optim, steps)
}

/// [`train_steps`] in a given workspace (one asked to take the W_in fold, say).
pub fn train_steps_in(
    ws: &mut Workspace,
    model: &mut Transformer,
    batch: &TokenBatch,
    optim: AdamWConfig,
    steps: usize,
) -> Result<StepTimes> {
    let mut grads = vec![0.0f32; model.layout.total];
    let mut opt = AdamW::new(optim, model.layout.total);
    let trainable = model.layout.trainable_ranges();
    let mut out = StepTimes {
        losses: Vec::with_capacity(steps),
        step_ms: Vec::with_capacity(steps),
    };
    for _ in 0..steps {
        let t0 = Instant::now();
        let stats = model.loss_and_grad(ws, batch, &mut grads)?;
        opt.update(&mut model.params, &grads, &trainable, optim.lr);
        out.step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        out.losses.push(stats.loss);
    }
    Ok(out)
}

/// Mean of a sample: with the step count, what a run of those steps pays (slow steps included,
/// which the median leaves out).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Median of a sample.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

/// GFLOP/s of one `m×k · k×n` product through our matmul (median of `reps`), for the machine's GEMM
/// peak as this engine sees it.
pub fn gemm_gflops(m: usize, k: usize, n: usize, reps: usize) -> f64 {
    use crate::engine::matmul::matmul;
    let a =
        ndarray::Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 13) as f32 * 0.1);
    let b = ndarray::Array2::<f32>::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 11) as f32 * 0.1);
    let mut c = ndarray::Array2::<f32>::zeros((m, n));
    matmul(&mut c.view_mut(), &a.view(), &b.view(), false);
    let times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            matmul(&mut c.view_mut(), &a.view(), &b.view(), false);
            t.elapsed().as_secs_f64()
        })
        .collect();
    2.0 * (m * k * n) as f64 / median(&times) / 1e9
}

/// Matmul FLOPs one W1 step executes in toylens (after the exact shortcuts), for `u` distinct
/// (token, position) rows in layer 0: forward Q/K/V and v·W_O on those rows, MLP and unembedding at
/// the loss position only; backward twice the forward (weight and input gradients). With the W_in
/// fold (`fold_own`: its own rows), W_in's product on every example gives way to W_O·W_in, each
/// head's table v·(W_O·W_in) and the own rows through W_in (the mix itself is no product).
pub fn w1_step_flops(model: &Transformer, batch: usize, u: usize, fold_own: Option<usize>) -> f64 {
    let c = &model.cfg;
    let (d, h, dh, m, v) = (c.d_model, c.n_heads, c.d_head, c.d_mlp(), c.d_vocab_out());
    let w_in = match fold_own {
        None => batch * d * m,
        Some(own) => h * dh * d * m + h * u * dh * m + own * d * m,
    };
    let fwd = 2 * (3 * u * d * h * dh + h * u * dh * d + batch * (d * m + d * v) + w_in);
    3.0 * fwd as f64
}

/// W2: one minibatch step of the ToyMLP (p = 113, embeddings 2 × 128, hidden 256, batch 64; AdamW
/// lr 1e-3, wd 1e-2, torch's default betas). The batch is fixed: pair i is
/// ((17·i + 3) mod 113, (29·i + 5) mod 113), i < 64, so the PyTorch side builds the same one.
pub struct W2 {
    pub model: crate::models::toy_mlp::ToyMlp,
    pub pairs: Vec<crate::tasks::modular::Pair>,
    pub optim: AdamWConfig,
}

impl W2 {
    pub fn new(seed: u64) -> Result<Self> {
        use crate::models::toy_mlp::{ToyMlp, ToyMlpConfig};
        let model = ToyMlp::new(ToyMlpConfig {
            p: 113,
            d_embed: 128,
            d_hidden: 256,
            seed,
        })?;
        let pairs = (0..64u32)
            .map(|i| ((17 * i + 3) % 113, (29 * i + 5) % 113))
            .collect();
        Ok(W2 {
            model,
            pairs,
            optim: AdamWConfig::default(),
        })
    }

    /// `steps` AdamW steps on the fixed batch at a constant learning rate, on a pool thread (as
    /// training runs).
    pub fn train_steps(&mut self, steps: usize) -> Result<StepTimes> {
        rayon::scope(|_| self.train_steps_here(steps))
    }

    fn train_steps_here(&mut self, steps: usize) -> Result<StepTimes> {
        let mut ws = crate::models::toy_mlp::ToyMlpWorkspace::default();
        let targets: Vec<u32> = self.pairs.iter().map(|&(a, b)| (a + b) % 113).collect();
        let n = self.model.params.len();
        let mut grads = vec![0.0f32; n];
        let mut opt = AdamW::new(self.optim, n);
        let trainable = self.model.trainable_ranges();
        let mut out = StepTimes {
            losses: Vec::with_capacity(steps),
            step_ms: Vec::with_capacity(steps),
        };
        for _ in 0..steps {
            let t0 = Instant::now();
            let s = self
                .model
                .loss_and_grad(&mut ws, &self.pairs, &targets, &mut grads)?;
            opt.update(&mut self.model.params, &grads, &trainable, self.optim.lr);
            out.step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            out.losses.push(s.loss);
        }
        Ok(out)
    }
}

/// W3: one training step of the `digits5` preset: 5-digit addition, batch 64 (the preset's fresh
/// batch of step 1, fixed here so the PyTorch side trains on the same one), 18 tokens, loss at the 6
/// answer positions; d_model 512, 4 heads × 128, d_mlp 2048; AdamW lr 1e-4, wd 0.1, betas 0.9/0.98.
pub struct W3 {
    pub model: Transformer,
    pub batch: TokenBatch,
    pub optim: AdamWConfig,
}

impl W3 {
    pub fn new(seed: u64) -> Result<Self> {
        let exp = crate::config::resolve("digits5", &[format!("seed={seed}")])?.resolve()?;
        let (Some(cfg), Some(task)) = (
            exp.model
                .downcast::<crate::models::transformer::TransformerConfig>(),
            exp.task.downcast::<crate::tasks::digits::DigitsTask>(),
        ) else {
            unreachable!("the digits5 preset is a transformer on digits");
        };
        Ok(W3 {
            model: Transformer::new(cfg.clone())?,
            batch: task.fresh_batch(1, exp.config.train.batch_size.unwrap_or(64)),
            optim: exp.optim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{mean, median};

    #[test]
    fn the_mean_counts_a_slow_step_that_the_median_leaves_out() {
        let steps = [1.0, 1.0, 1.0, 1.0, 6.0];
        assert_eq!(median(&steps), 1.0);
        assert_eq!(mean(&steps), 2.0);
    }
}

/// The benchmark workloads (docs/PERFORMANCE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Nanda's grokking step, full batch.
    W1,
    /// A ToyMLP step at batch 64.
    W2,
    /// A digits5 step.
    W3,
}

/// A forced choice, on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}
