//! The report's section on watching training: the optimizer trace (each tensor's gradient norm and
//! update-to-weight ratio), the loss spikes by the run's rule with what rose first, and each
//! monitor's columns over training.

use super::html::{html_escape, layout, line, Figure};
use crate::analysis::spikes;
use crate::error::Result;
use crate::io::run::MetricRow;
use crate::io::trace;
use crate::train::monitors::MONITORS;
use serde_json::{json, Value};
use std::path::Path;

/// Points per line at most: longer traces are cut into this many buckets, each drawn at its
/// largest value (a spike survives the thinning).
const POINTS: usize = 1500;

fn bucket_max(steps: &[u64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let per = steps.len().div_ceil(POINTS).max(1);
    steps
        .chunks(per)
        .zip(v.chunks(per))
        .map(|(s, x)| {
            let j = (0..x.len()).fold(0, |b, j| if x[j] > x[b] { j } else { b });
            (s[j] as f64, x[j])
        })
        .unzip()
}

fn per_tensor(t: &trace::Trace, value: impl Fn(usize, usize) -> f64) -> Vec<Value> {
    let g = t.field("grad_norm").expect("a trace field");
    (0..t.info.tensors.len())
        .filter(|&k| g.column(k).iter().any(|&x| x > 0.0))
        .map(|k| {
            let v: Vec<f64> = (0..t.steps.len()).map(|i| value(i, k)).collect();
            let (x, y) = bucket_max(&t.steps, &v);
            line(&t.info.tensors[k], &x, &y)
        })
        .collect()
}

pub(crate) fn figures(run_dir: &Path, metrics: &[MetricRow]) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    if let Some(t) = trace::read(run_dir)? {
        let g = t.field("grad_norm").expect("a trace field");
        let (u, w) = (
            t.field("update_norm").expect("a trace field"),
            t.field("weight_norm").expect("a trace field"),
        );
        figs.push(Figure {
            id: "trace_grad".into(),
            title: "Each tensor's gradient norm",
            caption: format!("From the optimizer trace (every {} steps; thinned to the largest value of each stretch). A rise that one tensor leads is where a spike's forensics look first.", t.info.every),
            spec: json!({"data": per_tensor(&t, |i, k| f64::from(g[[i, k]])), "layout": layout("step", "‖g‖", true)}),
        });
        figs.push(Figure {
            id: "trace_ratio".into(),
            title: "Each tensor's update-to-weight ratio",
            caption: "‖Δw‖/‖w‖ of the update each step applied (weight decay included): how fast each tensor moves relative to its size.".into(),
            spec: json!({"data": per_tensor(&t, |i, k| f64::from(u[[i, k]]) / f64::from(w[[i, k]]).max(f64::MIN_POSITIVE)), "layout": layout("step", "‖Δw‖ / ‖w‖", true)}),
        });
    }
    let (report, data) = spikes::forensics(run_dir, None)?;
    let series = data.series(&report.rule.column)?;
    let (x, y) = bucket_max(&series.steps, &series.values);
    let peaks: Vec<(f64, f64)> = report
        .spikes
        .iter()
        .map(|s| (s.peak as f64, s.peak_value))
        .collect();
    let mut caption = format!("{}.", report.rule.statement);
    if report.spikes.is_empty() {
        caption += " No spike.";
    }
    for (i, s) in report.spikes.iter().enumerate().take(6) {
        caption += &format!(" Spike {} at step {} (×{:.1})", i + 1, s.peak, s.ratio);
        let rose: Vec<&str> = s
            .tensors
            .iter()
            .filter(|t| t.grad_rise_step.is_some())
            .take(3)
            .map(|t| t.tensor.as_str())
            .collect();
        if !rose.is_empty() {
            caption += &format!(": gradients rose first in {}", rose.join(", "));
        }
        if let Some(c) = s.columns.first() {
            caption += &format!("; the loss rose most in {}", c.column);
        }
        caption.push('.');
    }
    caption += " `toylens spikes RUN` draws each one's window.";
    figs.push(Figure {
        id: "spikes".into(),
        title: "Loss spikes",
        caption: html_escape(&caption),
        spec: json!({"data": [
            line(&report.rule.column, &x, &y),
            {"type": "scatter", "mode": "markers", "name": "spike", "marker": {"size": 10, "symbol": "x"},
             "x": peaks.iter().map(|p| p.0).collect::<Vec<_>>(), "y": peaks.iter().map(|p| p.1).collect::<Vec<_>>()}
        ], "layout": layout("step", &report.rule.column, true)}),
    });
    // Each monitor's columns.
    let columns: Vec<&str> = metrics
        .first()
        .map(|r| r.values.iter().map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();
    let steps: Vec<f64> = metrics.iter().map(|r| r.step as f64).collect();
    for m in MONITORS {
        let prefix = format!("{}_", m.name);
        let own: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|c| c.starts_with(&prefix))
            .collect();
        if own.is_empty() {
            continue;
        }
        let data: Vec<Value> = own
            .iter()
            .map(|c| {
                let y: Vec<f64> = metrics
                    .iter()
                    .map(|r| r.get(c).unwrap_or(f64::NAN))
                    .collect();
                line(&c[prefix.len()..], &steps, &y)
            })
            .collect();
        figs.push(Figure {
            id: format!("monitor-{}", m.name).into(),
            title: "A monitor over training",
            caption: html_escape(&format!(
                "The `{}` monitor at every evaluation: {}. Click a legend entry to hide it.",
                m.name, m.about
            )),
            spec: json!({"data": data, "layout": layout("step", m.name, false)}),
        });
    }
    Ok(figs)
}
