//! The pictures of a training run, drawn from its metrics: `loss` (train and test), `digit_loss`
//! (digits: each digit's test loss) and `superposition` (from `final.safetensors`).

use super::plot::{self, Series};
use crate::config::Experiment;
use crate::error::Result;
use crate::io::checkpoint;
use crate::io::run::{self, MetricRow};
use crate::models::superposition::Superposition;
use crate::tasks::digits::DigitsTask;
use crate::tasks::superposition::SuperpositionTask;
use std::path::{Path, PathBuf};

/// The run's pictures from its metrics: `loss` (train and test), `digit_loss` (digits: each digit's
/// test loss) and `superposition` (from `final.safetensors`); PNG, or SVG when `svg`.
pub fn draw(exp: &Experiment, rows: &[MetricRow], dir: &Path, svg: bool) -> Result<Vec<PathBuf>> {
    let ext = if svg { "svg" } else { "png" };
    let mut out = Vec::new();
    let pts = |k: &str| run::column_points(rows, k);
    let (train_pts, test_pts) = (pts("train_loss"), pts("test_loss"));
    let title = format!("{}: loss", exp.task.describe());
    let path = dir.join(format!("loss.{ext}"));
    plot::log_y_lines(
        &path,
        &title,
        "step",
        "loss",
        &[
            Series {
                name: "train",
                points: &train_pts,
                color: plot::BLUE_,
            },
            Series {
                name: "test",
                points: &test_pts,
                color: plot::ORANGE_,
            },
        ],
    )?;
    out.push(path);
    if let Some(d) = exp.task.downcast::<DigitsTask>() {
        let digits = run::digit_transitions(rows, run::DIGIT_TRANSITION_LOSS);
        let names: Vec<String> = digits.iter().map(|(k, _)| format!("10^{k}")).collect();
        let lines: Vec<Vec<(f64, f64)>> = digits
            .iter()
            .map(|(k, _)| pts(&format!("test_loss_d{k}")))
            .collect();
        let series = plot::palette_series(
            names
                .iter()
                .map(String::as_str)
                .zip(lines.iter().map(Vec::as_slice)),
        );
        let path = dir.join(format!("digit_loss.{ext}"));
        plot::log_y_lines(
            &path,
            &format!(
                "{}-digit addition{}: test loss of each digit of the sum",
                d.n_digits,
                if d.reverse_sum { " (sum reversed)" } else { "" }
            ),
            "step",
            "loss",
            &series,
        )?;
        out.push(path);
    }
    if exp.task.downcast::<SuperpositionTask>().is_some() {
        let final_path = dir.join(run::FINAL);
        if final_path.exists() {
            let ck = checkpoint::load(&final_path)?;
            let m = ck
                .model
                .downcast::<Superposition>("a superposition model")?;
            let path = dir.join(format!("superposition.{ext}"));
            super::figures::superposition(m, &path)?;
            out.push(path);
        }
    }
    Ok(out)
}

/// Draw a run's pictures from its `metrics.jsonl` (and final checkpoint); returns their paths.
pub fn run_pictures(dir: &Path, svg: bool) -> Result<Vec<PathBuf>> {
    let exp = run::run_config(dir)?.resolve()?;
    let rows = run::read_metrics(dir)?;
    draw(&exp, &rows, dir, svg)
}
