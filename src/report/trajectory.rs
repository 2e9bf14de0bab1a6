//! The essential-dynamics figure: a trajectory in pairs of principal components, coloured from
//! the first checkpoint to the last, its turns circled, and curves over steps below with the turns'
//! steps as dashed lines.

use super::plot::{render, Series};
use crate::error::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// One view of the trajectory: two components' scores at every checkpoint.
pub struct View {
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
}

/// One curve panel below the views: a title, a y label, lines over steps, log scale or not.
pub struct Curves<'a> {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series<'a>>,
    pub log: bool,
}

/// From early (light) to late (dark) along viridis's ends.
fn shade(i: usize, n: usize) -> RGBColor {
    let t = if n > 1 {
        i as f64 / (n - 1) as f64
    } else {
        0.0
    };
    let lerp = |a: u8, b: u8| (f64::from(a) + t * (f64::from(b) - f64::from(a))).round() as u8;
    RGBColor(lerp(253, 68), lerp(231, 1), lerp(37, 84))
}

fn span(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { (1e-3, 1.0) } else { (0.0, 1.0) };
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.08).max(1e-9);
        (lo - pad, hi + pad)
    }
}

fn view<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    v: &View,
    steps: &[u64],
    turns: &[usize],
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let (x0, x1) = span(v.points.iter().map(|p| p.0), false);
    let (y0, y1) = span(v.points.iter().map(|p| p.1), false);
    let mut c = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    let tick = |v: &f64| {
        let w = (x1 - x0).max(y1 - y0);
        if w >= 20.0 {
            format!("{v:.0}")
        } else if w >= 2.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2e}")
        }
    };
    c.configure_mesh()
        .x_desc(v.x_label.as_str())
        .y_desc(v.y_label.as_str())
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    let n = v.points.len();
    c.draw_series(
        v.points
            .windows(2)
            .enumerate()
            .map(|(i, w)| PathElement::new(vec![w[0], w[1]], shade(i, n).stroke_width(2))),
    )
    .map_err(|e| e.to_string())?;
    c.draw_series(
        v.points
            .iter()
            .enumerate()
            .map(|(i, &p)| Circle::new(p, 3, shade(i, n).filled())),
    )
    .map_err(|e| e.to_string())?;
    for &t in turns {
        let p = v.points[t];
        c.draw_series(std::iter::once(Circle::new(p, 8, RED.stroke_width(2))))
            .map_err(|e| e.to_string())?;
        c.draw_series(std::iter::once(Text::new(
            format!("{}", steps[t]),
            p,
            ("sans-serif", 13).into_font().color(&RED),
        )))
        .map_err(|e| e.to_string())?;
    }
    // The first and last checkpoints named.
    for i in [0, n - 1] {
        c.draw_series(std::iter::once(Text::new(
            format!("step {}", steps[i]),
            v.points[i],
            ("sans-serif", 12).into_font().color(&BLACK),
        )))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    cv: &Curves,
    x_max: f64,
    marks: &[f64],
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let area = area
        .titled(&cv.title, ("sans-serif", 16))
        .map_err(|e| e.to_string())?;
    let values = cv.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (y0, y1) = span(values, cv.log);
    macro_rules! draw_on {
        ($c:expr, $keep:expr) => {{
            let mut c = $c;
            c.configure_mesh()
                .x_desc("step")
                .y_desc(cv.y_label.as_str())
                .x_label_formatter(&|v| format!("{v:.0}"))
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(|e| e.to_string())?;
            for &m in marks {
                c.draw_series(DashedLineSeries::new(
                    vec![(m, y0), (m, y1)],
                    6,
                    4,
                    RED.mix(0.7).stroke_width(1),
                ))
                .map_err(|e| e.to_string())?;
            }
            for s in &cv.series {
                let color = s.color;
                c.draw_series(LineSeries::new(
                    s.points.iter().copied().filter($keep),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
            c.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    if cv.log {
        let c = ChartBuilder::on(&area)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, (y0..y1).log_scale())
            .map_err(|e| e.to_string())?;
        draw_on!(c, |p: &(f64, f64)| p.1 > 0.0 && p.1.is_finite());
    } else {
        let c = ChartBuilder::on(&area)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, y0..y1)
            .map_err(|e| e.to_string())?;
        draw_on!(c, |p: &(f64, f64)| p.1.is_finite());
    }
    Ok(())
}

/// The views side by side on top, each curve panel below, to `path` (PNG or SVG), atomically.
pub fn draw_dynamics(
    path: &Path,
    title: &str,
    (views, steps, turns): (&[View], &[u64], &[usize]),
    panels: &[Curves],
) -> Result<()> {
    fn all<DB: DrawingBackend>(
        root: DrawingArea<DB, Shift>,
        title: &str,
        (views, steps, turns): (&[View], &[u64], &[usize]),
        panels: &[Curves],
    ) -> std::result::Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 20))
            .map_err(|e| e.to_string())?;
        let (top, bottom) = root.split_vertically(400);
        for (area, v) in top.split_evenly((1, views.len().max(1))).iter().zip(views) {
            view(area, v, steps, turns)?;
        }
        let x_max = steps.last().copied().unwrap_or(1).max(1) as f64;
        let marks: Vec<f64> = turns.iter().map(|&t| steps[t] as f64).collect();
        for (area, cv) in bottom
            .split_evenly((panels.len().max(1), 1))
            .iter()
            .zip(panels)
        {
            curves(area, cv, x_max, &marks)?;
        }
        root.present().map_err(|e| e.to_string())
    }
    let size = (1200, 440 + 280 * panels.len() as u32);
    render(
        path,
        size,
        |a| all(a, title, (views, steps, turns), panels),
        |a| all(a, title, (views, steps, turns), panels),
    )
}
