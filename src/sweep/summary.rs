//! One table for a sweep: a row per run with its axis values, its state and every scalar of its
//! `summary.json`, plus, for digit runs, each digit's transition step and final test loss.

use super::{load, run_dir, state, Multirun, SUMMARY_CSV};
use crate::error::Result;
use crate::io::checkpoint::write_atomic;
use crate::io::run;
use std::path::Path;

/// Summary scalars that differ between identical runs (left out of comparisons).
pub const TIMING: &[&str] = &["wall_seconds", "steps_per_second"];

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: usize,
    pub state: &'static str,
    /// Per axis, in the sweep's order.
    pub values: Vec<String>,
    /// Per metric column; None where the run has no value (not finished, or never, as a grok step).
    pub metrics: Vec<Option<f64>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub axes: Vec<String>,
    pub metrics: Vec<String>,
    pub rows: Vec<Row>,
}

/// A finished run's scalars, in a stable order.
fn run_metrics(rdir: &Path) -> Result<Vec<(String, Option<f64>)>> {
    let mut out = Vec::new();
    let Some(s) = run::read_summary(rdir)? else {
        return Ok(out);
    };
    let v = serde_json::to_value(&s).expect("summary json");
    for (k, x) in v.as_object().into_iter().flatten() {
        let num = match x {
            serde_json::Value::Number(n) => Some(n.as_f64()),
            serde_json::Value::Bool(b) => Some(Some(f64::from(u8::from(*b)))),
            serde_json::Value::Null if k == "grok_step" => Some(None),
            _ => None,
        };
        if let Some(n) = num {
            out.push((k.clone(), n));
        }
    }
    if s.digit_transition_steps.is_some() {
        let rows = run::read_metrics(rdir)?;
        for (place, step) in run::digit_transitions(&rows, run::DIGIT_TRANSITION_LOSS) {
            out.push((format!("transition_step_d{place}"), step.map(|s| s as f64)));
        }
        if let Some(last) = rows.last() {
            for (k, x) in &last.values {
                if k.starts_with("test_loss_d") || k.starts_with("test_acc_d") {
                    out.push((format!("final_{k}"), Some(*x)));
                }
            }
        }
    }
    Ok(out)
}

/// The table of the sweep in `dir`.
pub fn table(dir: &Path, m: &Multirun) -> Result<Table> {
    let mut metrics: Vec<String> = Vec::new();
    let mut per_run = Vec::new();
    for r in &m.runs {
        let rdir = run_dir(dir, r.id);
        let st = state(dir, r.id);
        let values = if st == super::RunState::Done {
            run_metrics(&rdir)?
        } else {
            Vec::new()
        };
        for (k, _) in &values {
            if !metrics.contains(k) {
                metrics.push(k.clone());
            }
        }
        per_run.push((r, st.label(), values));
    }
    // Timing last: the rest is what the runs computed.
    metrics.sort_by_key(|k| TIMING.contains(&k.as_str()));
    let axes: Vec<String> = m.axes.iter().map(|a| a.key.clone()).collect();
    let rows = per_run
        .into_iter()
        .map(|(r, st, values)| Row {
            id: r.id,
            state: st,
            values: axes
                .iter()
                .map(|k| m.value(r, k).unwrap_or_default())
                .collect(),
            metrics: metrics
                .iter()
                .map(|k| values.iter().find(|(n, _)| n == k).and_then(|(_, v)| *v))
                .collect(),
        })
        .collect();
    Ok(Table {
        axes,
        metrics,
        rows,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Table {
    pub fn csv(&self) -> String {
        let mut head = vec!["run".to_string()];
        head.extend(self.axes.iter().map(|a| csv_field(a)));
        head.push("state".into());
        head.extend(self.metrics.iter().cloned());
        let mut s = head.join(",") + "\n";
        for r in &self.rows {
            let mut f = vec![r.id.to_string()];
            f.extend(r.values.iter().map(|v| csv_field(v)));
            f.push(r.state.to_string());
            f.extend(
                r.metrics
                    .iter()
                    .map(|m| m.map(|x| format!("{x}")).unwrap_or_default()),
            );
            s += &(f.join(",") + "\n");
        }
        s
    }

    /// The column of `metric`.
    pub fn metric_index(&self, metric: &str) -> Option<usize> {
        self.metrics.iter().position(|m| m == metric)
    }

    /// A fixed-width text table of the axes and the chosen metrics (all when `metrics` is empty).
    pub fn text(&self, metrics: &[String]) -> String {
        let cols: Vec<usize> = if metrics.is_empty() {
            (0..self.metrics.len()).collect()
        } else {
            metrics
                .iter()
                .filter_map(|m| self.metric_index(m))
                .collect()
        };
        let mut grid: Vec<Vec<String>> = Vec::new();
        let mut head = vec!["run".to_string()];
        head.extend(self.axes.iter().cloned());
        head.push("state".into());
        head.extend(cols.iter().map(|&c| self.metrics[c].clone()));
        grid.push(head);
        for r in &self.rows {
            let mut line = vec![r.id.to_string()];
            line.extend(r.values.iter().cloned());
            line.push(r.state.to_string());
            line.extend(cols.iter().map(|&c| match r.metrics[c] {
                None => "-".to_string(),
                Some(x) => short(x),
            }));
            grid.push(line);
        }
        let widths: Vec<usize> = (0..grid[0].len())
            .map(|c| grid.iter().map(|l| l[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut s = String::new();
        for line in grid {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:>w$}"))
                .collect();
            s += cells.join("  ").trim_end();
            s += "\n";
        }
        s
    }
}

/// A number in a few characters: integers as they are, others to 3-4 significant digits.
pub fn short(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e7 {
        format!("{x:.0}")
    } else if x != 0.0 && (x.abs() < 1e-2 || x.abs() >= 1e5) {
        format!("{x:.2e}")
    } else {
        format!("{x:.3}")
    }
}

/// Write `DIR/summary.csv`; returns the table.
pub fn write(dir: &Path, m: &Multirun) -> Result<Table> {
    let t = table(dir, m)?;
    write_atomic(&dir.join(SUMMARY_CSV), t.csv().as_bytes())?;
    Ok(t)
}

/// Read the sweep in `dir` and write its summary.
pub fn write_for(dir: &Path) -> Result<Table> {
    let m = load(dir)?;
    write(dir, &m)
}
