//! Pictures and pages: plots (PNG and SVG) drawn with `plotters` and an embedded font, so they look
//! the same on every machine, and the offline HTML report. Analysis returns data; this layer draws it.

pub mod circuits;
pub mod figures;
pub mod html;
pub mod induction;
pub mod pictures;
pub mod plot;
pub mod trajectory;
pub mod watching;
