//! Monitors: analyses measured at every evaluation of a run and written as metric columns
//! (`train.monitors: [progress, attention]`). A monitor reads the model and its own evaluation set
//! and changes nothing, so a run trains to the same bits with or without monitors.
//!
//! `MONITORS` is the registry: a monitor is one file with its [`MonitorKind`] and one line here.

pub mod attention;
pub mod digits;
pub mod heads;
pub mod progress;

use crate::config::Experiment;
use crate::error::{closest, Error, Result};
use crate::models::transformer::{Transformer, TransformerConfig};
use crate::models::Model;

/// A monitor of one run: a fixed set of columns, measured on the model now.
pub trait Monitor: Send {
    /// Its metric columns, each prefixed with the monitor's name.
    fn columns(&self) -> Vec<String>;
    /// One value per column.
    fn measure(&mut self, model: &dyn Model) -> Result<Vec<f64>>;
}

/// A kind of monitor.
pub struct MonitorKind {
    pub name: &'static str,
    /// One line: what it measures.
    pub about: &'static str,
    /// The monitor of this experiment, or why it does not apply to it.
    pub build: fn(&Experiment) -> std::result::Result<Box<dyn Monitor>, String>,
}

/// Every monitor.
pub const MONITORS: &[MonitorKind] = &[progress::KIND, digits::KIND, attention::KIND, heads::KIND];

/// The monitors `train.monitors` names, built for `exp`: an unknown name (with the nearest known
/// one), a repeated one or one that does not apply is an error naming the key.
pub fn build(exp: &Experiment) -> Result<Vec<Box<dyn Monitor>>> {
    let names = &exp.config.train.monitors;
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let Some(kind) = MONITORS.iter().find(|k| k.name == name) else {
            let near = closest(name, MONITORS.iter().map(|k| k.name), 1);
            return Err(Error::config(
                "train.monitors",
                format!(
                    "unknown monitor `{name}`{}; the monitors are {}",
                    near.first()
                        .map(|n| format!(" (did you mean `{n}`?)"))
                        .unwrap_or_default(),
                    MONITORS
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if names[..i].contains(name) {
            return Err(Error::config(
                "train.monitors",
                format!("`{name}` is listed twice"),
            ));
        }
        let m = (kind.build)(exp).map_err(|why| {
            Error::config(
                "train.monitors",
                format!("monitor `{name}` does not apply to this run: {why}"),
            )
        })?;
        out.push(m);
    }
    Ok(out)
}

/// The transformer a monitor reads (every monitor so far reads transformers).
fn transformer(model: &dyn Model) -> Result<&Transformer> {
    model.downcast::<Transformer>("a transformer")
}

/// The transformer `exp` builds, or why a monitor needing one does not apply to it.
fn transformer_config(exp: &Experiment) -> std::result::Result<&TransformerConfig, String> {
    match exp.config.arch_name() {
        "transformer" => match exp.model.downcast::<TransformerConfig>() {
            Some(cfg) if cfg.vector_tokens => Err(
                "it reads token inputs, and this run's transformer reads vectors (vector_tokens)"
                    .into(),
            ),
            Some(cfg) => Ok(cfg),
            None => Err("the model plan is not a transformer's".into()),
        },
        other => Err(format!(
            "it reads a transformer, and this run's model.arch is `{other}`"
        )),
    }
}
