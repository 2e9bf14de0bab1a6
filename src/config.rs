//! Experiment configuration: YAML presets embedded in the binary, Hydra-style `key.sub=value`
//! overrides, and validation that names the key.
//!
//! Resolution: preset YAML → typed config (errors name the key) → back to a tree with every field
//! present → overrides applied by dotted path (an unknown path is an error that suggests the nearest
//! valid one) → typed config again → range checks.

use crate::engine::activation::ActFn;
use crate::engine::adamw::AdamWConfig;
use crate::error::{closest, Error, Result};
use crate::models::transformer::{InitScheme, Normalization, TransformerConfig};
use crate::tasks::modular::{ModularTask, Op, Split};
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
];

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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Seed of the weights and, unless `data.seed` is set, of the data split.
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub train: TrainConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The task; `modular` for now.
    pub task: String,
    pub p: usize,
    pub op: Op,
    pub frac_train: f64,
    /// `random` (toylens' seeded shuffle) or `reference` (the original code's CPython shuffle).
    pub split: Split,
    /// Seed of the split; null means the top-level `seed`.
    pub seed: Option<u64>,
}

/// The transformer's shape; the vocabulary and context come from the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub d_head: usize,
    pub d_mlp: Option<usize>,
    pub act_fn: Option<ActFn>,
    pub normalization_type: Option<Normalization>,
    pub attn_only: bool,
    pub init: InitScheme,
    pub initializer_range: f64,
    pub attn_bias: bool,
    pub unembed_bias: bool,
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
    /// Examples per step; null means the full training set every step.
    pub batch_size: Option<usize>,
    /// Evaluate (train and test loss and accuracy) every this many steps.
    pub eval_every: u64,
    /// Save a checkpoint every this many steps...
    pub checkpoint_every: u64,
    /// ...plus this many log-spaced ones before the first regular one (early dynamics are fast).
    pub log_checkpoints: u32,
    /// Stop at the first evaluation whose test loss is below this; null never stops early.
    pub early_stop_test_loss: Option<f64>,
}

impl ExperimentConfig {
    /// The modular task this config trains on.
    pub fn task(&self) -> ModularTask {
        ModularTask {
            p: self.data.p,
            op: self.data.op,
            frac_train: self.data.frac_train,
            seed: self.data.seed.unwrap_or(self.seed),
            split: self.data.split,
        }
    }

    /// The transformer: inputs `a b =` (n_ctx 3), vocabulary p + 1, p + 1 outputs as in the original.
    pub fn transformer(&self) -> TransformerConfig {
        let m = &self.model;
        TransformerConfig {
            n_layers: m.n_layers,
            d_model: m.d_model,
            n_heads: m.n_heads,
            d_head: m.d_head,
            d_mlp: m.d_mlp,
            d_vocab: self.data.p + 1,
            d_vocab_out: (self.data.p + 1) as i64,
            n_ctx: 3,
            act_fn: m.act_fn,
            normalization_type: m.normalization_type,
            attn_only: m.attn_only,
            seed: Some(self.seed),
            eps: 1e-5,
            initializer_range: m.initializer_range,
            init: m.init,
            attn_bias: m.attn_bias,
            unembed_bias: m.unembed_bias,
        }
    }

    pub fn adamw(&self) -> AdamWConfig {
        let o = &self.optim;
        AdamWConfig {
            lr: o.lr,
            weight_decay: o.weight_decay,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
        }
    }

    /// Learning rate of update `t` (1-based), with the warm-up.
    pub fn lr_at(&self, t: u64) -> f64 {
        let w = self.optim.warmup_steps;
        if w == 0 {
            self.optim.lr
        } else {
            self.optim.lr * ((t - 1) as f64 / w as f64).min(1.0)
        }
    }

    /// Range checks; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.data.task != "modular" {
            return Err(Error::config(
                "data.task",
                format!("unknown task `{}`; tasks: modular", self.data.task),
            ));
        }
        self.task().validate("data.")?;
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
        if t.batch_size == Some(0) {
            return Err(Error::config(
                "train.batch_size",
                "must be at least 1, or null for the full batch",
            ));
        }
        if let Some(x) = t.early_stop_test_loss {
            if x.is_nan() || x <= 0.0 {
                return Err(Error::config(
                    "train.early_stop_test_loss",
                    format!("must be positive, or null (got {x})"),
                ));
            }
        }
        self.transformer().validate("model.")
    }
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

fn typed(tree: Value, source: &str) -> Result<ExperimentConfig> {
    serde_path_to_error::deserialize::<_, ExperimentConfig>(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        Error::config(
            if path == "." {
                source.to_string()
            } else {
                path
            },
            inner,
        )
    })
}

/// Parse YAML text (a preset or a saved `config.yaml`) into a config; `source` names it in errors.
pub fn from_yaml(yaml: &str, source: &str) -> Result<ExperimentConfig> {
    let tree: Value = serde_saphyr::from_str(yaml)
        .map_err(|e| Error::config(source, format!("not valid YAML: {e}")))?;
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
    let p = preset(preset_name)?;
    let base = from_yaml(p.yaml, &format!("preset {}", p.name))?;
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
    fn presets_parse_and_validate() {
        for p in PRESETS {
            let c = resolve(p.name, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert_eq!(from_yaml(&to_yaml(&c), "round trip").unwrap(), c);
        }
    }

    #[test]
    fn grokking_preset_is_nandas_configuration() {
        let c = resolve("grokking", &[]).unwrap();
        assert_eq!(
            (c.data.p, c.data.frac_train, c.data.op),
            (113, 0.3, Op::Add)
        );
        let m = c.transformer();
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
        assert_eq!(c.lr_at(1), 0.0);
        assert_eq!(c.lr_at(6), 5e-4);
        assert_eq!(c.lr_at(11), 1e-3);
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
                c.model.d_model,
                c.optim.weight_decay,
                c.data.frac_train,
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
}
