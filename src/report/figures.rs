//! The analysis pictures (PNG and SVG): W_E's Fourier norms, neuron clusters, a neuron over the input
//! grid, attention per head over inputs, the ablation ranking, progress measures with the phases,
//! the ToyMLP's neuron heat maps and the superposition intro figure. Analysis computes; this draws.

use crate::analysis::ablation::{AblationRow, Unit};
use crate::analysis::circuits::factored::dot;
use crate::analysis::induction::{InductionHeads, PhaseChange};
use crate::analysis::neurons::NeuronFrequencies;
use crate::analysis::superposition::{geometry, InstanceGeometry};
use crate::analysis::toy_mlp::neuron_grids;
use crate::analysis::{Analysis, Phases, ProgressRow};
use crate::error::{Error, Result};
use crate::hooks::CacheFilter;
use crate::io::run::MetricRow;
use crate::models::superposition::Superposition;
use crate::models::toy_mlp::ToyMlp;
use crate::models::transformer::Transformer;
use crate::report::plot::render;
use crate::report::plot::{self, Band, Series};
use crate::tasks::modular::{ModularTask, Op};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

fn both(dir: &Path, stem: &str, mut draw: impl FnMut(&Path) -> Result<()>) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for ext in ["png", "svg"] {
        let p = dir.join(format!("{stem}.{ext}"));
        draw(&p)?;
        out.push(p);
    }
    Ok(out)
}

/// The grokking phases as shaded bands.
fn phase_bands(phases: Option<&Phases>, x_max: f64) -> Vec<Band<'static>> {
    let mut bands = Vec::new();
    if let Some(ph) = phases {
        let m = ph.memorisation_end as f64;
        bands.push(Band {
            from: 0.0,
            to: m,
            label: "memorisation",
            color: plot::BLUE_,
        });
        if let Some(c) = ph.cleanup_start {
            bands.push(Band {
                from: m,
                to: c as f64,
                label: "circuit formation",
                color: plot::ORANGE_,
            });
            let e = ph.cleanup_end.map_or(x_max, |e| e as f64);
            bands.push(Band {
                from: c as f64,
                to: e,
                label: "cleanup",
                color: plot::GREEN_,
            });
        }
    }
    bands
}

/// λ̂ (mean ± std over chains) at each checkpoint below the run's train and test loss, with the
/// grokking phases shaded where the run has them: `{stem}.png` and `.svg` in `dir`.
pub fn llc(
    steps: &[u64],
    estimates: &[crate::analysis::llc::LlcEstimate],
    metrics: &[crate::io::run::MetricRow],
    phases: Option<&Phases>,
    (dir, stem): (&Path, &str),
) -> Result<Vec<PathBuf>> {
    let pts = |k: &str| crate::io::run::column_points(metrics, k);
    let (train, test) = (pts("train_loss"), pts("test_loss"));
    let mean: Vec<(f64, f64)> = steps
        .iter()
        .zip(estimates)
        .map(|(&s, e)| (s as f64, e.llc_mean))
        .collect();
    let bars: Vec<(f64, f64, f64)> = steps
        .iter()
        .zip(estimates)
        .map(|(&s, e)| (s as f64, e.llc_mean, e.llc_std))
        .collect();
    // Each observed set's λ̂ (`--observe`), beside the sampling set's.
    let sets: Vec<String> = estimates
        .first()
        .map(|e| {
            e.observed
                .iter()
                .map(|o| format!("λ̂ on {}", o.set))
                .collect()
        })
        .unwrap_or_default();
    let observed: Vec<Vec<(f64, f64)>> = (0..sets.len())
        .map(|k| {
            steps
                .iter()
                .zip(estimates)
                .map(|(&s, e)| (s as f64, e.observed[k].llc_mean))
                .collect()
        })
        .collect();
    let extremes = observed.iter().flatten().map(|p| p.1);
    let lo = bars
        .iter()
        .map(|b| b.1 - b.2)
        .chain(extremes.clone())
        .fold(0.0f64, f64::min);
    let hi = bars
        .iter()
        .map(|b| b.1 + b.2)
        .chain(extremes)
        .fold(0.0f64, f64::max)
        * 1.1
        + 1e-9;
    let x_max = steps.last().copied().unwrap_or(1).max(1) as f64;
    let bands = phase_bands(phases, x_max);
    let lower = plot::Lower {
        label: "local learning coefficient",
        range: (lo * 1.1, hi),
        error_bars: &bars,
    };
    both(dir, stem, |f| {
        plot::panels_with_errors(
            f,
            "Local learning coefficient over training (mean ± std over chains)",
            x_max,
            &[
                Series {
                    name: "train loss",
                    points: &train,
                    color: plot::BLUE_,
                },
                Series {
                    name: "test loss",
                    points: &test,
                    color: plot::ORANGE_,
                },
            ],
            &std::iter::once(Series {
                name: "λ̂",
                points: &mean,
                color: plot::GREEN_,
            })
            .chain(
                sets.iter()
                    .zip(&observed)
                    .enumerate()
                    .map(|(k, (n, p))| Series {
                        name: n,
                        points: p,
                        color: plot::PALETTE[(k + 3) % plot::PALETTE.len()],
                    }),
            )
            .collect::<Vec<_>>(),
            &bands,
            &lower,
        )
    })
}

/// Each head's weight-restricted λ̂ over a run (`llc_heads.png` and `.svg` in `dir`): the run's
/// training loss (and loss on repeats, where the task has it) above, one line per head below, an
/// induction run's phase change shaded.
pub fn llc_heads(
    steps: &[u64],
    heads: &[String],
    estimates: &[Vec<crate::analysis::llc::LlcEstimate>],
    metrics: &[MetricRow],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let pts = |k: &str| crate::io::run::column_points(metrics, k);
    let (train, repeats) = (pts("train_loss"), pts("test_loss_repeat"));
    let mut losses = vec![Series {
        name: "train loss",
        points: &train,
        color: plot::BLUE_,
    }];
    if !repeats.is_empty() {
        losses.push(Series {
            name: "test loss on repeats",
            points: &repeats,
            color: plot::ORANGE_,
        });
    }
    let lines: Vec<Vec<(f64, f64)>> = (0..heads.len())
        .map(|h| {
            steps
                .iter()
                .zip(estimates)
                .map(|(&s, row)| (s as f64, row[h].llc_mean))
                .collect()
        })
        .collect();
    let names: Vec<String> = heads
        .iter()
        .map(|h| {
            // blocks.L.attn.head.H → LxHy
            let mut it = h.split('.');
            match (it.nth(1), it.nth(2)) {
                (Some(l), Some(hh)) => format!("L{l}H{hh}"),
                _ => h.clone(),
            }
        })
        .collect();
    let series = plot::palette_series(
        names
            .iter()
            .map(String::as_str)
            .zip(lines.iter().map(Vec::as_slice)),
    );
    let x_max = steps.last().copied().unwrap_or(1).max(1) as f64;
    let change = crate::analysis::induction::run_phase_change(metrics);
    let bands: Vec<Band> = change
        .iter()
        .map(|c| Band {
            from: c.onset as f64,
            to: c.end as f64,
            label: "phase change",
            color: plot::ORANGE_,
        })
        .collect();
    let values = lines.iter().flatten().map(|p| p.1);
    let (lo, hi) = values.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lower = plot::Lower {
        label: "weight-restricted λ̂",
        range: (lo * 1.1, hi * 1.1 + 1e-9),
        error_bars: &[],
    };
    both(dir, "llc_heads", |f| {
        plot::panels_with_errors(
            f,
            "Each head's weight-restricted λ̂ (only its Q/K/V/O slices sampled)",
            x_max,
            &losses,
            &series,
            &bands,
            &lower,
        )
    })
}

/// Each chain's minibatch loss over the draws (after burn-in): `{stem}.png` and `.svg` in `dir`.
pub fn llc_traces(
    traces: &[(String, Vec<(f64, f64)>)],
    title: &str,
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>> {
    let series = plot::palette_series(traces.iter().map(|(n, p)| (n.as_str(), p.as_slice())));
    both(dir, stem, |f| {
        plot::log_y_lines(f, title, "draw", "minibatch loss", &series)
    })
}

/// Each step's norms of the sampler's terms, averaged over the chains (log scale), into `dir`.
pub fn llc_norms(e: &crate::analysis::llc::LlcEstimate, dir: &Path) -> Result<Vec<PathBuf>> {
    let steps = e.chains.iter().map(|c| c.norms.len()).min().unwrap_or(0);
    let k = e.chains.len().max(1) as f64;
    type Term = fn(&crate::analysis::llc::StepNorms) -> f64;
    let terms: [(&str, Term); 4] = [
        ("scaled_grad", |n| n.scaled_grad),
        ("localization", |n| n.localization),
        ("noise", |n| n.noise),
        ("distance", |n| n.distance),
    ];
    let lines: Vec<(String, Vec<(f64, f64)>)> = terms
        .iter()
        .map(|(name, term)| {
            let points = (0..steps)
                .map(|i| {
                    let v: f64 = e.chains.iter().map(|c| term(&c.norms[i])).sum();
                    (i as f64, v / k)
                })
                .filter(|&(_, v)| v > 0.0 && v.is_finite())
                .collect();
            (name.to_string(), points)
        })
        .collect();
    let series = plot::palette_series(lines.iter().map(|(n, p)| (n.as_str(), p.as_slice())));
    let title = format!(
        "{}: norms of each step's terms (mean over chains)",
        e.sampler.name()
    );
    both(dir, "llc_norms", |f| {
        plot::log_y_lines(f, &title, "step", "norm", &series)
    })
}

/// Essential dynamics (`dynamics.png` and `.svg` in `dir`): the trajectory in PC1–PC2, PC1–PC3
/// and PC2–PC3 with its turns, the run's losses below and λ̂ where `llc` has estimated it.
pub fn dynamics(
    d: &crate::analysis::dynamics::Dynamics,
    set: &str,
    metrics: &[MetricRow],
    llc: Option<&[(u64, f64, f64)]>,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    use super::trajectory::{draw_dynamics, Curves, View};
    let pcs = d.explained.len();
    let pairs: Vec<(usize, usize)> = if pcs >= 3 {
        vec![(0, 1), (0, 2), (1, 2)]
    } else {
        vec![(0, 1)]
    };
    let views: Vec<View> = pairs
        .iter()
        .map(|&(a, b)| View {
            x_label: format!("PC{} ({:.0}%)", a + 1, 100.0 * d.explained[a]),
            y_label: format!("PC{} ({:.0}%)", b + 1, 100.0 * d.explained[b]),
            points: d.scores.iter().map(|s| (s[a], s[b])).collect(),
        })
        .collect();
    let pts = |k: &str| crate::io::run::column_points(metrics, k);
    let losses: Vec<(&str, Vec<(f64, f64)>)> = ["train_loss", "test_loss", "test_loss_repeat"]
        .into_iter()
        .map(|k| (k, pts(k)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let mut panels = vec![Curves {
        title: "loss".into(),
        y_label: "loss".into(),
        series: plot::palette_series(losses.iter().map(|(n, p)| (*n, p.as_slice()))),
        log: true,
    }];
    let llc_points: Vec<(f64, f64)> = llc
        .unwrap_or_default()
        .iter()
        .map(|&(s, m, _)| (s as f64, m))
        .collect();
    if !llc_points.is_empty() {
        panels.push(Curves {
            title: "local learning coefficient (toylens llc RUN)".into(),
            y_label: "λ̂".into(),
            series: vec![Series {
                name: "λ̂",
                points: &llc_points,
                color: plot::GREEN_,
            }],
            log: false,
        });
    }
    let steps: Vec<usize> = d.turns.iter().map(|t| t.index).collect();
    let title = format!(
        "Essential dynamics: outputs on {set} ({} values) at {} checkpoints; turns circled",
        d.dims,
        d.steps.len()
    );
    both(dir, "dynamics", |f| {
        draw_dynamics(f, &title, (&views, &d.steps, &steps), &panels)
    })
}

/// Pictures of one checkpoint into `dir`; returns the files written.
pub fn checkpoint(
    model: &Transformer,
    p: usize,
    a: &Analysis,
    nf: &NeuronFrequencies,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut files = Vec::new();
    let norms: Vec<(String, f64)> = a
        .w_e_frequency_norms
        .iter()
        .enumerate()
        .map(|(k, &v)| (if k == 0 { "c".into() } else { k.to_string() }, v))
        .collect();
    files.extend(both(dir, "we_fourier_norms", |f| {
        plot::bars(
            f,
            "W_E: norm of its Fourier components per frequency",
            "frequency",
            "norm",
            &norms,
        )
    })?);
    let mut sizes: Vec<(String, f64)> = nf
        .clusters
        .iter()
        .map(|c| (c.frequency.to_string(), c.size as f64))
        .collect();
    sizes.sort_by_key(|s| s.0.parse::<usize>().unwrap_or(0));
    files.extend(both(dir, "neuron_clusters", |f| {
        plot::bars(
            f,
            "Neurons per best frequency",
            "frequency",
            "neurons",
            &sizes,
        )
    })?);

    // Activations over the (a, b) grid at the answer position.
    let batch = ModularTask::all_pairs_batch(p, Op::Add);
    let last = model.cfg.n_layers - 1;
    let names = vec![
        format!("blocks.{last}.mlp.hook_post"),
        "blocks.0.attn.hook_pattern".to_string(),
    ];
    let (_, cache) =
        model.run_with_cache(batch.tokens.view(), CacheFilter::Names(names.clone()))?;
    let post = cache.get(&names[0])?;
    let neuron = (0..nf.share.len())
        .max_by(|&i, &j| nf.share[i].total_cmp(&nf.share[j]))
        .unwrap_or(0);
    let grid: Vec<Vec<f64>> = (0..p)
        .map(|b| {
            (0..p)
                .map(|x| post[[x * p + b, 2, neuron]] as f64)
                .collect()
        })
        .collect();
    let title = format!(
        "Neuron {neuron}: frequency {}, share {:.2}",
        nf.best_frequency[neuron], nf.share[neuron]
    );
    files.extend(both(dir, "neuron_activation", |f| {
        plot::heatmaps(
            f,
            &title,
            &[(format!("neuron {neuron}"), grid.clone())],
            "a",
            "b",
        )
    })?);
    let pat = cache.get(&names[1])?;
    let panels: Vec<(String, Vec<Vec<f64>>)> = (0..model.cfg.n_heads)
        .map(|h| {
            (
                format!("head {h}"),
                (0..p)
                    .map(|b| (0..p).map(|x| pat[[x * p + b, h, 2, 0]] as f64).collect())
                    .collect(),
            )
        })
        .collect();
    files.extend(both(dir, "attention_patterns", |f| {
        plot::heatmaps(
            f,
            "Attention from '=' to a, per head, over the inputs",
            &panels,
            "a",
            "b",
        )
    })?);
    Ok(files)
}

/// The ablation ranking (top `n` units by zero-ablated loss).
pub fn ablation(rows: &[AblationRow], n: usize, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let bars: Vec<(String, f64)> = rows
        .iter()
        .take(n)
        .map(|r| {
            (
                format!(
                    "{}{}.{}",
                    if r.unit == Unit::Head { "H" } else { "N" },
                    r.layer,
                    r.index
                ),
                r.zero_loss,
            )
        })
        .collect();
    both(dir, "ablation_ranking", |f| {
        plot::bars(
            f,
            "Loss with one unit zeroed (N = neuron, H = head)",
            "unit",
            "loss",
            &bars,
        )
    })
}

/// Each layer's heads' mean attention patterns (`attention_L<l>.png` and `.svg`), with their
/// previous-token scores in the panel titles.
pub fn attention(
    heads: &[crate::analysis::generic::HeadAttention],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let layers = heads.iter().map(|h| h.layer + 1).max().unwrap_or(0);
    for l in 0..layers {
        let panels: Vec<(String, Vec<Vec<f64>>)> = heads
            .iter()
            .filter(|h| h.layer == l)
            .map(|h| {
                (
                    format!("head {}.{} (prev {:.2})", l, h.head, h.previous_token),
                    h.mean_pattern.clone(),
                )
            })
            .collect();
        files.extend(both(dir, &format!("attention_L{l}"), |f| {
            plot::heatmaps(
                f,
                &format!("Layer {l}: mean attention pattern on the test set"),
                &panels,
                "key position",
                "query position",
            )
        })?);
    }
    Ok(files)
}

/// Progress measures over training with the phases shaded.
pub fn progress(rows: &[ProgressRow], phases: Option<&Phases>, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let pts = |f: &dyn Fn(&ProgressRow) -> f64| {
        rows.iter()
            .map(|r| (r.step as f64, f(r)))
            .collect::<Vec<_>>()
    };
    let (all, restricted, excluded) = (
        pts(&|r| r.loss_all),
        pts(&|r| r.restricted_loss),
        pts(&|r| r.excluded_loss),
    );
    let max_w = rows
        .iter()
        .map(|r| r.sum_sq_weights)
        .fold(0.0f64, f64::max)
        .max(1e-30);
    let (ge, gl, w) = (
        pts(&|r| r.gini_w_e),
        pts(&|r| r.gini_w_l),
        pts(&|r| r.sum_sq_weights / max_w),
    );
    let x_max = rows.last().map_or(1.0, |r| r.step as f64).max(1.0);
    let bands = phase_bands(phases, x_max);
    both(dir, "progress", |f| {
        plot::progress_panels(
            f,
            "Progress measures over training",
            x_max,
            &[
                Series {
                    name: "loss, all pairs",
                    points: &all,
                    color: plot::BLUE_,
                },
                Series {
                    name: "restricted loss",
                    points: &restricted,
                    color: plot::GREEN_,
                },
                Series {
                    name: "excluded loss (train)",
                    points: &excluded,
                    color: plot::ORANGE_,
                },
            ],
            &[
                Series {
                    name: "Gini of W_E",
                    points: &ge,
                    color: plot::BLUE_,
                },
                Series {
                    name: "Gini of W_L",
                    points: &gl,
                    color: plot::ORANGE_,
                },
                Series {
                    name: "sum of squared weights / max",
                    points: &w,
                    color: plot::GREEN_,
                },
            ],
            &bands,
        )
    })
}

/// A line's name, points and colour, owned (for series whose names are made at run time).
type OwnedSeries = (String, Vec<(f64, f64)>, RGBColor);

fn named_series(v: &[OwnedSeries]) -> Vec<Series<'_>> {
    v.iter()
        .map(|(n, p, c)| Series {
            name: n,
            points: p,
            color: *c,
        })
        .collect()
}

/// An induction run over training (`induction.png`/`.svg`): the losses on repeats and on first
/// occurrences (log scale) above; below, each head's induction score (the later layers' heads, or
/// every head of a one-layer model), the previous-token score of the earlier head with the highest
/// one, and the K-composition into the induction head from the head it K-composes with most; the
/// phase change shaded.
pub fn induction_run(
    rows: &[MetricRow],
    phase: Option<&PhaseChange>,
    heads: Option<&InductionHeads>,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let column = |name: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| r.get(name).map(|v| (r.step as f64, v)))
            .collect()
    };
    let columns: Vec<String> = rows
        .first()
        .map(|r| r.values.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let is_later = |c: &&String| c.starts_with("heads_L") && !c.starts_with("heads_L0");
    let any_later = columns
        .iter()
        .any(|c| is_later(&c) && c.ends_with("_induction"));
    let mut lower: Vec<(String, Vec<(f64, f64)>)> = columns
        .iter()
        .filter(|c| c.ends_with("_induction") && (!any_later || is_later(c)))
        .map(|c| (c.trim_start_matches("heads_").replace('_', " "), column(c)))
        .collect();
    if let Some(h) = heads {
        let (il, ih) = h.induction_head;
        if let Some(((pl, ph), _)) = h.previous_token_head {
            let prev = format!("heads_L{pl}H{ph}_prev");
            lower.push((format!("L{pl}H{ph} previous-token"), column(&prev)));
        }
        if let Some(&((kl, kh), _)) = h.k_composition.first() {
            let k = format!("heads_kcomp_L{kl}H{kh}_L{il}H{ih}");
            lower.push((format!("K-comp L{kl}H{kh}→L{il}H{ih}"), column(&k)));
        }
    }
    let upper = [
        ("loss on repeats", column("test_loss_repeat")),
        ("loss on first occurrences", column("test_loss_first")),
    ];
    let x_max = rows.last().map_or(1.0, |r| r.step as f64).max(1.0);
    let bands: Vec<Band> = phase
        .map(|p| Band {
            from: p.onset as f64,
            to: p.end as f64,
            label: "phase change",
            color: plot::ORANGE_,
        })
        .into_iter()
        .collect();
    let series = |v: &'_ [(String, Vec<(f64, f64)>)], offset: usize| -> Vec<OwnedSeries> {
        v.iter()
            .enumerate()
            .map(|(i, (n, p))| (n.clone(), p.clone(), plot::PALETTE[(i + offset) % 10]))
            .collect()
    };
    let upper: Vec<(String, Vec<(f64, f64)>)> =
        upper.into_iter().map(|(n, p)| (n.to_string(), p)).collect();
    let (up, low) = (series(&upper, 0), series(&lower, 2));
    both(dir, "induction", |f| {
        plot::progress_panels(
            f,
            "In-context learning over training: losses; head scores (heads monitor)",
            x_max,
            &named_series(&up),
            &named_series(&low),
            &bands,
        )
    })
}

/// The ablation ranking and the heat maps of the `k` most important neurons (PNG and SVG) into `dir`.
pub fn toy_mlp(model: &ToyMlp, rows: &[AblationRow], k: usize, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = ablation(rows, 20, dir)?;
    let top: Vec<usize> = rows.iter().take(k).map(|r| r.index).collect();
    let grids = neuron_grids(model, &top)?;
    let panels: Vec<(String, Vec<Vec<f64>>)> = top
        .iter()
        .zip(grids)
        .map(|(n, g)| (format!("neuron {n}"), g))
        .collect();
    for ext in ["png", "svg"] {
        let f = dir.join(format!("neuron_heatmaps.{ext}"));
        plot::heatmaps(
            &f,
            "Hidden activations of the most important neurons over all inputs (rows a, columns b)",
            &panels,
            "b",
            "a",
        )?;
        files.push(f);
    }
    Ok(files)
}

// ---------------------------------------------------------------------------------------------
// Toy Models of Superposition: the intro figure.

/// Colour of feature `f` of `n` by importance: the most important yellow, the least dark purple
/// (viridis' ends, as in the paper's figure).
fn importance_color(f: usize, n: usize) -> RGBColor {
    let t = if n <= 1 {
        0.0
    } else {
        f as f64 / (n - 1) as f64
    };
    let lerp = |a: f64, b: f64| (a + (b - a) * t) as u8;
    RGBColor(lerp(253.0, 68.0), lerp(231.0, 1.0), lerp(37.0, 84.0))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    geo: &[InstanceGeometry],
    n_hidden: usize,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root
        .titled(
            "Superposition: each instance's feature columns W_f in the hidden space (colour = importance, yellow most important)",
            ("sans-serif", 18),
        )
        .map_err(|x| e(&x))?;
    let h = root.dim_in_pixel().1;
    let (top, rest) = root.split_vertically((h as f64 * 0.42) as u32);
    let (middle, bottom) = rest.split_vertically((h as f64 * 0.29) as u32);
    let n = geo.len();
    let nf = geo.first().map_or(0, |g| g.norms.len());
    let lim = geo
        .iter()
        .flat_map(|g| g.norms.iter())
        .fold(1.0f64, |m, &v| m.max(v))
        * 1.15;
    for (area, g) in top.split_evenly((1, n)).into_iter().zip(geo) {
        let mut c = ChartBuilder::on(&area)
            .caption(
                format!("p = {:.3}", g.feature_probability),
                ("sans-serif", 14),
            )
            .margin(6)
            .build_cartesian_2d(-lim..lim, -lim..lim)
            .map_err(|x| e(&x))?;
        c.draw_series([
            PathElement::new(vec![(-lim, 0.0), (lim, 0.0)], RGBColor(220, 220, 220)),
            PathElement::new(vec![(0.0, -lim), (0.0, lim)], RGBColor(220, 220, 220)),
        ])
        .map_err(|x| e(&x))?;
        // Least important first, so the important ones are drawn on top.
        for f in (0..nf).rev() {
            let w = &g.columns[f];
            let (x, y) = (w[0], if n_hidden > 1 { w[1] } else { 0.0 });
            let col = importance_color(f, nf);
            c.draw_series([PathElement::new(
                vec![(0.0, 0.0), (x, y)],
                col.stroke_width(3),
            )])
            .map_err(|x| e(&x))?;
            c.draw_series([Circle::new((x, y), 4, col.filled())])
                .map_err(|x| e(&x))?;
        }
    }
    for (area, g) in middle.split_evenly((1, n)).into_iter().zip(geo) {
        let mut c = ChartBuilder::on(&area)
            .caption("‖W_f‖ per feature", ("sans-serif", 12))
            .margin(6)
            .x_label_area_size(18)
            .y_label_area_size(28)
            .build_cartesian_2d(0..nf, 0.0..lim)
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .disable_mesh()
            .x_labels(nf.min(10))
            .y_labels(3)
            .label_style(("sans-serif", 10))
            .draw()
            .map_err(|x| e(&x))?;
        c.draw_series(g.norms.iter().enumerate().map(|(f, &v)| {
            let mut r = Rectangle::new([(f, 0.0), (f + 1, v)], importance_color(f, nf).filled());
            r.set_margin(0, 0, 2, 2);
            r
        }))
        .map_err(|x| e(&x))?;
    }
    let dmax = geo
        .iter()
        .flat_map(|g| g.dimensionality.iter().copied().chain([g.dims_per_feature]))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&bottom)
        .caption(
            "dimensions per feature (line: n_hidden / ‖W‖²_F; dots: each feature's dimensionality D_f)",
            ("sans-serif", 14),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..dmax)
        .map_err(|x| e(&x))?;
    c.configure_mesh()
        .x_desc("instance (feature probability falls to the right)")
        .x_labels(n.min(20))
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                format!("{:.3}", geo[i as usize].feature_probability)
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 11))
        .draw()
        .map_err(|x| e(&x))?;
    c.draw_series(LineSeries::new(
        geo.iter()
            .enumerate()
            .map(|(i, g)| (i as f64, g.dims_per_feature)),
        BLACK.stroke_width(2),
    ))
    .map_err(|x| e(&x))?;
    for (i, g) in geo.iter().enumerate() {
        c.draw_series(g.dimensionality.iter().enumerate().map(|(f, &d)| {
            Circle::new(
                (i as f64 + (f as f64 - nf as f64 / 2.0) * 0.04, d),
                4,
                importance_color(f, nf).filled(),
            )
        }))
        .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

/// The intro figure of a trained model to `path` (PNG or SVG); with more than two hidden dimensions,
/// the columns are drawn in the first two.
pub fn superposition(m: &Superposition, path: &Path) -> Result<()> {
    let geo = geometry(m);
    let w = (190 * geo.len()).max(900) as u32;
    let nh = m.cfg.n_hidden;
    render(path, (w, 640), |a| draw(a, &geo, nh), |a| draw(a, &geo, nh))
}

/// A digits run over training, a picture per answer digit (`digit_<place>.png`): its loss by
/// sub-task (log) above, and below where its probability goes relative to the naive sum: on the
/// naive digit and on naive + 1, for examples without and with a carry into it.
pub fn digits_run(
    rows: &[(u64, Vec<crate::analysis::digits::DigitStats>)],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let Some((last, first)) = rows.last().map(|r| (r.0, &r.1)) else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for (j, d) in first.iter().enumerate() {
        let pts = |f: &dyn Fn(&crate::analysis::digits::DigitStats) -> f64| -> Vec<(f64, f64)> {
            rows.iter()
                .map(|(s, ds)| (*s as f64, f(&ds[j])))
                .filter(|p| p.1.is_finite())
                .collect()
        };
        let case_pts: Vec<Vec<(f64, f64)>> = (0..3).map(|c| pts(&|x| x.cases[c].loss)).collect();
        let names = ["no carry in", "carry in", "cascading carry"];
        let log: Vec<Series> = case_pts
            .iter()
            .zip(names)
            .enumerate()
            .filter(|(_, (p, _))| !p.is_empty())
            .map(|(c, (p, name))| Series {
                name,
                points: p,
                color: plot::PALETTE[c],
            })
            .collect();
        let lin_pts = [
            pts(&|x| x.offsets_no_carry[0]),
            pts(&|x| x.offsets_no_carry[1]),
            pts(&|x| x.offsets_carry[0]),
            pts(&|x| x.offsets_carry[1]),
        ];
        let lin_names = [
            "p(naive) | no carry (right)",
            "p(naive+1) | no carry",
            "p(naive) | carry (carry missed)",
            "p(naive+1) | carry (right)",
        ];
        let lin: Vec<Series> = lin_pts
            .iter()
            .zip(lin_names)
            .enumerate()
            .map(|(i, (p, name))| Series {
                name,
                points: p,
                color: plot::PALETTE[3 + i],
            })
            .collect();
        let title = format!(
            "digit 10^{}: loss by case, probability on the naive sum",
            d.place
        );
        files.extend(both(dir, &format!("digit_{}", d.place), |f| {
            plot::progress_panels(f, &title, last.max(1) as f64, &log, &lin, &[])
        })?);
    }
    Ok(files)
}

/// One digits checkpoint: each head's mean attention from the answer positions (rows: answer digits
/// in position order; columns: input positions), and the loss increase on each digit (columns) when
/// each component (rows: heads, then the top neurons) is zeroed and mean-ablated.
pub fn digits_checkpoint(
    r: &crate::analysis::digits::CheckpointReport,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let ablation = &r.ablation;
    let mut panels = Vec::new();
    for (l, heads) in r.attention.iter().enumerate() {
        for (h, a) in heads.iter().enumerate() {
            panels.push((format!("L{l}H{h}"), a.clone()));
        }
    }
    let mut files = both(dir, "digit_attention", |f| {
        plot::heatmaps(
            f,
            "Mean attention from each answer position (rows, most significant first) to each input position",
            &panels,
            "key position",
            "answer digit",
        )
    })?;
    let grid = |zero: bool| -> Vec<Vec<f64>> {
        ablation
            .components
            .iter()
            .map(|c| if zero { c.zero.clone() } else { c.mean.clone() })
            .collect()
    };
    let panels = vec![
        ("zero-ablated".to_string(), grid(true)),
        ("mean-ablated".to_string(), grid(false)),
    ];
    files.extend(both(dir, "digit_ablation", |f| {
        plot::heatmaps(
            f,
            "Loss increase per answer digit (columns) with one component ablated (rows: heads, then top neurons)",
            &panels,
            "answer digit",
            "component",
        )
    })?);
    Ok(files)
}

/// `toylens circuits`'s pictures: direct logit attribution, the logit lens, activation patching
/// beside attribution patching, path patching, composition, copying and detector scores, and
/// layer 0's full circuits (PNG only: they are large), in the Fourier basis too for a modular
/// model (`fourier_p`).
pub fn circuits(
    s: &crate::analysis::circuits::summary::CircuitSummary,
    fourier_p: Option<usize>,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    use crate::analysis::circuits::summary::PatchPair;
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut files = Vec::new();
    let bars_of = |labels: &[String], v: &[f64]| -> Vec<(String, f64)> {
        labels.iter().cloned().zip(v.iter().copied()).collect()
    };
    files.extend(both(dir, "dla", |f| {
        plot::bars(
            f,
            &format!(
                "Direct logit attribution to the logit difference ({:.2} in all), mean of {} examples",
                s.clean_logit_diff, s.examples
            ),
            "component",
            "logit difference",
            &bars_of(&s.dla_labels, &s.dla),
        )
    })?);
    files.extend(both(dir, "logit_lens", |f| {
        plot::bars(
            f,
            "Logit lens: the logit difference read off the residual stream",
            "residual point",
            "logit difference",
            &bars_of(&s.logit_lens_labels, &s.logit_lens),
        )
    })?);
    let grid = |v: &serde_json::Value| -> Vec<Vec<f64>> {
        v.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        r.as_array()
                            .map(|c| c.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let find = |name: &str| s.patching.iter().find(|p| p.sweep == name);
    type Pick = fn(&PatchPair) -> &serde_json::Value;
    let kinds: [(&str, &str, Pick); 2] = [
        ("exact", "activation patching", |p| &p.exact),
        ("attribution", "attribution patching", |p| &p.attribution),
    ];
    for (tag, what, pick) in kinds {
        let blocks: Vec<(String, Vec<Vec<f64>>)> = ["resid_pre", "attn_out", "mlp_out"]
            .iter()
            .filter_map(|n| find(n).map(|p| (n.to_string(), grid(pick(p)))))
            .collect();
        files.extend(both(dir, &format!("patch_blocks_{tag}"), |f| {
            plot::heatmaps(
                f,
                &format!("{what}: change of the logit difference, clean into corrupted"),
                &blocks,
                "position",
                "layer",
            )
        })?);
        let heads: Vec<(String, Vec<Vec<f64>>)> = ["out", "q", "k", "v", "pattern"]
            .iter()
            .filter_map(|n| {
                find(&format!("attn_head_{n}_all_pos")).map(|p| (n.to_string(), grid(pick(p))))
            })
            .collect();
        files.extend(both(dir, &format!("patch_heads_{tag}"), |f| {
            plot::heatmaps(
                f,
                &format!("{what}: each head's output, q, k, v and pattern at every position"),
                &heads,
                "head",
                "layer",
            )
        })?);
        if let Some(p) = find("attn_head_out_by_pos") {
            let by_layer: Vec<(String, Vec<Vec<f64>>)> = pick(p)
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .enumerate()
                        .map(|(l, v)| (format!("layer {l}"), grid(v)))
                        .collect()
                })
                .unwrap_or_default();
            files.extend(both(dir, &format!("patch_heads_by_pos_{tag}"), |f| {
                plot::heatmaps(
                    f,
                    &format!("{what}: each head's output at each position"),
                    &by_layer,
                    "head",
                    "position",
                )
            })?);
        }
    }
    if let Some(path) = &s.path_patching {
        let panels: Vec<(String, Vec<Vec<f64>>)> = path
            .iter()
            .map(|(n, g)| {
                (
                    format!("into {n}"),
                    g.iter()
                        .map(|r| r.iter().map(|x| x.unwrap_or(0.0)).collect())
                        .collect(),
                )
            })
            .collect();
        files.extend(both(dir, "path_patching", |f| {
            plot::heatmaps(
                f,
                "Path patching: sender head (row) → receiver head's input (column), change of the logit difference",
                &panels,
                "receiver (layer·heads + head)",
                "sender (layer·heads + head)",
            )
        })?);
    }
    if let Some(c) = &s.composition {
        for (tag, scores) in [("raw", &c.raw), ("processed", &c.processed)] {
            files.extend(both(dir, &format!("composition_{tag}"), |f| {
                plot::heatmaps(
                    f,
                    &format!("Q-, K- and V-composition scores ({tag} weights): earlier head (row) → later head (column)"),
                    scores,
                    "later head (layer·heads + head)",
                    "earlier head (layer·heads + head)",
                )
            })?);
        }
    }
    let copy: Vec<(String, f64)> = s
        .copying
        .raw
        .iter()
        .map(|c| (format!("L{}H{}", c.layer, c.head), c.score))
        .collect();
    files.extend(both(dir, "copying", |f| {
        plot::bars(
            f,
            "Copying score of each head's full OV circuit: Re(Σλ)/Σ|λ| (1: copies its input token)",
            "head",
            "score",
            &copy,
        )
    })?);
    if let Some(d) = &s.detectors {
        files.extend(both(dir, "detectors", |f| {
            plot::heatmaps(
                f,
                "Head detectors on repeated random tokens (share of attention on the pattern)",
                d,
                "head",
                "layer",
            )
        })?);
    }
    files.extend(full_circuits(&s.full, fourier_p, dir)?);
    Ok(files)
}

/// Layer 0's full circuits per head (PNG), and for a modular model on p numbers the same in the
/// Fourier basis of those numbers.
fn full_circuits(
    full: &crate::analysis::circuits::weights::FullCircuits,
    fourier_p: Option<usize>,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let to_rows = |a: &ndarray::Array2<f64>| -> Vec<Vec<f64>> {
        a.outer_iter().map(|r| r.to_vec()).collect()
    };
    let mut files = Vec::new();
    let mut draw = |stem: &str,
                    title: &str,
                    panels: Vec<(String, Vec<Vec<f64>>)>,
                    x: &str,
                    y: &str|
     -> Result<()> {
        let p = dir.join(format!("{stem}.png"));
        plot::heatmaps(&p, title, &panels, x, y)?;
        files.push(p);
        Ok(())
    };
    let per_head = |ms: &[ndarray::Array2<f64>],
                    f: &dyn Fn(&ndarray::Array2<f64>) -> ndarray::Array2<f64>| {
        ms.iter()
            .enumerate()
            .map(|(h, m)| (format!("head 0.{h}"), to_rows(&f(m))))
            .collect::<Vec<_>>()
    };
    let id = |m: &ndarray::Array2<f64>| m.clone();
    draw(
        "circuit_attention",
        "Attention circuit W_E·W_QK·W_Eᵀ: query token (row) × key token (column)",
        per_head(&full.attention, &id),
        "key token",
        "query token",
    )?;
    draw(
        "circuit_ov",
        "Full OV circuit W_E·W_OV·W_U: input token (row) × output logit (column)",
        per_head(&full.ov, &id),
        "output token",
        "input token",
    )?;
    if !full.neuron_input.is_empty() {
        draw(
            "circuit_neuron_input",
            "Neuron-input circuit W_E·W_OV·W_in: input token (row) × neuron (column)",
            per_head(&full.neuron_input, &id),
            "neuron",
            "input token",
        )?;
    }
    if let Some(w_l) = &full.w_l {
        draw(
            "circuit_w_l",
            "W_L = W_out·W_U: neuron (row) × output logit (column)",
            vec![("W_L".into(), to_rows(w_l))],
            "output token",
            "neuron",
        )?;
    }
    if let Some(p) = fourier_p {
        let basis = crate::analysis::fourier::FourierBasis::new(p);
        let f = ndarray::Array2::from_shape_fn((p, p), |(i, j)| basis.rows[i][j]);
        // Tokens 0..p are the numbers (a grokking model's '=' and extra outputs left out).
        let left = |m: &ndarray::Array2<f64>| dot(f.view(), m.slice(ndarray::s![..p, ..]));
        let both_sides = |m: &ndarray::Array2<f64>| {
            dot(dot(f.view(), m.slice(ndarray::s![..p, ..p])).view(), f.t())
        };
        draw(
            "circuit_attention_fourier",
            "Attention circuit in the Fourier basis (query frequency × key frequency; 0 = constant, then cos/sin 1, 2, ...)",
            per_head(&full.attention, &both_sides),
            "key Fourier component",
            "query Fourier component",
        )?;
        if !full.neuron_input.is_empty() {
            draw(
                "circuit_neuron_input_fourier",
                "Neuron-input circuit in the Fourier basis of the input token (component × neuron)",
                per_head(&full.neuron_input, &left),
                "neuron",
                "input Fourier component",
            )?;
        }
        if let Some(w_l) = &full.w_l {
            let right = dot(w_l.slice(ndarray::s![.., ..p]), f.t());
            draw(
                "circuit_w_l_fourier",
                "W_L in the Fourier basis of the output (neuron × component)",
                vec![("W_L".into(), to_rows(&right))],
                "output Fourier component",
                "neuron",
            )?;
        }
    }
    Ok(files)
}

/// Named lines of (x, y) points.
type Lines = Vec<(String, Vec<(f64, f64)>)>;

/// Each spike's window (`spike_N.png`/`.svg`): the spiking column (and the trace's per-step loss),
/// the gradient and update norms of the first tensors to rise (each over its baseline), and the loss
/// columns that rose most.
pub fn spikes(
    report: &crate::analysis::spikes::SpikeReport,
    data: &crate::analysis::spikes::RunSeries,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let column = &report.rule.column;
    let mut files = Vec::new();
    for (i, sp) in report.spikes.iter().enumerate() {
        let within = |s: u64| s >= sp.window_from && s <= sp.window_to;
        let metric = |name: &str| -> Vec<(f64, f64)> {
            data.rows
                .iter()
                .filter(|r| within(r.step))
                .filter_map(|r| r.get(name).map(|v| (r.step as f64, v)))
                .collect()
        };
        let mut losses: Lines = Vec::new();
        if column != "trace.loss" {
            losses.push((column.clone(), metric(column)));
        }
        let mut norms: [Lines; 2] = [Vec::new(), Vec::new()];
        if let Some(t) = &data.trace {
            let idx: Vec<usize> = (0..t.steps.len()).filter(|&j| within(t.steps[j])).collect();
            losses.push((
                "trace.loss (each step's batch)".into(),
                idx.iter()
                    .map(|&j| (t.steps[j] as f64, t.loss[j]))
                    .collect(),
            ));
            for r in sp.tensors.iter().take(5) {
                let k = t
                    .info
                    .tensors
                    .iter()
                    .position(|n| *n == r.tensor)
                    .expect("a traced tensor");
                for (slot, (field, base)) in norms.iter_mut().zip([
                    ("grad_norm", r.grad_baseline),
                    ("update_norm", r.update_baseline),
                ]) {
                    let a = t.field(field).expect("a trace field");
                    slot.push((
                        r.tensor.clone(),
                        idx.iter()
                            .map(|&j| {
                                (
                                    t.steps[j] as f64,
                                    f64::from(a[[j, k]]) / base.max(f64::MIN_POSITIVE),
                                )
                            })
                            .collect(),
                    ));
                }
            }
        }
        let cols: Lines = sp
            .columns
            .iter()
            .take(5)
            .map(|c| (c.column.clone(), metric(&c.column)))
            .collect();
        fn lines(v: &[(String, Vec<(f64, f64)>)]) -> Vec<plot::Series<'_>> {
            v.iter()
                .enumerate()
                .map(|(j, (name, pts))| plot::Series {
                    name,
                    points: pts,
                    color: plot::PALETTE[j % plot::PALETTE.len()],
                })
                .collect()
        }
        let mut panels = vec![("loss".to_string(), "loss".to_string(), lines(&losses))];
        if data.trace.is_some() {
            panels.push((
                "gradient norm, first tensors to rise".into(),
                "÷ baseline".into(),
                lines(&norms[0]),
            ));
            panels.push(("update norm".into(), "÷ baseline".into(), lines(&norms[1])));
        }
        if !cols.is_empty() {
            panels.push((
                "loss columns that rose most".into(),
                "loss".into(),
                lines(&cols),
            ));
        }
        let title = format!(
            "spike {}: {} ×{:.1} at step {} (steps {}–{})",
            i + 1,
            column,
            sp.ratio,
            sp.peak,
            sp.start,
            sp.end
        );
        for ext in ["png", "svg"] {
            let p = dir.join(format!("spike_{}.{ext}", i + 1));
            plot::log_panels(&p, &title, "step", &panels)?;
            files.push(p);
        }
    }
    Ok(files)
}
