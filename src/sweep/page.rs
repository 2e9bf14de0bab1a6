//! `DIR/report.html` for a sweep: every run's loss curves overlaid and coloured by an axis (a menu
//! picks the axis and the curve), the summary metrics against the axes, and the summary table.

use super::figures::{self, is_seed_axis};
use super::summary::{self, short, Table};
use super::{load, run_dir, Multirun};
use crate::error::Result;
use crate::io::run::{self, MetricRow};
use crate::report::html::{html_escape, write_page, Figure, Page};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// matplotlib's tab10, as CSS colours.
const COLOURS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Write the sweep's page; returns its path.
pub fn write(dir: &Path) -> Result<PathBuf> {
    let m = load(dir)?;
    let t = summary::write(dir, &m)?;
    let mut figs = Vec::new();
    if let Some(f) = curves(dir, &m)? {
        figs.push(f);
    }
    if let Some(f) = against_axes(&t) {
        figs.push(f);
    }
    let axes: Vec<String> = m
        .axes
        .iter()
        .map(|a| format!("{} ∈ {{{}}}", a.key, a.values.join(", ")))
        .collect();
    let done = t.rows.iter().filter(|r| r.state == "done").count();
    let page = Page {
        heading: format!(
            "Sweep of {} ({done} of {} runs done)",
            m.preset,
            m.runs.len()
        ),
        cfg_line: format!(
            "preset {}; axes {}{}",
            m.preset,
            axes.join(", "),
            if m.fixed.is_empty() {
                String::new()
            } else {
                format!("; every run {}", m.fixed.join(" "))
            }
        ),
        figs,
        extra_html: table_html(&t),
    };
    write_page(dir, page)
}

/// The metric columns every run has, in the order worth showing.
fn curve_columns(rows: &[MetricRow]) -> Vec<String> {
    let mut cols = vec!["test_loss".to_string(), "train_loss".to_string()];
    if let Some(r) = rows.first() {
        cols.extend(
            r.values
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k.starts_with("test_loss_") || k == "test_acc"),
        );
    }
    cols
}

fn curves(dir: &Path, m: &Multirun) -> Result<Option<Figure>> {
    let mut runs = Vec::new();
    for r in &m.runs {
        let rdir = run_dir(dir, r.id);
        if rdir.join(run::METRICS_JSONL).is_file() {
            if let Ok(rows) = run::read_metrics(&rdir) {
                runs.push((r, rows));
            }
        }
    }
    let Some((_, first)) = runs.first() else {
        return Ok(None);
    };
    let cols = curve_columns(first);
    let get = |rows: &[MetricRow], k: &str| -> Vec<f64> {
        rows.iter().map(|x| x.get(k).unwrap_or(f64::NAN)).collect()
    };
    // Colour menus: one per axis that is not a seed (then seeds too, if that is all there is).
    let mut colour_axes: Vec<&str> = m
        .axes
        .iter()
        .map(|a| a.key.as_str())
        .filter(|k| !is_seed_axis(k))
        .collect();
    if colour_axes.is_empty() {
        colour_axes = m.axes.iter().map(|a| a.key.as_str()).collect();
    }
    let style_for = |key: Option<&str>| -> Value {
        let mut seen: Vec<String> = Vec::new();
        let (mut colour, mut name, mut group, mut show) = (vec![], vec![], vec![], vec![]);
        for (r, _) in &runs {
            let v = key
                .and_then(|k| m.value(r, k))
                .unwrap_or_else(|| format!("run {}", r.id));
            let first = !seen.contains(&v);
            if first {
                seen.push(v.clone());
            }
            let i = seen.iter().position(|s| *s == v).unwrap_or(0);
            colour.push(COLOURS[i % COLOURS.len()].to_string());
            let short_key = key.map(|k| k.rsplit('.').next().unwrap_or(k)).unwrap_or("");
            name.push(if key.is_some() {
                format!("{short_key}={v}")
            } else {
                v.clone()
            });
            group.push(v);
            show.push(first);
        }
        json!({"line.color": colour, "name": name, "legendgroup": group, "showlegend": show})
    };
    let initial = style_for(colour_axes.first().copied());
    let data: Vec<Value> = runs
        .iter()
        .enumerate()
        .map(|(i, (r, rows))| {
            let label = format!("run {}: {}", r.id, r.overrides.join(" "));
            json!({
                "type": "scatter", "mode": "lines",
                "x": rows.iter().map(|x| x.step as f64).collect::<Vec<_>>(),
                "y": get(rows, &cols[0]),
                "name": initial["name"][i], "legendgroup": initial["legendgroup"][i],
                "showlegend": initial["showlegend"][i],
                "line": {"color": initial["line.color"][i], "width": 1.5},
                "text": label,
                "hovertemplate": "%{text}<br>step %{x}<br>%{y:.4g}<extra></extra>"
            })
        })
        .collect();
    let colour_buttons: Vec<Value> = colour_axes
        .iter()
        .map(|k| json!({"label": format!("colour: {k}"), "method": "restyle", "args": [style_for(Some(k))]}))
        .collect();
    let metric_buttons: Vec<Value> = cols
        .iter()
        .map(|c| {
            let ys: Vec<Vec<f64>> = runs.iter().map(|(_, rows)| get(rows, c)).collect();
            let log = !c.contains("acc");
            json!({"label": c, "method": "update", "args": [{"y": ys}, {"yaxis.type": if log { "log" } else { "linear" }, "yaxis.title.text": c}]})
        })
        .collect();
    let layout = json!({
        "xaxis": {"title": {"text": "step"}},
        "yaxis": {"title": {"text": cols[0]}, "type": "log", "exponentformat": "e"},
        "margin": {"t": 40}, "hovermode": "closest",
        "updatemenus": [
            {"buttons": colour_buttons, "x": 0.0, "xanchor": "left", "y": 1.12},
            {"buttons": metric_buttons, "x": 0.45, "xanchor": "left", "y": 1.12}
        ]
    });
    Ok(Some(Figure {
        id: "sweep-curves".into(),
        title: "Every run's curves",
        caption: "Each line is one run, coloured by the value of the axis chosen in the first menu; the second menu picks the curve (the losses, per-digit losses, accuracy). Hover for the run's number and overrides.".into(),
        spec: json!({"data": data, "layout": layout}),
    }))
}

/// The summary metrics against the first swept axis: a line per combination of the other swept axes,
/// mean ± sd over seeds; a menu picks the metric.
fn against_axes(t: &Table) -> Option<Figure> {
    let g = figures::grid(t, &[]);
    if g.axes.is_empty() || g.metrics.is_empty() {
        return None;
    }
    let nx = g.levels[0].len();
    let n_lines = g.cells.len() / nx;
    let per_line = |line: usize, k: usize| -> (Vec<Option<f64>>, Vec<Option<f64>>) {
        (0..nx)
            .map(|x| {
                // Mixed radix with the first axis slowest: cell = x · n_lines + line.
                let c = g.cells[x * n_lines + line][k];
                (c.map(|c| c.0), c.map(|c| c.1))
            })
            .unzip()
    };
    let line_name = |line: usize| -> String {
        let mut rest = line;
        let mut parts = Vec::new();
        for (i, l) in g.levels.iter().enumerate().skip(1).rev() {
            parts.push(format!("{}={}", t.axes[g.axes[i]], l[rest % l.len()]));
            rest /= l.len();
        }
        parts.reverse();
        if parts.is_empty() {
            "mean".into()
        } else {
            parts.join(", ")
        }
    };
    let data: Vec<Value> = (0..n_lines)
        .map(|line| {
            let (y, e) = per_line(line, 0);
            json!({"type": "scatter", "mode": "lines+markers", "name": line_name(line),
                   "x": g.levels[0], "y": y, "error_y": {"type": "data", "array": e, "visible": true}})
        })
        .collect();
    let buttons: Vec<Value> = g
        .metrics
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let (ys, es): (Vec<_>, Vec<_>) = (0..n_lines).map(|l| per_line(l, k)).unzip();
            let es: Vec<Value> = es
                .into_iter()
                .map(|e| json!({"type": "data", "array": e, "visible": true}))
                .collect();
            json!({"label": t.metrics[c], "method": "update",
                   "args": [{"y": ys, "error_y": es}, {"yaxis.title.text": t.metrics[c]}]})
        })
        .collect();
    let layout = json!({
        "xaxis": {"title": {"text": t.axes[g.axes[0]]}, "type": "category"},
        "yaxis": {"title": {"text": t.metrics[g.metrics[0]]}},
        "margin": {"t": 40}, "legend": {"orientation": "h", "y": -0.3},
        "updatemenus": [{"buttons": buttons, "x": 0.0, "xanchor": "left", "y": 1.12}]
    });
    Some(Figure {
        id: "sweep-summary".into(),
        title: "Summary metrics against the axes",
        caption: "A summary metric (picked in the menu) against the first swept axis, a line per value of the other axes; with seeds, the mean and its standard deviation as error bars. The table below has every run.".into(),
        spec: json!({"data": data, "layout": layout}),
    })
}

fn table_html(t: &Table) -> String {
    let g = figures::grid(t, &[]);
    let mut cols: Vec<usize> = g.metrics.clone();
    if let Some(w) = t.metric_index("wall_seconds") {
        cols.push(w);
    }
    let mut s = String::from("<h2>Summary</h2>\n<div style=\"overflow-x: auto\"><table class=\"summary\"><tr><th>run</th>");
    for a in &t.axes {
        s += &format!("<th>{}</th>", html_escape(a));
    }
    s += "<th>state</th>";
    for &c in &cols {
        s += &format!("<th>{}</th>", html_escape(&t.metrics[c]));
    }
    s += "</tr>\n";
    for r in &t.rows {
        s += &format!("<tr><td>{}</td>", r.id);
        for v in &r.values {
            s += &format!("<td>{}</td>", html_escape(v));
        }
        s += &format!("<td>{}</td>", r.state);
        for &c in &cols {
            s += &format!("<td>{}</td>", r.metrics[c].map_or("-".into(), short));
        }
        s += "</tr>\n";
    }
    s + "</table></div>\n<p class=\"caption\">Every column of every run is in summary.csv beside this page.</p>\n"
}
