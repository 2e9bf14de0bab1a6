//! The report's circuits section: a transformer run's last checkpoint taken apart (direct logit
//! attribution, the logit lens, activation patching beside attribution patching, path patching,
//! composition, copying and detector scores, and for modular arithmetic the effective matrices
//! in the Fourier basis), as plotly figures from the circuit summary.

use super::html::{layout, Figure};
use crate::analysis::circuits::factored::dot;
use crate::analysis::circuits::summary::{self, CircuitSummary, PatchPair};
use crate::analysis::fourier::FourierBasis;
use crate::config::Experiment;
use crate::error::Result;
use crate::models::transformer::Transformer;
use serde_json::{json, Value};

/// Examples the report patches.
const EXAMPLES: usize = 64;

fn bars(labels: &[String], values: &[f64], x: &str, y: &str) -> Value {
    json!({"data": [{"type": "bar", "x": labels, "y": values}], "layout": layout(x, y, false)})
}

/// Heat maps on a grid of `cols` columns, each `(title, z)`, a diverging scale centred on 0 per
/// panel.
pub(crate) fn heat_grid(panels: &[(String, Value)], cols: usize, x: &str, y: &str) -> Value {
    let rows = panels.len().div_ceil(cols);
    let mut data = Vec::new();
    let mut annotations = Vec::new();
    let mut lay = json!({"grid": {"rows": rows, "columns": cols, "pattern": "independent"},
        "margin": {"t": 40}, "showlegend": false});
    for (i, (title, z)) in panels.iter().enumerate() {
        let k = if i == 0 {
            String::new()
        } else {
            (i + 1).to_string()
        };
        let max = z
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r.as_array().into_iter().flatten())
            .filter_map(Value::as_f64)
            .fold(1e-12f64, |m, v| m.max(v.abs()));
        data.push(json!({"type": "heatmap", "z": z, "xaxis": format!("x{k}"), "yaxis": format!("y{k}"),
            "colorscale": "RdBu", "reversescale": true, "zmin": -max, "zmax": max, "showscale": false,
            "name": title, "hovertemplate": format!("{title}<br>{x} %{{x}}, {y} %{{y}}: %{{z:.3g}}<extra></extra>")}));
        lay[format!("xaxis{k}")] = json!({"title": {"text": x}});
        lay[format!("yaxis{k}")] = json!({"title": {"text": y}});
        annotations.push(
            json!({"text": title, "showarrow": false, "xref": format!("x{k} domain"),
            "yref": format!("y{k} domain"), "x": 0.5, "y": 1.12, "font": {"size": 12}}),
        );
    }
    lay["annotations"] = Value::Array(annotations);
    lay["height"] = json!(300 * rows + 60);
    json!({"data": data, "layout": lay})
}

fn patch<'a>(s: &'a CircuitSummary, name: &str) -> Option<&'a PatchPair> {
    s.patching.iter().find(|p| p.sweep == name)
}

fn grid_value(g: &[Vec<f64>]) -> Value {
    json!(g)
}

/// The section's figures for a transformer `model` of experiment `exp`.
pub(crate) fn figures(model: &Transformer, exp: &Experiment) -> Result<Vec<Figure>> {
    let (inputs, fourier_p) = summary::inputs_for(exp, EXAMPLES, 0)?;
    let s = summary::summarize(model, &inputs)?;
    let mut figs = vec![
        Figure {
            id: "circuits-dla".into(),
            title: "Circuits: direct logit attribution",
            caption: format!(
                "Each head's, MLP's and embedding's direct contribution to the logit difference at the last position (clean {:.3}; corrupted {:.3}), through the final LayerNorm frozen at its scale; the bars sum to the clean logit difference. Inputs: {}.",
                s.clean_logit_diff, s.corrupted_logit_diff, s.inputs
            ),
            spec: bars(&s.dla_labels, &s.dla, "component", "logit difference"),
        },
        Figure {
            id: "circuits-lens".into(),
            title: "Circuits: logit lens",
            caption: "The logit difference read off the residual stream before each layer, mid-layer, and after the last, each through the final LayerNorm recomputed and the unembedding.".into(),
            spec: bars(&s.logit_lens_labels, &s.logit_lens, "residual point", "logit difference"),
        },
    ];
    let blocks: Vec<&str> = ["resid_pre", "attn_out", "mlp_out"]
        .into_iter()
        .filter(|n| patch(&s, n).is_some())
        .collect();
    let heads = ["out", "q", "k", "v", "pattern"];
    let mut block_panels = Vec::new();
    let mut head_panels = Vec::new();
    for (tag, exact) in [("patched", true), ("attribution", false)] {
        let pick = |p: &PatchPair| {
            if exact {
                p.exact.clone()
            } else {
                p.attribution.clone()
            }
        };
        for n in &blocks {
            block_panels.push((format!("{n} ({tag})"), pick(patch(&s, n).expect("listed"))));
        }
        for h in heads {
            if let Some(p) = patch(&s, &format!("attn_head_{h}_all_pos")) {
                head_panels.push((format!("{h} ({tag})"), pick(p)));
            }
        }
    }
    figs.push(Figure {
        id: "circuits-patch-blocks".into(),
        title: "Circuits: activation patching of every block, beside attribution patching",
        caption: "Top row: the change of the logit difference when the clean run's residual stream before a layer, attention output or MLP output at one position is patched into the corrupted run. Bottom row: attribution patching's estimate of the same from one forward and one backward pass (exact where the model is linear in that activation; far off where it is not, as for the grokked model's MLP).".into(),
        spec: heat_grid(&block_panels, blocks.len(), "position", "layer"),
    });
    figs.push(Figure {
        id: "circuits-patch-heads".into(),
        title: "Circuits: activation patching of every head, beside attribution patching",
        caption: "Top row: each head's output (z), query, key, value and pattern patched from the clean run at every position; bottom row: attribution patching's estimate.".into(),
        spec: heat_grid(&head_panels, head_panels.len() / 2, "head", "layer"),
    });
    if let Some(path) = &s.path_patching {
        let panels: Vec<(String, Value)> = path
            .iter()
            .map(|(n, g)| (format!("into {n}"), json!(g)))
            .collect();
        figs.push(Figure {
            id: "circuits-path".into(),
            title: "Circuits: path patching between heads",
            caption: "The change of the logit difference when only the path from a sender head (row, layer·heads + head) to a later receiver head's query, key or value (column) carries the clean run, every other head held at its corrupted value.".into(),
            spec: heat_grid(&panels, 3, "receiver head", "sender head"),
        });
    }
    if let Some(c) = &s.composition {
        let mut panels: Vec<(String, Value)> = Vec::new();
        for (tag, scores) in [("raw", &c.raw), ("processed", &c.processed)] {
            for (n, g) in scores {
                panels.push((format!("{n} ({tag})"), grid_value(g)));
            }
        }
        figs.push(Figure {
            id: "circuits-composition".into(),
            title: "Circuits: Q-, K- and V-composition scores",
            caption: "‖W_A W_B‖/(‖W_A‖‖W_B‖) of each earlier head's OV circuit (row) with each later head's QK (Q, K) or OV (V) circuit (column); top row the raw weights, bottom row with LayerNorm folded and writing weights centred (TransformerLens's processing). A random pair of d_head-rank matrices scores about √(d_head)/d_model.".into(),
            spec: heat_grid(&panels, 3, "later head", "earlier head"),
        });
    }
    let copy_labels: Vec<String> = s
        .copying
        .raw
        .iter()
        .map(|c| format!("L{}H{}", c.layer, c.head))
        .collect();
    let copy: Vec<f64> = s.copying.raw.iter().map(|c| c.score).collect();
    figs.push(Figure {
        id: "circuits-copying".into(),
        title: "Circuits: copying scores",
        caption: "Re(Σλ)/Σ|λ| over the eigenvalues λ of each head's full OV circuit W_E·W_OV·W_U: near 1 a head copies the token it attends to into the logits.".into(),
        spec: bars(&copy_labels, &copy, "head", "copying score"),
    });
    if let Some(d) = &s.detectors {
        let panels: Vec<(String, Value)> = d.iter().map(|(n, g)| (n.clone(), json!(g))).collect();
        figs.push(Figure {
            id: "circuits-detectors".into(),
            title: "Circuits: head detectors",
            caption: "TransformerLens's detect_head scores (the share of attention on the pattern) on 16 sequences of random tokens repeated twice: previous-token, duplicate-token and induction heads.".into(),
            spec: heat_grid(&panels, 3, "head", "layer"),
        });
    }
    if let Some(p) = fourier_p {
        let basis = FourierBasis::new(p);
        let f = ndarray::Array2::from_shape_fn((p, p), |(i, j)| basis.rows[i][j]);
        let full = &s.full;
        let to = |a: ndarray::Array2<f64>| -> Value {
            json!(a.outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>())
        };
        let mut panels = Vec::new();
        if let Some(att) = full.attention.first() {
            let a = dot(
                dot(f.view(), att.slice(ndarray::s![..p, ..p])).view(),
                f.t(),
            );
            panels.push(("attention W_E W_QK W_Eᵀ, head 0".to_string(), to(a)));
        }
        if let Some(ni) = full.neuron_input.first() {
            panels.push((
                "neuron input W_E W_OV W_in, head 0".into(),
                to(dot(f.view(), ni.slice(ndarray::s![..p, ..])).t().to_owned()),
            ));
        }
        if let Some(w_l) = &full.w_l {
            panels.push((
                "W_L = W_out W_U".into(),
                to(dot(w_l.slice(ndarray::s![.., ..p]), f.t())),
            ));
        }
        figs.push(Figure {
            id: "circuits-fourier".into(),
            title: "Circuits: the effective matrices in the Fourier basis",
            caption: "Nanda et al.'s three effective matrices with the number tokens in the Fourier basis (component 0 the constant, then cos and sin of frequency 1, 2, ...): periodic in the token basis, they are sparse here, on the few key frequencies the model uses.".into(),
            spec: heat_grid(&panels, panels.len().max(1), "Fourier component", "row"),
        });
    }
    Ok(figs)
}
