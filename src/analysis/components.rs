//! Components of a model's parameters picked by name, for analyses that act on part of a model
//! (the weight-restricted LLC samples only these, the rest held where they are).
//!
//! A selector is a tensor's name (`blocks.0.attn.W_Q`), a pattern in which `*` stands for any run
//! of characters (`blocks.1.*`, `*.W_O`), or a head: `blocks.L.attn.head.H` is head H's slices of
//! that block's W_Q, W_K, W_V, W_O, b_Q, b_K, b_V (and smear_alpha where the model has it), every
//! tensor whose name is `blocks.L.attn.X` and whose first axis counts the heads. b_O is shared by
//! the heads and belongs to none. Frozen tensors (a switched-off bias) are never picked.

use crate::error::{Error, Result};
use crate::models::{mask::Mask, Model, TensorSpec};
use std::ops::Range;

/// The per-head tensors of an attention block (their first axis is the head).
const HEAD_TENSORS: [&str; 8] = [
    "W_Q",
    "W_K",
    "W_V",
    "W_O",
    "b_Q",
    "b_K",
    "b_V",
    "smear_alpha",
];

/// Whether `name` matches `pattern`, where `*` matches any run of characters (dots included).
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// `blocks.L.attn.head.H` as (the block's attention prefix `blocks.L.attn.`, H).
fn head_selector(sel: &str) -> Option<(String, usize)> {
    let (prefix, h) = sel.rsplit_once(".head.")?;
    let h = h.parse().ok()?;
    prefix.ends_with(".attn").then(|| (format!("{prefix}."), h))
}

/// The flat ranges of one selector among `specs` (trainable tensors only).
fn select(specs: &[TensorSpec], sel: &str) -> Result<Vec<Range<usize>>> {
    if let Some((prefix, h)) = head_selector(sel) {
        let mut out = Vec::new();
        for s in specs.iter().filter(|s| s.trainable) {
            let Some(short) = s.name.strip_prefix(&prefix) else {
                continue;
            };
            if !HEAD_TENSORS.contains(&short) {
                continue;
            }
            let n_heads = s.shape[0];
            if h >= n_heads {
                return Err(Error::Input(format!(
                    "--restrict `{sel}`: `{}` has {n_heads} heads (0 to {})",
                    s.name,
                    n_heads - 1
                )));
            }
            let per = s.range.len() / n_heads;
            out.push(s.range.start + h * per..s.range.start + (h + 1) * per);
        }
        return Ok(out);
    }
    Ok(specs
        .iter()
        .filter(|s| s.trainable && glob(sel, &s.name))
        .map(|s| s.range.clone())
        .collect())
}

/// The parameters the selectors pick (all trainable ones for none), sorted and merged, less the
/// dead entries of `mask`. A selector that picks nothing is an error naming it.
pub fn select_ranges(
    model: &dyn Model,
    selectors: &[String],
    mask: Option<&Mask>,
) -> Result<Vec<Range<usize>>> {
    let specs = model.tensors();
    let mut ranges: Vec<Range<usize>> = if selectors.is_empty() {
        specs
            .iter()
            .filter(|s| s.trainable)
            .map(|s| s.range.clone())
            .collect()
    } else {
        let mut all = Vec::new();
        for sel in selectors {
            let picked = select(&specs, sel)?;
            if picked.is_empty() {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::Input(format!(
                    "--restrict `{sel}` matches no trainable parameter of this `{}` model (its \
                     parameters: {}; a head is `blocks.L.attn.head.H`)",
                    model.arch(),
                    names.join(", ")
                )));
            }
            all.extend(picked);
        }
        all
    };
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let Some(mask) = mask else {
        return Ok(merged);
    };
    let live_runs = live_runs(merged, mask);
    if live_runs.is_empty() {
        let what = if selectors.is_empty() {
            "the model".to_string()
        } else {
            format!("--restrict `{}`", selectors.join(","))
        };
        return Err(Error::Input(format!(
            "every weight of {what} is pruned by the mask: nothing to sample"
        )));
    }
    Ok(live_runs)
}

/// The runs of `ranges` whose entries `mask` keeps.
fn live_runs(merged: Vec<Range<usize>>, mask: &Mask) -> Vec<Range<usize>> {
    // Live runs only: a pruned weight is never moved.
    let mut live = Vec::new();
    for r in merged {
        let mut start = None;
        for j in r.clone() {
            match (mask.live[j], start) {
                (true, None) => start = Some(j),
                (false, Some(s)) => {
                    live.push(s..j);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            live.push(s..r.end);
        }
    }
    live
}

/// Every head of a transformer-like model, as `blocks.L.attn.head.H` selectors, in layer and
/// head order (from the tensors named `blocks.L.attn.W_Q`); empty for a model without heads.
pub fn heads(model: &dyn Model) -> Vec<String> {
    let mut out = Vec::new();
    for s in model.tensors() {
        if let Some(prefix) = s.name.strip_suffix(".attn.W_Q") {
            for h in 0..s.shape[0] {
                out.push(format!("{prefix}.attn.head.{h}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_runs_of_any_characters() {
        assert!(glob("blocks.1.*", "blocks.1.attn.W_Q"));
        assert!(!glob("blocks.1.*", "blocks.10.attn.W_Q"));
        assert!(glob("*.W_O", "blocks.0.attn.W_O"));
        assert!(glob("*attn*", "blocks.0.attn.b_Q"));
        assert!(!glob("*.W_O", "blocks.0.attn.W_Q"));
        assert!(glob("embed.W_E", "embed.W_E"));
        assert!(!glob("embed.W_E", "embed.W_Ex"));
        assert!(!glob("a*b*c", "acb"));
    }
}
