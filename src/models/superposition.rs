//! Toy Models of Superposition (Elhage et al., 2022), the intro figure's ReLU output model:
//! `n_instances` independent models trained at once, each `h = W x`, `x' = ReLU(Wᵀ h + b)`.
//!
//! Weights are named and shaped as in the paper's notebook: `W [n_instances, n_features, n_hidden]`
//! (per instance the transpose of the paper's `W`, so row f is feature f's direction) and
//! `b_final [n_instances, n_features]`. Instance i sees features present with probability p_i
//! (log-spaced from `max_feature_probability` down to `min_feature_probability`), each uniform in
//! [0, 1) when present, and is trained on the importance-weighted squared error
//! `mean_{batch, features}(I_f · (x_f − x'_f)²)`; the objective is the sum over instances.

use crate::batch::{Batch, DenseBatch, FeatureSpec, Input, LossStats};
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, CacheFilter, HookRunner, Hooks};
use crate::models::{batch_mismatch, Kind, Model, Scratch, TensorSpec};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperpositionConfig {
    pub n_instances: usize,
    pub n_features: usize,
    pub n_hidden: usize,
    /// Feature f has importance `importance_decay^f`.
    pub importance_decay: f64,
    pub max_feature_probability: f64,
    pub min_feature_probability: f64,
    /// Seed of the initialisation.
    pub seed: u64,
    /// Seed of the sampled inputs.
    pub data_seed: u64,
}

impl SuperpositionConfig {
    pub fn validate(&self) -> Result<()> {
        self.features().validate()?;
        if self.n_hidden == 0 {
            return Err(Error::config(
                "model.n_hidden",
                "must be at least 1 (got 0)",
            ));
        }
        Ok(())
    }

    /// Importance of each feature.
    pub fn importance(&self) -> Vec<f32> {
        self.features().importance()
    }

    /// Feature probability of each instance.
    pub fn feature_probability(&self) -> Vec<f64> {
        self.features().feature_probability()
    }

    /// The data this model is trained on.
    pub fn features(&self) -> FeatureSpec {
        FeatureSpec {
            n_features: self.n_features,
            n_instances: self.n_instances,
            importance_decay: self.importance_decay,
            max_feature_probability: self.max_feature_probability,
            min_feature_probability: self.min_feature_probability,
            data_seed: self.data_seed,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Superposition {
    pub cfg: SuperpositionConfig,
    /// `W` (`[n_instances, n_features, n_hidden]`) then `b_final` (`[n_instances, n_features]`).
    pub params: Vec<f32>,
}

impl Superposition {
    /// As the notebook: `nn.init.xavier_normal_` on the whole `[n_instances, n_features, n_hidden]`
    /// tensor, whose fans torch takes as n_features·n_hidden and n_instances·n_hidden (std
    /// √(2 / (fan_in + fan_out))); `b_final` 0.
    pub fn new(cfg: SuperpositionConfig) -> Result<Self> {
        cfg.validate()?;
        let (i, f, h) = (cfg.n_instances, cfg.n_features, cfg.n_hidden);
        let std = (2.0 / (f * h + i * h) as f64).sqrt();
        let mut rng = Rng::new(cfg.seed);
        let mut params: Vec<f32> = (0..i * f * h)
            .map(|_| (rng.normal() * std) as f32)
            .collect();
        params.resize(i * f * h + i * f, 0.0);
        Ok(Superposition { cfg, params })
    }

    pub fn from_params(cfg: SuperpositionConfig, params: Vec<f32>) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.n_instances * cfg.n_features * (cfg.n_hidden + 1);
        if params.len() != n {
            return Err(Error::Input(format!(
                "the superposition model has {n} parameters, got {}",
                params.len()
            )));
        }
        Ok(Superposition { cfg, params })
    }

    fn n_w(&self) -> usize {
        self.cfg.n_instances * self.cfg.n_features * self.cfg.n_hidden
    }

    pub fn w(&self) -> &[f32] {
        &self.params[..self.n_w()]
    }

    pub fn b_final(&self) -> &[f32] {
        &self.params[self.n_w()..]
    }

    /// (name, shape, range) of both tensors.
    pub fn specs(&self) -> Vec<(&'static str, Vec<usize>, std::ops::Range<usize>)> {
        let (i, f, h) = (self.cfg.n_instances, self.cfg.n_features, self.cfg.n_hidden);
        vec![
            ("W", vec![i, f, h], 0..i * f * h),
            ("b_final", vec![i, f], i * f * h..i * f * (h + 1)),
        ]
    }

    /// Outputs `[batch, n_instances, n_features]` of inputs of that shape.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (ni, nf) = (self.cfg.n_instances, self.cfg.n_features);
        let mut out = vec![0.0; x.len()];
        for i in 0..ni {
            let mut oi = vec![0.0; x.len() / ni];
            self.instance_pass(i, x, Some(&mut oi), None);
            for (r, o) in oi.chunks_exact(nf).enumerate() {
                out[(r * ni + i) * nf..][..nf].copy_from_slice(o);
            }
        }
        out
    }

    /// Loss of each instance on `x`.
    pub fn instance_losses(&self, x: &[f32]) -> Vec<f64> {
        (0..self.cfg.n_instances)
            .into_par_iter()
            .map(|i| self.instance_pass(i, x, None, None))
            .collect()
    }

    /// Loss of each instance, and the gradient of their sum (overwriting `grads`). Instances are
    /// independent and own disjoint parts of `W` and `b_final`: they run in parallel, each summing
    /// over the batch in order, so the result does not depend on the thread count.
    pub fn loss_and_grad(&self, x: &[f32], grads: &mut [f32]) -> Vec<f64> {
        let (nf, nh) = (self.cfg.n_features, self.cfg.n_hidden);
        let (gw, gb) = grads.split_at_mut(self.n_w());
        gw.par_chunks_mut(nf * nh)
            .zip(gb.par_chunks_mut(nf))
            .enumerate()
            .map(|(i, (gw, gb))| self.instance_pass(i, x, None, Some((gw, gb))))
            .collect()
    }

    /// Instance `i`'s forward pass on `x` (`[batch, n_instances, n_features]`): its loss, its outputs
    /// (`[batch, n_features]`) when asked, and the backward into its gradients (`W[i]`, `b_final[i]`,
    /// overwritten) when given.
    fn instance_pass(
        &self,
        i: usize,
        x: &[f32],
        mut out: Option<&mut [f32]>,
        mut grads: Option<(&mut [f32], &mut [f32])>,
    ) -> f64 {
        let (ni, nf, nh) = (self.cfg.n_instances, self.cfg.n_features, self.cfg.n_hidden);
        let batch = x.len() / (ni * nf);
        let imp = self.cfg.importance();
        let wi = &self.w()[i * nf * nh..][..nf * nh];
        let bi = &self.b_final()[i * nf..][..nf];
        if let Some((gw, gb)) = grads.as_mut() {
            gw.fill(0.0);
            gb.fill(0.0);
        }
        let scale = 1.0 / (batch * nf) as f32;
        let mut loss = 0.0f64;
        let mut h = vec![0.0f32; nh];
        let mut dh = vec![0.0f32; nh];
        let mut dpre = vec![0.0f32; nf];
        for r in 0..batch {
            let xi = &x[(r * ni + i) * nf..][..nf];
            h.fill(0.0);
            for (f, &xf) in xi.iter().enumerate() {
                if xf != 0.0 {
                    for (hk, &wk) in h.iter_mut().zip(&wi[f * nh..][..nh]) {
                        *hk += xf * wk;
                    }
                }
            }
            let mut l = 0.0f64;
            for f in 0..nf {
                let pre: f32 = bi[f]
                    + wi[f * nh..][..nh]
                        .iter()
                        .zip(&h)
                        .map(|(a, c)| a * c)
                        .sum::<f32>();
                let o = pre.max(0.0);
                if let Some(out) = out.as_deref_mut() {
                    out[r * nf + f] = o;
                }
                let err = o - xi[f];
                l += (imp[f] * err * err) as f64;
                // d loss / d pre: 2·I·(x' − x)/(batch·features) where the ReLU passes.
                dpre[f] = if pre > 0.0 {
                    2.0 * imp[f] * err * scale
                } else {
                    0.0
                };
            }
            loss += l;
            if let Some((gw, gb)) = grads.as_mut() {
                dh.fill(0.0);
                for f in 0..nf {
                    let d = dpre[f];
                    gb[f] += d;
                    if d != 0.0 {
                        for k in 0..nh {
                            // Through the output: d pre_f / d W[f, k] = h_k; d pre_f / d h_k = W[f, k].
                            gw[f * nh + k] += d * h[k];
                            dh[k] += d * wi[f * nh + k];
                        }
                    }
                }
                // Through the hidden layer: d h_k / d W[f, k] = x_f.
                for (f, &xf) in xi.iter().enumerate() {
                    if xf != 0.0 {
                        for k in 0..nh {
                            gw[f * nh + k] += dh[k] * xf;
                        }
                    }
                }
            }
        }
        loss / (batch * nf) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// The model interface: dense batches `x [batch, n_instances · n_features]` (the target is x).

/// Hook points: `hook_hidden` `[batch, n_instances, n_hidden]`, `hook_out_pre` and `hook_out`
/// `[batch, n_instances, n_features]` (before and after the ReLU).
pub const HOOKS: [&str; 3] = ["hook_hidden", "hook_out_pre", "hook_out"];

fn load_kind(cfg: &serde_json::Value) -> Result<Box<dyn Model>> {
    let cfg: SuperpositionConfig = crate::models::parse_config("superposition", cfg)?;
    let n = cfg.n_instances * cfg.n_features * (cfg.n_hidden + 1);
    Ok(Box::new(Superposition::from_params(cfg, vec![0.0; n])?))
}

pub const KIND: Kind = Kind::of::<SuperpositionSection>(load_kind);

/// `model:` of `arch: superposition`: the hidden width; features and instances come from the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperpositionSection {
    pub n_hidden: usize,
}

impl crate::models::ModelSection for SuperpositionSection {
    const NAME: &'static str = "superposition";
    fn configure(
        self,
        io: &crate::batch::TaskIo,
        seed: u64,
    ) -> Result<std::sync::Arc<dyn crate::models::ModelPlan>> {
        let crate::batch::TaskIo::SparseFeatures(f) = io else {
            return Err(crate::models::wrong_io(
                "superposition",
                "sparse features to reconstruct (the superposition task)",
                io,
            ));
        };
        let cfg = SuperpositionConfig {
            n_instances: f.n_instances,
            n_features: f.n_features,
            n_hidden: self.n_hidden,
            importance_decay: f.importance_decay,
            max_feature_probability: f.max_feature_probability,
            min_feature_probability: f.min_feature_probability,
            seed,
            data_seed: f.data_seed,
        };
        cfg.validate()?;
        Ok(std::sync::Arc::new(cfg))
    }
}

impl crate::models::ModelPlan for SuperpositionConfig {
    fn build(&self) -> Result<Box<dyn Model>> {
        Ok(Box::new(Superposition::new(self.clone())?))
    }
    fn memory(&self) -> crate::models::ModelMemory {
        let w = self.n_instances as f64 * self.n_features as f64;
        crate::models::ModelMemory {
            parameters: w * (self.n_hidden as f64 + 1.0),
            activations_per_example: 2.0 * w,
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Superposition {
    fn dense<'a>(&self, batch: &'a Batch) -> Result<&'a [f32]> {
        let Batch::Dense(b) = batch else {
            return Err(batch_mismatch("superposition", "dense batches"));
        };
        self.check_x(b.x.view())?;
        if b.y.is_some() {
            return Err(Error::Input(
                "the superposition model reconstructs its input: its batches have no targets"
                    .into(),
            ));
        }
        Ok(b.x.as_slice().expect("an owned batch is contiguous"))
    }

    fn check_x(&self, x: ndarray::ArrayView2<f32>) -> Result<()> {
        let w = self.cfg.n_instances * self.cfg.n_features;
        if x.ncols() != w || x.nrows() == 0 {
            return Err(Error::Input(format!(
                "the superposition model takes x [batch, n_instances · n_features = {w}], got {:?}",
                x.shape()
            )));
        }
        Ok(())
    }

    fn stats(per_instance: Vec<f64>) -> LossStats {
        LossStats {
            loss: per_instance.iter().sum(),
            accuracy: f64::NAN,
            exact_match: f64::NAN,
            per_position_accuracy: vec![f64::NAN; per_instance.len()],
            per_position_loss: per_instance,
        }
    }
}

impl Model for Superposition {
    crate::model_basics!("superposition");
    fn tensors(&self) -> Vec<TensorSpec> {
        crate::models::trained_tensors(self.specs())
    }
    fn hook_names(&self) -> Vec<String> {
        HOOKS.iter().map(|s| s.to_string()).collect()
    }
    fn example_input(&self) -> Batch {
        Batch::Dense(DenseBatch {
            x: ndarray::Array2::zeros((1, self.cfg.n_instances * self.cfg.n_features)),
            y: None,
        })
    }
    fn evaluate(&self, _: &mut Scratch, batch: &Batch) -> Result<LossStats> {
        Ok(Self::stats(self.instance_losses(self.dense(batch)?)))
    }
    fn loss_and_grad(
        &self,
        _: &mut Scratch,
        batch: &Batch,
        grads: &mut [f32],
    ) -> Result<LossStats> {
        let x = self.dense(batch)?;
        if grads.len() != self.params.len() {
            return Err(Error::Input(format!(
                "gradient buffer has {} entries, the model {}",
                grads.len(),
                self.params.len()
            )));
        }
        Ok(Self::stats(Superposition::loss_and_grad(self, x, grads)))
    }
    /// The outputs `[batch, n_instances, n_features]`, computed plainly (no gradient) so that every
    /// hook sees and can replace its activation.
    fn run(
        &self,
        input: Input,
        hooks: Hooks,
        filter: Option<CacheFilter>,
    ) -> Result<(ndarray::ArrayD<f32>, ActivationCache)> {
        let Input::Dense(x) = input else {
            return Err(batch_mismatch("superposition", "dense inputs"));
        };
        self.check_x(x)?;
        let (ni, nf, nh) = (self.cfg.n_instances, self.cfg.n_features, self.cfg.n_hidden);
        let b = x.nrows();
        let names = self.hook_names();
        let mut cache = ActivationCache::default();
        let mut r = HookRunner::new(&names, hooks, filter.as_ref().map(|f| (&mut cache, f)))?;
        let (w, bias) = (self.w(), self.b_final());
        let x: Vec<f32> = x.iter().copied().collect();
        let mut h = vec![0.0f32; b * ni * nh];
        for (row, hr) in h.chunks_exact_mut(ni * nh).enumerate() {
            for i in 0..ni {
                for f in 0..nf {
                    let xf = x[(row * ni + i) * nf + f];
                    for k in 0..nh {
                        hr[i * nh + k] += xf * w[(i * nf + f) * nh + k];
                    }
                }
            }
        }
        r.run(HOOKS[0], &mut h, &[b, ni, nh]);
        let mut out = vec![0.0f32; b * ni * nf];
        for (row, o) in out.chunks_exact_mut(ni * nf).enumerate() {
            for i in 0..ni {
                for f in 0..nf {
                    let hr = &h[(row * ni + i) * nh..][..nh];
                    let wf = &w[(i * nf + f) * nh..][..nh];
                    o[i * nf + f] =
                        bias[i * nf + f] + wf.iter().zip(hr).map(|(a, c)| a * c).sum::<f32>();
                }
            }
        }
        r.run(HOOKS[1], &mut out, &[b, ni, nf]);
        out.iter_mut().for_each(|v| *v = v.max(0.0));
        r.run(HOOKS[2], &mut out, &[b, ni, nf]);
        r.finish()?;
        let out = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[b, ni, nf]), out)
            .expect("output shape");
        Ok((out, cache))
    }
}
