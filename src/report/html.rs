//! `report.html`: one self-contained, offline page per run (plotly.js is inlined, nothing is fetched),
//! interactive (hover, zoom), with a sentence under each figure saying what to look for. Every task
//! has its page: modular addition (progress measures, Fourier structure, neurons, attention,
//! ablation), digits (each digit's curves and transition), the ToyMLP (ablation, neuron heat maps),
//! superposition (each instance's feature geometry).
//!
//! The page records script errors and, once every figure is drawn, writes a status line
//! (`<pre id="status">`) that tests read back from a headless browser.

use crate::analysis::{self, ablation, neurons};
use crate::config::Experiment;
use crate::error::Result;
use crate::hooks::CacheFilter;
use crate::io::checkpoint;
use crate::io::run::{self, MetricRow};
use crate::models::superposition::{Superposition, SuperpositionConfig};
use crate::models::toy_mlp::{ToyMlp, ToyMlpConfig};
use crate::models::transformer::{Transformer, TransformerConfig};
use crate::tasks::digits::DigitsTask;
use crate::tasks::modular::{ModularTask, Op};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

static PLOTLY: &str = include_str!("../../assets/plotly.min.js");

pub(crate) struct Figure {
    pub id: std::borrow::Cow<'static, str>,
    pub title: &'static str,
    pub caption: String,
    pub spec: Value,
}

pub(crate) fn line(name: &str, x: &[f64], y: &[f64]) -> Value {
    json!({"type": "scatter", "mode": "lines", "name": name, "x": x, "y": y})
}

pub(crate) fn layout(x: &str, y: &str, log_y: bool) -> Value {
    json!({
        "xaxis": {"title": {"text": x}},
        "yaxis": {"title": {"text": y}, "type": if log_y { "log" } else { "linear" }, "exponentformat": "e"},
        "margin": {"t": 30}, "hovermode": "x unified", "legend": {"orientation": "h"}
    })
}

/// A drop-down menu that shows one trace at a time: trace i for `labels[i]`.
fn one_at_a_time(labels: &[String]) -> Value {
    groups_menu(labels, 1)
}

/// Text safe inside an inline `<script>` or HTML: no `</` sequence can end the element.
fn script_safe(s: &str) -> String {
    s.replace("</", "<\\/")
}

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What a task contributes to its page.
pub(crate) struct Page {
    pub heading: String,
    pub cfg_line: String,
    pub figs: Vec<Figure>,
    /// HTML after the figures (escaped by whoever builds it): a sweep's summary table.
    pub extra_html: String,
}

/// Values of metric `k` over the rows (NaN where absent).
fn series(metrics: &[MetricRow], k: &str) -> Vec<f64> {
    metrics
        .iter()
        .map(|r| r.get(k).unwrap_or(f64::NAN))
        .collect()
}

fn steps_of(metrics: &[MetricRow]) -> Vec<f64> {
    metrics.iter().map(|r| r.step as f64).collect()
}

/// Train and test loss (log-y), the first figure of every page.
fn loss_figure(metrics: &[MetricRow], caption: &str) -> Figure {
    let steps = steps_of(metrics);
    Figure {
        id: "loss".into(),
        title: "Train and test loss",
        caption: caption.into(),
        spec: json!({"data": [
            line("train", &steps, &series(metrics, "train_loss")),
            line("test", &steps, &series(metrics, "test_loss"))
        ], "layout": layout("step", "loss", true)}),
    }
}

/// Build `report.html` for a run directory, whatever its task.
pub fn run_report(run_dir: &Path) -> Result<PathBuf> {
    let cfg = run::run_config(run_dir)?.resolve()?;
    let metrics = run::read_metrics(run_dir)?;
    // The pages of the kinds that have one of their own; every other run gets the generic page.
    let transformer = cfg.model.downcast::<TransformerConfig>();
    let modular = cfg.task.downcast::<ModularTask>();
    let page = if let (Some(shape), Some(task)) = (transformer, modular) {
        modular_figures(run_dir, &cfg, task, shape, &metrics)?
    } else if let (Some(shape), Some(task)) = (transformer, cfg.task.downcast::<DigitsTask>()) {
        digits_figures(run_dir, &cfg, task, shape, &metrics)?
    } else if let (Some(_), Some(task)) = (cfg.model.downcast::<ToyMlpConfig>(), modular) {
        toy_mlp_figures(run_dir, &cfg, task, &metrics)?
    } else if cfg.model.downcast::<SuperpositionConfig>().is_some() {
        superposition_figures(run_dir, &cfg, &metrics)?
    } else {
        generic_figures(run_dir, &cfg, &metrics)?
    };
    let mut page = page;
    let induction = crate::tasks::in_context(cfg.task.as_ref());
    // An induction run's phase change, for its section and its λ̂ (shaded).
    let phase = induction
        .then(|| crate::analysis::induction::run_phase_change(&metrics))
        .flatten();
    if transformer.is_some() {
        let ck = checkpoint::load(&run::last_checkpoint(run_dir)?)?;
        if let Some(t) = ck.model.as_any().downcast_ref::<Transformer>() {
            if induction {
                page.figs
                    .extend(super::induction::figures(t, &metrics, phase.clone())?);
            }
            // Circuits read token inputs; a vector-token model (in-context regression) has none.
            if !t.cfg.vector_tokens {
                page.figs.extend(super::circuits::figures(t, &cfg)?);
            }
        }
    }
    page.figs
        .extend(super::watching::figures(run_dir, &metrics)?);
    page.figs.extend(llc_figure(run_dir, phase.as_ref())?);
    page.figs.extend(dynamics_figure(run_dir)?);
    write_page(run_dir, page)
}

/// Any other run: its losses, its accuracies where the task has them, and (for a transformer)
/// which heads and neurons its training set needs, by ablation.
fn generic_figures(run_dir: &Path, cfg: &Experiment, metrics: &[MetricRow]) -> Result<Page> {
    let steps = steps_of(metrics);
    let mut figs = vec![loss_figure(
        metrics,
        "The loss on the whole training and test sets at every evaluation.",
    )];
    if metrics.iter().any(|r| r.get("train_acc").is_some()) {
        figs.push(Figure {
            id: "accuracy".into(),
            title: "Train and test accuracy",
            caption: "The share of loss positions predicted right (the largest logit).".into(),
            spec: json!({"data": [
                line("train", &steps, &series(metrics, "train_acc")),
                line("test", &steps, &series(metrics, "test_acc"))
            ], "layout": layout("step", "accuracy", false)}),
        });
    }
    let ck = checkpoint::load(&run::last_checkpoint(run_dir)?)?;
    if let Some(t) = ck.model.as_any().downcast_ref::<Transformer>() {
        let train = cfg.task.make_data(None)?.train_set();
        if let Some(crate::batch::Batch::Tokens(b)) = train {
            let b = crate::batch::Batch::Tokens(b).head(ablation::GENERIC_EXAMPLES);
            let crate::batch::Batch::Tokens(b) = b else {
                unreachable!("the head of token batch")
            };
            let rows = ablation::ablate_on(t, &b)?;
            let top: Vec<&ablation::AblationRow> = rows.iter().take(20).collect();
            figs.push(Figure {
                id: "ablation".into(),
                title: "Which heads and neurons matter: ablation",
                caption: format!("The loss on the first {} training examples with one attention head or MLP neuron zeroed, the 20 that raise it most. The hover shows the loss with the unit set to its mean instead.", b.tokens.nrows()),
                spec: ablation_bars(&top),
            });
        }
    }
    Ok(Page {
        extra_html: String::new(),
        heading: format!("{} on {}", cfg.config.arch_name(), cfg.task.describe()),
        cfg_line: format!(
            "model {}, lr {}, weight decay {}, seed {}",
            serde_json::to_string(&cfg.config.model).unwrap_or_default(),
            cfg.config.optim.lr,
            cfg.optim.weight_decay,
            cfg.seed
        ),
        figs,
    })
}

/// Bars of each unit's zero-ablated loss (`H0.1` a head, `N0.7` a neuron), the mean-ablated one
/// on hover.
fn ablation_bars(top: &[&ablation::AblationRow]) -> Value {
    json!({"data": [{"type": "bar",
        "x": top.iter().map(|r| format!("{}{}.{}", if r.unit == ablation::Unit::Head { "H" } else { "N" }, r.layer, r.index)).collect::<Vec<_>>(),
        "y": top.iter().map(|r| r.zero_loss).collect::<Vec<_>>(),
        "customdata": top.iter().map(|r| r.mean_loss).collect::<Vec<_>>(),
        "hovertemplate": "%{x}: zero-ablated loss %{y:.3e}, mean-ablated %{customdata:.3e}<extra></extra>"}],
        "layout": layout("unit", "loss", false)})
}

/// λ̂ over training, when `toylens llc RUN` has written `RUN/analysis/llc.csv`.
fn llc_figure(
    run_dir: &Path,
    phase: Option<&crate::analysis::induction::PhaseChange>,
) -> Result<Option<Figure>> {
    let Some(rows) = run::read_llc(run_dir)? else {
        return Ok(None);
    };
    let x: Vec<f64> = rows.iter().map(|r| r.0 as f64).collect();
    let y: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let e: Vec<f64> = rows.iter().map(|r| r.2).collect();
    let mut trace = line("λ̂ (mean over chains)", &x, &y);
    trace["mode"] = json!("lines+markers");
    trace["error_y"] = json!({"type": "data", "array": e, "visible": true});
    Ok(Some(Figure {
        id: "llc".into(),
        title: "Local learning coefficient",
        caption: "λ̂ at every checkpoint, estimated by SGLD on the training set (toylens llc; error bars: the standard deviation over chains). A rise marks the model taking on structure; devinterp's grokking example shows λ̂ rising during memorisation and falling as the model generalises.".into(),
        spec: {
            let mut lay = layout("step", "λ̂", false);
            lay["shapes"] = super::induction::phase_shapes(phase);
            json!({"data": [trace], "layout": lay})
        },
    }))
}

/// Essential dynamics, when `toylens dynamics RUN` has written `RUN/analysis/dynamics.csv`: the
/// trajectory in PC1–PC2, coloured by step, its turns circled.
fn dynamics_figure(run_dir: &Path) -> Result<Option<Figure>> {
    let Some((about, rows)) = run::read_dynamics(run_dir)? else {
        return Ok(None);
    };
    let steps: Vec<f64> = rows.iter().map(|r| r.step as f64).collect();
    let (x, y): (Vec<f64>, Vec<f64>) = rows.iter().map(|r| (r.scores[0], r.scores[1])).unzip();
    let turns: Vec<(f64, f64, f64)> = rows
        .iter()
        .filter(|r| r.turn)
        .map(|r| (r.step as f64, r.scores[0], r.scores[1]))
        .collect();
    let path = json!({"type": "scatter", "mode": "lines+markers", "name": "checkpoints", "x": x, "y": y,
        "text": steps.iter().map(|s| format!("step {s}")).collect::<Vec<_>>(),
        "marker": {"color": steps, "colorscale": "Viridis", "reversescale": true, "size": 8, "showscale": true, "colorbar": {"title": {"text": "step"}}},
        "line": {"color": "rgba(120,120,120,0.5)"},
        "hovertemplate": "%{text}: PC1 %{x:.3g}, PC2 %{y:.3g}<extra></extra>"});
    let marks = json!({"type": "scatter", "mode": "markers+text", "name": "turns",
        "x": turns.iter().map(|t| t.1).collect::<Vec<_>>(), "y": turns.iter().map(|t| t.2).collect::<Vec<_>>(),
        "text": turns.iter().map(|t| format!("{}", t.0)).collect::<Vec<_>>(), "textposition": "top center",
        "marker": {"size": 16, "color": "rgba(0,0,0,0)", "line": {"color": "red", "width": 2}}});
    let mut lay = layout("PC1", "PC2", false);
    lay["hovermode"] = json!("closest");
    Ok(Some(Figure {
        id: "dynamics".into(),
        title: "Essential dynamics",
        caption: format!("The model's outputs on a fixed set at every checkpoint, projected on their top two principal components (toylens dynamics; {about}). Turns (circled, with their steps) are candidate developmental stage boundaries, to read beside the loss and λ̂; dynamics.png has PC3 too."),
        spec: json!({"data": [path, marks], "layout": lay}),
    }))
}

/// The figures of a modular-addition transformer run: losses, progress measures with the phases,
/// Fourier structure, neurons, attention, ablation.
fn modular_figures(
    run_dir: &Path,
    cfg: &Experiment,
    task: &ModularTask,
    shape: &TransformerConfig,
    metrics: &[MetricRow],
) -> Result<Page> {
    let p = task.p;
    let rows = analysis::progress(run_dir)?;
    let phases = analysis::phases(&rows);
    let last_step = rows.last().expect("progress rows").step;
    let model: Transformer =
        crate::io::checkpoint::load_transformer(&run::checkpoint_path(run_dir, last_step))?;
    let a = analysis::analyze(&model, p, task.op, Some(task))?;
    let nf = neurons::neuron_frequencies(&model, p)?;
    let abl = ablation::ablate_all(&model, p, task.op)?;

    let mut figs = vec![loss_figure(metrics, "Grokking looks like this: the train loss falls within the first thousand steps or so (memorisation) while the test loss stays high; much later the test loss falls too, by orders of magnitude (generalisation). Hover for values; drag to zoom.")];
    let psteps: Vec<f64> = rows.iter().map(|r| r.step as f64).collect();
    let mut shapes = Vec::new();
    if let Some(ph) = &phases {
        let x_max = *psteps.last().unwrap_or(&1.0);
        let mut spans = vec![(0.0, ph.memorisation_end as f64, "rgba(31,119,180,0.12)")];
        if let Some(c) = ph.cleanup_start {
            spans.push((
                ph.memorisation_end as f64,
                c as f64,
                "rgba(255,127,14,0.12)",
            ));
            spans.push((
                c as f64,
                ph.cleanup_end.map_or(x_max, |e| e as f64),
                "rgba(44,160,44,0.12)",
            ));
        }
        for (x0, x1, color) in spans {
            shapes.push(json!({"type": "rect", "xref": "x", "yref": "paper", "x0": x0, "x1": x1, "y0": 0, "y1": 1, "fillcolor": color, "line": {"width": 0}}));
        }
    }
    let phase_text = match &phases {
        Some(ph) => format!(
            "Shaded: memorisation (steps 0–{}), circuit formation ({}–{}), cleanup ({}–{}).",
            ph.memorisation_end,
            ph.memorisation_end,
            ph.cleanup_start
                .map_or("not reached".into(), |s| s.to_string()),
            ph.cleanup_start.map_or("–".into(), |s| s.to_string()),
            ph.cleanup_end
                .map_or("not reached".into(), |s| s.to_string())
        ),
        None => String::new(),
    };
    let mut lay = layout("step", "loss", true);
    lay["shapes"] = Value::Array(shapes.clone());
    figs.push(Figure {
        id: "progress".into(),
        title: "Progress measures",
        caption: format!("Restricted loss keeps only the key-frequency directions cos/sin(w(a+b)) of the logits; excluded loss removes them (on the training set). Excluded loss climbing while the test loss is still flat shows the circuit forming before it shows in test loss; restricted loss falls before test loss. {phase_text}"),
        spec: json!({"data": [
            line("loss, all pairs", &psteps, &rows.iter().map(|r| r.loss_all).collect::<Vec<_>>()),
            line("restricted loss", &psteps, &rows.iter().map(|r| r.restricted_loss).collect::<Vec<_>>()),
            line("excluded loss", &psteps, &rows.iter().map(|r| r.excluded_loss).collect::<Vec<_>>())
        ], "layout": lay}),
    });
    let max_w = rows
        .iter()
        .map(|r| r.sum_sq_weights)
        .fold(0.0f64, f64::max)
        .max(1e-30);
    let mut lay = layout("step", "", false);
    lay["shapes"] = Value::Array(shapes);
    figs.push(Figure {
        id: "sparsity".into(),
        title: "Sparsity and weight norm",
        caption: "The Gini coefficient of the Fourier component norms of W_E and W_L rises when the network cleans up its memorised solution and keeps only the few key frequencies; the total weight norm (weight decay at work) falls at the same time.".into(),
        spec: json!({"data": [
            line("Gini of W_E", &psteps, &rows.iter().map(|r| r.gini_w_e).collect::<Vec<_>>()),
            line("Gini of W_L", &psteps, &rows.iter().map(|r| r.gini_w_l).collect::<Vec<_>>()),
            line("sum of squared weights / max", &psteps, &rows.iter().map(|r| r.sum_sq_weights / max_w).collect::<Vec<_>>())
        ], "layout": lay}),
    });
    let freqs: Vec<String> = (0..a.w_e_frequency_norms.len())
        .map(|k| {
            if k == 0 {
                "const".into()
            } else {
                k.to_string()
            }
        })
        .collect();
    figs.push(Figure {
        id: "we".into(),
        title: "W_E in the Fourier basis",
        caption: format!("Each bar is the norm of the embedding's cos and sin components at one frequency. A grokked model embeds a and b as sin/cos of a few key frequencies: here {:?}.", a.key_frequencies),
        spec: json!({"data": [{"type": "bar", "x": freqs, "y": a.w_e_frequency_norms}], "layout": layout("frequency", "norm", false)}),
    });
    figs.push(Figure {
        id: "clusters".into(),
        title: "Neurons by frequency",
        caption: format!("Each MLP neuron's activation over the {p}×{p} input grid, in the 2D Fourier basis: the bar counts neurons whose variance is mostly (≥ {}) one frequency. Neurons cluster on the key frequencies.", neurons::CLUSTER_MIN_SHARE),
        spec: json!({"data": [{"type": "bar", "x": nf.clusters.iter().map(|c| c.frequency.to_string()).collect::<Vec<_>>(), "y": nf.clusters.iter().map(|c| c.size).collect::<Vec<_>>()}], "layout": layout("frequency", "neurons", false)}),
    });
    // A neuron and the attention of each head over the input grid.
    let names = vec![
        format!("blocks.{}.mlp.hook_post", model.cfg.n_layers - 1),
        "blocks.0.attn.hook_pattern".to_string(),
    ];
    let (_, cache) = model.run_with_cache(
        ModularTask::all_pairs_batch(p, Op::Add).tokens.view(),
        CacheFilter::Names(names.clone()),
    )?;
    let post = cache.get(&names[0])?;
    let neuron = (0..nf.share.len())
        .max_by(|&i, &j| nf.share[i].total_cmp(&nf.share[j]))
        .unwrap_or(0);
    let grid: Vec<Vec<f32>> = (0..p)
        .map(|b| (0..p).map(|x| post[[x * p + b, 2, neuron]]).collect())
        .collect();
    figs.push(Figure {
        id: "neuron".into(),
        title: "One neuron over all inputs",
        caption: format!("Neuron {neuron}'s activation for every input (a, b). Its pattern is a wave of frequency {} in a and b ({:.0}% of its variance): neurons compute products of sin/cos of the inputs.", nf.best_frequency[neuron], 100.0 * nf.share[neuron]),
        spec: json!({"data": [{"type": "heatmap", "z": grid, "colorscale": "Blues"}], "layout": layout("a", "b", false)}),
    });
    let pat = cache.get(&names[1])?;
    let heads: Vec<Value> = (0..model.cfg.n_heads)
        .map(|h| {
            let z: Vec<Vec<f32>> = (0..p).map(|b| (0..p).map(|x| pat[[x * p + b, h, 2, 0]]).collect()).collect();
            json!({"type": "heatmap", "z": z, "colorscale": "Blues", "visible": h == 0, "name": format!("head {h}")})
        })
        .collect();
    let mut lay = layout("a", "b", false);
    lay["updatemenus"] = one_at_a_time(
        &(0..model.cfg.n_heads)
            .map(|h| format!("head {h}"))
            .collect::<Vec<_>>(),
    );
    figs.push(Figure {
        id: "attention".into(),
        title: "Attention from '=' to a, per head",
        caption: "How much the last position attends to the first token, for every input (choose the head with the menu). Periodic stripes mean the head mixes a and b according to a few frequencies.".into(),
        spec: json!({"data": heads, "layout": lay}),
    });
    let top: Vec<&ablation::AblationRow> = abl.iter().take(20).collect();
    figs.push(Figure {
        id: "ablation".into(),
        title: "Which units matter: ablation",
        caption: "Loss on all pairs with one unit zeroed (N = MLP neuron, H = attention head), the 20 most important. The hover shows the loss with the unit set to its mean instead.".into(),
        spec: ablation_bars(&top),
    });
    Ok(Page {
        extra_html: String::new(),
        heading: format!("(a {} b) mod {p}", task.op.symbol()),
        cfg_line: format!(
            "frac_train {}, d_model {}, {} heads, d_mlp {}, lr {}, weight decay {}, seed {}",
            task.frac_train,
            shape.d_model,
            shape.n_heads,
            shape.d_mlp.unwrap_or(0),
            cfg.config.optim.lr,
            cfg.optim.weight_decay,
            cfg.seed
        ),
        figs,
    })
}

/// Digits: each digit's test loss with its transition step, per-digit accuracy, whole sums right.
fn digits_figures(
    run_dir: &Path,
    cfg: &Experiment,
    task: &DigitsTask,
    shape: &TransformerConfig,
    metrics: &[MetricRow],
) -> Result<Page> {
    let steps = steps_of(metrics);
    let transitions = run::digit_transitions(metrics, run::DIGIT_TRANSITION_LOSS);
    let mut figs = vec![loss_figure(metrics, "Mean over the answer digits. With fresh samples every step, train is that step's batch and test a fixed held-out sample.")];
    let per_digit = |what: &str| -> Vec<Value> {
        transitions
            .iter()
            .map(|(k, _)| {
                line(
                    &format!("10^{k}"),
                    &steps,
                    &series(metrics, &format!("test_{what}_d{k}")),
                )
            })
            .collect()
    };
    let marks: Vec<Value> = transitions
        .iter()
        .filter_map(|(_, s)| *s)
        .map(|s| json!({"type": "line", "xref": "x", "yref": "paper", "x0": s, "x1": s, "y0": 0, "y1": 1, "line": {"width": 1, "dash": "dot", "color": "#888"}}))
        .collect();
    let mut lay = layout("step", "test loss", true);
    lay["shapes"] = Value::Array(marks);
    let steps_text: Vec<String> = transitions
        .iter()
        .map(|(k, s)| format!("10^{k}: {}", s.map_or("not yet".into(), |s| s.to_string())))
        .collect();
    figs.push(Figure {
        id: "digits".into(),
        title: "Each digit of the sum",
        caption: format!(
            "Test loss of each answer digit (10^k is the digit of place value 10^k). Each digit sits at chance (ln 10 ≈ 2.3) until its own sudden drop; dotted lines mark the transition steps, where a digit's loss first falls below {:.2} nats: {}.",
            run::DIGIT_TRANSITION_LOSS,
            steps_text.join(", ")
        ),
        spec: json!({"data": per_digit("loss"), "layout": lay}),
    });
    let mut acc = per_digit("acc");
    acc.push(json!({"type": "scatter", "mode": "lines", "name": "whole sum", "x": steps, "y": series(metrics, "test_exact"), "line": {"color": "black", "width": 3}}));
    figs.push(Figure {
        id: "accuracy".into(),
        title: "Accuracy per digit and of whole sums",
        caption: "Test accuracy of each digit, and (black) the fraction of test sums right in every digit.".into(),
        spec: json!({"data": acc, "layout": layout("step", "accuracy", false)}),
    });
    figs.extend(digit_adder_figures(run_dir)?);
    Ok(Page {
        extra_html: String::new(),
        heading: format!(
            "{}-digit addition{}",
            task.n_digits,
            if task.reverse_sum {
                ", sum reversed"
            } else {
                ""
            }
        ),
        cfg_line: format!(
            "{}, d_model {}, {} heads, d_mlp {}, lr {}, weight decay {}, batch {}, seed {}",
            if task.infinite {
                "fresh samples every step".to_string()
            } else {
                format!("frac_train {}", task.frac_train)
            },
            shape.d_model,
            shape.n_heads,
            shape.d_mlp.unwrap_or(0),
            cfg.config.optim.lr,
            cfg.optim.weight_decay,
            cfg.config
                .train
                .batch_size
                .map_or("full".into(), |b| b.to_string()),
            cfg.seed
        ),
        figs,
    })
}

/// A drop-down menu over groups of `per` consecutive traces: group i visible for `labels[i]`.
fn groups_menu(labels: &[String], per: usize) -> Value {
    let n = labels.len() * per;
    let buttons: Vec<Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| json!({"label": l, "method": "update", "args": [{"visible": (0..n).map(|j| j / per == i).collect::<Vec<_>>()}]}))
        .collect();
    json!([{"buttons": buttons, "x": 1.0, "y": 1.15}])
}

/// Inside the digit adder (`analysis::digits`): offsets from the naive sum and the sub-tasks over
/// training, the last checkpoint's attention and per-digit ablation.
fn digit_adder_figures(run_dir: &Path) -> Result<Vec<Figure>> {
    use crate::analysis::digits;
    let (task, rows) = digits::over_training(run_dir)?;
    let steps: Vec<f64> = rows.iter().map(|r| r.0 as f64).collect();
    let Some((_, last_stats)) = rows.last() else {
        return Ok(Vec::new());
    };
    let labels: Vec<String> = last_stats
        .iter()
        .map(|d| format!("digit 10^{}", d.place))
        .collect();
    let trace = |name: &str, y: Vec<f64>, visible: bool| -> Value {
        json!({"type": "scatter", "mode": "lines+markers", "name": name, "x": steps, "y": y, "visible": visible})
    };
    let (mut offsets, mut cases) = (Vec::new(), Vec::new());
    for j in 0..last_stats.len() {
        let col = |f: &dyn Fn(&digits::DigitStats) -> f64| {
            rows.iter().map(|(_, d)| f(&d[j])).collect::<Vec<f64>>()
        };
        let vis = j == 0;
        offsets.push(trace(
            "p(naive) | no carry (right)",
            col(&|d| d.offsets_no_carry[0]),
            vis,
        ));
        offsets.push(trace(
            "p(naive+1) | no carry",
            col(&|d| d.offsets_no_carry[1]),
            vis,
        ));
        offsets.push(trace(
            "p(naive) | carry (carry missed)",
            col(&|d| d.offsets_carry[0]),
            vis,
        ));
        offsets.push(trace(
            "p(naive+1) | carry (right)",
            col(&|d| d.offsets_carry[1]),
            vis,
        ));
        offsets.push(trace(
            "p(other) | either",
            col(&|d| {
                let n0 = d.cases[0].n as f64;
                let n1 = (d.cases[1].n + d.cases[2].n) as f64;
                let o1 = if n1 > 0.0 { d.offsets_carry[3] } else { 0.0 };
                (n0 * d.offsets_no_carry[3] + n1 * o1) / (n0 + n1)
            }),
            vis,
        ));
        for (c, name) in ["no carry in", "carry in", "cascading carry"]
            .iter()
            .enumerate()
        {
            cases.push(trace(name, col(&|d| d.cases[c].loss), vis));
        }
    }
    let mut lay = layout("step (checkpoints)", "mean probability", false);
    lay["updatemenus"] = groups_menu(&labels, 5);
    let mut lay_c = layout("step (checkpoints)", "test loss", true);
    lay_c["updatemenus"] = groups_menu(&labels, 3);
    let last = digits::checkpoint_report(
        &crate::io::checkpoint::load_transformer(&run::last_checkpoint(run_dir)?)?,
        &task,
    )?;
    let answer_labels: Vec<String> = last
        .digits
        .iter()
        .map(|d| format!("10^{}", d.place))
        .collect();
    let mut head_labels = Vec::new();
    let mut att = Vec::new();
    for (l, heads) in last.attention.iter().enumerate() {
        for (h, a) in heads.iter().enumerate() {
            head_labels.push(format!("L{l}H{h}"));
            att.push(json!({"type": "heatmap", "z": a, "x": last.positions, "y": answer_labels, "colorscale": "Blues", "zmin": 0, "zmax": 1, "visible": att.is_empty()}));
        }
    }
    let mut lay_a = layout("key position", "answer digit", false);
    lay_a["updatemenus"] = one_at_a_time(&head_labels);
    lay_a["yaxis"]["autorange"] = json!("reversed");
    let names: Vec<&str> = last
        .ablation
        .components
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let zero: Vec<&Vec<f64>> = last.ablation.components.iter().map(|c| &c.zero).collect();
    let mean: Vec<&Vec<f64>> = last.ablation.components.iter().map(|c| &c.mean).collect();
    let abl = vec![
        json!({"type": "heatmap", "z": zero, "x": answer_labels, "y": names, "colorscale": "Reds", "name": "zero"}),
        json!({"type": "heatmap", "z": mean, "x": answer_labels, "y": names, "colorscale": "Reds", "name": "mean", "visible": false}),
    ];
    let mut lay_b = layout("answer digit", "component", false);
    lay_b["updatemenus"] = one_at_a_time(&["zero-ablated".to_string(), "mean-ablated".to_string()]);
    lay_b["yaxis"]["autorange"] = json!("reversed");
    Ok(vec![
        Figure {
            id: "naive-sum".into(),
            title: "Each digit through the naive sum",
            caption: format!(
                "The naive digit is (a_k + b_k) mod 10, the carry ignored; the true digit is it or, when a carry arrives, naive + 1. Mean probability the model puts on each, over training, for the examples without and with a carry into the digit (menu: the digit). A digit choosing between the two candidates puts its mass on both until it learns to read the carry. Evaluation set: {} uniform pairs plus {} with a forced cascading carry per place ≥ 10^2.",
                digits::N_UNIFORM,
                digits::N_CASCADE
            ),
            spec: json!({"data": offsets, "layout": lay}),
        },
        Figure {
            id: "sub-tasks".into(),
            title: "Each digit's sub-tasks",
            caption: "Test loss of a digit split by case: no carry arrives, a carry arrives from the pair below (sum ≥ 10), or a cascading carry (the pair below sums to 9 and receives a carry itself). Which case each digit learns first.".into(),
            spec: json!({"data": cases, "layout": lay_c}),
        },
        Figure {
            id: "digit-attention".into(),
            title: "Attention from the answer positions (last checkpoint)",
            caption: "Each head's attention from the position that predicts each answer digit (rows) to every input position (a_k, b_k: the operands' digits of place 10^k; s_k: sum digits already written), averaged over the evaluation set (menu: the head).".into(),
            spec: json!({"data": att, "layout": lay_a}),
        },
        Figure {
            id: "digit-ablation".into(),
            title: "Which components each digit needs (last checkpoint)",
            caption: format!(
                "Loss increase on each answer digit when a head, or one of the {} MLP neurons most damaging on some digit, is zeroed or replaced by its mean over the evaluation set (menu).",
                digits::TOP_NEURONS
            ),
            spec: json!({"data": abl, "layout": lay_b}),
        },
    ])
}

/// The ToyMLP: accuracy, neuron ablation, the top neurons over the input grid.
fn toy_mlp_figures(
    run_dir: &Path,
    cfg: &Experiment,
    task: &ModularTask,
    metrics: &[MetricRow],
) -> Result<Page> {
    let ck = checkpoint::load(&run::last_checkpoint(run_dir)?)?;
    let model: &ToyMlp = ck.model.downcast("a ToyMLP")?;
    let p = model.cfg.p;
    let steps = steps_of(metrics);
    let mut figs = vec![
        loss_figure(metrics, "Cross-entropy on the whole train and test sets."),
        Figure {
            id: "accuracy".into(),
            title: "Train and test accuracy",
            caption: "Test accuracy climbs to 1 well after train accuracy does: the network generalises late, as in grokking.".into(),
            spec: json!({"data": [
                line("train", &steps, &series(metrics, "train_acc")),
                line("test", &steps, &series(metrics, "test_acc"))
            ], "layout": layout("step", "accuracy", false)}),
        },
    ];
    let ((base, _), abl) = analysis::toy_mlp::ablate_neurons(model, task.op)?;
    let top: Vec<&ablation::AblationRow> = abl.iter().take(20).collect();
    figs.push(Figure {
        id: "ablation".into(),
        title: "Which neurons matter: ablation",
        caption: format!("Loss on all {} pairs with one hidden neuron zeroed, the 20 most important (loss with nothing ablated: {base:.2e}). The hover shows the loss with the neuron set to its mean instead.", p * p),
        spec: json!({"data": [{"type": "bar",
            "x": top.iter().map(|r| format!("N{}", r.index)).collect::<Vec<_>>(),
            "y": top.iter().map(|r| r.zero_loss).collect::<Vec<_>>(),
            "customdata": top.iter().map(|r| r.mean_loss).collect::<Vec<_>>(),
            "hovertemplate": "%{x}: zero-ablated loss %{y:.3e}, mean-ablated %{customdata:.3e}<extra></extra>"}],
            "layout": layout("neuron", "loss", false)}),
    });
    let ids: Vec<usize> = abl.iter().take(4).map(|r| r.index).collect();
    let grids = analysis::toy_mlp::neuron_grids(model, &ids)?;
    let traces: Vec<Value> = ids
        .iter()
        .zip(&grids)
        .enumerate()
        .map(|(i, (n, g))| json!({"type": "heatmap", "z": g, "colorscale": "Blues", "visible": i == 0, "name": format!("neuron {n}")}))
        .collect();
    let mut lay = layout("b", "a", false);
    lay["updatemenus"] = one_at_a_time(
        &ids.iter()
            .map(|n| format!("neuron {n}"))
            .collect::<Vec<_>>(),
    );
    figs.push(Figure {
        id: "neurons".into(),
        title: "The most important neurons over all inputs",
        caption: "A hidden neuron's activation for every input (a, b) (choose the neuron with the menu). Periodic patterns in a and b are the Fourier features modular addition is computed with.".into(),
        spec: json!({"data": traces, "layout": lay}),
    });
    Ok(Page {
        extra_html: String::new(),
        heading: format!("ToyMLP on (a {} b) mod {p}", task.op.symbol()),
        cfg_line: format!(
            "{} training pairs, embedding {}, hidden {}, batch {}, lr {}, weight decay {}, seed {}",
            task.n_train(),
            model.cfg.d_embed,
            model.cfg.d_hidden,
            cfg.config
                .train
                .batch_size
                .map_or("full".into(), |b| b.to_string()),
            cfg.config.optim.lr,
            cfg.optim.weight_decay,
            cfg.seed
        ),
        figs,
    })
}

/// Superposition: each instance's loss and feature geometry.
fn superposition_figures(run_dir: &Path, cfg: &Experiment, metrics: &[MetricRow]) -> Result<Page> {
    let ck = checkpoint::load(&run::last_checkpoint(run_dir)?)?;
    let model: &Superposition = ck.model.downcast("a superposition model")?;
    let geo = analysis::superposition::geometry(model);
    let steps = steps_of(metrics);
    let label =
        |g: &analysis::superposition::InstanceGeometry| format!("p = {:.3}", g.feature_probability);
    let mut figs = vec![loss_figure(metrics, "Importance-weighted squared error, summed over the instances (train: that step's batch; test: a fixed sample).")];
    figs.push(Figure {
        id: "instances".into(),
        title: "Loss of each instance",
        caption: "Sparser features (smaller p) are present less often, so their instance's loss is lower.".into(),
        spec: json!({"data": geo.iter().enumerate().map(|(i, g)| line(&label(g), &steps, &series(metrics, &format!("test_loss_i{i}")))).collect::<Vec<_>>(), "layout": layout("step", "test loss", true)}),
    });
    // Each instance's columns W_f as segments from the origin (null breaks the line between them).
    let nf = model.cfg.n_features;
    let traces: Vec<Value> = geo
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut x = Vec::new();
            let mut y = Vec::new();
            let mut text = Vec::new();
            for (f, w) in g.columns.iter().enumerate() {
                x.extend([Some(0.0), Some(w[0]), None]);
                y.extend([Some(0.0), Some(*w.get(1).unwrap_or(&0.0)), None]);
                let t = format!("feature {f}, norm {:.2}", g.norms[f]);
                text.extend([t.clone(), t, String::new()]);
            }
            json!({"type": "scatter", "mode": "lines+markers", "x": x, "y": y, "text": text, "hoverinfo": "text", "name": label(g), "visible": i == 0})
        })
        .collect();

    let lim = geo
        .iter()
        .flat_map(|g| g.norms.iter())
        .fold(1.0f64, |m, &v| m.max(v))
        * 1.15;
    let mut lay = layout("hidden dimension 0", "hidden dimension 1", false);
    lay["xaxis"]["range"] = json!([-lim, lim]);
    lay["yaxis"]["range"] = json!([-lim, lim]);
    lay["yaxis"]["scaleanchor"] = json!("x");
    lay["xaxis"]["constrain"] = json!("domain");
    lay["hovermode"] = json!("closest");
    lay["updatemenus"] = one_at_a_time(&geo.iter().map(label).collect::<Vec<_>>());
    figs.push(Figure {
        id: "geometry".into(),
        title: "Feature directions, per instance",
        caption: "Each feature's column W_f in the hidden space (choose the instance with the menu). Dense features (p = 1): only the most important get a direction, orthogonal ones; sparse features: more are packed in, as antipodal pairs or a pentagon.".into(),
        spec: json!({"data": traces, "layout": lay}),
    });
    let bars: Vec<Value> = (0..nf)
        .map(|f| json!({"type": "bar", "name": format!("feature {f}"), "x": geo.iter().map(label).collect::<Vec<_>>(), "y": geo.iter().map(|g| g.norms[f]).collect::<Vec<_>>()}))
        .collect();
    let mut lay = layout("instance", "‖W_f‖", false);
    lay["barmode"] = json!("group");
    figs.push(Figure {
        id: "norms".into(),
        title: "Which features are represented",
        caption: format!("The norm of each feature's column (≈ 1 represented, ≈ 0 dropped) per instance; features are in order of importance (0.9^i). Dimensions per feature (n_hidden / ‖W‖²_F): {}.", geo.iter().map(|g| format!("{:.2}", g.dims_per_feature)).collect::<Vec<_>>().join(", ")),
        spec: json!({"data": bars, "layout": lay}),
    });
    let c = &model.cfg;
    Ok(Page {
        extra_html: String::new(),
        heading: format!(
            "Superposition: {} features in {} dimensions",
            c.n_features, c.n_hidden
        ),
        cfg_line: format!(
            "{} instances, feature probability {} to {}, importance {}^i, batch {}, lr {}, seed {}",
            c.n_instances,
            c.max_feature_probability,
            c.min_feature_probability,
            c.importance_decay,
            cfg.config.train.batch_size.unwrap_or(0),
            cfg.config.optim.lr,
            cfg.seed
        ),
        figs,
    })
}

/// Write the page: headline from `summary.json`, the figures, and the drawing script.
pub(crate) fn write_page(run_dir: &Path, page: Page) -> Result<PathBuf> {
    let figs = page.figs;
    let summary = run::read_summary(run_dir).ok().flatten();
    let headline = match summary {
        Some(s) => {
            let mut h = format!(
                "{} steps in {:.0} s. Final train loss {:.2e}, test loss {:.2e}",
                s.steps, s.wall_seconds, s.final_train_loss, s.final_test_loss
            );
            if let Some(a) = s.final_test_acc {
                h += &format!(
                    ", test accuracy {a:.3}. First step with test accuracy ≥ 0.99: {}",
                    s.grok_step.map_or("none".into(), |g| g.to_string())
                );
            }
            if let Some(e) = s.final_test_exact {
                h += &format!("; whole sums right {:.1}%", 100.0 * e);
            }
            h + "."
        }
        None => String::new(),
    };
    let name = run_dir.file_name().unwrap_or_default().to_string_lossy();
    let mut body = String::new();
    for f in &figs {
        body += &format!(
            "<h2>{}</h2>\n<div id=\"fig-{}\" class=\"plot\"></div>\n<p class=\"caption\">{}</p>\n",
            html_escape(f.title),
            f.id,
            html_escape(&f.caption)
        );
    }
    let specs: serde_json::Map<String, Value> = figs
        .iter()
        .map(|f| (format!("fig-{}", f.id), f.spec.clone()))
        .collect();
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>toylens report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
.plot {{ height: 440px; }}
table.summary {{ border-collapse: collapse; font-size: 13px; }}
table.summary td, table.summary th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
p.caption {{ color: #444; max-width: 62em; }}
</style>
<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
const consoleError = console.error;
console.error = (...args) => {{ window.__errors.push(args.join(" ")); consoleError(...args); }};
</script>
<script>{plotly}</script>
</head><body>
<h1>{heading}: {title}</h1>
<p>{headline} Config: {cfg_line}.</p>
{body}
{extra}
<pre id="status" hidden>pending</pre>
<script>
const FIGS = {specs};
let drawn = 0;
const jobs = Object.entries(FIGS).map(([id, fig]) =>
  Plotly.newPlot(id, fig.data, fig.layout, {{responsive: true}}).then(() => {{ drawn++; }}, e => window.__errors.push(id + ": " + e)));
Promise.all(jobs).then(() => {{
  document.getElementById("status").textContent = JSON.stringify({{figures: jobs.length, drawn: drawn, errors: window.__errors}});
}});
</script>
</body></html>
"#,
        title = html_escape(&name),
        plotly = PLOTLY,
        headline = html_escape(&headline),
        heading = html_escape(&page.heading),
        cfg_line = html_escape(&page.cfg_line),
        specs = script_safe(&Value::Object(specs).to_string()),
        extra = page.extra_html,
    );
    let out = run_dir.join("report.html");
    crate::io::checkpoint::write_atomic(&out, html.as_bytes())?;
    Ok(out)
}
