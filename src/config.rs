//! Experiment configuration: YAML presets embedded in the binary, Hydra-style `key.sub=value`
//! overrides, and validation that names the key.
//!
//! Resolution: preset YAML → typed config (errors name the key) → back to a tree with every field
//! present → overrides applied by dotted path (an unknown path is an error that suggests the nearest
//! valid one) → typed config again → range checks.
//!
//! `data.task` picks the task (`modular`, `digits`, `superposition`) and `model.arch` the model
//! (`transformer`, `toy_mlp`, `superposition`); each has its own fields. The two tags are read by hand
//! (not by serde's internally tagged enums, which lose the path of an error inside the section).

use crate::engine::activation::ActFn;
use crate::engine::adamw::AdamWConfig;
use crate::error::{closest, Error, Result};
use crate::models::linear::{Linear, LinearConfig};
use crate::models::superposition::{Superposition, SuperpositionConfig};
use crate::models::toy_mlp::{ToyMlp, ToyMlpConfig};
use crate::models::transformer::{InitScheme, Normalization, Transformer, TransformerConfig};
use crate::models::Model;
use crate::tasks::digits::{DigitsRun, DigitsTask};
use crate::tasks::modular::{ModularData as ModularRun, ModularTask, Op, Split};
use crate::tasks::regression::{RegressionData as RegressionRun, RegressionTask, TrueWeights};
use crate::tasks::superposition::SuperpositionData as SuperpositionRun;
use crate::tasks::{TaskData, TaskInfo};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A named preset: its YAML and a one-line description.
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub yaml: &'static str,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "grokking",
        about: "Nanda et al.'s grokking run: (a + b) mod 113, 30% train, full batch, 1-layer transformer, AdamW wd 1",
        yaml: include_str!("../presets/grokking.yaml"),
    },
    Preset {
        name: "grokking-tiny",
        about: "a seconds-long grokking run: (a + b) mod 23, small transformer (demos and tests)",
        yaml: include_str!("../presets/grokking-tiny.yaml"),
    },
    Preset {
        name: "digits3",
        about: "3-digit addition, fresh samples every step: 1-layer transformer, d_model 256, 4 heads, d_mlp 1024, AdamW wd 0.5",
        yaml: include_str!("../presets/digits3.yaml"),
    },
    Preset {
        name: "digits5",
        about: "5-digit addition as in the progress-measures paper's appendix: each digit learned in its own phase transition",
        yaml: include_str!("../presets/digits5.yaml"),
    },
    Preset {
        name: "toy-mlp",
        about: "embedding + one hidden ReLU layer on (a + b) mod 113, 10,000 training pairs, batch 64",
        yaml: include_str!("../presets/toy-mlp.yaml"),
    },
    Preset {
        name: "superposition",
        about: "Toy Models of Superposition, intro figure: 5 features in 2 dimensions, 10 instances from dense to sparse",
        yaml: include_str!("../presets/superposition.yaml"),
    },
    Preset {
        name: "linear",
        about: "linear regression on Gaussian inputs (4 in, 2 out, noise 0.1): the smallest model, for trying the tools",
        yaml: include_str!("../presets/linear.yaml"),
    },
];

/// Whether a preset argument names a YAML file (a config of one's own) rather than a preset.
pub fn is_config_file(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// A preset's config, or a YAML config file's (see [`is_config_file`]); errors name the file.
pub fn base_config(name: &str) -> Result<ExperimentConfig> {
    if is_config_file(name) {
        let text = std::fs::read_to_string(name).map_err(|e| Error::io(name, e))?;
        return from_yaml(&text, name);
    }
    let p = preset(name)?;
    from_yaml(p.yaml, &format!("preset {}", p.name))
}

/// The name a run directory or sweep folder takes from a preset argument: a preset's own name, or a
/// config file's stem.
pub fn short_name(name: &str) -> String {
    if is_config_file(name) {
        std::path::Path::new(name)
            .file_stem()
            .map_or_else(|| "config".to_string(), |s| s.to_string_lossy().into_owned())
    } else {
        name.to_string()
    }
}

pub fn preset(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        let near = closest(name, names.iter().copied(), 1);
        Error::config(
            "preset",
            format!(
                "unknown preset `{name}`{}; presets: {}",
                near.first()
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default(),
                names.join(", ")
            ),
        )
    })
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExperimentConfig {
    /// Seed of the weights and, unless `data.seed` is set, of the data.
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub train: TrainConfig,
}

/// The task, tagged by `data.task`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum DataConfig {
    Modular(ModularData),
    Digits(DigitsData),
    Superposition(SuperpositionData),
    Regression(RegressionData),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModularData {
    pub p: usize,
    pub op: Op,
    /// Fraction of the p² pairs in train (Python's `int(frac_train·p²)` of them).
    pub frac_train: f64,
    /// `random` (toylens' seeded shuffle) or `reference` (the original code's CPython shuffle).
    pub split: Split,
    /// Seed of the split; null means the top-level `seed`.
    pub seed: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitsData {
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperpositionData {
    pub n_features: usize,
    /// Models trained at once, each at its own feature probability.
    pub n_instances: usize,
    /// Feature i has importance `importance_decay^i`.
    pub importance_decay: f64,
    /// Instance 0's feature probability...
    pub max_feature_probability: f64,
    /// ...down to the last instance's, log-spaced (1 to 0.05 is the paper's 20^−linspace(0, 1, n)).
    pub min_feature_probability: f64,
    /// Examples in the fixed evaluation batch.
    pub n_eval: usize,
    /// Seed of the data; null means the top-level `seed`.
    pub seed: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionData {
    pub n_in: usize,
    pub n_out: usize,
    pub n_train: usize,
    pub n_test: usize,
    /// σ of the Gaussian noise on y.
    pub noise_std: f64,
    /// `zero` or `random` (N(0, 1) from the data seed).
    pub true_weights: TrueWeights,
    /// Seed of the data; null means the top-level `seed`.
    pub seed: Option<u64>,
}

/// The model, tagged by `model.arch` (absent means `transformer`, as in configs before the tag).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "arch", rename_all = "snake_case")]
pub enum ModelConfig {
    Transformer(TransformerShape),
    ToyMlp(ToyMlpShape),
    Superposition(SuperpositionShape),
    Linear(LinearShape),
}

/// The transformer's shape; the vocabulary and context come from the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerShape {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    /// null: d_model / n_heads (TransformerLens's usual choice; a sweep of d_model × n_heads keeps it).
    pub d_head: Option<usize>,
    pub d_mlp: Option<usize>,
    pub act_fn: Option<ActFn>,
    pub normalization_type: Option<Normalization>,
    pub attn_only: bool,
    pub init: InitScheme,
    pub initializer_range: f64,
    pub attn_bias: bool,
    pub unembed_bias: bool,
}

/// The ToyMLP's widths; the vocabulary is the task's p.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyMlpShape {
    pub d_embed: usize,
    pub d_hidden: usize,
}

/// The superposition model's hidden width; features and instances come from the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperpositionShape {
    pub n_hidden: usize,
}

/// Linear regression; the widths come from the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearShape {
    pub bias: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Linear warm-up as the original code's `LambdaLR(lambda s: min(s / warmup, 1))`: update t
    /// (counting from 1) uses lr · min((t − 1) / warmup_steps, 1); 0 turns it off.
    pub warmup_steps: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Step budget (optimizer updates).
    pub steps: u64,
    /// Examples per step; null means the full training set every step (finite data only).
    pub batch_size: Option<usize>,
    /// Evaluate every this many steps.
    pub eval_every: u64,
    /// Save a checkpoint every this many steps...
    pub checkpoint_every: u64,
    /// ...plus this many log-spaced ones before the first regular one (early dynamics are fast).
    pub log_checkpoints: u32,
    /// Stop at the first evaluation whose test loss is below this; null never stops early.
    pub early_stop_test_loss: Option<f64>,
    /// A pruning mask (safetensors of 0/1 tensors by parameter name; `toylens prune` writes one):
    /// masked weights are zero from the start and stay exactly zero. Null trains every weight.
    #[serde(default)]
    pub mask: Option<String>,
    /// Start from this checkpoint's weights instead of the seed's initialisation (a ticket's
    /// rewind point); its model config must be this run's. The optimizer starts fresh.
    #[serde(default)]
    pub init_from: Option<String>,
}

impl ExperimentConfig {
    /// The task's name (`data.task`).
    pub fn task_name(&self) -> &'static str {
        match self.data {
            DataConfig::Modular(_) => "modular",
            DataConfig::Digits(_) => "digits",
            DataConfig::Superposition(_) => "superposition",
            DataConfig::Regression(_) => "regression",
        }
    }

    /// The model's name (`model.arch`).
    pub fn arch_name(&self) -> &'static str {
        match self.model {
            ModelConfig::Transformer(_) => "transformer",
            ModelConfig::ToyMlp(_) => "toy_mlp",
            ModelConfig::Superposition(_) => "superposition",
            ModelConfig::Linear(_) => "linear",
        }
    }

    fn data_seed(&self, s: Option<u64>) -> u64 {
        s.unwrap_or(self.seed)
    }

    /// The modular task this config trains on (an error for other tasks).
    fn modular(&self) -> Result<ModularTask> {
        match &self.data {
            DataConfig::Modular(d) => Ok(ModularTask {
                p: d.p,
                op: d.op,
                frac_train: d.frac_train,
                seed: self.data_seed(d.seed),
                split: d.split,
            }),
            _ => Err(Error::config(
                "data.task",
                format!("this needs the modular task, not `{}`", self.task_name()),
            )),
        }
    }

    /// The digits task this config trains on (an error for other tasks).
    fn digits(&self) -> Result<DigitsTask> {
        match &self.data {
            DataConfig::Digits(d) => Ok(DigitsTask {
                n_digits: d.n_digits,
                reverse_sum: d.reverse_sum,
                infinite: d.infinite,
                frac_train: d.frac_train,
                n_eval: d.n_eval,
                seed: self.data_seed(d.seed),
            }),
            _ => Err(Error::config(
                "data.task",
                format!("this needs the digits task, not `{}`", self.task_name()),
            )),
        }
    }

    /// The transformer: its vocabulary and context from the task (modular: inputs `a b =`, n_ctx 3,
    /// p + 1 tokens and outputs as in the original; digits: see [`DigitsTask`]).
    fn transformer(&self) -> Result<TransformerConfig> {
        let ModelConfig::Transformer(m) = &self.model else {
            return Err(Error::config(
                "model.arch",
                format!("this needs a transformer, not `{}`", self.arch_name()),
            ));
        };
        let (d_vocab, d_vocab_out, n_ctx) = match &self.data {
            DataConfig::Modular(d) => (d.p + 1, (d.p + 1) as i64, 3),
            DataConfig::Digits(_) => {
                let t = self.digits()?;
                (t.d_vocab(), t.d_vocab_out() as i64, t.n_ctx())
            }
            DataConfig::Superposition(_) | DataConfig::Regression(_) => {
                return Err(Error::config(
                    "model.arch",
                    format!(
                        "the transformer takes tokens; the `{}` task needs model.arch={}",
                        self.task_name(),
                        if matches!(self.data, DataConfig::Regression(_)) {
                            "linear"
                        } else {
                            "superposition"
                        }
                    ),
                ))
            }
        };
        let d_head = match m.d_head {
            Some(d) => d,
            None if m.n_heads > 0 && m.d_model % m.n_heads == 0 => m.d_model / m.n_heads,
            None => {
                return Err(Error::config(
                    "model.d_head",
                    format!(
                        "null means d_model / n_heads, but {} heads do not divide d_model {}",
                        m.n_heads, m.d_model
                    ),
                ))
            }
        };
        Ok(TransformerConfig {
            n_layers: m.n_layers,
            d_model: m.d_model,
            n_heads: m.n_heads,
            d_head,
            d_mlp: m.d_mlp,
            d_vocab,
            d_vocab_out,
            n_ctx,
            act_fn: m.act_fn,
            normalization_type: m.normalization_type,
            attn_only: m.attn_only,
            seed: Some(self.seed),
            eps: 1e-5,
            initializer_range: m.initializer_range,
            init: m.init,
            attn_bias: m.attn_bias,
            unembed_bias: m.unembed_bias,
        })
    }

    /// The ToyMLP on the modular task.
    fn toy_mlp(&self) -> Result<ToyMlpConfig> {
        let ModelConfig::ToyMlp(m) = &self.model else {
            return Err(Error::config(
                "model.arch",
                format!("this needs the toy_mlp, not `{}`", self.arch_name()),
            ));
        };
        let DataConfig::Modular(d) = &self.data else {
            return Err(Error::config(
                "model.arch",
                format!(
                    "toy_mlp trains on the modular task, not `{}`",
                    self.task_name()
                ),
            ));
        };
        Ok(ToyMlpConfig {
            p: d.p,
            d_embed: m.d_embed,
            d_hidden: m.d_hidden,
            seed: self.seed,
        })
    }

    /// The superposition model with its task's features, instances and probabilities.
    fn superposition(&self) -> Result<SuperpositionConfig> {
        let (ModelConfig::Superposition(m), DataConfig::Superposition(d)) =
            (&self.model, &self.data)
        else {
            return Err(Error::config(
                "model.arch",
                "the superposition model goes with the superposition task (data.task=superposition, model.arch=superposition)",
            ));
        };
        Ok(SuperpositionConfig {
            n_instances: d.n_instances,
            n_features: d.n_features,
            n_hidden: m.n_hidden,
            importance_decay: d.importance_decay,
            max_feature_probability: d.max_feature_probability,
            min_feature_probability: d.min_feature_probability,
            seed: self.seed,
            data_seed: self.data_seed(d.seed),
        })
    }

    fn adamw(&self) -> AdamWConfig {
        let o = &self.optim;
        AdamWConfig {
            lr: o.lr,
            weight_decay: o.weight_decay,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
        }
    }

    /// The linear model on the regression task.
    fn linear(&self) -> Result<LinearConfig> {
        let (ModelConfig::Linear(m), DataConfig::Regression(d)) = (&self.model, &self.data) else {
            return Err(Error::config(
                "model.arch",
                "the linear model goes with the regression task (data.task=regression, model.arch=linear)",
            ));
        };
        Ok(LinearConfig {
            n_in: d.n_in,
            n_out: d.n_out,
            bias: m.bias,
            seed: self.seed,
        })
    }

    fn regression(&self) -> Result<RegressionTask> {
        match &self.data {
            DataConfig::Regression(d) => Ok(RegressionTask {
                n_in: d.n_in,
                n_out: d.n_out,
                n_train: d.n_train,
                n_test: d.n_test,
                noise_std: d.noise_std,
                true_weights: d.true_weights,
                seed: self.data_seed(d.seed),
            }),
            _ => Err(Error::config(
                "data.task",
                format!("this needs the regression task, not `{}`", self.task_name()),
            )),
        }
    }

    /// Range checks (errors name the key); see [`ExperimentConfig::resolve`].
    pub fn validate(&self) -> Result<()> {
        self.resolve().map(|_| ())
    }

    /// The config validated once into the typed parts that training uses: task, model, optimizer
    /// and schedule. Every range check is here, and errors name the key.
    pub fn resolve(&self) -> Result<Experiment> {
        self.check_ranges()?;
        let task = match &self.data {
            DataConfig::Modular(_) => TaskSpec::Modular(self.modular()?),
            DataConfig::Digits(_) => TaskSpec::Digits(self.digits()?),
            DataConfig::Superposition(d) => TaskSpec::Superposition { n_eval: d.n_eval },
            DataConfig::Regression(_) => TaskSpec::Regression(self.regression()?),
        };
        let model = match &self.model {
            ModelConfig::Transformer(_) => ModelSpec::Transformer(self.transformer()?),
            ModelConfig::ToyMlp(_) => ModelSpec::ToyMlp(self.toy_mlp()?),
            ModelConfig::Superposition(_) => ModelSpec::Superposition(self.superposition()?),
            ModelConfig::Linear(_) => ModelSpec::Linear(self.linear()?),
        };
        let t = &self.train;
        Ok(Experiment {
            config: self.clone(),
            seed: self.seed,
            task,
            model,
            optim: self.adamw(),
            schedule: Schedule {
                steps: t.steps,
                batch_size: t.batch_size,
                eval_every: t.eval_every,
                checkpoint_every: t.checkpoint_every,
                log_checkpoints: t.log_checkpoints,
                early_stop_test_loss: t.early_stop_test_loss,
                mask: t.mask.as_ref().map(std::path::PathBuf::from),
                init_from: t.init_from.as_ref().map(std::path::PathBuf::from),
                lr: self.optim.lr,
                warmup_steps: self.optim.warmup_steps,
            },
        })
    }

    fn check_ranges(&self) -> Result<()> {
        match &self.data {
            DataConfig::Modular(_) => self.modular()?.validate("data.")?,
            DataConfig::Digits(_) => self.digits()?.validate("data.")?,
            DataConfig::Superposition(_) => {}
            DataConfig::Regression(_) => self.regression()?.validate("data.")?,
        }
        match &self.model {
            ModelConfig::Transformer(_) => self.transformer()?.validate("model.")?,
            ModelConfig::ToyMlp(_) => self.toy_mlp()?.validate()?,
            ModelConfig::Superposition(_) => self.superposition()?.validate()?,
            ModelConfig::Linear(_) => self.linear()?.validate()?,
        }
        let o = &self.optim;
        let checks: [(&str, bool, &str); 5] = [
            (
                "optim.lr",
                o.lr > 0.0 && o.lr.is_finite(),
                "must be a positive number",
            ),
            (
                "optim.weight_decay",
                o.weight_decay >= 0.0 && o.weight_decay.is_finite(),
                "must be ≥ 0",
            ),
            (
                "optim.beta1",
                (0.0..1.0).contains(&o.beta1),
                "must be in [0, 1)",
            ),
            (
                "optim.beta2",
                (0.0..1.0).contains(&o.beta2),
                "must be in [0, 1)",
            ),
            (
                "optim.eps",
                o.eps > 0.0 && o.eps.is_finite(),
                "must be a positive number",
            ),
        ];
        for (k, ok, msg) in checks {
            if !ok {
                let v = serde_json::to_value(self)
                    .ok()
                    .and_then(|t| lookup(&t, k).cloned())
                    .unwrap_or(Value::Null);
                return Err(Error::config(k, format!("{msg} (got {v})")));
            }
        }
        let t = &self.train;
        for (k, v) in [
            ("train.steps", t.steps),
            ("train.eval_every", t.eval_every),
            ("train.checkpoint_every", t.checkpoint_every),
        ] {
            if v == 0 {
                return Err(Error::config(k, "must be at least 1"));
            }
        }
        let fresh_data = match &self.data {
            DataConfig::Digits(d) => d.infinite,
            DataConfig::Superposition(_) => true,
            DataConfig::Modular(_) | DataConfig::Regression(_) => false,
        };
        match t.batch_size {
            Some(0) => {
                return Err(Error::config(
                    "train.batch_size",
                    if fresh_data {
                        "must be at least 1"
                    } else {
                        "must be at least 1, or null for the full batch"
                    },
                ))
            }
            None if fresh_data => return Err(Error::config(
                "train.batch_size",
                "must be set: this task draws fresh samples every step, so there is no full batch",
            )),
            _ => {}
        }
        if let Some(x) = t.early_stop_test_loss {
            if x.is_nan() || x <= 0.0 {
                return Err(Error::config(
                    "train.early_stop_test_loss",
                    format!("must be positive, or null (got {x})"),
                ));
            }
        }
        Ok(())
    }
}

/// An experiment, resolved: what training needs, each part typed and validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    /// The config it was resolved from (what `config.yaml` and checkpoints record).
    pub config: ExperimentConfig,
    pub seed: u64,
    pub task: TaskSpec,
    pub model: ModelSpec,
    pub optim: AdamWConfig,
    pub schedule: Schedule,
}

/// The task of an experiment.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskSpec {
    Modular(ModularTask),
    Digits(DigitsTask),
    /// The samples are the model config's; `n_eval` examples are evaluated.
    Superposition {
        n_eval: usize,
    },
    Regression(RegressionTask),
}

/// The model of an experiment, with every size known.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSpec {
    Transformer(TransformerConfig),
    ToyMlp(ToyMlpConfig),
    Superposition(SuperpositionConfig),
    Linear(LinearConfig),
}

/// Steps, batches, evaluation, checkpoints and the learning-rate schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub steps: u64,
    pub batch_size: Option<usize>,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub log_checkpoints: u32,
    pub early_stop_test_loss: Option<f64>,
    pub lr: f64,
    pub warmup_steps: u64,
    /// The pruning mask's file, if any.
    pub mask: Option<std::path::PathBuf>,
    /// The checkpoint whose weights the run starts from, if not the seed's initialisation.
    pub init_from: Option<std::path::PathBuf>,
}

impl Schedule {
    /// Learning rate of update `t` (1-based): linear warm-up as the original code's
    /// `LambdaLR(lambda s: min(s / warmup, 1))`.
    pub fn lr_at(&self, t: u64) -> f64 {
        let w = self.warmup_steps;
        if w == 0 {
            self.lr
        } else {
            self.lr * ((t - 1) as f64 / w as f64).min(1.0)
        }
    }

    /// Whether a checkpoint is due after `step` updates: step 0, every `checkpoint_every`,
    /// log-spaced ones before the first regular one, and the last step.
    pub fn checkpoint_due(&self, step: u64) -> bool {
        if step == 0 || step % self.checkpoint_every == 0 || step == self.steps {
            return true;
        }
        if step > self.checkpoint_every {
            // The log-spaced ones all lie below the first regular one.
            return false;
        }
        let n = self.log_checkpoints;
        (0..n).any(|i| {
            libm::pow(self.checkpoint_every as f64, i as f64 / n as f64).round() as u64 == step
        })
    }
}

impl TaskSpec {
    /// What checkpoints record about the task.
    pub fn info(&self) -> TaskInfo {
        match self {
            TaskSpec::Modular(t) => TaskInfo::from_modular(t),
            TaskSpec::Digits(d) => TaskInfo::Digits {
                n_digits: d.n_digits,
                reverse_sum: d.reverse_sum,
            },
            TaskSpec::Superposition { .. } => TaskInfo::Superposition {},
            TaskSpec::Regression(r) => TaskInfo::Regression(r.clone()),
        }
    }
}

impl Experiment {
    /// The freshly initialised model.
    pub fn build_model(&self) -> Result<Box<dyn Model>> {
        Ok(match &self.model {
            ModelSpec::Transformer(c) => Box::new(Transformer::new(c.clone())?),
            ModelSpec::ToyMlp(c) => Box::new(ToyMlp::new(c.clone())?),
            ModelSpec::Superposition(c) => Box::new(Superposition::new(c.clone())?),
            ModelSpec::Linear(c) => Box::new(Linear::new(c.clone())?),
        })
    }

    /// The run's data.
    pub fn data(&self) -> Box<dyn TaskData> {
        let bs = self.schedule.batch_size;
        match (&self.task, &self.model) {
            (TaskSpec::Modular(t), _) => Box::new(ModularRun::new(t.clone(), bs)),
            (TaskSpec::Digits(t), _) => Box::new(DigitsRun::new(t.clone(), bs)),
            (TaskSpec::Superposition { n_eval }, ModelSpec::Superposition(c)) => Box::new(
                SuperpositionRun::new(c.clone(), bs.expect("validated: fresh samples"), *n_eval),
            ),
            (TaskSpec::Superposition { .. }, _) => unreachable!("validated: superposition model"),
            (TaskSpec::Regression(t), _) => Box::new(RegressionRun::new(t, bs)),
        }
    }

    /// What a run of this experiment will allocate, roughly and from above: parameters, gradients
    /// and AdamW's two moments, and the activations of the largest batch it evaluates or trains on.
    /// (part, bytes, the key that sets most of it).
    pub fn memory_estimate(&self) -> Vec<(String, f64, String)> {
        let f = 4.0; // bytes per f32
        let bs = self.schedule.batch_size;
        let (n_params, rows, per_row, keys): (f64, f64, f64, &str) = match (&self.model, &self.task)
        {
            (ModelSpec::Transformer(c), task) => {
                let n = c.parameter_count();
                let examples = match task {
                    TaskSpec::Modular(t) => (t.p as f64).powi(2),
                    TaskSpec::Digits(d) => bs.unwrap_or(d.n_train()).max(d.n_eval) as f64,
                    _ => 1.0,
                };
                let (d, hd, h, ctx) = (
                    c.d_model as f64,
                    c.n_heads as f64 * c.d_head as f64,
                    c.n_heads as f64,
                    c.n_ctx as f64,
                );
                let dm = if c.has_mlp() { c.d_mlp() as f64 } else { 0.0 };
                // Attention works at every position; the last block's MLP and the unembedding on the
                // fast path only where loss is taken, but hooked runs and evaluation may ask for all.
                let per_row = (8.0 * hd + 2.0 * h * ctx + 14.0 * d + 3.0 * dm) * c.n_layers as f64
                    + 2.0 * c.d_vocab_out() as f64;
                let mlp_heavy = 2.0 * d * dm > n / 2.0;
                (
                    n,
                    examples * ctx,
                    per_row,
                    if mlp_heavy {
                        "model.d_mlp"
                    } else {
                        "model.d_model"
                    },
                )
            }
            // Sizes in f64 from the start: products of absurd sizes cannot overflow.
            (ModelSpec::ToyMlp(c), TaskSpec::Modular(t)) => {
                let (p, e, hid) = (c.p as f64, c.d_embed as f64, c.d_hidden as f64);
                (
                    p * e + 2.0 * e * hid + hid + p * hid + p,
                    (t.p as f64).powi(2),
                    4.0 * e + 4.0 * hid + 2.0 * p,
                    "model.d_hidden",
                )
            }
            (ModelSpec::Superposition(c), TaskSpec::Superposition { n_eval }) => {
                let w = c.n_instances as f64 * c.n_features as f64;
                (
                    w * (c.n_hidden as f64 + 1.0),
                    bs.unwrap_or(1).max(*n_eval) as f64,
                    2.0 * w,
                    "train.batch_size",
                )
            }
            (ModelSpec::Linear(c), TaskSpec::Regression(t)) => (
                c.n_out as f64 * (c.n_in as f64 + 1.0),
                t.n_train.max(t.n_test) as f64,
                2.0 * (c.n_in as f64 + c.n_out as f64),
                "data.n_train",
            ),
            _ => (0.0, 0.0, 0.0, ""),
        };
        vec![
            (
                format!("{n_params:.0} parameters, with gradients and AdamW's two moments"),
                4.0 * f * n_params,
                keys.to_string(),
            ),
            (
                format!("activations of {rows:.0} rows"),
                2.0 * f * rows * per_row,
                keys.to_string(),
            ),
        ]
    }

    /// An error if [`Experiment::memory_estimate`] exceeds the memory this machine has available.
    pub fn check_memory(&self) -> Result<()> {
        match available_memory() {
            Some(avail) => self.check_memory_within(avail),
            None => Ok(()),
        }
    }

    /// An error naming the key that sets most of it if [`Experiment::memory_estimate`] exceeds
    /// `avail` bytes.
    pub fn check_memory_within(&self, avail: u64) -> Result<()> {
        let parts = self.memory_estimate();
        let total: f64 = parts.iter().map(|p| p.1).sum();
        if total <= avail as f64 {
            return Ok(());
        }
        let gb = |b: f64| format!("{:.1} GB", b / 1e9);
        let detail: Vec<String> = parts
            .iter()
            .map(|(what, b, _)| format!("{} for {what}", gb(*b)))
            .collect();
        Err(Error::config(
            self.heaviest_key(total)
                .unwrap_or_else(|| parts[0].2.clone()),
            format!(
                "this run needs about {} ({}), more than the {} of memory available; make the model or the batch smaller (this key sets most of it)",
                gb(total),
                detail.join(", "),
                gb(avail as f64)
            ),
        ))
    }

    /// The size key that sets most of [`Experiment::memory_estimate`]: each whole-number key of
    /// the model and data sections, and `train.batch_size`, set in turn to the smallest value
    /// that resolves (1, else 2); the one whose shrinking saves the most. (Halving would not do:
    /// the estimate is a product, so halving any factor saves half, and a squared one more.)
    /// None when shrinking none of them saves anything. `now`: this experiment's estimate.
    fn heaviest_key(&self, now: f64) -> Option<String> {
        let total = |e: &Experiment| e.memory_estimate().iter().map(|p| p.1).sum::<f64>();
        let tree = serde_json::to_value(&self.config).ok()?;
        let mut paths = Vec::new();
        leaf_paths(&tree, "", &mut paths);
        paths
            .into_iter()
            .filter(|k| {
                k.starts_with("model.") || k.starts_with("data.") || k == "train.batch_size"
            })
            .filter_map(|k| {
                let v = lookup(&tree, &k)?.as_u64()?;
                let smallest = [1, 2].into_iter().filter(|&s| s < v).find_map(|s| {
                    apply_overrides(&self.config, &[format!("{k}={s}")])
                        .ok()?
                        .resolve()
                        .ok()
                })?;
                let saved = now - total(&smallest);
                (saved > 0.0).then_some((saved, k))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| k)
    }
}

/// MemAvailable from /proc/meminfo, in bytes (None where it cannot be read).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// Every leaf path of a tree (`a.b.c`), for suggestions.
fn leaf_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(c, &p, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// Deserialize `tree` as `T`; an error names the key as `prefix` + its path inside `tree`.
fn section<T: DeserializeOwned>(tree: Value, prefix: &str, source: &str) -> Result<T> {
    serde_path_to_error::deserialize::<_, T>(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let key = match (prefix.is_empty(), path == ".") {
            (true, true) => source.to_string(),
            (true, false) => path,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{path}"),
        };
        Error::config(key, inner)
    })
}

/// Split the tag `tag` off a section: (its value, the rest). `default` stands in when it is absent.
fn untag(
    v: Value,
    section_name: &str,
    tag: &str,
    default: Option<&str>,
    choices: &[&str],
) -> Result<(String, Value)> {
    let key = format!("{section_name}.{tag}");
    let Value::Object(mut m) = v else {
        return Err(Error::config(section_name, "must be a mapping"));
    };
    let name = match m.remove(tag) {
        Some(Value::String(s)) => s,
        None if default.is_some() => default.unwrap_or_default().to_string(),
        None => {
            return Err(Error::config(
                key,
                format!("missing; one of {}", choices.join(", ")),
            ))
        }
        Some(other) => {
            return Err(Error::config(
                key,
                format!("must be one of {} (got {other})", choices.join(", ")),
            ))
        }
    };
    if !choices.contains(&name.as_str()) {
        let near = closest(&name, choices.iter().copied(), 1);
        return Err(Error::config(
            key,
            format!(
                "unknown `{name}`{}; one of {}",
                near.first()
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default(),
                choices.join(", ")
            ),
        ));
    }
    Ok((name, Value::Object(m)))
}

fn typed(tree: Value, source: &str) -> Result<ExperimentConfig> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        seed: u64,
        data: Value,
        model: Value,
        optim: OptimConfig,
        train: TrainConfig,
    }
    let raw: Raw = section(tree, "", source)?;
    let (task, data) = untag(
        raw.data,
        "data",
        "task",
        None,
        &["modular", "digits", "superposition", "regression"],
    )?;
    let data = match task.as_str() {
        "modular" => DataConfig::Modular(section(data, "data", source)?),
        "digits" => DataConfig::Digits(section(data, "data", source)?),
        "regression" => DataConfig::Regression(section(data, "data", source)?),
        _ => DataConfig::Superposition(section(data, "data", source)?),
    };
    let (arch, model) = untag(
        raw.model,
        "model",
        "arch",
        Some("transformer"),
        &["transformer", "toy_mlp", "superposition", "linear"],
    )?;
    let model = match arch.as_str() {
        "transformer" => ModelConfig::Transformer(section(model, "model", source)?),
        "toy_mlp" => ModelConfig::ToyMlp(section(model, "model", source)?),
        "linear" => ModelConfig::Linear(section(model, "model", source)?),
        _ => ModelConfig::Superposition(section(model, "model", source)?),
    };
    Ok(ExperimentConfig {
        seed: raw.seed,
        data,
        model,
        optim: raw.optim,
        train: raw.train,
    })
}

/// Parse YAML text (a preset or a saved `config.yaml`) into a config; `source` names it in errors.
pub fn from_yaml(yaml: &str, source: &str) -> Result<ExperimentConfig> {
    let tree: Value = serde_saphyr::from_str(yaml)
        .map_err(|e| Error::config(source, format!("not valid YAML: {e}")))?;
    typed(tree, source)
}

/// The config from its JSON (checkpoint metadata `toylens.experiment`).
pub fn from_json(json: &str, source: &str) -> Result<ExperimentConfig> {
    let tree: Value = serde_json::from_str(json)
        .map_err(|e| Error::config(source, format!("not valid JSON: {e}")))?;
    typed(tree, source)
}

/// Apply `key.sub=value` overrides (values parsed as YAML scalars, then typed by the config).
pub fn apply_overrides(cfg: &ExperimentConfig, overrides: &[String]) -> Result<ExperimentConfig> {
    let mut tree = serde_json::to_value(cfg).expect("config to tree");
    let mut paths = Vec::new();
    leaf_paths(&tree, "", &mut paths);
    for ov in overrides {
        let (key, raw) = ov.split_once('=').ok_or_else(|| {
            Error::config(
                ov.as_str(),
                "an override is key=value (for example optim.lr=0.003)",
            )
        })?;
        let key = key.trim();
        if !paths.iter().any(|p| p == key) {
            let near = closest(key, paths.iter().map(|s| s.as_str()), 1);
            return Err(Error::config(
                key,
                format!(
                    "unknown key{}",
                    near.first()
                        .map(|n| format!("; did you mean `{n}`?"))
                        .unwrap_or_default()
                ),
            ));
        }
        let value: Value = if raw.trim().is_empty() {
            Value::Null
        } else {
            serde_saphyr::from_str(raw)
                .map_err(|e| Error::config(key, format!("cannot parse `{raw}`: {e}")))?
        };
        let mut slot = &mut tree;
        for part in key.split('.') {
            slot = slot.get_mut(part).expect("path checked above");
        }
        *slot = value;
    }
    let cfg = typed(tree, "overrides")?;
    Ok(cfg)
}

/// A preset with overrides, validated.
pub fn resolve(preset_name: &str, overrides: &[String]) -> Result<ExperimentConfig> {
    let base = base_config(preset_name)?;
    let cfg = apply_overrides(&base, overrides)?;
    cfg.validate()?;
    Ok(cfg)
}

/// The config as YAML (what `config.yaml` holds).
pub fn to_yaml(cfg: &ExperimentConfig) -> String {
    serde_saphyr::to_string(cfg).expect("config to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_fall_at_zero_the_log_spaced_steps_every_interval_and_the_end() {
        let sched = Schedule {
            steps: 2500,
            batch_size: None,
            eval_every: 100,
            checkpoint_every: 1000,
            log_checkpoints: 4,
            early_stop_test_loss: None,
            lr: 1e-3,
            warmup_steps: 0,
            mask: None,
            init_from: None,
        };
        let due: Vec<u64> = (0..=3000).filter(|&s| sched.checkpoint_due(s)).collect();
        // 1000^(i/4) rounded: 1, 6, 32, 178.
        assert_eq!(due, [0, 1, 6, 32, 178, 1000, 2000, 2500, 3000]);
        let none = Schedule {
            log_checkpoints: 0,
            ..sched
        };
        let due: Vec<u64> = (0..=2500).filter(|&s| none.checkpoint_due(s)).collect();
        assert_eq!(due, [0, 1000, 2000, 2500]);
    }

    #[test]
    fn presets_parse_and_validate() {
        for p in PRESETS {
            let c = resolve(p.name, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert_eq!(from_yaml(&to_yaml(&c), "round trip").unwrap(), c);
        }
    }

    #[test]
    fn grokking_preset_is_nandas_configuration() {
        let c = resolve("grokking", &[]).unwrap();
        let t = c.modular().unwrap();
        assert_eq!((t.p, t.frac_train, t.op), (113, 0.3, Op::Add));
        let m = c.transformer().unwrap();
        assert_eq!(
            (m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp),
            (1, 128, 4, 32, Some(512))
        );
        assert_eq!(
            (m.act_fn, m.normalization_type, m.init),
            (Some(ActFn::Relu), None, InitScheme::Nanda)
        );
        let o = c.adamw();
        assert_eq!(
            (o.lr, o.weight_decay, o.beta1, o.beta2),
            (1e-3, 1.0, 0.9, 0.98)
        );
        assert_eq!(c.optim.warmup_steps, 10);
        assert_eq!(c.train.batch_size, None);
        let s = c.resolve().unwrap().schedule;
        assert_eq!(s.lr_at(1), 0.0);
        assert_eq!(s.lr_at(6), 5e-4);
        assert_eq!(s.lr_at(11), 1e-3);
    }

    #[test]
    fn overrides_are_typed_and_checked() {
        let c = resolve(
            "grokking",
            &[
                "model.d_model=64".into(),
                "optim.weight_decay=0.5".into(),
                "data.frac_train=0.5".into(),
                "train.batch_size=256".into(),
                "seed=7".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            (
                c.transformer().unwrap().d_model,
                c.optim.weight_decay,
                c.modular().unwrap().frac_train,
                c.train.batch_size,
                c.seed
            ),
            (64, 0.5, 0.5, Some(256), 7)
        );
        let e = resolve("grokking", &["optim.weight_decy=0.5".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optim.weight_decy") && e.contains("did you mean `optim.weight_decay`"),
            "{e}"
        );
        let e = resolve("grokking", &["optim.lr=fast".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.lr") && e.contains("f64"), "{e}");
        let e = resolve("grokking", &["model.act_fn=tanh".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.act_fn") && e.contains("gelu_new"), "{e}");
        let e = resolve("grokking", &["data.p=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.p") && e.contains("at least 2"), "{e}");
        for bad in ["data.frac_train=0", "data.frac_train=1.5"] {
            let e = resolve("grokking", &[bad.into()]).unwrap_err().to_string();
            assert!(
                e.contains("data.frac_train") && e.contains("between 0 and 1"),
                "{e}"
            );
        }
        let e = resolve("grokking", &["optim.lr=-0.001".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optim.lr") && e.contains("positive") && e.contains("-0.001"),
            "{e}"
        );
        let e = resolve("grokking", &["train.steps=-5".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.steps"), "{e}");
        let e = resolve("grokking", &["lr".into()]).unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
        let e = resolve("grokkin", &[]).unwrap_err().to_string();
        assert!(e.contains("did you mean `grokking`"), "{e}");
    }

    #[test]
    fn a_size_key_of_1e8_is_refused_before_anything_is_allocated_and_named() {
        let budget = 16_000_000_000; // bytes: a laptop's, or a CI machine's
        for preset in ["grokking-tiny", "digits5", "toy-mlp", "superposition"] {
            let cfg = resolve(preset, &[]).unwrap();
            let tree = serde_json::to_value(&cfg).unwrap();
            let mut keys = Vec::new();
            leaf_paths(&tree, "", &mut keys);
            keys.retain(|k| {
                (k.starts_with("model.") || k.starts_with("data.") || k == "train.batch_size")
                    && lookup(&tree, k).is_some_and(|v| v.is_u64())
                    && !k.ends_with("seed")
            });
            // A modular task trains on at most its whole training set: any batch fits.
            if preset == "grokking-tiny" || preset == "toy-mlp" {
                keys.retain(|k| k != "train.batch_size");
            }
            assert!(keys.len() >= 3, "{preset}: {keys:?}");
            for k in keys {
                let start = std::time::Instant::now();
                let refused = resolve(preset, &[format!("{k}=100000000")])
                    .and_then(|c| c.resolve())
                    .and_then(|e| e.check_memory_within(budget))
                    .expect_err(&format!("{preset} {k}=1e8 was not refused"))
                    .to_string();
                assert!(
                    refused.contains(&format!("`{k}`")),
                    "{preset} {k}=1e8: the error names another key: {refused}"
                );
                assert!(start.elapsed().as_secs_f64() < 1.0, "{preset} {k}: slow");
            }
        }
    }

    #[test]
    fn the_parameter_count_is_the_layouts() {
        use crate::models::transformer::Layout;
        for (preset, overrides) in [
            ("grokking", vec![]),
            ("digits5", vec![]),
            (
                "grokking-tiny",
                vec!["model.normalization_type=LN", "model.n_layers=3"],
            ),
            (
                "grokking-tiny",
                vec!["model.attn_only=true", "model.attn_bias=true"],
            ),
        ] {
            let overrides: Vec<String> = overrides.into_iter().map(String::from).collect();
            let exp = resolve(preset, &overrides).unwrap().resolve().unwrap();
            let ModelSpec::Transformer(c) = &exp.model else {
                panic!("{preset}: a transformer")
            };
            assert_eq!(
                c.parameter_count(),
                Layout::new(c).total as f64,
                "{preset} {overrides:?}"
            );
        }
    }

    #[test]
    fn new_tasks_resolve_and_reject_bad_input_by_key() {
        let d = resolve("digits5", &[]).unwrap();
        let t = d.digits().unwrap();
        assert_eq!((t.n_digits, t.infinite, t.reverse_sum), (5, true, false));
        let m = d.transformer().unwrap();
        assert_eq!((m.d_vocab, m.d_vocab_out, m.n_ctx), (12, 10, 18));
        assert_eq!(
            (m.d_model, m.n_heads, m.d_head, m.d_mlp),
            (512, 4, 128, Some(2048))
        );
        let t = resolve("digits3", &[]).unwrap().transformer().unwrap();
        assert_eq!(
            (t.d_model, t.n_heads, t.d_head, t.d_mlp),
            (256, 4, 64, Some(1024))
        );
        let mlp = resolve("toy-mlp", &[]).unwrap();
        assert_eq!(mlp.modular().unwrap().n_train(), 10_000);
        assert_eq!(mlp.train.batch_size, Some(64));
        let sp = resolve("superposition", &[])
            .unwrap()
            .superposition()
            .unwrap();
        let probs = sp.feature_probability();
        assert_eq!((sp.n_features, sp.n_hidden, probs.len()), (5, 2, 10));
        assert!((probs[0] - 1.0).abs() < 1e-12 && (probs[9] - 0.05).abs() < 1e-12);
        // 20^(−linspace(0, 1, n)).
        assert!((probs[4] - 20f64.powf(-4.0 / 9.0)).abs() < 1e-12);
        assert_eq!(sp.importance()[1], 0.9);

        let err = |preset: &str, ov: &[&str]| {
            resolve(
                preset,
                &ov.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap_err()
            .to_string()
        };
        for (preset, ov, key, words) in [
            (
                "digits5",
                "data.n_digits=0",
                "data.n_digits",
                "between 1 and 10",
            ),
            (
                "digits5",
                "data.n_digits=11",
                "data.n_digits",
                "between 1 and 10",
            ),
            (
                "digits5",
                "train.batch_size=0",
                "train.batch_size",
                "at least 1",
            ),
            (
                "digits5",
                "train.batch_size=null",
                "train.batch_size",
                "fresh samples",
            ),
            (
                "superposition",
                "data.n_features=0",
                "data.n_features",
                "at least 1",
            ),
            (
                "superposition",
                "model.n_hidden=0",
                "model.n_hidden",
                "at least 1",
            ),
            (
                "superposition",
                "data.min_feature_probability=0",
                "data.min_feature_probability",
                "(0, 1]",
            ),
            (
                "superposition",
                "data.max_feature_probability=1.5",
                "data.max_feature_probability",
                "(0, 1]",
            ),
            (
                "superposition",
                "train.batch_size=0",
                "train.batch_size",
                "at least 1",
            ),
            (
                "toy-mlp",
                "train.batch_size=0",
                "train.batch_size",
                "at least 1",
            ),
            (
                "toy-mlp",
                "model.d_hidden=0",
                "model.d_hidden",
                "at least 1",
            ),
            (
                "grokking",
                "train.batch_size=0",
                "train.batch_size",
                "at least 1",
            ),
            (
                "digits5",
                "data.task=digitz",
                "data.task",
                "did you mean `digits`",
            ),
            ("toy-mlp", "model.arch=mlp", "model.arch", "toy_mlp"),
            (
                "digits5",
                "model.arch=toy_mlp",
                "config key `model.",
                "unknown field",
            ),
        ] {
            let e = err(preset, &[ov]);
            assert!(e.contains(key) && e.contains(words), "{ov}: {e}");
        }
        // An error inside a tagged section keeps its full path.
        let e = err("digits5", &["data.n_digits=five"]);
        assert!(e.contains("data.n_digits"), "{e}");
    }
}
