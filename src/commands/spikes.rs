//! `toylens spikes RUN` as a request: the run's loss spikes by its `train.spikes` rule (or flags
//! that change it), their forensics, and each one's window drawn into `RUN/analysis/spikes/`.

use crate::analysis::spikes::{self, SpikeReport};
use crate::error::Result;
use crate::io::checkpoint::write_atomic;
use crate::io::run;
use crate::report::figures;
use std::path::PathBuf;

#[derive(Clone, Debug, Default)]
pub struct SpikesRequest {
    pub run: PathBuf,
    /// The rule's parts that differ from the run's `train.spikes`.
    pub column: Option<String>,
    pub ratio: Option<f64>,
    pub window: Option<usize>,
    /// Where the pictures and `spikes.json` go (default `RUN/analysis/spikes/`).
    pub out: Option<PathBuf>,
}

pub struct SpikesOutcome {
    pub report: SpikeReport,
    pub files: Vec<PathBuf>,
}

impl SpikesRequest {
    pub fn run(&self) -> Result<SpikesOutcome> {
        let mut rule = run::run_config(&self.run)?.train.spikes;
        if let Some(c) = &self.column {
            rule.column = c.clone();
        }
        if let Some(r) = self.ratio {
            rule.ratio = r;
        }
        if let Some(w) = self.window {
            rule.window = w;
        }
        rule.check_named(|k| format!("--{k}"))?;
        let (report, data) = spikes::forensics(&self.run, Some(&rule))?;
        let dir = self
            .out
            .clone()
            .unwrap_or_else(|| self.run.join(run::ANALYSIS).join("spikes"));
        remove_old_windows(&dir)?;
        let mut files = figures::spikes(&report, &data, &dir)?;
        let json = dir.join("spikes.json");
        let text = serde_json::to_string_pretty(&report).expect("a spike report serialises");
        write_atomic(&json, text.as_bytes())?;
        files.push(json);
        Ok(SpikesOutcome { report, files })
    }
}

/// An earlier call's `spike_N.png`/`.svg` in `dir`: a rule that finds fewer spikes must not leave
/// windows of spikes it did not find.
fn remove_old_windows(dir: &std::path::Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let stem = name
            .strip_suffix(".png")
            .or_else(|| name.strip_suffix(".svg"))
            .and_then(|n| n.strip_prefix("spike_"));
        if stem.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            std::fs::remove_file(e.path()).map_err(|err| crate::error::Error::io(e.path(), err))?;
        }
    }
    Ok(())
}
