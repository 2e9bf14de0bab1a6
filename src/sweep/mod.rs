//! Sweeps: many runs of one preset from one command, as Hydra's multirun lays them out.
//!
//! `DIR/multirun.yaml` holds the preset, the fixed overrides, the axes and the list of runs with their
//! overrides; `DIR/N/` is an ordinary run directory for run N. Whoever executes a run (the local
//! runner's worker processes or a Slurm array task) calls [`task::run_task`], which holds
//! `DIR/N/sweep.lock` while it trains, skips a finished run, resumes an interrupted one from its last
//! checkpoint and records a failure in `DIR/N/error.txt`. The directory is the whole state: a sweep
//! started by one executor can be finished by the other.

pub mod figures;
pub mod grammar;
pub mod local;
pub mod page;
pub mod slurm;
pub mod summary;
pub mod task;

use crate::config;
use crate::error::{Error, Result};
use crate::io::checkpoint::write_atomic;
use crate::io::run;
use grammar::{Arg, Axis};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MULTIRUN: &str = "multirun.yaml";
pub const SUMMARY_CSV: &str = "summary.csv";
pub use crate::io::run::{SWEEP_LOCK as LOCK, SWEEP_LOG as LOG};
/// A failed run's error message.
pub const ERROR: &str = "error.txt";
/// More runs than this need `--yes`.
pub const MAX_RUNS_UNASKED: usize = 1000;

/// What `multirun.yaml` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Multirun {
    pub preset: String,
    /// Overrides applied to every run.
    pub fixed: Vec<String>,
    /// The swept keys, in the order given; the last varies fastest.
    pub axes: Vec<Axis>,
    pub runs: Vec<RunSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub id: usize,
    /// The run's own values, `key=value` per axis.
    pub overrides: Vec<String>,
}

impl Multirun {
    /// Run `id`'s complete override list: the fixed ones, then its own.
    pub fn overrides(&self, run: &RunSpec) -> Vec<String> {
        self.fixed.iter().chain(&run.overrides).cloned().collect()
    }

    pub fn run(&self, id: usize) -> Result<&RunSpec> {
        self.runs.get(id).ok_or_else(|| {
            Error::Input(format!(
                "no run {id} in this sweep (it has runs 0 to {})",
                self.runs.len().saturating_sub(1)
            ))
        })
    }

    /// Run `id`'s value on axis `key`.
    pub fn value(&self, run: &RunSpec, key: &str) -> Option<String> {
        run.overrides
            .iter()
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    }

    /// The run's config: preset, fixed overrides, its values, range-checked.
    pub fn config(&self, run: &RunSpec) -> Result<config::ExperimentConfig> {
        config::resolve(&self.preset, &self.overrides(run))
    }

    fn same_sweep(&self, other: &Multirun) -> bool {
        self.preset == other.preset && self.fixed == other.fixed && self.axes == other.axes
    }
}

/// Plan a sweep from the command line's preset and arguments. Every axis value is typed against the
/// preset here, so an unknown key, a wrong-typed value, an empty axis or range and an oversized sweep
/// are errors before anything is written. Range checks that depend on the combination (n_heads that
/// do not divide d_model, say) are the run's own failure, recorded when it runs.
pub fn plan(preset: &str, args: &[String], yes: bool) -> Result<Multirun> {
    // A config file is recorded by its absolute path: workers and Slurm tasks start elsewhere.
    let preset = if config::is_config_file(preset) {
        let abs = std::fs::canonicalize(preset).map_err(|e| crate::error::Error::io(preset, e))?;
        abs.to_string_lossy().into_owned()
    } else {
        preset.to_string()
    };
    let preset = preset.as_str();
    let base = config::base_config(preset)?;
    let mut fixed = Vec::new();
    let mut axes: Vec<Axis> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for a in args {
        let parsed = grammar::parse_arg(a)?;
        let key = match &parsed {
            Arg::Fixed(o) => o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim(),
            Arg::Axis(ax) => ax.key.as_str(),
        }
        .to_string();
        if keys.contains(&key) {
            return Err(Error::config(key, "given twice"));
        }
        keys.push(key);
        match parsed {
            Arg::Fixed(o) => fixed.push(o),
            Arg::Axis(ax) => axes.push(ax),
        }
    }
    let with_fixed = config::apply_overrides(&base, &fixed)?;
    for ax in &axes {
        for v in &ax.values {
            config::apply_overrides(&with_fixed, &[format!("{}={v}", ax.key)]).map_err(|e| {
                Error::config(
                    ax.key.clone(),
                    format!("axis value `{v}`: {}", strip_key(&e, &ax.key)),
                )
            })?;
        }
    }
    let n = axes
        .iter()
        .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
        .unwrap_or(usize::MAX);
    if n > MAX_RUNS_UNASKED && !yes {
        return Err(Error::Input(format!(
            "this sweep has {n} runs, more than {MAX_RUNS_UNASKED}; pass --yes to start it anyway"
        )));
    }
    let mut runs = Vec::with_capacity(n);
    for id in 0..n {
        // Mixed radix, the last axis fastest (as Hydra's itertools.product).
        let mut rest = id;
        let mut overrides = vec![String::new(); axes.len()];
        for (k, ax) in axes.iter().enumerate().rev() {
            let len = ax.values.len();
            overrides[k] = format!("{}={}", ax.key, ax.values[rest % len]);
            rest /= len;
        }
        runs.push(RunSpec { id, overrides });
    }
    Ok(Multirun {
        preset: preset.to_string(),
        fixed,
        axes,
        runs,
    })
}

/// A config error's message without its "config key `k`:" prefix (the caller names the key).
fn strip_key(e: &Error, key: &str) -> String {
    match e {
        Error::Config { key: k, msg } if k == key => msg.clone(),
        other => other.to_string(),
    }
}

/// Write a planned sweep into `dir` (and a folder per run, where Slurm puts its logs). A directory
/// that holds the same sweep is reused as it is: its finished runs stay. One holding another sweep,
/// or anything else, is an error and nothing is written.
pub fn create(dir: &Path, m: &Multirun) -> Result<()> {
    let file = dir.join(MULTIRUN);
    if file.exists() {
        let old = load(dir)?;
        if !old.same_sweep(m) {
            return Err(Error::Input(format!(
                "{} holds another sweep (preset {}, {} runs); continue it with `toylens sweep --resume {}` or choose another --out",
                dir.display(),
                old.preset,
                old.runs.len(),
                dir.display()
            )));
        }
    } else if dir.is_dir()
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_some()
    {
        return Err(Error::Input(format!(
            "{}: the directory exists, is not empty and holds no {MULTIRUN}; choose another --out",
            dir.display()
        )));
    } else {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let yaml = serde_saphyr::to_string(m).expect("multirun to YAML");
        write_atomic(&file, yaml.as_bytes())?;
    }
    for r in &m.runs {
        let d = run_dir(dir, r.id);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    Ok(())
}

/// The sweep in `dir`.
pub fn load(dir: &Path) -> Result<Multirun> {
    let file = dir.join(MULTIRUN);
    let text = std::fs::read_to_string(&file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::format(dir, format!("not a sweep directory (no {MULTIRUN})"))
        }
        _ => Error::io(&file, e),
    })?;
    let m: Multirun = serde_saphyr::from_str(&text)
        .map_err(|e| Error::format(&file, format!("not a sweep file: {e}")))?;
    if m.runs.iter().enumerate().any(|(i, r)| r.id != i) {
        return Err(Error::format(
            &file,
            "runs must be numbered 0, 1, 2, ... in order",
        ));
    }
    Ok(m)
}

/// `multirun/<preset>-<8 hex digits of the sweep's arguments>`: the same command, the same folder.
pub fn default_dir(m: &Multirun) -> PathBuf {
    let key = serde_json::to_string(&(&m.preset, &m.fixed, &m.axes)).expect("sweep key json");
    PathBuf::from("multirun").join(format!(
        "{}-{:08x}",
        config::short_name(&m.preset),
        crc32c::crc32c(key.as_bytes())
    ))
}

/// Whether `dir` holds a sweep.
pub fn is_sweep(dir: &Path) -> bool {
    dir.join(MULTIRUN).is_file()
}

pub fn run_dir(dir: &Path, id: usize) -> PathBuf {
    dir.join(id.to_string())
}

/// Where a run stands.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    Done,
    /// A process holds its lock.
    Running,
    Failed(String),
    /// Started, not finished, nobody training it: the newest checkpoint's step.
    Interrupted(u64),
    Pending,
}

impl RunState {
    pub fn label(&self) -> &'static str {
        match self {
            RunState::Done => "done",
            RunState::Running => "running",
            RunState::Failed(_) => "failed",
            RunState::Interrupted(_) => "interrupted",
            RunState::Pending => "pending",
        }
    }
}

/// The state of run `id`, read from its directory.
pub fn state(dir: &Path, id: usize) -> RunState {
    let d = run_dir(dir, id);
    if task::lock_held(&d) {
        return RunState::Running;
    }
    if d.join(run::SUMMARY).is_file() {
        return RunState::Done;
    }
    if let Ok(msg) = std::fs::read_to_string(d.join(ERROR)) {
        return RunState::Failed(msg.trim().to_string());
    }
    match run::checkpoint_steps(&d).last() {
        Some(&s) => RunState::Interrupted(s),
        None => RunState::Pending,
    }
}

/// Every run's state, in order.
pub fn states(dir: &Path, m: &Multirun) -> Vec<RunState> {
    m.runs.iter().map(|r| state(dir, r.id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_product_varies_the_last_axis_fastest() {
        let m = plan(
            "grokking-tiny",
            &args(&[
                "optim.weight_decay=0,1",
                "seed=range(0,3)",
                "train.steps=10",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(m.fixed, ["train.steps=10"]);
        assert_eq!(m.runs.len(), 6);
        assert_eq!(m.runs[1].overrides, ["optim.weight_decay=0", "seed=1"]);
        assert_eq!(m.runs[3].overrides, ["optim.weight_decay=1", "seed=0"]);
        assert_eq!(m.value(&m.runs[5], "seed").as_deref(), Some("2"));
        let cfg = m.config(&m.runs[5]).unwrap();
        assert_eq!((cfg.seed, cfg.train.steps), (2, 10));
    }

    #[test]
    fn bad_sweeps_are_refused_before_anything_is_written() {
        for (a, want) in [
            (
                vec!["optim.weight_decai=0,1"],
                "did you mean `optim.weight_decay`",
            ),
            (vec!["model.d_model=8,x,16"], "axis value `x`"),
            (vec!["seed=1,,2"], "empty axis value"),
            (vec!["seed=range(0,3,0)"], "the step is 0"),
            (vec!["seed=range(3,3)"], "is empty"),
            (vec!["seed=0,1", "seed=2"], "given twice"),
            (
                vec!["seed=range(0,40)", "optim.lr=range(1,30)"],
                "pass --yes",
            ),
        ] {
            let e = plan("grokking-tiny", &args(&a), false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{a:?}: {e}");
        }
        assert!(plan(
            "grokking-tiny",
            &args(&["seed=range(0,40)", "optim.lr=range(1,30)"]),
            true
        )
        .is_ok());
        let e = plan("grokking-tin", &[], false).unwrap_err().to_string();
        assert!(e.contains("did you mean `grokking-tiny`"), "{e}");
    }

    #[test]
    fn a_directory_keeps_its_sweep() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let m = plan("grokking-tiny", &args(&["seed=0,1"]), false).unwrap();
        create(&dir, &m).unwrap();
        assert_eq!(load(&dir).unwrap(), m);
        assert!(run_dir(&dir, 1).is_dir());
        create(&dir, &m).unwrap();
        let other = plan("grokking-tiny", &args(&["seed=0,1,2"]), false).unwrap();
        let e = create(&dir, &other).unwrap_err().to_string();
        assert!(e.contains("holds another sweep"), "{e}");
        assert_eq!(load(&dir).unwrap(), m);
        let e = create(tmp.path(), &m).unwrap_err().to_string();
        assert!(e.contains("holds no multirun.yaml"), "{e}");
        assert_eq!(states(&dir, &m), [RunState::Pending, RunState::Pending]);
    }
}
