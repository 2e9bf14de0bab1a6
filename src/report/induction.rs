//! The report's section for an induction run: the losses and head scores over training with the
//! phase change shaded (`analysis::induction`'s definition), and the attention patterns of the
//! heads `analyze` names on a repeated sequence at the last checkpoint.

use super::html::{layout, line, Figure};
use crate::analysis::circuits::detect;
use crate::analysis::induction::{self, PhaseChange};
use crate::error::Result;
use crate::hooks::CacheFilter;
use crate::io::run::MetricRow;
use crate::models::transformer::Transformer;
use ndarray::{s, Ix4};
use serde_json::{json, Value};

/// The phase change as a shaded rectangle over a plot's x range (none without one).
pub(crate) fn phase_shapes(phase: Option<&PhaseChange>) -> Value {
    json!(phase
        .map(|p| vec![
            json!({"type": "rect", "xref": "x", "yref": "paper", "x0": p.onset,
            "x1": p.end, "y0": 0, "y1": 1, "fillcolor": "orange", "opacity": 0.18,
            "line": {"width": 0}})
        ])
        .unwrap_or_default())
}

fn column(metrics: &[MetricRow], name: &str) -> (Vec<f64>, Vec<f64>) {
    metrics
        .iter()
        .filter_map(|r| r.get(name).map(|v| (r.step as f64, v)))
        .unzip()
}

/// The section's figures for `model` (the run's last checkpoint) and the run's metric rows.
pub(crate) fn figures(
    model: &Transformer,
    metrics: &[MetricRow],
    phase: Option<PhaseChange>,
) -> Result<Vec<Figure>> {
    let cfg = &model.cfg;
    let heads = phase
        .as_ref()
        .and_then(|p| induction::induction_heads(metrics, p, cfg.n_layers, cfg.n_heads));
    let when = match &phase {
        Some(p) => format!(
            "The phase change (shaded): a tenth of the fall of the loss on repeats from its plateau ({:.3}) to its final level ({:.3}) by step {}, half by {}, three quarters by {}.",
            p.plateau, p.last, p.onset, p.middle, p.end
        ),
        None => "No phase change: the loss on repeats never fell abruptly by 0.5 nats and a quarter of its plateau.".into(),
    };
    let mut losses = Vec::new();
    for (name, col) in [
        ("repeated tokens", "test_loss_repeat"),
        ("first occurrences", "test_loss_first"),
    ] {
        let (x, y) = column(metrics, col);
        losses.push(line(name, &x, &y));
    }
    let mut lay = layout("step", "test loss (nats)", false);
    lay["shapes"] = phase_shapes(phase.as_ref());
    let mut figs = vec![Figure {
        id: "induction-loss".into(),
        title: "In-context learning: loss on repeats and on first occurrences",
        caption: format!(
            "The task's own columns at every evaluation: the loss on the tokens an induction head can predict (the copy's tokens after its first) and on every other token. {when}"
        ),
        spec: json!({"data": losses, "layout": lay}),
    }];
    let mut scores = Vec::new();
    for l in 0..cfg.n_layers {
        for h in 0..cfg.n_heads {
            let kind = if l + 1 < cfg.n_layers {
                "prev"
            } else {
                "induction"
            };
            let (x, y) = column(metrics, &format!("heads_L{l}H{h}_{kind}"));
            if !y.is_empty() {
                let label = if kind == "prev" {
                    "previous-token"
                } else {
                    "induction"
                };
                scores.push(line(&format!("L{l}H{h} {label}"), &x, &y));
            }
        }
    }
    if !scores.is_empty() {
        let mut lay = layout("step", "detector score (mul)", false);
        lay["shapes"] = phase_shapes(phase.as_ref());
        figs.push(Figure {
            id: "induction-heads".into(),
            title: "In-context learning: head scores over training",
            caption: "The `heads` monitor at every evaluation: the last layer's induction (prefix-matching) scores and the earlier layers' previous-token scores (TransformerLens's detect_head, mul, on 16 repeated random sequences).".into(),
            spec: json!({"data": scores, "layout": lay}),
        });
    }
    // Attention of the named heads (else every last-layer head) on one repeated sequence.
    let Some(tokens) = detect::detector_tokens(cfg.n_ctx, cfg.d_vocab) else {
        return Ok(figs);
    };
    let one = tokens.slice(s![0..1, ..]).to_owned();
    let last = cfg.n_layers - 1;
    let shown: Vec<(usize, usize, &str)> = match &heads {
        Some(h) => {
            let mut v = vec![(h.induction_head.0, h.induction_head.1, "induction head")];
            if let Some(((l, hh), _)) = h.previous_token_head {
                v.push((l, hh, "previous-token head"));
            }
            v
        }
        None => (0..cfg.n_heads).map(|h| (last, h, "")).collect(),
    };
    let names: Vec<String> = (0..cfg.n_layers)
        .map(|l| format!("blocks.{l}.attn.hook_pattern"))
        .collect();
    let (_, cache) = model.run_with_cache(one.view(), CacheFilter::Names(names))?;
    let panels: Vec<(String, Value)> = shown
        .iter()
        .map(|&(l, h, what)| -> Result<(String, Value)> {
            let pat = cache.get(&format!("blocks.{l}.attn.hook_pattern"))?;
            let pat = pat
                .view()
                .into_dimensionality::<Ix4>()
                .expect("[b, h, q, k]");
            let z: Vec<Vec<f64>> = pat
                .slice(s![0, h, .., ..])
                .outer_iter()
                .map(|r| r.iter().map(|&x| x as f64).collect())
                .collect();
            Ok((format!("L{l}H{h} {what}").trim().to_string(), json!(z)))
        })
        .collect::<Result<_>>()?;
    let half = one.ncols() / 2;
    figs.push(Figure {
        id: "induction-attention".into(),
        title: "In-context learning: attention on a repeated sequence",
        caption: format!(
            "The last checkpoint's attention pattern (query down, key across) on {half} random tokens followed by their copy: an induction head's queries in the copy attend to the key one after the current token's first occurrence (the diagonal {} below the main one, from query {half} on); a previous-token head's to the key just before.",
            half - 1
        ),
        spec: super::circuits::heat_grid(&panels, 2, "key position", "query position"),
    });
    Ok(figs)
}
