//! Pictures of runs: plots (PNG and SVG) drawn with `plotters` and an embedded font, so they look the
//! same on every machine.

pub mod html;
pub mod plot;
