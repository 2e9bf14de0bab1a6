//! The ToyMLP on modular arithmetic: one embedding shared by both inputs, the two embeddings
//! concatenated, a hidden ReLU layer, and logits over the p residues.
//!
//! Parameters are named and shaped as the PyTorch module's state dict (`embed.weight [p, d_embed]`,
//! `hidden.weight [d_hidden, 2·d_embed]`, `hidden.bias`, `unembed.weight [p, d_hidden]`,
//! `unembed.bias`), so `load_state_dict` takes a toylens checkpoint. Hook points: `hook_embed`
//! `[batch, 2, d_embed]`, `hook_hidden_pre` and `hook_hidden_post` `[batch, d_hidden]`, `hook_logits`
//! `[batch, p]`.

use crate::batch::{Batch, Input, LossStats, TokenBatch};
use crate::engine::loss::{self, RowLoss};
use crate::engine::matmul::{matmul_threads, view, view_mut};
use crate::engine::rng::Rng;
use crate::engine::simd::{column_sums_add, vectorized, SendPtr};
use crate::engine::threads::halves;
use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, CacheFilter, HookRunner, Hooks};
use crate::models::{batch_mismatch, Kind, Model, Scratch, TensorSpec};
/// An input pair `(a, b)`.
pub type Pair = (u32, u32);
use serde::{Deserialize, Serialize};
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyMlpConfig {
    /// Vocabulary and number of outputs (the modulus).
    pub p: usize,
    pub d_embed: usize,
    pub d_hidden: usize,
    /// Seed of the initialisation.
    pub seed: u64,
}

impl ToyMlpConfig {
    pub fn validate(&self) -> Result<()> {
        for (k, v) in [
            ("model.d_embed", self.d_embed),
            ("model.d_hidden", self.d_hidden),
        ] {
            if v == 0 {
                return Err(Error::config(k, "must be at least 1"));
            }
        }
        if self.p < 2 {
            return Err(Error::config(
                "data.p",
                format!("must be at least 2 (got {})", self.p),
            ));
        }
        Ok(())
    }

    /// (name, shape) of every parameter, in buffer order.
    pub fn shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let (p, e, h) = (self.p, self.d_embed, self.d_hidden);
        vec![
            ("embed.weight", vec![p, e]),
            ("hidden.weight", vec![h, 2 * e]),
            ("hidden.bias", vec![h]),
            ("unembed.weight", vec![p, h]),
            ("unembed.bias", vec![p]),
        ]
    }
}

/// The hook points, in forward order.
pub const HOOKS: [&str; 4] = [
    "hook_embed",
    "hook_hidden_pre",
    "hook_hidden_post",
    "hook_logits",
];

#[derive(Clone, Debug)]
pub struct ToyMlp {
    pub cfg: ToyMlpConfig,
    /// Every parameter, flat, in [`ToyMlpConfig::shapes`] order.
    pub params: Vec<f32>,
    ranges: Vec<Range<usize>>,
}

/// Buffers reused across steps.
#[derive(Default, Debug)]
pub struct ToyMlpWorkspace {
    x: Vec<f32>,
    pre: Vec<f32>,
    post: Vec<f32>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    dpost: Vec<f32>,
    dx: Vec<f32>,
    targets: Vec<u32>,
    rows: Vec<RowLoss>,
    /// The current batch's inputs (through the model interface).
    pairs: Vec<Pair>,
}

fn buf<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() != n {
        v.resize(n, T::default());
    }
    &mut v[..]
}

/// `c (+)= a·b` on the calling thread. The ToyMLP's products are small (≤ 4M multiply-adds): splitting
/// one across threads inside gemm costs more than it gains.
fn mm(
    mut c: ndarray::ArrayViewMut2<f32>,
    a: ndarray::ArrayView2<f32>,
    b: ndarray::ArrayView2<f32>,
    accumulate: bool,
) {
    matmul_threads(&mut c, &a, &b, accumulate, 1);
}

/// A `[rows, cols]` matrix stored feature-major (`cols` runs of `rows`): the batch is the contiguous
/// axis. gemm then reads activations as its left operand without packing them (it packs a left
/// operand that is not column-major, once per block of the right one). Measured on a batch-64 step,
/// packing fell from a fifth of the time to a twentieth.
fn fm(s: &[f32], rows: usize, cols: usize) -> ndarray::ArrayView2<'_, f32> {
    view(s, cols, rows).reversed_axes()
}

fn fm_mut(s: &mut [f32], rows: usize, cols: usize) -> ndarray::ArrayViewMut2<'_, f32> {
    view_mut(s, cols, rows).reversed_axes()
}

/// Row-major copy of a feature-major `[rows, cols]` matrix, and back.
fn to_rows(s: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    fm(s, rows, cols).iter().copied().collect()
}

fn from_rows(dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    fm_mut(dst, rows, cols).assign(&view(src, rows, cols));
}

impl ToyMlp {
    /// PyTorch's default initialisation: `nn.Embedding` N(0, 1); `nn.Linear` weights and biases
    /// U(−1/√fan_in, 1/√fan_in).
    pub fn new(cfg: ToyMlpConfig) -> Result<Self> {
        cfg.validate()?;
        let mut rng = Rng::new(cfg.seed);
        let mut params = Vec::new();
        for (name, shape) in cfg.shapes() {
            let n: usize = shape.iter().product();
            let fan_in = match name {
                "hidden.weight" | "hidden.bias" => 2 * cfg.d_embed,
                _ => cfg.d_hidden,
            };
            let bound = 1.0 / (fan_in as f64).sqrt();
            for _ in 0..n {
                params.push(if name == "embed.weight" {
                    rng.normal() as f32
                } else {
                    ((2.0 * rng.uniform() - 1.0) * bound) as f32
                });
            }
        }
        Self::from_params(cfg, params)
    }

    pub fn from_params(cfg: ToyMlpConfig, params: Vec<f32>) -> Result<Self> {
        cfg.validate()?;
        let mut ranges = Vec::new();
        let mut at = 0;
        for (_, s) in cfg.shapes() {
            let n: usize = s.iter().product();
            ranges.push(at..at + n);
            at += n;
        }
        if params.len() != at {
            return Err(Error::Input(format!(
                "the ToyMLP has {at} parameters, got {}",
                params.len()
            )));
        }
        Ok(ToyMlp {
            cfg,
            params,
            ranges,
        })
    }

    /// The parameter `name` (state-dict name), flat.
    pub fn param(&self, name: &str) -> Option<&[f32]> {
        let i = self.cfg.shapes().iter().position(|(n, _)| *n == name)?;
        Some(&self.params[self.ranges[i].clone()])
    }

    /// (name, shape, range in the flat buffer) of every parameter.
    pub fn specs(&self) -> Vec<(&'static str, Vec<usize>, Range<usize>)> {
        self.cfg
            .shapes()
            .into_iter()
            .zip(&self.ranges)
            .map(|((n, s), r)| (n, s, r.clone()))
            .collect()
    }

    fn check(&self, pairs: &[Pair]) -> Result<()> {
        if let Some(&(a, b)) = pairs
            .iter()
            .find(|&&(a, b)| a as usize >= self.cfg.p || b as usize >= self.cfg.p)
        {
            return Err(Error::Input(format!(
                "input ({a}, {b}) is out of range: the ToyMLP's vocabulary is 0..{}",
                self.cfg.p
            )));
        }
        Ok(())
    }

    /// Forward into the workspace; hooks and the cache see every activation (in `HOOKS` order).
    fn forward_impl(
        &self,
        ws: &mut ToyMlpWorkspace,
        pairs: &[Pair],
        mut hk: Option<&mut HookRunner>,
    ) {
        let (p, e, h) = (self.cfg.p, self.cfg.d_embed, self.cfg.d_hidden);
        let n = pairs.len();
        let w = |i: usize| &self.params[self.ranges[i].clone()];
        let (emb, w1, b1, w2, b2) = (w(0), w(1), w(2), w(3), w(4));
        // Hooks and the cache see row-major `[batch, ...]` arrays; feature-major buffers are copied
        // out and back (only when some hook or cache asks).
        let watch: [bool; 4] =
            std::array::from_fn(|i| hk.as_deref().is_some_and(|r| r.wants(HOOKS[i])));
        let mut intercept = |name: &str, data: &mut [f32], shape: &[usize]| {
            if let Some(r) = hk.as_deref_mut() {
                r.run(name, data, shape);
            }
        };
        // x [n, 2e] feature-major: column j < e is E[a][j], column e + j is E[b][j].
        let x = buf(&mut ws.x, n * 2 * e);
        let (xa, xb) = x.split_at_mut(e * n);
        let gather = |x: &mut [f32], token: fn(&Pair) -> u32| {
            for (j, col) in x.chunks_exact_mut(n).enumerate() {
                for (v, pair) in col.iter_mut().zip(pairs) {
                    *v = emb[token(pair) as usize * e + j];
                }
            }
        };
        halves(|| gather(xa, |p| p.0), || gather(xb, |p| p.1));
        if watch[0] {
            let mut rows = to_rows(x, n, 2 * e);
            intercept(HOOKS[0], &mut rows, &[n, 2, e]);
            from_rows(x, &rows, n, 2 * e);
        }
        // pre = x·W1ᵀ + b1, the hidden units in two halves (each a contiguous run of the
        // feature-major buffer, and a block of W1's rows).
        let pre = buf(&mut ws.pre, n * h);
        let xv = fm(&ws.x, n, 2 * e);
        let h0 = h / 2;
        let (pre0, pre1) = pre.split_at_mut(h0 * n);
        let (w1a, w1b) = w1.split_at(h0 * 2 * e);
        let hidden = |pre: &mut [f32], w1: &[f32], b1: &[f32]| {
            let units = b1.len();
            for (col, &bias) in pre.chunks_exact_mut(n).zip(b1) {
                col.fill(bias);
            }
            mm(fm_mut(pre, n, units), xv, view(w1, units, 2 * e).t(), true);
        };
        halves(
            || hidden(pre0, w1a, &b1[..h0]),
            || hidden(pre1, w1b, &b1[h0..]),
        );
        if watch[1] {
            let mut rows = to_rows(pre, n, h);
            intercept(HOOKS[1], &mut rows, &[n, h]);
            from_rows(pre, &rows, n, h);
        }
        let post = buf(&mut ws.post, n * h);
        vectorized(
            #[inline(always)]
            || {
                for (y, &v) in post.iter_mut().zip(pre.iter()) {
                    *y = v.max(0.0);
                }
            },
        );
        if watch[2] {
            let mut rows = to_rows(post, n, h);
            intercept(HOOKS[2], &mut rows, &[n, h]);
            from_rows(post, &rows, n, h);
        }
        // Logits row-major, as the loss reads them; the batch in two halves.
        let logits = buf(&mut ws.logits, n * p);
        let n0 = n / 2;
        let (top, bottom) = logits.split_at_mut(n0 * p);
        let postv = fm(&ws.post, n, h);
        let unembed = |logits: &mut [f32], rows: std::ops::Range<usize>| {
            for row in logits.chunks_exact_mut(p) {
                row.copy_from_slice(b2);
            }
            mm(
                view_mut(logits, rows.len(), p),
                postv.slice(ndarray::s![rows, ..]),
                view(w2, p, h).t(),
                true,
            );
        };
        halves(|| unembed(top, 0..n0), || unembed(bottom, n0..n));
        if watch[3] {
            intercept(HOOKS[3], logits, &[n, p]);
        }
    }

    /// Logits `[batch, p]`.
    pub fn forward(&self, pairs: &[Pair]) -> Result<ndarray::Array2<f32>> {
        self.run(pairs, Hooks::new(), None).map(|(l, _)| l)
    }

    /// Logits with hooks that may read or change any activation.
    pub fn run_with_hooks(&self, pairs: &[Pair], hooks: Hooks) -> Result<ndarray::Array2<f32>> {
        self.run(pairs, hooks, None).map(|(l, _)| l)
    }

    /// Logits and the activations that `filter` keeps.
    pub fn run_with_cache(
        &self,
        pairs: &[Pair],
        filter: &CacheFilter,
    ) -> Result<(ndarray::Array2<f32>, ActivationCache)> {
        self.run(pairs, Hooks::new(), Some(filter))
    }

    fn run(
        &self,
        pairs: &[Pair],
        hooks: Hooks,
        filter: Option<&CacheFilter>,
    ) -> Result<(ndarray::Array2<f32>, ActivationCache)> {
        self.check(pairs)?;
        let names: Vec<String> = HOOKS.iter().map(|s| s.to_string()).collect();
        let mut cache = ActivationCache::default();
        let mut runner = HookRunner::new(&names, hooks, filter.map(|f| (&mut cache, f)))?;
        let mut ws = ToyMlpWorkspace::default();
        self.forward_impl(&mut ws, pairs, Some(&mut runner));
        runner.finish()?;
        let logits =
            ndarray::Array2::from_shape_vec((pairs.len(), self.cfg.p), ws.logits).expect("logits");
        Ok((logits, cache))
    }

    /// Loss statistics of the logits in `ws` against `ws.targets`, and their gradient.
    fn stats_and_grad(&self, ws: &mut ToyMlpWorkspace, n: usize) -> LossStats {
        let p = self.cfg.p;
        let rows = buf(&mut ws.rows, n);
        let grad = Some((buf(&mut ws.dlogits, n * p), 1.0 / n.max(1) as f64));
        loss::cross_entropy(&ws.logits, p, &ws.targets[..n], rows, grad);
        summarize(&ws.rows)
    }

    /// Loss and accuracy of `pairs` against the targets in `ws`, without gradients: the rows in
    /// chunks of [`EVAL_ROWS`], one chunk per task. Each row's logits and loss are the same bits as
    /// in one pass over all rows; a chunk's activations stay in cache, and the large buffers of an
    /// evaluation over thousands of pairs are never made (their page faults were a fifth of it).
    fn evaluate_set(&self, ws: &mut ToyMlpWorkspace, pairs: &[Pair]) -> LossStats {
        use rayon::prelude::*;
        let (n, p) = (pairs.len(), self.cfg.p);
        let rows = buf(&mut ws.rows, n);
        rows.par_chunks_mut(EVAL_ROWS)
            .zip(pairs.par_chunks(EVAL_ROWS))
            .zip(ws.targets[..n].par_chunks(EVAL_ROWS))
            .for_each_init(
                ToyMlpWorkspace::default,
                |chunk, ((rows, pairs), targets)| {
                    self.forward_impl(chunk, pairs, None);
                    loss::cross_entropy(&chunk.logits, p, targets, rows, None);
                },
            );
        summarize(&ws.rows)
    }

    fn set_targets(&self, ws: &mut ToyMlpWorkspace, pairs: &[Pair], targets: &[u32]) -> Result<()> {
        if targets.len() != pairs.len() {
            return Err(Error::Input(format!(
                "{} targets for {} inputs",
                targets.len(),
                pairs.len()
            )));
        }
        if let Some(&c) = targets.iter().find(|&&c| c as usize >= self.cfg.p) {
            return Err(Error::Input(format!(
                "target {c} is outside the ToyMLP's {} outputs",
                self.cfg.p
            )));
        }
        buf(&mut ws.targets, pairs.len()).copy_from_slice(targets);
        Ok(())
    }

    /// The pairs and targets of a token batch (tokens `[batch, 2]` or `[batch, 3]`, the modular task's
    /// `a b =`, whose `=` the ToyMLP does not read; targets `[batch, 1]`) into `ws`.
    fn take_batch(&self, ws: &mut ToyMlpWorkspace, batch: &TokenBatch) -> Result<()> {
        let (n, w) = batch.tokens.dim();
        if !(w == 2 || w == 3) || batch.targets.dim() != (n, 1) {
            return Err(Error::Input(format!(
                "the ToyMLP takes tokens [batch, 2] (a, b), or [batch, 3] (a, b, =; `=` is ignored), and targets [batch, 1]; got tokens {:?}, targets {:?}",
                batch.tokens.shape(),
                batch.targets.shape()
            )));
        }
        ws.pairs.clear();
        ws.pairs
            .extend(batch.tokens.rows().into_iter().map(|r| (r[0], r[1])));
        let t = buf(&mut ws.targets, n);
        for (t, &x) in t.iter_mut().zip(batch.targets.iter()) {
            *t = x;
        }
        if let Some(&c) = ws.targets.iter().find(|&&c| c as usize >= self.cfg.p) {
            return Err(Error::Input(format!(
                "target {c} is outside the ToyMLP's {} outputs",
                self.cfg.p
            )));
        }
        self.check(&ws.pairs)
    }

    /// Mean cross-entropy and accuracy on `pairs` against `targets` (one class each).
    pub fn evaluate(
        &self,
        ws: &mut ToyMlpWorkspace,
        pairs: &[Pair],
        targets: &[u32],
    ) -> Result<LossStats> {
        self.check(pairs)?;
        self.set_targets(ws, pairs, targets)?;
        Ok(self.evaluate_set(ws, pairs))
    }

    /// Loss on `pairs` against `targets` and its gradient with respect to every parameter (flat,
    /// overwritten).
    pub fn loss_and_grad(
        &self,
        ws: &mut ToyMlpWorkspace,
        pairs: &[Pair],
        targets: &[u32],
        grads: &mut [f32],
    ) -> Result<LossStats> {
        self.check(pairs)?;
        self.set_targets(ws, pairs, targets)?;
        self.loss_and_grad_set(ws, pairs, grads)
    }

    /// [`ToyMlp::loss_and_grad`] against the targets already in `ws`.
    fn loss_and_grad_set(
        &self,
        ws: &mut ToyMlpWorkspace,
        pairs: &[Pair],
        grads: &mut [f32],
    ) -> Result<LossStats> {
        if grads.len() != self.params.len() {
            return Err(Error::Input(format!(
                "gradient buffer has {} entries, the model {}",
                grads.len(),
                self.params.len()
            )));
        }
        self.forward_impl(ws, pairs, None);
        let stats = self.stats_and_grad(ws, pairs.len());
        let (p, e, h, n) = (self.cfg.p, self.cfg.d_embed, self.cfg.d_hidden, pairs.len());
        let w = |i: usize| &self.params[self.ranges[i].clone()];
        let (w1, w2) = (w(1), w(3));
        let [g_emb, g_w1, g_b1, g_w2, g_b2] = split5(grads, &self.ranges);
        let (dlogits, post, pre, x) = (&ws.dlogits, &ws.post, &ws.pre, &ws.x);
        // Each layer's weight gradient and input gradient are independent: one on each thread.
        // Unembedding: dW2 = dlogitsᵀ·post, db2 = Σ dlogits | dpost = dlogits·W2.
        let dpost = buf(&mut ws.dpost, n * h);
        halves(
            || {
                mm(
                    view_mut(g_w2, p, h),
                    view(dlogits, n, p).t(),
                    fm(post, n, h),
                    false,
                );
                g_b2.fill(0.0);
                column_sums_add(g_b2, dlogits, n, p);
            },
            || {
                mm(
                    fm_mut(dpost, n, h),
                    view(dlogits, n, p),
                    view(w2, p, h),
                    false,
                );
                // ReLU: the gradient passes where the pre-activation is positive.
                vectorized(
                    #[inline(always)]
                    || {
                        for (d, &v) in dpost.iter_mut().zip(pre) {
                            *d = if v > 0.0 { *d } else { 0.0 };
                        }
                    },
                );
            },
        );
        // Hidden layer: dW1 = dpreᵀ·x, db1 = Σ_batch dpre (a sum along each feature-major run) |
        // dx = dpre·W1.
        let dpre = &ws.dpost;
        let dx = buf(&mut ws.dx, n * 2 * e);
        halves(
            || {
                mm(
                    view_mut(g_w1, h, 2 * e),
                    fm(dpre, n, h).t(),
                    fm(x, n, 2 * e),
                    false,
                );
                vectorized(
                    #[inline(always)]
                    || {
                        for (b, col) in g_b1.iter_mut().zip(dpre.chunks_exact(n)) {
                            // Eight running sums, combined in a fixed order: vectorises, stays
                            // deterministic.
                            let mut acc = [0.0f32; 8];
                            let head = col.len() / 8 * 8;
                            for ch in col[..head].chunks_exact(8) {
                                for k in 0..8 {
                                    acc[k] += ch[k];
                                }
                            }
                            let tail: f32 = col[head..].iter().sum();
                            *b = ((acc[0] + acc[1]) + (acc[2] + acc[3]))
                                + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
                                + tail;
                        }
                    },
                );
            },
            || {
                mm(
                    fm_mut(dx, n, 2 * e),
                    fm(dpre, n, h),
                    view(w1, h, 2 * e),
                    false,
                );
            },
        );
        // Both inputs share the embedding: scatter both halves back to their tokens' rows, the
        // embedding's columns in two halves (each entry's sum runs over the batch in order, a's
        // term before b's, wherever its column is done).
        g_emb.fill(0.0);
        let (dxa, dxb) = dx.split_at(e * n);
        debug_assert!(pairs
            .iter()
            .all(|&(a, b)| (a as usize) < p && (b as usize) < p));
        let g = SendPtr(g_emb.as_mut_ptr());
        let scatter = |cols: Range<usize>| {
            // `{ g }`: the closure takes the whole SendPtr (it may cross threads), not its field.
            let g = { g }.0;
            for j in cols {
                let (ca, cb) = (&dxa[j * n..(j + 1) * n], &dxb[j * n..(j + 1) * n]);
                for ((&va, &vb), &(a, b)) in ca.iter().zip(cb).zip(pairs) {
                    // SAFETY: a and b are below p (both callers check the batch), j below e,
                    // so both entries lie in g_emb [p, e]; the two halves write disjoint
                    // columns, and g_emb is borrowed mutably for the whole scatter.
                    unsafe {
                        *g.add(a as usize * e + j) += va;
                        *g.add(b as usize * e + j) += vb;
                    }
                }
            }
        };
        halves(|| scatter(0..e / 2), || scatter(e / 2..e));
        Ok(stats)
    }

    /// Every parameter is trained.
    pub fn trainable_ranges(&self) -> Vec<Range<usize>> {
        std::iter::once(0..self.params.len()).collect()
    }
}

/// Rows per task of an evaluation ([`ToyMlp::evaluate_set`]).
const EVAL_ROWS: usize = 256;

/// Mean loss and accuracy of per-row results.
fn summarize(rows: &[RowLoss]) -> LossStats {
    let n = rows.len();
    let l = loss::mean(rows);
    let acc = rows.iter().filter(|r| r.correct).count() as f64 / n.max(1) as f64;
    LossStats {
        loss: l,
        accuracy: acc,
        per_position_loss: vec![l],
        per_position_accuracy: vec![acc],
        exact_match: acc,
    }
}

// ---------------------------------------------------------------------------------------------
// The model interface: token batches of (a, b) (a third column, the modular task's `=`, is
// ignored), targets `[batch, 1]`.

fn load_kind(cfg: &serde_json::Value) -> Result<Box<dyn Model>> {
    let cfg: ToyMlpConfig = crate::models::parse_config("toy_mlp", cfg)?;
    let n = cfg
        .shapes()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    Ok(Box::new(ToyMlp::from_params(cfg, vec![0.0; n])?))
}

pub const KIND: Kind = Kind::of::<ToyMlpSection>(load_kind);

/// `model:` of `arch: toy_mlp`: its widths; the vocabulary is the task's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyMlpSection {
    pub d_embed: usize,
    pub d_hidden: usize,
}

impl crate::models::ModelSection for ToyMlpSection {
    const NAME: &'static str = "toy_mlp";
    fn configure(
        self,
        io: &crate::batch::TaskIo,
        seed: u64,
    ) -> Result<std::sync::Arc<dyn crate::models::ModelPlan>> {
        let crate::batch::TaskIo::Tokens {
            pair_vocab: Some(p),
            ..
        } = *io
        else {
            return Err(crate::models::wrong_io(
                "toy_mlp",
                "pairs of tokens with one label (the modular task)",
                io,
            ));
        };
        let cfg = ToyMlpConfig {
            p,
            d_embed: self.d_embed,
            d_hidden: self.d_hidden,
            seed,
        };
        cfg.validate()?;
        Ok(std::sync::Arc::new(cfg))
    }
}

impl crate::models::ModelPlan for ToyMlpConfig {
    fn build(&self) -> Result<Box<dyn Model>> {
        Ok(Box::new(ToyMlp::new(self.clone())?))
    }
    fn memory(&self) -> crate::models::ModelMemory {
        let (p, e, hid) = (self.p as f64, self.d_embed as f64, self.d_hidden as f64);
        crate::models::ModelMemory {
            parameters: p * e + 2.0 * e * hid + hid + p * hid + p,
            activations_per_example: 4.0 * e + 4.0 * hid + 2.0 * p,
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Model for ToyMlp {
    crate::model_basics!("toy_mlp");
    fn tensors(&self) -> Vec<TensorSpec> {
        crate::models::trained_tensors(self.specs())
    }
    fn hook_names(&self) -> Vec<String> {
        HOOKS.iter().map(|s| s.to_string()).collect()
    }
    fn example_input(&self) -> Batch {
        Batch::Tokens(TokenBatch {
            tokens: ndarray::Array2::zeros((1, 2)),
            loss_pos: vec![1],
            targets: ndarray::Array2::zeros((1, 1)),
        })
    }
    fn evaluate(&self, scratch: &mut Scratch, batch: &Batch) -> Result<LossStats> {
        let ws = scratch.get::<ToyMlpWorkspace>();
        self.take_batch(ws, crate::models::token_batch(batch, "toy_mlp")?)?;
        let pairs = std::mem::take(&mut ws.pairs);
        let stats = self.evaluate_set(ws, &pairs);
        ws.pairs = pairs;
        Ok(stats)
    }
    fn loss_and_grad(
        &self,
        scratch: &mut Scratch,
        batch: &Batch,
        grads: &mut [f32],
    ) -> Result<LossStats> {
        let ws = scratch.get::<ToyMlpWorkspace>();
        self.take_batch(ws, crate::models::token_batch(batch, "toy_mlp")?)?;
        let pairs = std::mem::take(&mut ws.pairs);
        let r = self.loss_and_grad_set(ws, &pairs, grads);
        ws.pairs = pairs;
        r
    }
    fn run(
        &self,
        input: Input,
        hooks: Hooks,
        filter: Option<CacheFilter>,
    ) -> Result<(ndarray::ArrayD<f32>, ActivationCache)> {
        let Input::Tokens(t) = input else {
            return Err(batch_mismatch("toy_mlp", "tokens [batch, 2]"));
        };
        if !(t.ncols() == 2 || t.ncols() == 3) {
            return Err(Error::Input(format!(
                "the ToyMLP takes tokens [batch, 2] (a, b) or [batch, 3] (a, b, =); got {:?}",
                t.shape()
            )));
        }
        let pairs: Vec<Pair> = t.rows().into_iter().map(|r| (r[0], r[1])).collect();
        let (l, c) = ToyMlp::run(self, &pairs, hooks, filter.as_ref())?;
        Ok((l.into_dyn(), c))
    }
}

fn split5<'a>(g: &'a mut [f32], r: &[Range<usize>]) -> [&'a mut [f32]; 5] {
    let (a, rest) = g.split_at_mut(r[0].end);
    let (b, rest) = rest.split_at_mut(r[1].len());
    let (c, rest) = rest.split_at_mut(r[2].len());
    let (d, e) = rest.split_at_mut(r[3].len());
    [a, b, c, d, e]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_see_and_change_activations() {
        let m = ToyMlp::new(ToyMlpConfig {
            p: 7,
            d_embed: 4,
            d_hidden: 6,
            seed: 1,
        })
        .unwrap();
        let pairs = vec![(1, 2), (3, 6), (0, 0)];
        let (logits, cache) = m.run_with_cache(&pairs, &CacheFilter::All).unwrap();
        assert_eq!(cache.get("hook_embed").unwrap().shape(), &[3, 2, 4]);
        assert_eq!(cache.get("hook_hidden_post").unwrap().shape(), &[3, 6]);
        assert_eq!(cache.get("hook_logits").unwrap().shape(), &[3, 7]);
        assert_eq!(logits, m.forward(&pairs).unwrap());
        // Zeroing the hidden layer leaves the output bias only.
        let z = m
            .run_with_hooks(
                &pairs,
                Hooks::new().add("hook_hidden_post", crate::hooks::zero_ablate()),
            )
            .unwrap();
        let b = m.param("unembed.bias").unwrap();
        for row in z.rows() {
            assert_eq!(row.to_vec(), b.to_vec());
        }
        // The cache holds row-major activations: hook_embed[i] = (E[a_i], E[b_i]).
        let emb = m.param("embed.weight").unwrap();
        let he = cache.get("hook_embed").unwrap();
        for (i, &(a, b)) in pairs.iter().enumerate() {
            for j in 0..4 {
                assert_eq!(he[[i, 0, j]], emb[a as usize * 4 + j]);
                assert_eq!(he[[i, 1, j]], emb[b as usize * 4 + j]);
            }
        }
        // A hook that changes the (feature-major) embedding changes what follows: zero embeddings
        // give every input the same logits.
        let z = m
            .run_with_hooks(
                &pairs,
                Hooks::new().add("hook_embed", crate::hooks::zero_ablate()),
            )
            .unwrap();
        assert_ne!(z, logits);
        for row in z.rows() {
            assert_eq!(row, z.row(0));
        }
        // Cached post-activations are the ReLU of the cached pre-activations, element by element.
        let (_, c2) = m.run_with_cache(&pairs, &CacheFilter::All).unwrap();
        let pre = c2.get("hook_hidden_pre").unwrap();
        let post = c2.get("hook_hidden_post").unwrap();
        for (a, b) in pre.iter().zip(post.iter()) {
            assert_eq!(*b, a.max(0.0));
        }
        let e = m
            .run_with_hooks(&pairs, Hooks::new().add("hook_hidden", |_| {}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hook_hidden_pre"), "{e}");
        assert!(m.forward(&[(7, 0)]).is_err());
    }

    fn odd_model() -> ToyMlp {
        // Odd sizes everywhere, so that the halves of each split differ in size.
        ToyMlp::new(ToyMlpConfig {
            p: 31,
            d_embed: 5,
            d_hidden: 13,
            seed: 4,
        })
        .unwrap()
    }

    fn all_pairs(p: u32) -> (Vec<Pair>, Vec<u32>) {
        let pairs: Vec<Pair> = (0..p).flat_map(|a| (0..p).map(move |b| (a, b))).collect();
        let targets = pairs.iter().map(|&(a, b)| (a + b) % p).collect();
        (pairs, targets)
    }

    #[test]
    fn a_chunked_evaluation_equals_one_pass_over_all_rows() {
        let m = odd_model();
        let (pairs, targets) = all_pairs(31);
        assert!(pairs.len() > 3 * EVAL_ROWS);
        let mut ws = ToyMlpWorkspace::default();
        let got = m.evaluate(&mut ws, &pairs, &targets).unwrap();
        // One pass: the logits of every row at once, then the loss of each row.
        let logits = m.forward(&pairs).unwrap();
        let mut rows = vec![RowLoss::default(); pairs.len()];
        loss::cross_entropy(logits.as_slice().unwrap(), 31, &targets, &mut rows, None);
        let want = summarize(&rows);
        assert_eq!(got.loss.to_bits(), want.loss.to_bits());
        assert_eq!(got.accuracy, want.accuracy);
        // Through the model interface too, after a batch of another size in the same workspace.
        let mut scratch = Scratch::default();
        let tokens = |ps: &[Pair]| {
            ndarray::Array2::from_shape_fn(
                (ps.len(), 2),
                |(i, j)| if j == 0 { ps[i].0 } else { ps[i].1 },
            )
        };
        let batch = |ps: &[Pair], ts: &[u32]| -> Batch {
            TokenBatch {
                tokens: tokens(ps),
                loss_pos: vec![1],
                targets: ndarray::Array2::from_shape_vec((ts.len(), 1), ts.to_vec()).unwrap(),
            }
            .into()
        };
        Model::evaluate(&m, &mut scratch, &batch(&pairs[..7], &targets[..7])).unwrap();
        let again = Model::evaluate(&m, &mut scratch, &batch(&pairs, &targets)).unwrap();
        assert_eq!(again.loss.to_bits(), want.loss.to_bits());
    }

    #[test]
    fn a_step_split_in_halves_gives_the_same_bits_on_one_and_two_threads() {
        let m = odd_model();
        let (pairs, targets) = all_pairs(31);
        let pairs = &pairs[..77];
        let targets = &targets[..77];
        let step = |threads: usize| {
            crate::engine::threads::with_threads(threads, || {
                let mut ws = ToyMlpWorkspace::default();
                let mut grads = vec![0.0; m.params.len()];
                let s = m
                    .loss_and_grad(&mut ws, pairs, targets, &mut grads)
                    .unwrap();
                let mut params = m.params.clone();
                let mut opt = crate::engine::adamw::AdamW::new(Default::default(), params.len());
                opt.update(&mut params, &grads, &m.trainable_ranges(), 1e-2);
                (s.loss.to_bits(), grads, params)
            })
        };
        let (one, two) = (step(1), step(2));
        assert!(one == two, "1 and 2 threads differ");
        assert!(one.1.iter().all(|g| g.is_finite()) && one.1.iter().any(|&g| g != 0.0));
    }
}
