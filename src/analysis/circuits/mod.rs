//! Circuit analysis of any transformer checkpoint, as TransformerLens does it and to its
//! definitions: the residual stream decomposed (`resid`), QK and OV circuits as factored matrices
//! with composition and copying scores (`factored`, `weights`), head detectors (`detect`),
//! activation patching over every component, path patching and attribution patching
//! (`patching`), and the weight processing that keeps the function (`process`).

pub mod detect;
pub mod factored;
pub mod patching;
pub mod process;
pub mod resid;
pub mod summary;
pub mod weights;

use crate::error::{closest, Error, Result};
use crate::hooks::ActivationCache;
use crate::models::transformer::Transformer;
use ndarray::ArrayViewD;
use std::collections::BTreeMap;

/// Activations by hook name: a cache from a run, or arrays lent by a caller (Python's dict).
pub trait Acts {
    fn act(&self, name: &str) -> Result<ArrayViewD<'_, f32>>;
}

impl Acts for ActivationCache {
    fn act(&self, name: &str) -> Result<ArrayViewD<'_, f32>> {
        self.get(name).map(|a| a.view())
    }
}

impl Acts for BTreeMap<String, ArrayViewD<'_, f32>> {
    fn act(&self, name: &str) -> Result<ArrayViewD<'_, f32>> {
        self.get(name)
            .map(|a| a.view())
            .ok_or_else(|| Error::UnknownHook {
                name: name.to_string(),
                suggestions: closest(name, self.keys().map(|s| s.as_str()), 3),
            })
    }
}

pub(crate) fn check_layer(model: &Transformer, layer: usize) -> Result<()> {
    let n = model.cfg.n_layers;
    if layer >= n {
        return Err(Error::Input(format!(
            "layer {layer} is out of range: the model has {n} layer{} (0..{})",
            if n == 1 { "" } else { "s" },
            n - 1
        )));
    }
    Ok(())
}

/// A layer index where n_layers itself (the end of the stream) is allowed.
pub(crate) fn check_layer_or_end(model: &Transformer, layer: usize) -> Result<()> {
    let n = model.cfg.n_layers;
    if layer > n {
        return Err(Error::Input(format!(
            "layer {layer} is out of range: the model has {n} layers (0..{n}, {n} meaning after the last)"
        )));
    }
    Ok(())
}

pub(crate) fn check_head(model: &Transformer, head: usize) -> Result<()> {
    let n = model.cfg.n_heads;
    if head >= n {
        return Err(Error::Input(format!(
            "head {head} is out of range: the model has {n} head{} per layer (0..{})",
            if n == 1 { "" } else { "s" },
            n - 1
        )));
    }
    Ok(())
}

/// One output token per example, each inside the output vocabulary.
pub(crate) fn check_answers(
    model: &Transformer,
    tokens: &[u32],
    batch: usize,
    what: &str,
) -> Result<()> {
    if tokens.len() != batch {
        return Err(Error::Input(format!(
            "{} {what}s given for a batch of {batch}",
            tokens.len()
        )));
    }
    let v = model.cfg.d_vocab_out();
    if let Some((i, t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= v) {
        return Err(Error::Input(format!(
            "{what} {t} (example {i}) is outside the output vocabulary (d_vocab_out = {v})"
        )));
    }
    Ok(())
}
