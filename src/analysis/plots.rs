//! The analysis pictures (PNG and SVG): W_E's Fourier norms, neuron clusters, a neuron over the input
//! grid, attention per head over inputs, the ablation ranking, and progress measures with the phases.

use super::ablation::{AblationRow, Unit};
use super::neurons::NeuronFrequencies;
use super::{Analysis, Phases, ProgressRow};
use crate::error::Result;
use crate::hooks::CacheFilter;
use crate::models::transformer::Transformer;
use crate::report::plot::{self, Band, Series};
use crate::tasks::modular::{ModularTask, Op};
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
            "Loss on all pairs with one unit zeroed (N = neuron, H = head)",
            "unit",
            "loss",
            &bars,
        )
    })
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
