//! Pruning masks over any model's parameters: which entries are live. Training keeps the dead ones
//! exactly zero (their gradients are zeroed, so AdamW's moments stay zero too and neither weight
//! decay nor momentum can revive them). Masks are made by magnitude or at random ([`prune`]).

use super::{Model, TensorSpec};
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use serde::Serialize;

/// Live entries of a model's flat parameter buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub live: Vec<bool>,
}

/// One tensor's live and total entries.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveCount {
    pub tensor: String,
    pub live: usize,
    pub total: usize,
}

impl Mask {
    /// Everything live.
    pub fn full(n: usize) -> Self {
        Mask {
            live: vec![true; n],
        }
    }

    /// A mask from 0/1 arrays by tensor name (tensors not named stay fully live). A name the model
    /// does not have, a shape that differs, or a value other than 0 and 1 is an error naming it.
    pub fn from_arrays(
        model: &dyn Model,
        arrays: &std::collections::HashMap<String, ndarray::ArrayD<f32>>,
    ) -> Result<Self> {
        let specs = model.tensors();
        let mut m = Mask::full(model.params().len());
        if let Some(name) = arrays.keys().find(|n| !specs.iter().any(|s| &s.name == *n)) {
            return Err(Error::Input(format!(
                "mask tensor `{name}`: the `{}` model has no parameter of that name",
                model.arch()
            )));
        }
        // In the model's parameter order, so the first problem named is always the same one.
        for s in &specs {
            let Some(a) = arrays.get(&s.name) else {
                continue;
            };
            let name = &s.name;
            if a.shape() != s.shape.as_slice() {
                return Err(Error::Input(format!(
                    "mask tensor `{name}` has shape {:?}, the parameter {:?}",
                    a.shape(),
                    s.shape
                )));
            }
            for (dst, &v) in m.live[s.range.clone()].iter_mut().zip(a.iter()) {
                *dst = match v {
                    1.0 => true,
                    0.0 => false,
                    other => {
                        return Err(Error::Input(format!(
                            "mask tensor `{name}` holds {other}: masks are 0 or 1"
                        )))
                    }
                };
            }
        }
        Ok(m)
    }

    /// Per tensor of `model`, as 0/1 arrays (every tensor, in the parameters' shapes).
    pub fn to_arrays(&self, model: &dyn Model) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        model
            .tensors()
            .into_iter()
            .map(|t| {
                let v = self.live[t.range.clone()]
                    .iter()
                    .map(|&l| f32::from(u8::from(l)))
                    .collect();
                (t.name, t.shape, v)
            })
            .collect()
    }

    /// Zero the dead entries of `values` (parameters or gradients).
    pub fn apply(&self, values: &mut [f32]) {
        for (v, &l) in values.iter_mut().zip(&self.live) {
            if !l {
                *v = 0.0;
            }
        }
    }

    pub fn counts(&self, specs: &[TensorSpec]) -> Vec<LiveCount> {
        specs
            .iter()
            .map(|s| LiveCount {
                tensor: s.name.clone(),
                live: self.live[s.range.clone()].iter().filter(|&&l| l).count(),
                total: s.range.len(),
            })
            .collect()
    }
}

/// How [`prune`] chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneMethod {
    /// The smallest |w|.
    Magnitude,
    /// Uniformly at random, with the per-tensor counts magnitude pruning gives (the control).
    Random,
}

/// Over which weights the threshold is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneScope {
    /// One threshold over all chosen tensors (as the Grokking Tickets code does).
    Global,
    /// The same fraction from each tensor.
    Layer,
}

/// The tensors pruned by default: every matrix (two or more axes) but the positional embedding, so
/// the embedding, attention and MLP matrices and the unembedding; no biases, LayerNorm parameters
/// or `pos_embed.W_pos`.
pub fn default_prunable(model: &dyn Model) -> Vec<String> {
    model
        .tensors()
        .into_iter()
        .filter(|t| t.shape.len() >= 2 && t.name != "pos_embed.W_pos" && t.trainable)
        .map(|t| t.name)
        .collect()
}

/// A mask removing the fraction `sparsity` ∈ [0, 1) of the entries of `tensors` (those of
/// [`default_prunable`] when empty); other tensors stay live. Magnitude: the ⌊S·N⌋ entries of
/// smallest |w| (globally, or ⌊S·N_t⌋ per tensor with `Layer`); equal magnitudes are removed in the
/// order of the flat parameter buffer (the tensor order, then row-major within each tensor).
/// Random: the same number from each tensor as magnitude pruning removes, drawn with `seed`.
pub fn prune(
    model: &dyn Model,
    sparsity: f64,
    scope: PruneScope,
    method: PruneMethod,
    tensors: &[String],
    seed: u64,
) -> Result<Mask> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(Error::Input(format!(
            "--sparsity is the fraction removed, in [0, 1) (got {sparsity})"
        )));
    }
    let specs = model.tensors();
    let names: Vec<String> = if tensors.is_empty() {
        default_prunable(model)
    } else {
        tensors.to_vec()
    };
    let mut chosen: Vec<&TensorSpec> = Vec::new();
    for n in &names {
        let s = specs.iter().find(|s| &s.name == n).ok_or_else(|| {
            let near = crate::error::closest(n, specs.iter().map(|s| s.name.as_str()), 3);
            Error::Input(format!(
                "--tensors: no parameter `{n}` in this `{}`{}",
                model.arch(),
                if near.is_empty() {
                    String::new()
                } else {
                    format!(" (did you mean {})", near.join(", "))
                }
            ))
        })?;
        chosen.push(s);
    }
    chosen.sort_by_key(|s| s.range.start);
    let w = model.params();
    let mut mask = Mask::full(w.len());
    // The magnitude choice, per tensor counts included.
    let remove_smallest = |idx: &mut Vec<usize>, k: usize, mask: &mut Mask| {
        idx.sort_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs()).then(a.cmp(&b)));
        for &i in &idx[..k] {
            mask.live[i] = false;
        }
    };
    match scope {
        PruneScope::Global => {
            let mut idx: Vec<usize> = chosen.iter().flat_map(|s| s.range.clone()).collect();
            let k = (sparsity * idx.len() as f64).floor() as usize;
            remove_smallest(&mut idx, k, &mut mask);
        }
        PruneScope::Layer => {
            for s in &chosen {
                let mut idx: Vec<usize> = s.range.clone().collect();
                let k = (sparsity * idx.len() as f64).floor() as usize;
                remove_smallest(&mut idx, k, &mut mask);
            }
        }
    }
    if method == PruneMethod::Random {
        let mut rng = Rng::new(seed);
        let mut random = Mask::full(w.len());
        for s in &chosen {
            let k = mask.live[s.range.clone()].iter().filter(|&&l| !l).count();
            let mut idx: Vec<usize> = s.range.clone().collect();
            rng.shuffle(&mut idx);
            for &i in &idx[..k] {
                random.live[i] = false;
            }
        }
        mask = random;
    }
    Ok(mask)
}
