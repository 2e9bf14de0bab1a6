//! The layout of a run directory, in one place: where each file lives, how metric rows are written
//! and read back, which checkpoints exist, and the run's config and summary.
//!
//! ```text
//! RUN/config.yaml                          the resolved config
//! RUN/metrics.csv, metrics.jsonl           one row per evaluation
//! RUN/events.out.tfevents.*                the same for TensorBoard
//! RUN/checkpoints/step_NNNNNN.safetensors  weights (and .optim.safetensors: optimizer state)
//! RUN/final.safetensors, summary.json      the end of the run
//! RUN/loss.png, digit_loss.png, ...        pictures of the metrics (drawn by `report`)
//! RUN/analysis/                            what `toylens analyze` writes (never the files above)
//! RUN/report.html                          what `toylens report` writes
//! ```

use crate::config::{self, ExperimentConfig};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A run's own data (arrays handed to `toylens.train` from Python), inside its directory.
pub const DATA: &str = "data";
pub const CONFIG: &str = "config.yaml";
pub const METRICS_CSV: &str = "metrics.csv";
pub const METRICS_JSONL: &str = "metrics.jsonl";
pub const SUMMARY: &str = "summary.json";
pub const FINAL: &str = "final.safetensors";
/// Held (flock) by the sweep worker or Slurm task training the run.
pub const SWEEP_LOCK: &str = "sweep.lock";
/// A local sweep worker's output.
pub const SWEEP_LOG: &str = "sweep.log";

/// Files a sweep's executor keeps in a run directory before and while the run trains: its lock, its
/// log, Slurm's `slurm-%A_%a.out`.
pub fn executor_file(name: &str) -> bool {
    name == SWEEP_LOCK
        || name == SWEEP_LOG
        || (name.starts_with("slurm-") && name.ends_with(".out"))
}

/// What may be in a run directory before training starts, and stays when a run starts again: a
/// ticket's mask, pruning rounds and norm-control initialisation, a run's own data, and the
/// executor's files.
pub fn placed_before_training(name: &str) -> bool {
    ["mask.safetensors", "rounds", "init.safetensors", DATA].contains(&name) || executor_file(name)
}

/// The folder `toylens analyze` writes into.
pub const ANALYSIS: &str = "analysis";

/// Checkpoint file of step `s`.
pub fn checkpoint_path(dir: &Path, step: u64) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("step_{step:06}.safetensors"))
}

/// Optimizer state saved beside the checkpoint of step `s`.
pub fn optim_path(dir: &Path, step: u64) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("step_{step:06}.optim.safetensors"))
}

/// Steps that have both a checkpoint and its optimizer state, oldest first.
pub fn checkpoint_steps(dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let s = name
                .strip_prefix("step_")?
                .strip_suffix(".optim.safetensors")?
                .parse()
                .ok()?;
            checkpoint_path(dir, s).exists().then_some(s)
        })
        .collect();
    steps.sort_unstable();
    steps
}

/// The config a run directory was started with, validated.
pub fn run_config(dir: &Path) -> Result<ExperimentConfig> {
    let p = dir.join(CONFIG);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let cfg = config::from_yaml(&text, &p.display().to_string())?;
    cfg.validate()?;
    Ok(cfg)
}

/// `runs/<name>-<yyyymmdd>-<hhmmss>` (UTC now).
pub fn default_dir(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    PathBuf::from("runs").join(format!(
        "{name}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    ))
}

/// One evaluation after `step` updates: the task's values (losses and accuracies on the whole train
/// and test sets, per digit or per instance where the task has them), then `lr`, `sum_sq_weights`
/// and `wall_time`, by column name.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    pub step: u64,
    pub values: Vec<(String, f64)>,
}

/// `(step, λ̂ mean, λ̂ std)` of each checkpoint in the run's `analysis/llc.csv` (what `toylens llc
/// RUN` writes; `#` lines are notes); None where there is none.
pub fn read_llc(run_dir: &Path) -> Result<Option<Vec<(u64, f64, f64)>>> {
    let p = run_dir.join(ANALYSIS).join("llc.csv");
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(None);
    };
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.starts_with("step,") {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let bad = || Error::format(&p, format!("line {}: not an llc.csv row", i + 1));
        let num =
            |k: usize| -> Result<f64> { f.get(k).and_then(|v| v.parse().ok()).ok_or_else(bad) };
        let step = f.first().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        rows.push((step, num(1)?, num(2)?));
    }
    Ok(Some(rows))
}

/// One checkpoint's row of `analysis/dynamics.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicsRow {
    pub step: u64,
    /// Its scores on the kept principal components.
    pub scores: Vec<f64>,
    pub turn: bool,
}

/// The run's `analysis/dynamics.csv` (what `toylens dynamics RUN` writes): its note (the set and
/// the rule) and its rows; None where there is none.
pub fn read_dynamics(run_dir: &Path) -> Result<Option<(String, Vec<DynamicsRow>)>> {
    let p = run_dir.join(ANALYSIS).join("dynamics.csv");
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(None);
    };
    let mut note = String::new();
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(n) = line.strip_prefix("# ") {
            note = n.to_string();
            continue;
        }
        if line.starts_with("step,") {
            continue;
        }
        let bad = || Error::format(&p, format!("line {}: not a dynamics.csv row", i + 1));
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 5 {
            return Err(bad());
        }
        let scores = f[1..f.len() - 2]
            .iter()
            .map(|v| v.parse::<f64>().map_err(|_| bad()))
            .collect::<Result<Vec<_>>>()?;
        rows.push(DynamicsRow {
            step: f[0].parse().map_err(|_| bad())?,
            scores,
            turn: f[f.len() - 1] == "1",
        });
    }
    Ok(Some((note, rows)))
}

/// `(step, value)` of the metric `name` over `rows`, where it was recorded.
pub fn column_points(rows: &[MetricRow], name: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| Some((r.step as f64, r.get(name)?)))
        .collect()
}

impl MetricRow {
    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// The `metrics.csv` line.
    pub fn csv(&self) -> String {
        let mut line = self.step.to_string();
        for (k, v) in &self.values {
            line.push(',');
            line += &if k == "wall_time" {
                format!("{v:.3}")
            } else if k.contains("_acc") || k.ends_with("_exact") {
                format!("{v}")
            } else {
                format!("{v:e}")
            };
        }
        line
    }

    /// The `metrics.jsonl` line: one JSON object, keys in column order (shortest round-trip floats).
    pub fn json(&self) -> String {
        let mut out = format!("{{\"step\":{}", self.step);
        for (k, v) in &self.values {
            let num = serde_json::Number::from_f64(*v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null);
            out += &format!(",{}:{}", serde_json::Value::String(k.clone()), num);
        }
        out.push('}');
        out
    }

    /// A row from one line of `metrics.jsonl`; floats are read back exactly (null is NaN).
    pub fn parse(line: &str) -> std::result::Result<MetricRow, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let obj = v.as_object().ok_or("not a JSON object")?;
        let step = obj
            .get("step")
            .and_then(|s| s.as_u64())
            .ok_or("no integer `step`")?;
        // serde_json's Map is sorted; the column order is recovered from the line itself.
        let mut keys: Vec<(usize, &String)> = obj
            .keys()
            .filter(|k| *k != "step")
            .map(|k| (line.find(&format!("\"{k}\":")).unwrap_or(usize::MAX), k))
            .collect();
        keys.sort();
        let mut values = Vec::with_capacity(keys.len());
        for (_, k) in keys {
            let x = match &obj[k] {
                serde_json::Value::Null => f64::NAN,
                n => n.as_f64().ok_or_else(|| format!("`{k}` is not a number"))?,
            };
            values.push((k.clone(), x));
        }
        Ok(MetricRow { step, values })
    }
}

/// The lines of `metrics.jsonl` with their rows. A last line without its newline is the remains of
/// a write cut short by a kill, and is left out; any other line that is not a metric row, or steps
/// that do not increase, are an error naming the file and line.
pub fn read_metric_lines(dir: &Path) -> Result<Vec<(String, MetricRow)>> {
    let path = dir.join(METRICS_JSONL);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i + 1],
        None => "",
    };
    let mut out: Vec<(String, MetricRow)> = Vec::new();
    for (i, line) in complete.lines().enumerate() {
        let row = MetricRow::parse(line).map_err(|e| {
            Error::format(
                &path,
                format!("line {} is not a metric row ({e}); the run's history is unreadable, so nothing was changed", i + 1),
            )
        })?;
        if let Some((_, prev)) = out.last() {
            if row.step <= prev.step {
                return Err(Error::format(
                    &path,
                    format!(
                        "line {} has step {} after step {}; the run's history is inconsistent, so nothing was changed",
                        i + 1,
                        row.step,
                        prev.step
                    ),
                ));
            }
        }
        out.push((line.to_string(), row));
    }
    Ok(out)
}

/// Every metric row of a run.
pub fn read_metrics(dir: &Path) -> Result<Vec<MetricRow>> {
    let rows: Vec<MetricRow> = read_metric_lines(dir)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    if rows.is_empty() {
        return Err(Error::format(dir.join(METRICS_JSONL), "no metric rows"));
    }
    Ok(rows)
}

/// What `summary.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub final_train_loss: f64,
    pub final_test_loss: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_train_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_test_acc: Option<f64>,
    /// Digits task: the fraction of test sums right in every digit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_test_exact: Option<f64>,
    pub steps: u64,
    pub wall_seconds: f64,
    pub steps_per_second: f64,
    /// First evaluated step with test accuracy ≥ 0.99 (tasks with an accuracy).
    #[serde(default)]
    pub grok_step: Option<u64>,
    /// Digits task: per digit of the sum, most significant first, the first evaluated step whose
    /// test loss on that digit is below `digit_transition_loss` (null if it never was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digit_transition_steps: Option<Vec<Option<u64>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digit_transition_loss: Option<f64>,
    pub stopped_early: bool,
    /// Seconds spent measuring each of `train.monitors`, by the process that finished the run (a
    /// resumed run's count starts at its resume): what the monitors cost.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub monitor_seconds: BTreeMap<String, f64>,
}

/// A run's `summary.json`, if it has one.
pub fn read_summary(dir: &Path) -> Result<Option<Summary>> {
    let p = dir.join(SUMMARY);
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(&p, format!("not a run summary: {e}")))
}

/// A digit's transition step is the first evaluation at which its test loss is below half the
/// chance level, ln 10 / 2 ≈ 1.15 nats: the middle of each digit's sharp drop. (A low threshold such
/// as 0.1 would time the slower clean-up that follows instead, which ends at similar steps for all
/// digits.)
pub const DIGIT_TRANSITION_LOSS: f64 = std::f64::consts::LN_10 / 2.0;

/// Per digit (columns `test_loss_d{k}`, most significant first), the first step its loss < threshold.
pub fn digit_transitions(rows: &[MetricRow], threshold: f64) -> Vec<(usize, Option<u64>)> {
    let Some(first) = rows.first() else {
        return Vec::new();
    };
    first
        .values
        .iter()
        .filter_map(|(k, _)| {
            k.strip_prefix("test_loss_d")?
                .parse::<usize>()
                .ok()
                .map(|p| (k, p))
        })
        .map(|(k, place)| {
            let step = rows
                .iter()
                .find(|r| r.get(k).is_some_and(|v| v < threshold))
                .map(|r| r.step);
            (place, step)
        })
        .collect()
}

/// The newest checkpoint of a run (its final weights when the run finished).
pub fn last_checkpoint(run_dir: &Path) -> Result<PathBuf> {
    let fin = run_dir.join(FINAL);
    if fin.exists() {
        return Ok(fin);
    }
    checkpoint_steps(run_dir)
        .last()
        .map(|&s| checkpoint_path(run_dir, s))
        .ok_or_else(|| {
            Error::Input(format!(
                "{}: no checkpoints in {}",
                run_dir.display(),
                run_dir.join("checkpoints").display()
            ))
        })
}

/// A run directory opened once: its experiment, resolved, and its checkpoints. Every analysis over
/// a run's checkpoints goes through [`Run::map_checkpoints`].
pub struct Run {
    pub dir: PathBuf,
    pub experiment: config::Experiment,
    /// Steps with a checkpoint, in order (at least one).
    pub steps: Vec<u64>,
}

impl Run {
    /// The run in `dir`: an error when it has no config that resolves or no checkpoint.
    pub fn open(dir: &Path) -> Result<Run> {
        let experiment = run_config(dir)?.resolve()?;
        let steps = checkpoint_steps(dir);
        if steps.is_empty() {
            return Err(Error::Input(format!(
                "{}: no checkpoints in {}",
                dir.display(),
                dir.join("checkpoints").display()
            )));
        }
        Ok(Run {
            dir: dir.to_path_buf(),
            experiment,
            steps,
        })
    }

    /// The run with only the checkpoints of `steps` (all of them when `steps` is empty); a step
    /// without a checkpoint is an error that lists the ones there are.
    pub fn only_steps(mut self, steps: &[u64]) -> Result<Run> {
        if steps.is_empty() {
            return Ok(self);
        }
        if let Some(s) = steps.iter().find(|s| !self.steps.contains(s)) {
            return Err(Error::Input(format!(
                "{}: no checkpoint at step {s}; the run has {:?}",
                self.dir.display(),
                self.steps
            )));
        }
        self.steps.retain(|s| steps.contains(s));
        Ok(self)
    }

    /// The checkpoint of `step`.
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        checkpoint_path(&self.dir, step)
    }

    /// The newest checkpoint's step.
    pub fn last_step(&self) -> u64 {
        *self.steps.last().expect("open checked: at least one")
    }

    /// `f(step, checkpoint)` for every checkpoint, in parallel (checkpoints are independent), the
    /// results in step order.
    pub fn map_checkpoints<T: Send>(
        &self,
        f: impl Fn(u64, &Path) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        use rayon::prelude::*;
        self.steps
            .par_iter()
            .map(|&s| f(s, &self.checkpoint(s)))
            .collect()
    }
}
