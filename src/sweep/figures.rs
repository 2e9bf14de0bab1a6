//! `sweep.png`: the summary metrics against the axes, seeds aggregated as mean ± standard deviation.
//! One swept axis: a panel per metric, the mean over seeds with error bars (log x when the values
//! span two decades or more). Two or more: a heat map per metric over the first two axes (numbers in
//! the cells), a row of heat maps per combination of the others.

use super::summary::{short, Table, TIMING};
use crate::error::Result;
use crate::report::plot::{render, sequential_blue, BLUE_};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

pub const SWEEP_PNG: &str = "sweep.png";

/// Whether an axis is a seed (aggregated over, not plotted against).
pub fn is_seed_axis(key: &str) -> bool {
    key == "seed" || key.ends_with(".seed")
}

/// Mean and standard deviation over the values present.
fn mean_std(v: &[f64]) -> Option<(f64, f64)> {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Some((m, var.sqrt()))
}

/// The plotted cells: for each combination of the plotted axes' values, per metric, mean ± std over
/// the runs that share it (the seeds).
pub struct Grid {
    /// Indices into the table's axes.
    pub axes: Vec<usize>,
    /// Each plotted axis's distinct values, in sweep order.
    pub levels: Vec<Vec<String>>,
    /// Indices into the table's metrics.
    pub metrics: Vec<usize>,
    /// Per combination (mixed radix over `levels`, last fastest), per metric.
    pub cells: Vec<Vec<Option<(f64, f64)>>>,
}

/// Metrics worth plotting: not timing or bookkeeping, present somewhere, not the same in every run.
fn plotted_metrics(t: &Table) -> Vec<usize> {
    (0..t.metrics.len())
        .filter(|&c| {
            let name = t.metrics[c].as_str();
            if TIMING.contains(&name) || name == "steps" || name == "stopped_early" {
                return false;
            }
            let vals: Vec<f64> = t.rows.iter().filter_map(|r| r.metrics[c]).collect();
            vals.iter()
                .any(|v| (v - vals[0]).abs() > 1e-12 * vals[0].abs().max(1e-30))
                || (!vals.is_empty() && vals.len() < t.rows.len())
        })
        .collect()
}

/// Whether `name` matches one of `patterns` (`*` at the end matches any rest); no patterns: all.
pub fn selected(name: &str, patterns: &[String]) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
}

/// The grid of the metrics matching `patterns` (see [`selected`]), of those worth plotting.
pub fn grid(t: &Table, patterns: &[String]) -> Grid {
    let axes: Vec<usize> = (0..t.axes.len())
        .filter(|&a| !is_seed_axis(&t.axes[a]))
        .collect();
    let levels: Vec<Vec<String>> = axes
        .iter()
        .map(|&a| {
            let mut l: Vec<String> = Vec::new();
            for r in &t.rows {
                if !l.contains(&r.values[a]) {
                    l.push(r.values[a].clone());
                }
            }
            l
        })
        .collect();
    let metrics: Vec<usize> = plotted_metrics(t)
        .into_iter()
        .filter(|&c| selected(&t.metrics[c], patterns))
        .collect();
    let n_cells: usize = levels.iter().map(|l| l.len()).product();
    let mut cells = Vec::with_capacity(n_cells);
    for cell in 0..n_cells {
        let mut rest = cell;
        let mut want = vec![0usize; axes.len()];
        for k in (0..axes.len()).rev() {
            want[k] = rest % levels[k].len();
            rest /= levels[k].len();
        }
        let members: Vec<&super::summary::Row> = t
            .rows
            .iter()
            .filter(|r| (0..axes.len()).all(|k| r.values[axes[k]] == levels[k][want[k]]))
            .collect();
        cells.push(
            metrics
                .iter()
                .map(|&c| {
                    let v: Vec<f64> = members.iter().filter_map(|r| r.metrics[c]).collect();
                    mean_std(&v)
                })
                .collect(),
        );
    }
    Grid {
        axes,
        levels,
        metrics,
        cells,
    }
}

/// Draw `DIR/sweep.png` of the metrics matching `patterns` (all worth plotting if none); None when there is nothing to plot against (no axis but seeds, or no
/// finished run).
pub fn draw(dir: &Path, t: &Table, patterns: &[String]) -> Result<Option<PathBuf>> {
    let g = grid(t, patterns);
    if g.axes.is_empty() || g.metrics.is_empty() {
        return Ok(None);
    }
    let path = dir.join(SWEEP_PNG);
    let seeds = t.axes.iter().any(|a| is_seed_axis(a));
    let note = if seeds {
        " (mean ± sd over seeds)"
    } else {
        ""
    };
    if g.axes.len() == 1 {
        let n = g.metrics.len();
        let cols = n.min(4);
        let rows = n.div_ceil(cols);
        let size = (340 * cols as u32, 60 + 280 * rows as u32);
        let title = format!("{}{note}", t.axes[g.axes[0]]);
        render(
            &path,
            size,
            |a| draw_lines(a, t, &g, &title, rows, cols),
            |a| draw_lines(a, t, &g, &title, rows, cols),
        )?;
    } else {
        let n_rows: usize = g.levels[2..].iter().map(|l| l.len()).product();
        let cols = g.metrics.len();
        let size = (300 * cols as u32, 60 + 300 * n_rows as u32);
        let title = format!(
            "x: {}, y: {}{}{note}",
            t.axes[g.axes[0]],
            t.axes[g.axes[1]],
            if g.axes.len() > 2 {
                ", rows: the other axes"
            } else {
                ""
            }
        );
        render(
            &path,
            size,
            |a| draw_heat(a, t, &g, &title, n_rows),
            |a| draw_heat(a, t, &g, &title, n_rows),
        )?;
    }
    Ok(Some(path))
}

/// x positions of an axis's levels: the numbers (log10 of them when they span ≥ 2 decades), or
/// 0, 1, 2, ... for text; and whether the axis is log.
fn x_positions(levels: &[String]) -> (Vec<f64>, bool) {
    let nums: Option<Vec<f64>> = levels.iter().map(|l| l.parse::<f64>().ok()).collect();
    match nums {
        Some(v) if v.iter().all(|x| x.is_finite()) => {
            let (lo, hi) = v
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
            if lo > 0.0 && hi / lo >= 100.0 {
                (v.iter().map(|x| x.log10()).collect(), true)
            } else {
                (v, false)
            }
        }
        _ => ((0..levels.len()).map(|i| i as f64).collect(), false),
    }
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    t: &Table,
    g: &Grid,
    title: &str,
    rows: usize,
    cols: usize,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    let (xs, log) = x_positions(&g.levels[0]);
    let text_axis = g.levels[0].iter().any(|l| l.parse::<f64>().is_err());
    let (x0, x1) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let pad = ((x1 - x0) * 0.08).max(0.5);
    let labels = g.levels[0].clone();
    for (k, area) in root.split_evenly((rows, cols)).into_iter().enumerate() {
        let Some(&m) = g.metrics.get(k) else { break };
        let pts: Vec<(f64, f64, f64)> = xs
            .iter()
            .zip(&g.cells)
            .filter_map(|(&x, c)| c[k].map(|(mu, sd)| (x, mu, sd)))
            .collect();
        let (lo, hi) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.1 - p.2), b.max(p.1 + p.2))
            });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let span = (hi - lo).max(1e-12 * hi.abs().max(1.0));
        let mut c = ChartBuilder::on(&area)
            .caption(&t.metrics[m], ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(x0 - pad..x1 + pad, lo - 0.08 * span..hi + 0.08 * span)
            .map_err(|e| e.to_string())?;
        let fmt = |v: &f64| {
            if text_axis {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            } else if log {
                short(10f64.powf(*v))
            } else {
                short(*v)
            }
        };
        c.configure_mesh()
            .label_style(("sans-serif", 11))
            .x_labels(if text_axis { labels.len() + 1 } else { 6 })
            .x_label_formatter(&fmt)
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(|e| e.to_string())?;
        c.draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.1)),
            BLUE_.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
        c.draw_series(
            pts.iter()
                .map(|p| Circle::new((p.0, p.1), 3, BLUE_.filled())),
        )
        .map_err(|e| e.to_string())?;
        c.draw_series(pts.iter().filter(|p| p.2 > 0.0).map(|p| {
            ErrorBar::new_vertical(
                p.0,
                p.1 - p.2,
                p.1,
                p.1 + p.2,
                BLACK.mix(0.7).stroke_width(1),
                6,
            )
        }))
        .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_heat<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    t: &Table,
    g: &Grid,
    title: &str,
    n_rows: usize,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    let (nx, ny) = (g.levels[0].len(), g.levels[1].len());
    let per_panel = nx * ny;
    let areas = root.split_evenly((n_rows, g.metrics.len()));
    for (i, area) in areas.into_iter().enumerate() {
        let (row, k) = (i / g.metrics.len(), i % g.metrics.len());
        // Which values of the further axes this row shows.
        let mut rest = row;
        let mut extra = Vec::new();
        for l in g.levels[2..].iter().rev() {
            extra.push(l[rest % l.len()].clone());
            rest /= l.len();
        }
        extra.reverse();
        let caption = if extra.is_empty() {
            t.metrics[g.metrics[k]].clone()
        } else {
            let named: Vec<String> = g.axes[2..]
                .iter()
                .zip(&extra)
                .map(|(&a, v)| format!("{}={v}", t.axes[a].rsplit('.').next().unwrap_or("")))
                .collect();
            format!("{} ({})", t.metrics[g.metrics[k]], named.join(", "))
        };
        let cells: Vec<Option<(f64, f64)>> = (0..per_panel)
            // Mixed radix, the last axis fastest: (x, y) outside, the further axes' row inside.
            .map(|c| g.cells[c * n_rows + row][k])
            .collect();
        let (lo, hi) = cells
            .iter()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), c| {
                (a.min(c.0), b.max(c.0))
            });
        let mut c = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 13))
            .margin(6)
            .x_label_area_size(28)
            .y_label_area_size(40)
            // A segmented 0..n-1 has n segments.
            .build_cartesian_2d((0..nx - 1).into_segmented(), (0..ny - 1).into_segmented())
            .map_err(|e| e.to_string())?;
        let (lx, ly) = (g.levels[0].clone(), g.levels[1].clone());
        c.configure_mesh()
            .disable_mesh()
            .x_labels(nx)
            .y_labels(ny)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < lx.len() => lx[*i].clone(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < ly.len() => ly[*i].clone(),
                _ => String::new(),
            })
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(|e| e.to_string())?;
        for (ci, cell) in cells.iter().enumerate() {
            let (x, y) = (ci / ny, ci % ny);
            let (color, text, dark) = match cell {
                Some((mu, _)) => {
                    let tt = if hi > lo { (mu - lo) / (hi - lo) } else { 0.5 };
                    (sequential_blue(0.15 + 0.85 * tt, 1.0), short(*mu), tt > 0.6)
                }
                None => (RGBColor(225, 225, 225), "-".to_string(), false),
            };
            c.draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                ],
                color.filled(),
            )))
            .map_err(|e| e.to_string())?;
            let style = TextStyle::from(("sans-serif", 12).into_font())
                .color(if dark { &WHITE } else { &BLACK })
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
            c.draw_series(std::iter::once(Text::new(
                text,
                (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                style,
            )))
            .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}
