//! Models, behind one interface ([`Model`]) that training, analysis, checkpoints and the bindings
//! use without knowing the model's kind. Each model keeps its parameters in one flat `f32` buffer
//! with a name and shape per tensor (the transformer's as TransformerLens has them, the ToyMLP's as
//! its PyTorch module, the superposition model's as the paper's notebook), so optimizers, masks,
//! samplers and gradient checks act on any model the same way.
//!
//! Adding a model: its own file (config, parameters, forward and backward, hook points, and
//! `impl Model`, its config section as a [`ModelSection`] and its [`ModelPlan`]), and one line in
//! [`KINDS`] (see docs/ARCHITECTURE.md).

pub mod linear;
pub mod mask;
pub mod superposition;
pub mod toy_mlp;
pub mod transformer;

use crate::batch::{Batch, Input, LossStats, TaskIo};
use crate::error::{closest, Error, Result};
use crate::hooks::{ActivationCache, CacheFilter, Hooks};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::any::Any;
use std::ops::Range;
use std::sync::Arc;

/// One parameter tensor: its name, shape, place in the flat buffer, and whether training updates it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
    pub trainable: bool,
}

/// A tensor of the state dict that is not a parameter (the transformer's attention mask, say):
/// written to checkpoints so that PyTorch's `load_state_dict(strict=True)` finds it.
pub struct Buffer {
    pub name: String,
    /// safetensors dtype: `BOOL`, `F32`, ...
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// A model's reusable buffers, of the model's own type inside: after the first call with a given
/// batch shape, a training step allocates nothing large. One per thread or chain.
#[derive(Default)]
pub struct Scratch(Option<Box<dyn Any + Send>>);

impl Scratch {
    pub fn new() -> Self {
        Scratch(None)
    }

    /// The buffers as `T`, made fresh if this scratch held another model's.
    pub fn get<T: Default + Send + 'static>(&mut self) -> &mut T {
        if !self.0.as_ref().is_some_and(|b| b.is::<T>()) {
            self.0 = Some(Box::new(T::default()));
        }
        self.0
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .expect("just set to T")
    }
}

/// What every model kind provides.
pub trait Model: Send + Sync {
    /// The kind's name, as in `model.arch` and the checkpoint metadata `toylens.arch`.
    fn arch(&self) -> &'static str;
    /// The model's own config (what its checkpoints record and [`Kind::load`] reads back).
    fn config_json(&self) -> serde_json::Value;
    /// Every parameter, flat, in [`Model::tensors`] order.
    fn params(&self) -> &[f32];
    fn params_mut(&mut self) -> &mut [f32];
    /// Name, shape and range of every parameter tensor.
    fn tensors(&self) -> Vec<TensorSpec>;
    /// Non-parameter state-dict entries.
    fn buffers(&self) -> Vec<Buffer> {
        Vec::new()
    }
    /// Hook-point names, in the order the forward pass reaches them.
    fn hook_names(&self) -> Vec<String>;
    /// Hook points whose activation, in a pass without hooks, always equals another's (`Some`) or
    /// the output (`None`). TransformerLens hands out one storage for each such pair, and a
    /// binding can too instead of receiving the same array twice.
    fn same_activations(&self) -> Vec<(String, Option<String>)> {
        Vec::new()
    }
    /// An input of one example that the model accepts (for listing hook shapes).
    fn example_input(&self) -> Batch;
    /// Loss statistics on a batch (forward only).
    fn evaluate(&self, scratch: &mut Scratch, batch: &Batch) -> Result<LossStats>;
    /// Loss statistics on a batch and the gradient of its loss with respect to every parameter,
    /// written to `grads` (flat, overwritten).
    fn loss_and_grad(
        &self,
        scratch: &mut Scratch,
        batch: &Batch,
        grads: &mut [f32],
    ) -> Result<LossStats>;
    /// [`Model::loss_and_grad`] when only the gradient's entries in `wanted` (ranges of the flat
    /// buffer) are read: a kind may skip the work that only the others need (a transformer's
    /// backward stops above the lowest block `wanted` touches), and those others are then
    /// unspecified (zero where skipped, computed where not). The entries in `wanted` are exactly
    /// `loss_and_grad`'s.
    fn loss_and_grad_of(
        &self,
        scratch: &mut Scratch,
        batch: &Batch,
        grads: &mut [f32],
        wanted: &[std::ops::Range<usize>],
    ) -> Result<LossStats> {
        let _ = wanted;
        self.loss_and_grad(scratch, batch, grads)
    }
    /// The general forward pass: output (logits, or the reconstruction) with hooks and, optionally,
    /// a cache of the activations the filter keeps. Hooks and the cache see full tensors.
    fn run(
        &self,
        input: Input,
        hooks: Hooks,
        filter: Option<CacheFilter>,
    ) -> Result<(ArrayD<f32>, ActivationCache)>;
    fn clone_box(&self) -> Box<dyn Model>;
    /// For analyses specific to one kind (`downcast_ref::<Transformer>()`).
    fn as_any(&self) -> &dyn Any;
}

impl Clone for Box<dyn Model> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

impl<'a> dyn Model + 'a {
    /// The model as kind `T`, or an error naming what this analysis needs and what the model is.
    pub fn downcast<T: Model + 'static>(&self, needs: &str) -> Result<&T> {
        self.as_any().downcast_ref::<T>().ok_or_else(|| {
            Error::Input(format!(
                "this needs {needs}; the model is a `{}`",
                self.arch()
            ))
        })
    }

    pub fn n_params(&self) -> usize {
        self.params().len()
    }

    /// Parameter ranges training updates, merged where adjacent.
    pub fn trainable_ranges(&self) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for t in self.tensors().into_iter().filter(|t| t.trainable) {
            match out.last_mut() {
                Some(r) if r.end == t.range.start => r.end = t.range.end,
                _ => out.push(t.range),
            }
        }
        out
    }

    /// The parameter `name`, in its shape; an unknown name is an error listing close ones.
    pub fn param(&self, name: &str) -> Result<ArrayViewD<'_, f32>> {
        let specs = self.tensors();
        let s = specs.iter().find(|t| t.name == name).ok_or_else(|| {
            let near = closest(name, specs.iter().map(|t| t.name.as_str()), 3);
            Error::Input(format!(
                "no parameter `{name}` in this {}{}",
                self.arch(),
                if near.is_empty() {
                    String::new()
                } else {
                    format!(" (did you mean {})", near.join(", "))
                }
            ))
        })?;
        Ok(
            ArrayViewD::from_shape(IxDyn(&s.shape), &self.params()[s.range.clone()])
                .expect("spec shape matches its range"),
        )
    }

    /// The first tensor holding NaN or inf.
    pub fn non_finite_tensor(&self) -> Option<String> {
        let p = self.params();
        self.tensors()
            .into_iter()
            .find(|t| p[t.range.clone()].iter().any(|x| !x.is_finite()))
            .map(|t| t.name)
    }

    pub fn forward(&self, input: Input) -> Result<ArrayD<f32>> {
        self.run(input, Hooks::new(), None).map(|(o, _)| o)
    }

    pub fn run_with_cache(
        &self,
        input: Input,
        filter: CacheFilter,
    ) -> Result<(ArrayD<f32>, ActivationCache)> {
        self.run(input, Hooks::new(), Some(filter))
    }

    pub fn run_with_hooks(&self, input: Input, hooks: Hooks) -> Result<ArrayD<f32>> {
        self.run(input, hooks, None).map(|(o, _)| o)
    }

    /// Every hook point with its shape for one example.
    pub fn hook_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let ex = self.example_input();
        let (_, cache) = self.run_with_cache(ex.input(), CacheFilter::All)?;
        self.hook_names()
            .into_iter()
            .map(|n| {
                let s = cache.get(&n)?.shape().to_vec();
                Ok((n, s))
            })
            .collect()
    }

    /// Σ w² over every parameter.
    pub fn sum_sq_weights(&self) -> f64 {
        self.params().iter().map(|&x| (x as f64) * (x as f64)).sum()
    }
}

/// A model kind, as registered: its name, its config section, and how to rebuild it from a
/// checkpoint. Made by [`Kind::of`] from the kind's [`ModelSection`].
pub struct Kind {
    pub arch: &'static str,
    /// The model of a recorded config (JSON), every parameter zero: a checkpoint's tensors are then
    /// read into it by name.
    pub zeros: fn(&serde_json::Value) -> Result<Box<dyn Model>>,
    /// Its section (`model:` without `arch`) typed and back, every field present (errors name
    /// the key).
    pub normalize: fn(serde_json::Value, &str) -> Result<serde_json::Value>,
    /// A normalized section sized from the task's inputs and outputs, with the experiment's seed.
    pub configure: fn(&serde_json::Value, &TaskIo, u64) -> Result<Arc<dyn ModelPlan>>,
}

impl Kind {
    pub const fn of<S: ModelSection>(
        zeros: fn(&serde_json::Value) -> Result<Box<dyn Model>>,
    ) -> Kind {
        Kind {
            arch: S::NAME,
            zeros,
            normalize: normalize_as::<S>,
            configure: configure_as::<S>,
        }
    }
}

fn normalize_as<S: ModelSection>(
    section: serde_json::Value,
    source: &str,
) -> Result<serde_json::Value> {
    crate::error::normalized::<S>(section, "model", source)
}

fn configure_as<S: ModelSection>(
    section: &serde_json::Value,
    io: &TaskIo,
    seed: u64,
) -> Result<Arc<dyn ModelPlan>> {
    crate::error::typed_section::<S>(section.clone(), "model", "model")?.configure(io, seed)
}

/// A model's config section (`model:` without its `arch` tag), as YAML holds it: a serde struct
/// with `deny_unknown_fields`; the task's sizes are not in it but come from [`TaskIo`].
pub trait ModelSection: serde::Serialize + serde::de::DeserializeOwned {
    /// Its name in `model.arch`.
    const NAME: &'static str;
    /// The full model config, range-checked (errors name `model.<key>`, or `model.arch` where
    /// the task's inputs are not what this model takes).
    fn configure(self, io: &TaskIo, seed: u64) -> Result<Arc<dyn ModelPlan>>;
}

/// A model's full config before it exists: what it will allocate, and the model itself.
pub trait ModelPlan: std::fmt::Debug + Send + Sync + Any {
    /// The freshly initialised model.
    fn build(&self) -> Result<Box<dyn Model>>;
    /// What it will hold and use per example (f64: absurd sizes cannot overflow).
    fn memory(&self) -> ModelMemory;
    fn as_any(&self) -> &dyn Any;
}

impl dyn ModelPlan {
    /// The plan as its concrete config type, if it is one.
    pub fn downcast<T: ModelPlan>(&self) -> Option<&T> {
        self.as_any().downcast_ref::<T>()
    }
}

/// A model's memory, roughly and from above: parameters (each with a gradient and AdamW's two
/// moments), and the activations of one example (with their gradients).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelMemory {
    pub parameters: f64,
    pub activations_per_example: f64,
}

/// The error of a model given a task whose inputs it does not take.
pub fn wrong_io(arch: &str, takes: &str, io: &TaskIo) -> Error {
    Error::config(
        "model.arch",
        format!(
            "the `{arch}` model takes {takes}; this task gives {}",
            io.describe()
        ),
    )
}

/// Every model kind: the one registration point.
pub const KINDS: &[Kind] = &[
    transformer::KIND,
    toy_mlp::KIND,
    superposition::KIND,
    linear::KIND,
];

/// The registered kind called `arch`.
pub fn kind(arch: &str) -> Result<&'static Kind> {
    KINDS.iter().find(|k| k.arch == arch).ok_or_else(|| {
        let names: Vec<&str> = KINDS.iter().map(|k| k.arch).collect();
        Error::Input(format!(
            "unknown model kind `{arch}`; toylens knows {}",
            names.join(", ")
        ))
    })
}

/// The parts of `impl Model` every kind writes the same way, for a type with `cfg` (its config,
/// serialisable) and `params` (the flat buffer) fields and `Clone`: its name, config, parameters,
/// cloning and downcasting. Use inside `impl Model for T { model_basics!("name"); ... }`.
#[macro_export]
macro_rules! model_basics {
    ($arch:literal) => {
        fn arch(&self) -> &'static str {
            $arch
        }
        fn config_json(&self) -> serde_json::Value {
            serde_json::to_value(&self.cfg).expect("config json")
        }
        fn params(&self) -> &[f32] {
            &self.params
        }
        fn params_mut(&mut self) -> &mut [f32] {
            &mut self.params
        }
        fn clone_box(&self) -> Box<dyn $crate::models::Model> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}

/// Tensor specs from (name, shape, range) triples, every tensor trained.
pub fn trained_tensors(specs: Vec<(&'static str, Vec<usize>, Range<usize>)>) -> Vec<TensorSpec> {
    specs
        .into_iter()
        .map(|(name, shape, range)| TensorSpec {
            name: name.to_string(),
            shape,
            range,
            trainable: true,
        })
        .collect()
}

/// The token batch inside `batch`, or an error naming the model kind.
pub fn token_batch<'a>(batch: &'a Batch, arch: &str) -> Result<&'a crate::batch::TokenBatch> {
    match batch {
        Batch::Tokens(b) => Ok(b),
        _ => Err(batch_mismatch(arch, "token batches")),
    }
}

/// Parse a model's recorded config, naming the kind in the error.
pub fn parse_config<C: serde::de::DeserializeOwned>(
    arch: &str,
    v: &serde_json::Value,
) -> Result<C> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::Input(format!("not a valid `{arch}` model config: {e}")))
}

/// The wrong kind of batch for a model.
pub fn batch_mismatch(arch: &str, wants: &str) -> Error {
    Error::Input(format!("the `{arch}` model takes {wants}"))
}
