//! `toylens circuits` as a request: a transformer checkpoint (or a run's last one), the clean and
//! corrupted inputs its task gives (or the caller's), and the circuit summary with its pictures
//! and JSON in `RUN/analysis/circuits/` (or `--out`).

use crate::analysis::circuits::summary::{self, CircuitInputs, CircuitSummary};
use crate::error::{Error, Result};
use crate::io::checkpoint::write_atomic;
use crate::io::{load_any, run, Loaded};
use crate::report::figures;
use std::path::PathBuf;

/// Examples patched at once by default.
pub const DEFAULT_EXAMPLES: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct CircuitsRequest {
    /// A checkpoint, or a run directory (its last checkpoint).
    pub target: PathBuf,
    /// Where the pictures and `circuits.json` go (default: `RUN/analysis/circuits/` for a run,
    /// none for a lone checkpoint).
    pub out: Option<PathBuf>,
    /// How many clean examples (default [`DEFAULT_EXAMPLES`]).
    pub examples: Option<usize>,
    /// Seed of the corruption.
    pub seed: u64,
}

pub struct CircuitsReport {
    pub checkpoint: PathBuf,
    pub summary: CircuitSummary,
    pub files: Vec<PathBuf>,
}

impl CircuitsRequest {
    pub fn run(&self) -> Result<CircuitsReport> {
        let (checkpoint, default_out) = if self.target.is_dir() {
            let dir = self.target.join(run::ANALYSIS).join("circuits");
            (run::last_checkpoint(&self.target)?, Some(dir))
        } else {
            (self.target.clone(), None)
        };
        let loaded = load_any(&checkpoint)?;
        let model = loaded.transformer()?;
        let n = self.examples.unwrap_or(DEFAULT_EXAMPLES);
        if n == 0 {
            return Err(Error::Input("--examples: at least 1".into()));
        }
        let (inputs, fourier_p) = default_inputs(&loaded, n, self.seed)?;
        let summary = summary::summarize(model, &inputs)?;
        let mut files = Vec::new();
        if let Some(dir) = self.out.clone().or(default_out) {
            files = figures::circuits(&summary, fourier_p, &dir)?;
            let json = dir.join("circuits.json");
            let text = serde_json::to_string_pretty(&summary).expect("a summary serialises");
            write_atomic(&json, text.as_bytes())?;
            files.push(json);
        }
        Ok(CircuitsReport {
            checkpoint,
            summary,
            files,
        })
    }
}

/// The inputs a checkpoint's task gives (its recorded experiment, or an imported grokking
/// model's modular task).
pub fn default_inputs(l: &Loaded, n: usize, seed: u64) -> Result<(CircuitInputs, Option<usize>)> {
    if let Some(exp) = l.experiment()? {
        return summary::inputs_for(&exp, n, seed);
    }
    let m = l.modular()?;
    Ok((summary::modular_inputs(m.p, m.op, n, seed), Some(m.p)))
}

/// The text `toylens circuits` prints.
pub fn describe(r: &CircuitsReport) -> String {
    let s = &r.summary;
    let mut out = format!(
        "{}: {}\nlogit difference: clean {:.3}, corrupted {:.3}\n",
        r.checkpoint.display(),
        s.inputs,
        s.clean_logit_diff,
        s.corrupted_logit_diff
    );
    let mut dla: Vec<(&String, &f64)> = s.dla_labels.iter().zip(&s.dla).collect();
    dla.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    out += "direct logit attribution (largest):";
    for (l, v) in dla.iter().take(8) {
        out += &format!(" {l} {v:+.3}");
    }
    out += "\nlogit lens:";
    for (l, v) in s.logit_lens_labels.iter().zip(&s.logit_lens) {
        out += &format!(" {l} {v:.3}");
    }
    out += "\ncopying scores (raw → processed weights):";
    for (a, b) in s.copying.raw.iter().zip(&s.copying.processed) {
        out += &format!(" L{}H{} {:.2}→{:.2}", a.layer, a.head, a.score, b.score);
    }
    if let Some(d) = &s.detectors {
        for (name, g) in d {
            let best = g
                .iter()
                .enumerate()
                .flat_map(|(l, r)| r.iter().enumerate().map(move |(h, &v)| (l, h, v)))
                .max_by(|a, b| a.2.total_cmp(&b.2));
            if let Some((l, h, v)) = best {
                out += &format!("\n{name}: best L{l}H{h} {v:.2}");
            }
        }
    }
    out
}
