//! Line plots on a log-y axis (loss curves).

use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One named line.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
    pub color: RGBColor,
}

/// One series per (name, points), coloured from [`PALETTE`] in order.
pub fn palette_series<'a>(
    lines: impl IntoIterator<Item = (&'a str, &'a [(f64, f64)])>,
) -> Vec<Series<'a>> {
    lines
        .into_iter()
        .enumerate()
        .map(|(i, (name, points))| Series {
            name,
            points,
            color: PALETTE[i % PALETTE.len()],
        })
        .collect()
}

pub const BLUE_: RGBColor = RGBColor(31, 119, 180);
pub const ORANGE_: RGBColor = RGBColor(255, 127, 14);
pub const GREEN_: RGBColor = RGBColor(44, 160, 44);
/// Ten distinct line colours (matplotlib's tab10).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.1 > 0.0 && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 1e-3, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (y0, y1) = log_bounds(y0 / 2.0, y1 * 2.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&log_tick)
        .draw()
        .map_err(|e| e.to_string())?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points
                    .iter()
                    .copied()
                    .filter(|p| p.1 > 0.0 && p.1.is_finite()),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A log axis's range, widened down to the power of ten below its top: plotters puts a log axis's
/// ticks at powers of ten and their multiples, and a range with none inside (2 to 9) gets no tick.
fn log_bounds(lo: f64, hi: f64) -> (f64, f64) {
    (lo.min(libm::pow(10.0, libm::floor(libm::log10(hi)))), hi)
}

/// A log axis's tick: plain decimals between 0.01 and 1000 (a loss that spans less than a decade
/// gets ticks such as 2 and 3, which `1e0`-style labels would all round to one), powers of ten
/// beyond.
fn log_tick(v: &f64) -> String {
    let a = v.abs();
    if (0.01..1000.0).contains(&a) {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// Log-y line plot to `path` (PNG or SVG by extension), written atomically.
pub fn log_y_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    render(
        path,
        (900, 560),
        |a| draw(a, title, x_label, y_label, series),
        |a| draw(a, title, x_label, y_label, series),
    )
}

/// Log-y panels stacked over one x axis (each panel its own title, y label and lines).
pub fn log_panels(
    path: &Path,
    title: &str,
    x_label: &str,
    panels: &[(String, String, Vec<Series>)],
) -> Result<()> {
    fn stack<DB: DrawingBackend>(
        root: DrawingArea<DB, Shift>,
        title: &str,
        x_label: &str,
        panels: &[(String, String, Vec<Series>)],
    ) -> std::result::Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 24))
            .map_err(|e| e.to_string())?;
        for (area, (name, y, series)) in root
            .split_evenly((panels.len().max(1), 1))
            .into_iter()
            .zip(panels)
        {
            draw(area, name, x_label, y, series)?;
        }
        Ok(())
    }
    let size = (1000, 330 * panels.len().max(1) as u32 + 40);
    render(
        path,
        size,
        |a| stack(a, title, x_label, panels),
        |a| stack(a, title, x_label, panels),
    )
}

/// A shaded span of x (a training phase) with its label.
pub struct Band<'a> {
    pub from: f64,
    pub to: f64,
    pub label: &'a str,
    pub color: RGBColor,
}

/// Draw on a PNG or SVG file (by extension), atomically.
pub(crate) fn render(
    path: &Path,
    size: (u32, u32),
    f: impl Fn(DrawingArea<BitMapBackend, Shift>) -> std::result::Result<(), String>,
    g: impl Fn(DrawingArea<SVGBackend, Shift>) -> std::result::Result<(), String>,
) -> Result<()> {
    register_font();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("png")
        .to_ascii_lowercase();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}.{ext}",
        path.file_stem().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let res = match ext.as_str() {
        "svg" => g(SVGBackend::new(&tmp, size).into_drawing_area()),
        "png" => f(BitMapBackend::new(&tmp, size).into_drawing_area()),
        other => {
            return Err(Error::Input(format!(
                "{}: unsupported plot format `{other}` (png or svg)",
                path.display()
            )))
        }
    };
    res.map_err(|e| Error::format(path, format!("drawing failed: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The lower panel of [`progress_panels`]-style figures: its axis and, optionally, error bars
/// (x, y, ±e).
pub struct Lower<'a> {
    pub label: &'a str,
    pub range: (f64, f64),
    pub error_bars: &'a [(f64, f64, f64)],
}

fn draw_bands<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_max: f64,
    log_series: &[Series],
    lin_series: &[Series],
    bands: &[Band],
    lower: &Lower,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically((root.dim_in_pixel().1 as f64 * 0.6) as u32);
    // Losses on a log axis.
    let pos = log_series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0 && v.is_finite());
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in pos {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        (lo, hi) = (1e-3, 1.0);
    }
    let mut c = ChartBuilder::on(&top)
        .margin(10)
        .margin_right(30)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, {
            let (y0, y1) = log_bounds(lo / 2.0, hi * 2.0);
            (y0..y1).log_scale()
        })
        .map_err(|e| e.to_string())?;
    c.configure_mesh()
        .y_desc("loss")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&log_tick)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, b) in bands.iter().enumerate() {
        c.draw_series(std::iter::once(Rectangle::new(
            [(b.from, lo / 2.0), (b.to, hi * 2.0)],
            b.color.mix(0.15).filled(),
        )))
        .map_err(|e| e.to_string())?;
        // Staggered heights, so labels of narrow neighbouring bands do not overlap.
        let y = hi * 1.5 / 4f64.powi(i as i32 % 2);
        c.draw_series(std::iter::once(Text::new(
            b.label.to_string(),
            (b.from, y),
            ("sans-serif", 13),
        )))
        .map_err(|e| e.to_string())?;
    }
    for s in log_series {
        let color = s.color;
        c.draw_series(LineSeries::new(
            s.points.iter().copied().filter(|p| p.1 > 0.0),
            color.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label(s.name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    // The lower panel on a linear axis.
    let (y0, y1) = lower.range;
    let mut c = ChartBuilder::on(&bottom)
        .margin(10)
        .margin_right(30)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, y0..y1)
        .map_err(|e| e.to_string())?;
    c.configure_mesh()
        .x_desc("step")
        .y_desc(lower.label)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    for b in bands {
        c.draw_series(std::iter::once(Rectangle::new(
            [(b.from, y0), (b.to, y1)],
            b.color.mix(0.15).filled(),
        )))
        .map_err(|e| e.to_string())?;
    }
    c.draw_series(lower.error_bars.iter().map(|&(x, y, e)| {
        ErrorBar::new_vertical(x, y - e, y, y + e, BLACK.mix(0.7).stroke_width(1), 6)
    }))
    .map_err(|e| e.to_string())?;
    for s in lin_series {
        let color = s.color;
        c.draw_series(LineSeries::new(
            s.points.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label(s.name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Two panels over training steps, with shaded bands: log-scale losses on top, 0..1 quantities below.
pub fn progress_panels(
    path: &Path,
    title: &str,
    x_max: f64,
    log_series: &[Series],
    lin_series: &[Series],
    bands: &[Band],
) -> Result<()> {
    let lower = Lower {
        label: "",
        range: (0.0, 1.0),
        error_bars: &[],
    };
    render(
        path,
        (1000, 760),
        |a| draw_bands(a, title, x_max, log_series, lin_series, bands, &lower),
        |a| draw_bands(a, title, x_max, log_series, lin_series, bands, &lower),
    )
}

/// [`progress_panels`] with a lower panel of its own axis and error bars.
pub fn panels_with_errors(
    path: &Path,
    title: &str,
    x_max: f64,
    log_series: &[Series],
    lin_series: &[Series],
    bands: &[Band],
    lower: &Lower,
) -> Result<()> {
    render(
        path,
        (1000, 760),
        |a| draw_bands(a, title, x_max, log_series, lin_series, bands, lower),
        |a| draw_bands(a, title, x_max, log_series, lin_series, bands, lower),
    )
}

fn draw_bars<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    bars: &[(String, f64)],
    color: RGBColor,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let hi = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-12) * 1.08;
    let n = bars.len();
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n).into_segmented(), 0.0..hi)
        .map_err(|e| e.to_string())?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let every = n.div_ceil(30).max(1);
    c.configure_mesh()
        .disable_x_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_labels(n.min(30))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < labels.len() && i % every == 0 => labels[*i].clone(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    c.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let mut r = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), b.1),
            ],
            color.filled(),
        );
        r.set_margin(0, 0, 1, 1);
        r
    }))
    .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A bar chart of labelled values.
pub fn bars(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    bars: &[(String, f64)],
) -> Result<()> {
    render(
        path,
        (1000, 460),
        |a| draw_bars(a, title, x_label, y_label, bars, BLUE_),
        |a| draw_bars(a, title, x_label, y_label, bars, BLUE_),
    )
}

fn diverging(v: f64, max_abs: f64) -> RGBColor {
    let t = (v / max_abs.max(1e-30)).clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 {
        (255.0, 255.0 * (1.0 - t), 255.0 * (1.0 - t))
    } else {
        (255.0 * (1.0 + t), 255.0 * (1.0 + t), 255.0)
    };
    RGBColor(r as u8, g as u8, b as u8)
}

pub(crate) fn sequential_blue(v: f64, max: f64) -> RGBColor {
    let t = (v / max.max(1e-30)).clamp(0.0, 1.0);
    RGBColor(
        (255.0 - 247.0 * t) as u8,
        (255.0 - 207.0 * t) as u8,
        (255.0 - 148.0 * t) as u8,
    )
}

fn draw_heatmaps<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    panels: &[(String, Vec<Vec<f64>>)],
    x_label: &str,
    y_label: &str,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, (name, grid)) in areas.into_iter().zip(panels) {
        let rows = grid.len();
        let cols = grid.first().map_or(0, |r| r.len());
        let max_abs = grid.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
        // Non-negative data (attention weights, ReLU outputs) on a sequential scale, else diverging.
        let sequential = grid.iter().flatten().all(|&v| v >= 0.0);
        let mut c = ChartBuilder::on(&area)
            .caption(name, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0..cols, 0..rows)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .disable_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(|e| e.to_string())?;
        c.draw_series(grid.iter().enumerate().flat_map(|(y, row)| {
            row.iter().enumerate().map(move |(x, &v)| {
                let color = if sequential {
                    sequential_blue(v, max_abs)
                } else {
                    diverging(v, max_abs)
                };
                Rectangle::new([(x, y), (x + 1, y + 1)], color.filled())
            })
        }))
        .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Heat maps side by side (rows = y, columns = x), a diverging colour scale centred on 0 per panel.
pub fn heatmaps(
    path: &Path,
    title: &str,
    panels: &[(String, Vec<Vec<f64>>)],
    x_label: &str,
    y_label: &str,
) -> Result<()> {
    let w = (420 * panels.len().max(1)).max(720) as u32;
    render(
        path,
        (w, 470),
        |a| draw_heatmaps(a, title, panels, x_label, y_label),
        |a| draw_heatmaps(a, title, panels, x_label, y_label),
    )
}
