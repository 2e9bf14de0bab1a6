//! `toylens train` as a request: what the binary and the Python bindings both build, so that the
//! default preset, the run directory's name, the resume rules and the pictures after training are
//! decided once, here.

use crate::config::{self, ExperimentConfig};
use crate::error::{Error, Result};
use crate::io::run;
use crate::train::{Control, Progress, RunMode, Summary};
use std::path::PathBuf;

/// The preset trained when none is named.
pub const DEFAULT_PRESET: &str = "grokking";

/// Train a preset (or YAML config file) with overrides into a run directory, or continue one.
#[derive(Clone, Debug, Default)]
pub struct TrainRequest {
    /// A preset name or a YAML config file; None: [`DEFAULT_PRESET`] (or, resuming, the run's own).
    pub preset: Option<String>,
    /// `key.sub=value`; resuming, `train.*` only.
    pub overrides: Vec<String>,
    /// The run directory (default `runs/<preset>-<date>-<time>`).
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint.
    pub resume: Option<PathBuf>,
    /// Delete what `out` holds first.
    pub force: bool,
}

/// A planned run: its config, directory and mode.
pub struct TrainPlan {
    pub config: ExperimentConfig,
    pub dir: PathBuf,
    pub mode: RunMode,
}

impl TrainRequest {
    /// The config, directory and mode; nothing is written.
    pub fn plan(&self) -> Result<TrainPlan> {
        if let Some(dir) = &self.resume {
            if let Some(p) = &self.preset {
                return Err(Error::Input(format!(
                    "resume continues the run's own config; drop the preset `{p}`"
                )));
            }
            return Ok(TrainPlan {
                config: crate::train::resume_config(dir, &self.overrides)?,
                dir: dir.clone(),
                mode: RunMode::Resume,
            });
        }
        let name = self.preset.as_deref().unwrap_or(DEFAULT_PRESET);
        Ok(TrainPlan {
            config: config::resolve(name, &self.overrides)?,
            dir: self
                .out
                .clone()
                .unwrap_or_else(|| run::default_dir(&config::short_name(name))),
            mode: if self.force {
                RunMode::Force
            } else {
                RunMode::New
            },
        })
    }

    /// Train as planned, then draw the run's pictures; returns the directory and the summary.
    pub fn run(&self, progress: Progress, control: Control) -> Result<(PathBuf, Summary)> {
        let p = self.plan()?;
        tracing::info!("run directory {}", p.dir.display());
        let s = crate::train::train_with(&p.config, &p.dir, p.mode, progress, control)?;
        crate::report::pictures::run_pictures(&p.dir, false)?;
        Ok((p.dir, s))
    }
}
