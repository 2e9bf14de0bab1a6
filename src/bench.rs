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
    let batch = crate::batch::Batch::Tokens(batch.clone());
    train_steps_traced_in(ws, model, &batch, optim, steps, false)
}

/// [`train_steps_in`], each update traced as training traces it (`train.trace_every: 1`) when
/// `trace` is set: what the trace costs a step.
pub fn train_steps_traced_in(
    ws: &mut Workspace,
    model: &mut Transformer,
    batch: &crate::batch::Batch,
    optim: AdamWConfig,
    steps: usize,
    trace: bool,
) -> Result<StepTimes> {
    use crate::models::Model;
    let tensors: Vec<std::ops::Range<usize>> = Model::tensors(&*model)
        .into_iter()
        .map(|t| t.range)
        .collect();
    let mut grads = vec![0.0f32; model.layout.total];
    let mut opt = AdamW::new(optim, model.layout.total);
    let trainable = model.layout.trainable_ranges();
    let mut out = StepTimes {
        losses: Vec::with_capacity(steps),
        step_ms: Vec::with_capacity(steps),
    };
    let mut traced = Vec::with_capacity(tensors.len());
    for _ in 0..steps {
        let t0 = Instant::now();
        let stats = match batch {
            crate::batch::Batch::Tokens(b) => model.loss_and_grad(ws, b, &mut grads)?,
            crate::batch::Batch::Sequences(b) => model.squared_error(ws, b, Some(&mut grads))?,
            crate::batch::Batch::Dense(_) => {
                return Err(crate::error::Error::Input(
                    "a transformer step takes tokens or vector tokens".into(),
                ))
            }
        };
        if trace {
            opt.update_traced(
                &mut model.params,
                &grads,
                &trainable,
                optim.lr,
                &tensors,
                &mut traced,
            );
            std::hint::black_box(&traced);
        } else {
            opt.update(&mut model.params, &grads, &trainable, optim.lr);
        }
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

/// One training step of a transformer preset on its batch of step 1 (fixed, so the PyTorch side
/// of bench/ trains on the same one), with the preset's AdamW. W3 is `digits5`'s: 5-digit addition,
/// batch 64, 18 tokens, loss at the 6 answer positions; d_model 512, 4 heads × 128, d_mlp 2048;
/// lr 1e-4, wd 0.1, betas 0.9/0.98. W4 is `induction`'s: batch 64 of 32 random tokens with a
/// repeated segment, loss at all 31 next-token positions; 2 attention-only layers with LayerNorm,
/// d_model 64, 4 heads × 16; lr 1e-3, wd 0.01, betas 0.9/0.99. W5 is `icl-regression`'s: batch
/// 128 of 16 (x, y) pairs as 32 vector tokens of width 5, squared error at the 16 x tokens; 2
/// layers with LayerNorm and MLPs, d_model 64, 4 heads × 16, d_mlp 64; Adam lr 0.003 (the
/// schedule's peak), betas 0.9/0.999.
pub struct PresetStep {
    pub model: Transformer,
    pub batch: crate::batch::Batch,
    pub optim: AdamWConfig,
}

/// The digits5 step.
pub type W3 = PresetStep;

impl PresetStep {
    /// W3's step (`digits5`).
    pub fn new(seed: u64) -> Result<Self> {
        Self::of("digits5", seed)
    }

    pub fn of(preset: &str, seed: u64) -> Result<Self> {
        let exp = crate::config::resolve(preset, &[format!("seed={seed}")])?.resolve()?;
        let Some(cfg) = exp
            .model
            .downcast::<crate::models::transformer::TransformerConfig>()
        else {
            return Err(crate::error::Error::Input(format!(
                "{preset}: not a transformer preset"
            )));
        };
        let mut data = exp.task.make_data(exp.config.train.batch_size)?;
        let batch = data.train_batch(1).into_owned();
        if let crate::batch::Batch::Dense(_) = batch {
            return Err(crate::error::Error::Input(format!(
                "{preset}: not a sequence task"
            )));
        }
        Ok(PresetStep {
            model: Transformer::new(cfg.clone())?,
            batch,
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

/// A step's batch for the PyTorch side: tokens and targets, or vectors and targets (nested lists).
fn batch_json(batch: &crate::batch::Batch) -> serde_json::Value {
    let rows = |a: &ndarray::Array2<u32>| a.outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>();
    let cube = |a: &ndarray::Array3<f32>| {
        a.outer_iter()
            .map(|m| m.outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    match batch {
        crate::batch::Batch::Tokens(b) => serde_json::json!({
            "tokens": rows(&b.tokens),
            "targets": rows(&b.targets),
            "loss_pos": b.loss_pos,
        }),
        crate::batch::Batch::Sequences(b) => serde_json::json!({
            "x": cube(&b.x),
            "y": cube(&b.y),
            "loss_pos": b.loss_pos,
        }),
        crate::batch::Batch::Dense(_) => serde_json::json!({}),
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
    /// An induction step (the `induction` preset).
    W4,
    /// An in-context regression step (the `icl-regression` preset).
    W5,
}

/// A forced choice, on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Writes a workload's initial weights (file name, model, its task) where asked.
type SaveInit<'a> =
    &'a dyn Fn(&str, &dyn crate::models::Model, Option<&crate::tasks::TaskInfo>) -> Result<()>;

/// `toylens bench` as a request: time `steps` training steps of a workload.
#[derive(Clone, Debug)]
pub struct BenchRequest {
    pub workload: Workload,
    pub steps: usize,
    /// Seed of the initial weights.
    pub seed: u64,
    /// Write the initial weights here (for the PyTorch side of bench/).
    pub out: Option<std::path::PathBuf>,
    /// Also measure the GEMM peak (W1).
    pub peak: bool,
    /// W1 only: force layer 0's W_in fold on or off.
    pub w_in_fold: Option<Switch>,
    /// W1 and W3: trace every update as training does by default.
    pub trace: bool,
}

/// What a benchmark measured: `json`, one object (what `--json` prints and bench/ scripts read),
/// and `text`, the lines printed otherwise.
pub struct BenchReport {
    pub json: serde_json::Value,
    pub text: String,
}

impl BenchRequest {
    pub fn run(&self) -> Result<BenchReport> {
        use crate::error::Error;
        let save = |file: &str,
                    model: &dyn crate::models::Model,
                    task: Option<&crate::tasks::TaskInfo>|
         -> Result<()> {
            if let Some(dir) = &self.out {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                crate::io::checkpoint::save(&dir.join(file), model, task, &Default::default())?;
            }
            Ok(())
        };
        let steps = self.steps.max(2);
        if self.w_in_fold.is_some() && self.workload != Workload::W1 {
            return Err(Error::Input(format!(
                "--w-in-fold: only W1 has a W_in fold to take, not {}",
                crate::error::choice_name(&self.workload)
            )));
        }
        if self.trace && self.workload == Workload::W2 {
            return Err(Error::Input(
                "--trace: W1, W3 and W4 take it, not W2".into(),
            ));
        }
        let (name, about, r, extra) = match self.workload {
            Workload::W2 => {
                let mut w2 = W2::new(self.seed)?;
                save("init_w2.safetensors", &w2.model, None)?;
                let r = w2.train_steps(steps)?;
                (
                    "W2",
                    "ToyMLP step, batch 64".to_string(),
                    r,
                    serde_json::json!({}),
                )
            }
            Workload::W3 | Workload::W4 | Workload::W5 => {
                let (preset, name, about) = match self.workload {
                    Workload::W3 => ("digits5", "W3", "digits5 step, batch 64"),
                    Workload::W4 => ("induction", "W4", "induction step, batch 64"),
                    _ => (
                        "icl-regression",
                        "W5",
                        "in-context regression step, batch 128",
                    ),
                };
                let mut step = PresetStep::of(preset, self.seed)?;
                let file = format!("init_{}.safetensors", name.to_lowercase());
                save(&file, &step.model, None)?;
                let r = train_steps_traced_in(
                    &mut Workspace::new(),
                    &mut step.model,
                    &step.batch,
                    step.optim,
                    steps,
                    self.trace,
                )?;
                let batch = batch_json(&step.batch);
                (name, about.to_string(), r, batch)
            }
            Workload::W1 => return self.w1(steps, &save),
        };
        let ms = median(&r.step_ms[1..]);
        let mean_ms = mean(&r.step_ms[1..]);
        let mut json = serde_json::json!({
            "workload": name,
            "threads": rayon::current_num_threads(),
            "simd": crate::engine::simd::level().name(),
            "steps": r.losses.len(),
            "ms_per_step_median": ms,
            "ms_per_step_mean": mean_ms,
            "losses": r.losses,
        });
        if let (Some(o), serde_json::Value::Object(e)) = (json.as_object_mut(), extra) {
            o.extend(e);
        }
        let text = format!(
            "{name} ({about}): {ms:.4} ms/step median ({mean_ms:.4} mean) over {} steps, {} threads; loss {:.6} -> {:.6}\n",
            r.step_ms.len() - 1,
            rayon::current_num_threads(),
            r.losses[0],
            r.losses.last().copied().unwrap_or(f64::NAN)
        );
        Ok(BenchReport { json, text })
    }

    fn w1(&self, steps: usize, save: SaveInit<'_>) -> Result<BenchReport> {
        let mut w1 = W1::new(self.seed)?;
        save(
            "init.safetensors",
            &w1.model,
            Some(&crate::tasks::TaskInfo::from_modular(&w1.task)),
        )?;
        let mut ws = Workspace::new();
        ws.set_w_in_fold(self.w_in_fold.map(|f| f == Switch::On));
        let r = train_steps_traced_in(
            &mut ws,
            &mut w1.model,
            &crate::batch::Batch::Tokens(w1.batch.clone()),
            w1.optim,
            steps,
            self.trace,
        )?;
        let folded = ws.w_in_folded();
        let ms = median(&r.step_ms[1..]);
        let flops = w1.step_flops(folded);
        let step_gflops = flops / (ms / 1e3) / 1e9;
        let peak_gflops = self.peak.then(|| gemm_gflops(2048, 2048, 2048, 5));
        let json = serde_json::json!({
            "workload": "W1",
            "threads": rayon::current_num_threads(),
            "simd": crate::engine::simd::level().name(),
            "steps": r.losses.len(),
            "ms_per_step_median": ms,
            "ms_per_step_mean": mean(&r.step_ms[1..]),
            "losses": r.losses,
            "step_matmul_gflop": flops / 1e9,
            "step_gflops": step_gflops,
            "gemm_peak_gflops": peak_gflops,
            "w_in_folded": folded,
        });
        let mut text = format!(
            "W1 (Nanda grokking step, batch {}): {:.2} ms/step median over {} steps, {} threads; loss {:.6} -> {:.6}\n",
            w1.batch.tokens.nrows(),
            ms,
            r.step_ms.len() - 1,
            rayon::current_num_threads(),
            r.losses[0],
            r.losses.last().copied().unwrap_or(f64::NAN)
        );
        if folded {
            text +=
                "  layer 0's W_in folded (the default here; --w-in-fold off: the general path)\n";
        }
        text += &format!(
            "  matmul work {:.2} GFLOP/step -> {step_gflops:.0} GFLOP/s\n",
            flops / 1e9
        );
        if let Some(p) = peak_gflops {
            text += &format!(
                "  GEMM peak (2048^3): {p:.0} GFLOP/s; the step runs at {:.0}% of it\n",
                100.0 * step_gflops / p
            );
        }
        Ok(BenchReport { json, text })
    }
}
