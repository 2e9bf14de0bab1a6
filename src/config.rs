//! Experiment configuration: YAML presets embedded in the binary, Hydra-style `key.sub=value`
//! overrides, and validation that names the key.
//!
//! Resolution: preset YAML → typed config (errors name the key) → back to a tree with every field
//! present → overrides applied by dotted path (an unknown path is an error that suggests the nearest
//! valid one) → typed config again → range checks.
//!
//! `data.task` picks the task and `model.arch` the model, from the registries
//! ([`crate::tasks::TASKS`], [`crate::models::KINDS`]); each kind owns its section's fields, range
//! checks and sizes. The two tags are read by hand (not by serde's internally tagged enums, which
//! lose the path of an error inside the section).

use crate::engine::adamw::AdamWConfig;
use crate::error::{closest, typed_section, Error, Result};
use crate::models::{self, Model, ModelPlan};
use crate::tasks::{self, Task, TaskData};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

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
        name: "induction",
        about: "induction heads: a 2-layer attention-only transformer on random tokens with a segment repeated at a random offset",
        yaml: include_str!("../presets/induction.yaml"),
    },
    Preset {
        name: "induction-1l",
        about: "the induction preset with one layer, which cannot form an induction head",
        yaml: include_str!("../presets/induction-1l.yaml"),
    },
    Preset {
        name: "induction-smeared",
        about: "the one-layer induction preset with smeared keys, which lets one layer form an induction head",
        yaml: include_str!("../presets/induction-smeared.yaml"),
    },
    Preset {
        name: "triggers",
        about: "Bietti et al.'s triggers: a random bigram in the weights, trigger-output pairs only in context, 2 attention-only layers",
        yaml: include_str!("../presets/triggers.yaml"),
    },
    Preset {
        name: "icl-regression",
        about: "in-context linear regression (Hoogland et al. 2024's L2H4Minf): vector tokens, 2 layers, the one-cycle schedule to 40k of its 500k steps",
        yaml: include_str!("../presets/icl-regression.yaml"),
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
        std::path::Path::new(name).file_stem().map_or_else(
            || "config".to_string(),
            |s| s.to_string_lossy().into_owned(),
        )
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
    /// The task: `data.task` names its kind (see [`crate::tasks::TASKS`]).
    pub data: Section,
    /// The model: `model.arch` names its kind (see [`crate::models::KINDS`]).
    pub model: Section,
    pub optim: OptimConfig,
    pub train: TrainConfig,
}

/// A task's or model's section: its kind's name (the tag, `task` or `arch`) and its fields, typed
/// by the kind and back (every field present, in the order its struct declares them).
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub kind: &'static str,
    tag: &'static str,
    pub fields: Value,
}

impl Serialize for Section {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = serde_json::Map::new();
        m.insert(self.tag.to_string(), Value::String(self.kind.to_string()));
        if let Value::Object(f) = &self.fields {
            m.extend(f.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Value::Object(m).serialize(s)
    }
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
    /// PyTorch's `OneCycleLR` with linear annealing instead (timaeus-research/icl's schedule),
    /// peaking at `lr`; absent: the warm-up schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_cycle: Option<OneCycle>,
}

/// PyTorch's `OneCycleLR(max_lr=lr, total_steps, pct_start, div_factor, final_div_factor,
/// anneal_strategy="linear")`: update t (from 1) is the scheduler's step s = t − 1; the rate
/// climbs linearly from lr/div_factor at s = 0 to lr at s = pct_start·total_steps − 1, then falls
/// linearly to lr/(div_factor·final_div_factor) at s = total_steps − 1. A run may stop before
/// `total_steps` (the paper's schedule, trained part of the way); it may not go past it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneCycle {
    pub total_steps: u64,
    pub pct_start: f64,
    pub div_factor: f64,
    pub final_div_factor: f64,
}

impl OneCycle {
    /// The rate of update `t` (1-based) at peak `max_lr`.
    pub fn lr_at(&self, max_lr: f64, t: u64) -> f64 {
        let s = (t - 1) as f64;
        let initial = max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let peak_at = self.pct_start * self.total_steps as f64 - 1.0;
        let end_at = self.total_steps as f64 - 1.0;
        if s <= peak_at {
            initial + (max_lr - initial) * s / peak_at
        } else {
            max_lr + (min - max_lr) * (s - peak_at) / (end_at - peak_at)
        }
    }
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
    /// Record the optimizer's per-tensor trace (`trace.npy`) every this many steps; 0 records none.
    #[serde(default = "every_step")]
    pub trace_every: u64,
    /// Analyses measured at every evaluation and written as metric columns (`toylens monitors`
    /// lists them). They read the model and never change the training bits.
    #[serde(default)]
    pub monitors: Vec<String>,
    /// How loss spikes are found (`toylens spikes`, the report).
    #[serde(default)]
    pub spikes: SpikeRule,
}

fn every_step() -> u64 {
    1
}

/// A spike: an evaluation where `column` exceeds `ratio` times the median of the `window`
/// evaluations before it; consecutive ones are one spike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeRule {
    /// A metric column, or `trace.loss` (the trace's loss of every traced step's batch).
    pub column: String,
    pub ratio: f64,
    pub window: usize,
}

impl Default for SpikeRule {
    fn default() -> Self {
        SpikeRule {
            column: "train_loss".into(),
            ratio: 2.0,
            window: 10,
        }
    }
}

impl SpikeRule {
    /// Range checks; `prefix` names the keys (`train.spikes`, or the command's flags).
    pub fn check(&self, prefix: &str) -> Result<()> {
        self.check_named(|k| format!("{prefix}.{k}"))
    }

    /// [`SpikeRule::check`] with errors naming each field `name(field)` (a flag, an argument).
    pub fn check_named(&self, name: impl Fn(&str) -> String) -> Result<()> {
        if !(self.ratio > 1.0 && self.ratio.is_finite()) {
            return Err(Error::config(
                name("ratio"),
                format!("must be a number above 1 (got {})", self.ratio),
            ));
        }
        if !(2..=100_000).contains(&self.window) {
            return Err(Error::config(
                name("window"),
                format!("must be from 2 to 100000 evaluations (got {})", self.window),
            ));
        }
        if self.column.trim().is_empty() {
            return Err(Error::config(
                name("column"),
                "must name a metric column or trace.loss",
            ));
        }
        Ok(())
    }
}

impl ExperimentConfig {
    /// The task's name (`data.task`).
    pub fn task_name(&self) -> &'static str {
        self.data.kind
    }

    /// The model's name (`model.arch`).
    pub fn arch_name(&self) -> &'static str {
        self.model.kind
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

    /// Range checks (errors name the key); see [`ExperimentConfig::resolve`].
    pub fn validate(&self) -> Result<()> {
        self.resolve().map(|_| ())
    }

    /// The config validated once into the typed parts that training uses: the task and the model
    /// (each resolved by its kind), optimizer and schedule. Errors name the key.
    pub fn resolve(&self) -> Result<Experiment> {
        let task = (tasks::task_kind(self.data.kind)?.configure)(&self.data.fields, self.seed)?;
        let model =
            (models::kind(self.model.kind)?.configure)(&self.model.fields, &task.io(), self.seed)?;
        self.check_optim_and_train(task.fresh_samples())?;
        Ok(Experiment {
            config: self.clone(),
            seed: self.seed,
            task,
            model,
            optim: self.adamw(),
        })
    }

    fn check_optim_and_train(&self, fresh_data: bool) -> Result<()> {
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
        if let Some(c) = &o.one_cycle {
            let steps = self.train.steps;
            let bad = if c.total_steps < steps.max(2) {
                Some((
                    "optim.one_cycle.total_steps",
                    format!(
                        "must be at least 2 and train.steps {steps} (got {})",
                        c.total_steps
                    ),
                ))
            } else if !(c.pct_start > 0.0 && c.pct_start < 1.0)
                || c.pct_start * (c.total_steps as f64) < 2.0
                || c.pct_start * (c.total_steps as f64) > c.total_steps as f64 - 1.0
            {
                Some((
                    "optim.one_cycle.pct_start",
                    format!(
                        "must be in (0, 1), with both phases at least a step long (got {})",
                        c.pct_start
                    ),
                ))
            } else if !(c.div_factor > 0.0 && c.div_factor.is_finite()) {
                Some((
                    "optim.one_cycle.div_factor",
                    format!("must be a positive number (got {})", c.div_factor),
                ))
            } else if !(c.final_div_factor > 0.0 && c.final_div_factor.is_finite()) {
                Some((
                    "optim.one_cycle.final_div_factor",
                    format!("must be a positive number (got {})", c.final_div_factor),
                ))
            } else if o.warmup_steps > 0 {
                Some((
                    "optim.warmup_steps",
                    "must be 0 with optim.one_cycle, which has its own warm-up".into(),
                ))
            } else {
                None
            };
            if let Some((key, msg)) = bad {
                return Err(Error::config(key, msg));
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
        t.spikes.check("train.spikes")?;
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
#[derive(Clone, Debug)]
pub struct Experiment {
    /// The config it was resolved from (what `config.yaml` and checkpoints record).
    pub config: ExperimentConfig,
    pub seed: u64,
    /// The task, as its kind resolved it (`exp.task.downcast::<ModularTask>()` for its own type).
    pub task: Arc<dyn Task>,
    /// The model's full config, every size known (`downcast` for its own type).
    pub model: Arc<dyn ModelPlan>,
    pub optim: AdamWConfig,
}

/// Two experiments are the same when their configs are: everything else is resolved from it.
impl PartialEq for Experiment {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl Experiment {
    /// The freshly initialised model.
    pub fn build_model(&self) -> Result<Box<dyn Model>> {
        self.model.build()
    }

    /// The run's data.
    pub fn data(&self) -> Result<Box<dyn TaskData>> {
        self.task.make_data(self.config.train.batch_size)
    }

    /// What a run of this experiment will allocate, roughly and from above, as each kind states
    /// it: the model's parameters with gradients and AdamW's two moments, the activations of the
    /// most examples the task feeds at once, and the task's own data. (part, bytes.)
    pub fn memory_estimate(&self) -> Vec<(String, f64)> {
        let f = 4.0; // bytes per f32
        let m = self.model.memory();
        let t = self.task.footprint(self.config.train.batch_size);
        vec![
            (
                format!(
                    "{:.0} parameters, with gradients and AdamW's two moments",
                    m.parameters
                ),
                4.0 * f * m.parameters,
            ),
            (
                format!("activations of {:.0} examples", t.examples_at_once),
                2.0 * f * t.examples_at_once * m.activations_per_example,
            ),
            ("the task's data".to_string(), t.data_bytes),
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
            .filter(|p| p.1 > 0.0)
            .map(|(what, b)| format!("{} for {what}", gb(*b)))
            .collect();
        Err(Error::config(
            self.heaviest_key(total)
                .unwrap_or_else(|| "model".to_string()),
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
    /// that resolves (1, else 2, else null where null means "inferred from the data"); the one
    /// whose shrinking saves the most. (Halving would not do:
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
                let smallest = ["1", "2", ""]
                    .into_iter()
                    .filter(|s| s.parse::<u64>().map_or(true, |s| s < v))
                    .find_map(|s| {
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
    let name = match m.shift_remove(tag) {
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
    let raw: Raw = typed_section(tree, "", source)?;
    let task_names: Vec<&str> = tasks::TASKS.iter().map(|k| k.name).collect();
    let (task, data) = untag(raw.data, "data", "task", None, &task_names)?;
    let task = tasks::task_kind(&task)?;
    let arch_names: Vec<&str> = models::KINDS.iter().map(|k| k.arch).collect();
    // Configs from before the tag were transformers.
    let (arch, model) = untag(raw.model, "model", "arch", Some("transformer"), &arch_names)?;
    let arch = models::kind(&arch)?;
    Ok(ExperimentConfig {
        seed: raw.seed,
        data: Section {
            kind: task.name,
            tag: "task",
            fields: (task.normalize)(data, source)?,
        },
        model: Section {
            kind: arch.arch,
            tag: "arch",
            fields: (arch.normalize)(model, source)?,
        },
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
    use crate::engine::activation::ActFn;
    use crate::models::superposition::SuperpositionConfig;
    use crate::models::transformer::{InitScheme, TransformerConfig};
    use crate::tasks::digits::DigitsTask;
    use crate::tasks::modular::{ModularTask, Op};

    /// A config's resolved parts as their own types.
    trait Parts {
        fn part<T: Clone + 'static>(&self, task: bool) -> Result<T>;
        fn modular(&self) -> Result<ModularTask> {
            self.part(true)
        }
        fn digits(&self) -> Result<DigitsTask> {
            self.part(true)
        }
        fn transformer(&self) -> Result<TransformerConfig> {
            self.part(false)
        }
        fn superposition(&self) -> Result<SuperpositionConfig> {
            self.part(false)
        }
    }

    impl Parts for ExperimentConfig {
        fn part<T: Clone + 'static>(&self, task: bool) -> Result<T> {
            let e = self.resolve()?;
            let any = if task {
                e.task.as_any()
            } else {
                e.model.as_any()
            };
            any.downcast_ref::<T>()
                .cloned()
                .ok_or_else(|| Error::config("data.task", "another kind"))
        }
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
        let s = crate::train::schedule::Schedule::of(&c);
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
        let budget = 8_000_000_000; // bytes: a laptop's, or a CI machine's
        for preset in PRESETS.iter().map(|p| p.name) {
            let cfg = resolve(preset, &[]).unwrap();
            let tree = serde_json::to_value(&cfg).unwrap();
            let mut keys = Vec::new();
            leaf_paths(&tree, "", &mut keys);
            keys.retain(|k| {
                (k.starts_with("model.") || k.starts_with("data.") || k == "train.batch_size")
                    && lookup(&tree, k).is_some_and(|v| v.is_u64())
                    && !k.ends_with("seed")
            });
            // A fixed training set is the most a step takes: any batch fits.
            if !cfg.resolve().unwrap().task.fresh_samples() {
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
            let c = exp
                .model
                .downcast::<TransformerConfig>()
                .expect("a transformer");
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
