//! Linear regression, `ŷ = x·Wᵀ + b`, the regular model with a known learning coefficient
//! (d/2 for d parameters): the known-answer test of the learning-coefficient estimator.
//!
//! Parameters as PyTorch's `nn.Linear`: `weight [n_out, n_in]`, `bias [n_out]` (absent without a
//! bias). The loss is the Gaussian negative log-likelihood with unit variance, constants dropped:
//! the mean over the batch of ½‖y − ŷ‖². Hook points: `hook_in` `[batch, n_in]`, `hook_out`
//! `[batch, n_out]`.

use crate::batch::{Batch, DenseBatch, Input, LossStats};
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, CacheFilter, HookRunner, Hooks};
use crate::models::{batch_mismatch, Kind, Model, Scratch, TensorSpec};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearConfig {
    pub n_in: usize,
    pub n_out: usize,
    pub bias: bool,
    /// Seed of the initialisation (PyTorch's: U(−1/√n_in, 1/√n_in)).
    pub seed: u64,
}

impl LinearConfig {
    pub fn validate(&self) -> Result<()> {
        for (k, v) in [("data.n_in", self.n_in), ("data.n_out", self.n_out)] {
            if v == 0 {
                return Err(Error::config(k, "must be at least 1 (got 0)"));
            }
        }
        Ok(())
    }

    fn n_params(&self) -> usize {
        self.n_out * self.n_in + if self.bias { self.n_out } else { 0 }
    }
}

pub const HOOKS: [&str; 2] = ["hook_in", "hook_out"];

#[derive(Clone, Debug)]
pub struct Linear {
    pub cfg: LinearConfig,
    /// `weight` then `bias`.
    pub params: Vec<f32>,
}

impl Linear {
    pub fn new(cfg: LinearConfig) -> Result<Self> {
        cfg.validate()?;
        let mut rng = Rng::new(cfg.seed);
        let bound = 1.0 / (cfg.n_in as f64).sqrt();
        let params = (0..cfg.n_params())
            .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
            .collect();
        Ok(Linear { cfg, params })
    }

    pub fn from_params(cfg: LinearConfig, params: Vec<f32>) -> Result<Self> {
        cfg.validate()?;
        if params.len() != cfg.n_params() {
            return Err(Error::Input(format!(
                "the linear model has {} parameters, got {}",
                cfg.n_params(),
                params.len()
            )));
        }
        Ok(Linear { cfg, params })
    }

    /// ŷ `[batch, n_out]` of `x` (flat `[batch, n_in]`).
    fn predict(&self, x: &[f32]) -> Vec<f32> {
        let (ni, no) = (self.cfg.n_in, self.cfg.n_out);
        let (w, b) = self.params.split_at(no * ni);
        let mut out = Vec::with_capacity(x.len() / ni * no);
        for xr in x.chunks_exact(ni) {
            for j in 0..no {
                let dot: f32 = w[j * ni..][..ni].iter().zip(xr).map(|(a, c)| a * c).sum();
                out.push(dot + b.get(j).copied().unwrap_or(0.0));
            }
        }
        out
    }

    fn check<'a>(&self, batch: &'a Batch) -> Result<(&'a [f32], &'a [f32])> {
        let Batch::Dense(DenseBatch { x, y: Some(y) }) = batch else {
            return Err(batch_mismatch("linear", "dense batches with targets"));
        };
        if x.ncols() != self.cfg.n_in || y.ncols() != self.cfg.n_out || x.nrows() != y.nrows() {
            return Err(Error::Input(format!(
                "the linear model takes x [batch, {}] and y [batch, {}]; got {:?} and {:?}",
                self.cfg.n_in,
                self.cfg.n_out,
                x.shape(),
                y.shape()
            )));
        }
        Ok((
            x.as_slice().expect("contiguous"),
            y.as_slice().expect("contiguous"),
        ))
    }

    /// Mean over the batch of ½‖y − ŷ‖², and, when asked, its gradient (overwritten).
    fn loss(&self, x: &[f32], y: &[f32], grads: Option<&mut [f32]>) -> f64 {
        let (ni, no) = (self.cfg.n_in, self.cfg.n_out);
        let n = x.len() / ni;
        let pred = self.predict(x);
        let loss: f64 = pred
            .iter()
            .zip(y)
            .map(|(p, t)| 0.5 * ((p - t) as f64).powi(2))
            .sum::<f64>()
            / n as f64;
        if let Some(g) = grads {
            g.fill(0.0);
            let (gw, gb) = g.split_at_mut(no * ni);
            for (r, xr) in x.chunks_exact(ni).enumerate() {
                for j in 0..no {
                    let d = (pred[r * no + j] - y[r * no + j]) / n as f32;
                    for (gw, xv) in gw[j * ni..][..ni].iter_mut().zip(xr) {
                        *gw += d * xv;
                    }
                    if let Some(gb) = gb.get_mut(j) {
                        *gb += d;
                    }
                }
            }
        }
        loss
    }
}

fn load_kind(cfg: &serde_json::Value) -> Result<Box<dyn Model>> {
    let cfg: LinearConfig = crate::models::parse_config("linear", cfg)?;
    let n = cfg.n_params();
    Ok(Box::new(Linear::from_params(cfg, vec![0.0; n])?))
}

pub const KIND: Kind = Kind::of::<LinearSection>(load_kind);

/// `model:` of `arch: linear`; the widths come from the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSection {
    pub bias: bool,
}

impl crate::models::ModelSection for LinearSection {
    const NAME: &'static str = "linear";
    fn configure(
        self,
        io: &crate::batch::TaskIo,
        seed: u64,
    ) -> Result<std::sync::Arc<dyn crate::models::ModelPlan>> {
        let crate::batch::TaskIo::Vectors { n_in, n_out } = *io else {
            return Err(crate::models::wrong_io("linear", "real vectors", io));
        };
        let cfg = LinearConfig {
            n_in,
            n_out,
            bias: self.bias,
            seed,
        };
        cfg.validate()?;
        Ok(std::sync::Arc::new(cfg))
    }
}

impl crate::models::ModelPlan for LinearConfig {
    fn build(&self) -> Result<Box<dyn Model>> {
        Ok(Box::new(Linear::new(self.clone())?))
    }
    fn memory(&self) -> crate::models::ModelMemory {
        let (i, o) = (self.n_in as f64, self.n_out as f64);
        crate::models::ModelMemory {
            parameters: o * (i + 1.0),
            activations_per_example: 2.0 * (i + o),
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn stats(loss: f64) -> LossStats {
    LossStats {
        loss,
        accuracy: f64::NAN,
        per_position_loss: vec![loss],
        per_position_accuracy: vec![f64::NAN],
        exact_match: f64::NAN,
    }
}

impl Model for Linear {
    crate::model_basics!("linear");
    fn tensors(&self) -> Vec<TensorSpec> {
        let (ni, no) = (self.cfg.n_in, self.cfg.n_out);
        let mut t = vec![TensorSpec {
            name: "weight".into(),
            shape: vec![no, ni],
            range: 0..no * ni,
            trainable: true,
        }];
        if self.cfg.bias {
            t.push(TensorSpec {
                name: "bias".into(),
                shape: vec![no],
                range: no * ni..no * ni + no,
                trainable: true,
            });
        }
        t
    }
    fn hook_names(&self) -> Vec<String> {
        HOOKS.iter().map(|s| s.to_string()).collect()
    }
    fn example_input(&self) -> Batch {
        Batch::Dense(DenseBatch {
            x: ndarray::Array2::zeros((1, self.cfg.n_in)),
            y: Some(ndarray::Array2::zeros((1, self.cfg.n_out))),
        })
    }
    fn evaluate(&self, _: &mut Scratch, batch: &Batch) -> Result<LossStats> {
        let (x, y) = self.check(batch)?;
        Ok(stats(self.loss(x, y, None)))
    }
    fn loss_and_grad(
        &self,
        _: &mut Scratch,
        batch: &Batch,
        grads: &mut [f32],
    ) -> Result<LossStats> {
        let (x, y) = self.check(batch)?;
        if grads.len() != self.params.len() {
            return Err(Error::Input(format!(
                "gradient buffer has {} entries, the model {}",
                grads.len(),
                self.params.len()
            )));
        }
        Ok(stats(self.loss(x, y, Some(grads))))
    }
    fn run(
        &self,
        input: Input,
        hooks: Hooks,
        filter: Option<CacheFilter>,
    ) -> Result<(ndarray::ArrayD<f32>, ActivationCache)> {
        let Input::Dense(x) = input else {
            return Err(batch_mismatch("linear", "dense inputs"));
        };
        if x.ncols() != self.cfg.n_in {
            return Err(Error::Input(format!(
                "the linear model takes x [batch, {}], got {:?}",
                self.cfg.n_in,
                x.shape()
            )));
        }
        let names = self.hook_names();
        let mut cache = ActivationCache::default();
        let mut r = HookRunner::new(&names, hooks, filter.as_ref().map(|f| (&mut cache, f)))?;
        let b = x.nrows();
        let mut xs: Vec<f32> = x.iter().copied().collect();
        r.run(HOOKS[0], &mut xs, &[b, self.cfg.n_in]);
        let mut out = self.predict(&xs);
        r.run(HOOKS[1], &mut out, &[b, self.cfg.n_out]);
        r.finish()?;
        let out = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[b, self.cfg.n_out]), out)
            .expect("output shape");
        Ok((out, cache))
    }
}
