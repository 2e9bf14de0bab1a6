//! Loss-spike forensics of a run: where a metric column spikes (the rule is the run's
//! `train.spikes`, or one given), and for each spike, from the optimizer trace, which tensors'
//! gradient and update norms rose first and by how much, whether Adam's ε regime was involved,
//! and which loss columns (digits, sub-tasks, instances, monitors) carried the extra loss.
//!
//! Rules, stated once:
//! - A point of the series is spiking when it exceeds `ratio` × the median of the `window` points
//!   before it (it needs `window` points before it); consecutive spiking points are one spike.
//! - A spike's baseline is the median of the `window` points before its first spiking point; its
//!   onset lies after the last point before it (the previous evaluation, `before`).
//! - A tensor's baseline is the median of its traced norm over the steps the baseline's points
//!   span; it rose at the first traced step after `before` (up to the spike's peak) where its norm
//!   exceeds both `ratio` × that baseline and the largest value it took over those steps (with fresh
//!   batches every step, per-step norms are noisy: a rise must leave their usual range). Tensors are
//!   listed by that step, then by their rise.
//! - The ε regime was involved when one of the first three tensors to rise had at least
//!   [`EPS_INVOLVED`] of its entries with √v̂ < ε over the baseline steps, and at its gradient's
//!   peak half of them or more had left it: entries whose updates ε had been damping took the rising
//!   gradient. (Entries that have never had a gradient, such as unused positions or pruned weights,
//!   have √v̂ = 0 and do not count: the trace leaves them out of its ε share.)
//! - The loss columns are every other column whose name holds `loss`, ranked by their rise from
//!   their baseline to their largest value within the spike.

use crate::config::SpikeRule;
use crate::error::{Error, Result};
use crate::io::{run, trace};
use serde::Serialize;
use std::path::Path;

/// See the module's rules.
pub const EPS_INVOLVED: f64 = 0.05;
/// Loss columns listed per spike.
pub const TOP_COLUMNS: usize = 8;

/// One series: a metric column, or the trace's per-step loss.
#[derive(Clone, Debug)]
pub struct Series {
    pub column: String,
    pub steps: Vec<u64>,
    pub values: Vec<f64>,
}

/// The spikes of a series: (first spiking index, peak index, last spiking index, baseline).
pub fn find(values: &[f64], rule: &SpikeRule) -> Vec<(usize, usize, usize, f64)> {
    let w = rule.window;
    let mut out: Vec<(usize, usize, usize, f64)> = Vec::new();
    let mut open: Option<(usize, usize, f64)> = None;
    for i in w..values.len() {
        let base = median(&values[i - w..i]);
        let spiking = values[i].is_finite() && base.is_finite() && values[i] > rule.ratio * base;
        match (&mut open, spiking) {
            (None, true) => open = Some((i, i, base)),
            (Some((_, peak, _)), true) => {
                if values[i] > values[*peak] {
                    *peak = i;
                }
            }
            (Some((start, peak, base0)), false) => {
                out.push((*start, *peak, i - 1, *base0));
                open = None;
            }
            (None, false) => {}
        }
    }
    if let Some((start, peak, base)) = open {
        out.push((start, peak, values.len() - 1, base));
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// How one tensor's gradient and update norms moved into a spike.
#[derive(Clone, Debug, Serialize)]
pub struct TensorRise {
    pub tensor: String,
    pub grad_baseline: f64,
    /// The largest gradient norm over the baseline steps.
    pub grad_baseline_max: f64,
    pub grad_peak: f64,
    /// The first traced step where the gradient norm exceeded ratio × its baseline.
    pub grad_rise_step: Option<u64>,
    pub update_baseline: f64,
    pub update_peak: f64,
    pub update_rise_step: Option<u64>,
    /// Mean share of entries with √v̂ < ε over the baseline steps, and its value at the gradient's
    /// peak.
    pub eps_share_before: f64,
    pub eps_share_at_peak: f64,
    /// The largest |Δw|/|w| within the spike.
    pub max_update_ratio: f64,
}

/// How one loss column moved in a spike.
#[derive(Clone, Debug, Serialize)]
pub struct ColumnRise {
    pub column: String,
    pub baseline: f64,
    pub peak: f64,
    pub rise: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Spike {
    /// The series' last point before the spike: the onset lies after it.
    pub before: u64,
    pub start: u64,
    pub peak: u64,
    pub end: u64,
    /// The steps its pictures span: the baseline's points before it, as many after it.
    pub window_from: u64,
    pub window_to: u64,
    pub baseline: f64,
    pub peak_value: f64,
    /// peak_value / baseline.
    pub ratio: f64,
    /// By rise step, earliest first (empty without a trace of these steps).
    pub tensors: Vec<TensorRise>,
    pub eps_regime: Option<bool>,
    pub columns: Vec<ColumnRise>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpikeReport {
    pub rule: SpikeRuleOut,
    pub points: usize,
    pub traced: bool,
    pub spikes: Vec<Spike>,
}

/// The rule as reported.
#[derive(Clone, Debug, Serialize)]
pub struct SpikeRuleOut {
    pub column: String,
    pub ratio: f64,
    pub window: usize,
    pub statement: String,
}

impl SpikeRuleOut {
    fn of(r: &SpikeRule) -> Self {
        SpikeRuleOut {
            column: r.column.clone(),
            ratio: r.ratio,
            window: r.window,
            statement: format!(
                "a point of `{}` spikes when it exceeds {} × the median of the {} points before it; consecutive spiking points are one spike",
                r.column, r.ratio, r.window
            ),
        }
    }
}

/// Everything a spike's pictures draw: the run's rows and trace.
pub struct RunSeries {
    pub rows: Vec<run::MetricRow>,
    pub trace: Option<trace::Trace>,
}

impl RunSeries {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(RunSeries {
            rows: run::read_metrics(dir)?,
            trace: trace::read(dir)?,
        })
    }

    /// The series of `column` (a metric column, or `trace.loss`).
    pub fn series(&self, column: &str) -> Result<Series> {
        if column == "trace.loss" {
            let t = self.trace.as_ref().ok_or_else(|| {
                Error::Input("trace.loss: this run has no trace (train.trace_every was 0)".into())
            })?;
            return Ok(Series {
                column: column.into(),
                steps: t.steps.clone(),
                values: t.loss.clone(),
            });
        }
        let columns: Vec<&str> = self
            .rows
            .first()
            .map(|r| r.values.iter().map(|(k, _)| k.as_str()).collect())
            .unwrap_or_default();
        if !columns.contains(&column) {
            let near = crate::error::closest(column, columns.iter().copied(), 1);
            return Err(Error::Input(format!(
                "`{column}` is not a column of this run{}; it has {} and trace.loss",
                near.first()
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default(),
                columns.join(", ")
            )));
        }
        Ok(Series {
            column: column.into(),
            steps: self.rows.iter().map(|r| r.step).collect(),
            values: self
                .rows
                .iter()
                .map(|r| r.get(column).unwrap_or(f64::NAN))
                .collect(),
        })
    }
}

/// The spikes of run `dir` by `rule` (None: the run's own `train.spikes`), with their forensics.
pub fn forensics(dir: &Path, rule: Option<&SpikeRule>) -> Result<(SpikeReport, RunSeries)> {
    let rule = match rule {
        Some(r) => r.clone(),
        None => run::run_config(dir)?.train.spikes,
    };
    rule.check("spikes")?;
    let data = RunSeries::open(dir)?;
    let series = data.series(&rule.column)?;
    let spikes = find(&series.values, &rule)
        .into_iter()
        .map(|(s, p, e, base)| {
            let before = series.steps[s - 1];
            let base_from = series.steps[s - rule.window];
            let mut spike = Spike {
                before,
                start: series.steps[s],
                peak: series.steps[p],
                end: series.steps[e],
                window_from: base_from,
                window_to: series.steps[(e + rule.window).min(series.steps.len() - 1)],
                baseline: base,
                peak_value: series.values[p],
                ratio: series.values[p] / base,
                tensors: Vec::new(),
                eps_regime: None,
                columns: Vec::new(),
            };
            if let Some(t) = &data.trace {
                spike.tensors = tensor_rises(t, &rule, base_from, before, spike.peak);
                if !spike.tensors.is_empty() {
                    spike.eps_regime = Some(spike.tensors.iter().take(3).any(|r| {
                        r.grad_rise_step.is_some()
                            && r.eps_share_before >= EPS_INVOLVED
                            && r.eps_share_at_peak <= r.eps_share_before / 2.0
                    }));
                }
            }
            spike.columns = column_rises(&data.rows, &rule.column, base_from, before, spike.end);
            spike
        })
        .collect();
    Ok((
        SpikeReport {
            rule: SpikeRuleOut::of(&rule),
            points: series.values.len(),
            traced: data.trace.is_some(),
            spikes,
        },
        data,
    ))
}

fn tensor_rises(
    t: &trace::Trace,
    rule: &SpikeRule,
    from: u64,
    before: u64,
    peak: u64,
) -> Vec<TensorRise> {
    let base_idx: Vec<usize> = (0..t.steps.len())
        .filter(|&i| t.steps[i] >= from && t.steps[i] <= before)
        .collect();
    let scan: Vec<usize> = (0..t.steps.len())
        .filter(|&i| t.steps[i] > before && t.steps[i] <= peak)
        .collect();
    if base_idx.is_empty() || scan.is_empty() {
        return Vec::new();
    }
    let (grad, update, eps, ratio) = (
        t.field("grad_norm").expect("field"),
        t.field("update_norm").expect("field"),
        t.field("eps_share").expect("field"),
        t.field("max_update_ratio").expect("field"),
    );
    let mut out: Vec<TensorRise> = Vec::new();
    for (k, name) in t.info.tensors.iter().enumerate() {
        let col = |a: &ndarray::Array2<f32>, idx: &[usize]| -> Vec<f64> {
            idx.iter().map(|&i| f64::from(a[[i, k]])).collect()
        };
        let g_base = median(&col(grad, &base_idx));
        if g_base.is_nan() || g_base <= 0.0 {
            continue; // a frozen tensor, or one without gradient
        }
        let u_base = median(&col(update, &base_idx));
        let g = col(grad, &scan);
        let u = col(update, &scan);
        let max_of = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let g_max = max_of(&col(grad, &base_idx));
        let u_max = max_of(&col(update, &base_idx));
        let rise = |v: &[f64], base: f64, max: f64| {
            v.iter()
                .position(|&x| x > rule.ratio * base && x > max)
                .map(|j| t.steps[scan[j]])
        };
        let g_peak_j = (0..g.len()).fold(0, |b, j| if g[j] > g[b] { j } else { b });
        let eps_before = col(eps, &base_idx).iter().sum::<f64>() / base_idx.len() as f64;
        out.push(TensorRise {
            tensor: name.clone(),
            grad_baseline: g_base,
            grad_baseline_max: g_max,
            grad_peak: g[g_peak_j],
            grad_rise_step: rise(&g, g_base, g_max),
            update_baseline: u_base,
            update_peak: u.iter().copied().fold(0.0, f64::max),
            update_rise_step: rise(&u, u_base, u_max),
            eps_share_before: eps_before,
            eps_share_at_peak: f64::from(eps[[scan[g_peak_j], k]]),
            max_update_ratio: col(ratio, &scan).into_iter().fold(0.0, f64::max),
        });
    }
    out.sort_by(|a, b| {
        let key = |r: &TensorRise| r.grad_rise_step.or(r.update_rise_step).unwrap_or(u64::MAX);
        key(a)
            .cmp(&key(b))
            .then((b.grad_peak / b.grad_baseline).total_cmp(&(a.grad_peak / a.grad_baseline)))
    });
    out
}

fn column_rises(
    rows: &[run::MetricRow],
    spiking: &str,
    from: u64,
    before: u64,
    end: u64,
) -> Vec<ColumnRise> {
    let Some(first) = rows.first() else {
        return Vec::new();
    };
    let mut out: Vec<ColumnRise> = first
        .values
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("loss") && k.as_str() != spiking)
        .filter_map(|k| {
            let at = |lo: u64, hi: u64| -> Vec<f64> {
                rows.iter()
                    .filter(|r| r.step >= lo && r.step <= hi)
                    .filter_map(|r| r.get(k))
                    .filter(|x| x.is_finite())
                    .collect()
            };
            let baseline = median(&at(from, before));
            let peak = at(before + 1, end).into_iter().fold(f64::NAN, f64::max);
            (baseline.is_finite() && peak.is_finite()).then(|| ColumnRise {
                column: k.clone(),
                baseline,
                peak,
                rise: peak - baseline,
            })
        })
        .collect();
    out.sort_by(|a, b| b.rise.total_cmp(&a.rise));
    out.truncate(TOP_COLUMNS);
    out
}

/// The report as text, a few lines per spike.
pub fn describe(r: &SpikeReport) -> String {
    let mut s = format!("{}.\n", r.rule.statement);
    if r.spikes.is_empty() {
        s += &format!("No spike in {} points of `{}`.\n", r.points, r.rule.column);
        return s;
    }
    for (i, sp) in r.spikes.iter().enumerate() {
        s += &format!(
            "\nspike {}: steps {}–{} (after {}), peak {:.3e} at step {} = {:.1}× the baseline {:.3e}\n",
            i + 1,
            sp.start,
            sp.end,
            sp.before,
            sp.peak_value,
            sp.peak,
            sp.ratio,
            sp.baseline
        );
        if sp.tensors.is_empty() {
            s += "  no trace of these steps\n";
        } else if sp
            .tensors
            .iter()
            .all(|t| t.grad_rise_step.is_none() && t.update_rise_step.is_none())
        {
            s += "  no tensor's gradient or update norm left its baseline's range\n";
        }
        for t in sp
            .tensors
            .iter()
            .filter(|t| t.grad_rise_step.is_some() || t.update_rise_step.is_some())
            .take(5)
        {
            s += &format!(
                "  {:<24} grad ×{:.1} ({:.1}× its baseline's largest; from step {}), update ×{:.1} (from step {}), √v̂<ε {:.0}% before\n",
                t.tensor,
                t.grad_peak / t.grad_baseline,
                t.grad_peak / t.grad_baseline_max,
                t.grad_rise_step.map_or("—".into(), |x| x.to_string()),
                t.update_peak / t.update_baseline.max(f64::MIN_POSITIVE),
                t.update_rise_step.map_or("—".into(), |x| x.to_string()),
                100.0 * t.eps_share_before
            );
        }
        if let Some(e) = sp.eps_regime {
            s += &format!(
                "  Adam's ε regime: {}\n",
                if e {
                    "involved (a first riser had ≥5% of its entries with √v̂ < ε, and half of them left it)"
                } else {
                    "not involved"
                }
            );
        }
        if !sp.columns.is_empty() {
            s += "  loss rose most in: ";
            s += &sp
                .columns
                .iter()
                .take(4)
                .map(|c| format!("{} +{:.3e}", c.column, c.rise))
                .collect::<Vec<_>>()
                .join(", ");
            s.push('\n');
        }
    }
    s
}
