//! Opening up modular-arithmetic models: their Fourier structure and Nanda et al.'s progress measures,
//! for (a + b) mod p and (a − b) mod p (the answer s = a op b; multiplication is refused until it
//! has a basis of its own).
//!
//! Definitions (as in "Progress measures for grokking via mechanistic interpretability"):
//! - Fourier basis of Z_p: the constant 1/√p, then cos(2πkx/p)·√(2/p) and sin(2πkx/p)·√(2/p) for
//!   k = 1..(p−1)/2 (orthonormal rows of a p×p matrix).
//! - W_E in that basis: the basis times W_E's p number rows; its norm per frequency.
//! - W_L = W_out·W_U restricted to the p answer logits (`[d_mlp, p]`), in that basis.
//! - Key frequencies (default rule, from W_L): sort frequencies by their share of W_L's squared
//!   Fourier norm (constant excluded); take them in that order until they explain 90% of it.
//! - Logits are those of the p answers at the last position, over all p² inputs. Restricted loss: the
//!   logits reduced to their constant and cos/sin(w_k·s) components for the key frequencies, s the
//!   answer (x + y or x − y mod p). Excluded loss: the logits with those components removed.
//!   ("Every frequency kept" thus means all functions of s.)
//! - Gini coefficient of the Fourier component norms (all p basis elements) of W_E and of W_L.

pub mod ablation;
pub mod circuits;
pub mod components;
pub mod digits;
pub mod dynamics;
pub mod fourier;
pub mod generic;
pub mod induction;
pub mod llc;
pub mod neurons;
pub mod patching;
pub mod spikes;
pub mod superposition;
pub mod toy_mlp;

use crate::error::{Error, Result};
use crate::io::run;
use crate::models::transformer::{Transformer, Workspace};
use crate::tasks::modular::{ModularTask, Op};
use fourier::FourierBasis;
use serde::Serialize;

/// Share of W_L's non-constant squared Fourier norm the key frequencies must explain.
pub const KEY_FREQ_SHARE: f64 = 0.9;

/// Everything `toylens analyze` reports about one modular-addition checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub p: usize,
    pub key_frequencies: Vec<usize>,
    /// Loss of the p answer logits over all p² inputs.
    pub loss_all: f64,
    pub restricted_loss: f64,
    /// Excluded loss with all key frequencies removed, on the train set when the split is known
    /// (as in the paper), else on all pairs.
    pub excluded_loss: f64,
    /// Excluded loss removing one key frequency at a time (same order as `key_frequencies`).
    pub excluded_loss_per_frequency: Vec<f64>,
    #[serde(rename = "gini_W_E")]
    pub gini_w_e: f64,
    #[serde(rename = "gini_W_L")]
    pub gini_w_l: f64,
    pub sum_sq_weights: f64,
    /// Norm of W_E's Fourier components per frequency (index k = 0..(p−1)/2; 0 is the constant).
    pub w_e_frequency_norms: Vec<f64>,
    /// Norm of W_L's Fourier components per frequency.
    pub w_l_frequency_norms: Vec<f64>,
}

/// Gini coefficient of non-negative values: 0 when all are equal, (n−1)/n when one holds everything.
pub fn gini(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().map(|x| x.abs()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len() as f64;
    let total: f64 = v.iter().sum();
    if total == 0.0 || v.is_empty() {
        return 0.0;
    }
    let weighted: f64 = v
        .iter()
        .enumerate()
        .map(|(i, x)| (2.0 * (i as f64 + 1.0) - n - 1.0) * x)
        .sum();
    weighted / (n * total)
}

/// Key frequencies by the W_L rule (see the module docs), ascending.
pub fn key_frequencies(w_l_norms: &[f64]) -> Vec<usize> {
    let sq: Vec<f64> = w_l_norms.iter().map(|x| x * x).collect();
    let total: f64 = sq[1..].iter().sum();
    let mut order: Vec<usize> = (1..sq.len()).collect();
    order.sort_by(|&a, &b| sq[b].total_cmp(&sq[a]));
    let mut keys = Vec::new();
    let mut acc = 0.0;
    for k in order {
        if total <= 0.0 || acc >= KEY_FREQ_SHARE * total {
            break;
        }
        acc += sq[k];
        keys.push(k);
    }
    keys.sort_unstable();
    keys
}

/// The answer index of (x, y), for the operations the Fourier analysis covers.
fn answer_of(op: Op, p: usize) -> Result<impl Fn(usize, usize) -> usize> {
    if op == Op::Mul {
        return Err(Error::Input(format!(
            "the Fourier analysis covers (a + b) and (a − b) mod p: their answers are equidistributed over the input grid, so the Fourier basis of Z_p separates them; (a · b) mod {p} has no such basis yet (0 is the answer of {} of the {} inputs)",
            2 * p - 1,
            p * p
        )));
    }
    Ok(move |x: usize, y: usize| op.apply(x as u64, y as u64, p as u64) as usize)
}

/// Mean cross-entropy over the inputs `pairs` (target `answer(x, y)`); `logits_of(x, y)` gives the p
/// logits of input (x, y).
fn mean_loss(
    pairs: &[(u32, u32)],
    answer: &impl Fn(usize, usize) -> usize,
    logits_of: impl Fn(usize, usize) -> Vec<f64>,
) -> f64 {
    let mut total = 0.0;
    for &(x, y) in pairs {
        let (x, y) = (x as usize, y as usize);
        let l = logits_of(x, y);
        let c = answer(x, y);
        let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let rest: f64 = l
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != c)
            .map(|(_, &v)| (v - m).exp())
            .sum();
        total += if l[c] == m {
            rest.ln_1p()
        } else {
            m - l[c] + (rest + (l[c] - m).exp()).ln()
        };
    }
    total / pairs.len().max(1) as f64
}

/// The p answer logits of every input, `[p·p][p]` (x major), from the model's fast path (the logits
/// do not depend on the operation; the batch's targets are not read).
pub fn answer_logits(model: &Transformer, p: usize) -> Result<Vec<Vec<f64>>> {
    let batch = ModularTask::all_pairs_batch(p, Op::Add);
    let mut ws = Workspace::new();
    let l = model.logits_at(&mut ws, batch.tokens.view(), &[2])?;
    Ok((0..p * p)
        .map(|i| (0..p).map(|c| l[[i, 0, c]] as f64).collect())
        .collect())
}

/// Analyse a modular-arithmetic model of (a op b) mod p; `split` (when known) decides where the
/// excluded loss is taken.
pub fn analyze(
    model: &Transformer,
    p: usize,
    op: Op,
    split: Option<&ModularTask>,
) -> Result<Analysis> {
    analyze_with_keys(model, p, op, split, None)
}

/// [`analyze`] with the key frequencies given (None: chosen from this model's W_L).
pub fn analyze_with_keys(
    model: &Transformer,
    p: usize,
    op: Op,
    split: Option<&ModularTask>,
    keys: Option<&[usize]>,
) -> Result<Analysis> {
    let answer = answer_of(op, p)?;
    let cfg = &model.cfg;
    if cfg.d_vocab < p + 1 || cfg.d_vocab_out() < p || cfg.n_ctx < 3 {
        return Err(Error::Input(format!(
            "not a modular-arithmetic model for p = {p} (d_vocab {}, d_vocab_out {}, n_ctx {})",
            cfg.d_vocab,
            cfg.d_vocab_out(),
            cfg.n_ctx
        )));
    }
    let basis = FourierBasis::new(p);
    let d = cfg.d_model;
    // W_E's p number rows in the Fourier basis.
    let w_e = model.param("embed.W_E").expect("W_E");
    let w_e_rows: Vec<Vec<f64>> = (0..p)
        .map(|t| (0..d).map(|j| w_e[[t, j]] as f64).collect())
        .collect();
    let w_e_f = basis.transform_rows(&w_e_rows);
    let w_e_component_norms: Vec<f64> = w_e_f
        .iter()
        .map(|r| r.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    // W_L = W_out · W_U[:, :p] of the last layer, one row per answer after transposing: [p][d_mlp].
    let last = cfg.n_layers - 1;
    let w_u = model.param("unembed.W_U").expect("W_U");
    let w_out = model
        .param(&format!("blocks.{last}.mlp.W_out"))
        .ok_or_else(|| {
            Error::Input("the model has no MLP, so no W_L (attention-only model)".into())
        })?;
    // W_L = W_out · W_U[:, :p], as one product; rows of the transpose are indexed by the answer.
    let m = w_out.shape()[0];
    let w_out2 = w_out
        .into_dimensionality::<ndarray::Ix2>()
        .expect("W_out is 2-D");
    let w_u2 = w_u
        .into_dimensionality::<ndarray::Ix2>()
        .expect("W_U is 2-D");
    let mut w_l = ndarray::Array2::<f32>::zeros((m, p));
    crate::engine::matmul::matmul(
        &mut w_l.view_mut(),
        &w_out2,
        &w_u2.slice(ndarray::s![.., ..p]),
        false,
    );
    let w_l_cols: Vec<Vec<f64>> = (0..p)
        .map(|c| w_l.column(c).iter().map(|&x| x as f64).collect())
        .collect();
    let w_l_f = basis.transform_rows(&w_l_cols);
    let w_l_component_norms: Vec<f64> = w_l_f
        .iter()
        .map(|r| r.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    let w_e_frequency_norms = basis.per_frequency(&w_e_component_norms);
    let w_l_frequency_norms = basis.per_frequency(&w_l_component_norms);
    let keys = keys
        .map(<[usize]>::to_vec)
        .unwrap_or_else(|| key_frequencies(&w_l_frequency_norms));

    // Logits over all inputs, summed per answer s for the projections.
    let logits = answer_logits(model, p)?;
    let proj = fourier::SumProjection::new(&logits, p, &answer);
    let all: Vec<(u32, u32)> = (0..p as u32)
        .flat_map(|x| (0..p as u32).map(move |y| (x, y)))
        .collect();
    let loss_all = mean_loss(&all, &answer, |x, y| logits[x * p + y].clone());
    let restricted = proj.restricted(&keys);
    let restricted_loss = mean_loss(&all, &answer, |x, y| restricted[answer(x, y)].clone());
    let excl_pairs = match split {
        Some(t) => t.split_pairs().0,
        None => all.clone(),
    };
    let excluded_with = |ks: &[usize]| {
        let removed = proj.components(ks);
        mean_loss(&excl_pairs, &answer, |x, y| {
            let s = answer(x, y);
            logits[x * p + y]
                .iter()
                .zip(&removed[s])
                .map(|(l, r)| l - r)
                .collect()
        })
    };
    let excluded_loss = excluded_with(&keys);
    let excluded_loss_per_frequency = keys.iter().map(|&k| excluded_with(&[k])).collect();
    Ok(Analysis {
        p,
        key_frequencies: keys,
        loss_all,
        restricted_loss,
        excluded_loss,
        excluded_loss_per_frequency,
        gini_w_e: gini(&w_e_component_norms),
        gini_w_l: gini(&w_l_component_norms),
        sum_sq_weights: model.params.iter().map(|&x| (x as f64) * (x as f64)).sum(),
        w_e_frequency_norms,
        w_l_frequency_norms,
    })
}

/// One checkpoint's progress measures (a row of `progress.csv`).
#[derive(Clone, Debug, Serialize)]
pub struct ProgressRow {
    pub step: u64,
    pub loss_all: f64,
    pub restricted_loss: f64,
    pub excluded_loss: f64,
    pub gini_w_e: f64,
    pub gini_w_l: f64,
    pub sum_sq_weights: f64,
    pub n_key_frequencies: usize,
}

/// The three phases of a grokking run, located from the progress curves (steps are checkpoint steps).
///
/// Rules: memorisation ends where the excluded loss is lowest (the training set is fit without the
/// final circuit); circuit formation ends, and cleanup begins, at the first checkpoint after that whose
/// all-pairs loss is below half its maximum (generalisation starts); cleanup ends at the first checkpoint
/// where the Gini coefficient of W_L reaches 95% of its final value (the circuit is sparse).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Phases {
    pub memorisation_end: u64,
    pub cleanup_start: Option<u64>,
    pub cleanup_end: Option<u64>,
}

pub fn phases(rows: &[ProgressRow]) -> Option<Phases> {
    let min_excl = rows
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.excluded_loss.total_cmp(&b.1.excluded_loss))?
        .0;
    let max_loss = rows
        .iter()
        .map(|r| r.loss_all)
        .fold(f64::NEG_INFINITY, f64::max);
    let cleanup_start = rows[min_excl..]
        .iter()
        .find(|r| r.loss_all < max_loss / 2.0)
        .map(|r| r.step);
    let final_gini = rows.last()?.gini_w_l;
    let cleanup_end = cleanup_start.and_then(|s| {
        rows.iter()
            .find(|r| r.step >= s && r.gini_w_l >= 0.95 * final_gini)
            .map(|r| r.step)
    });
    Some(Phases {
        memorisation_end: rows[min_excl].step,
        cleanup_start,
        cleanup_end,
    })
}

/// Progress measures at every checkpoint of a run directory (nothing is written; see
/// [`progress_csv`]). The key frequencies are the final model's (the circuit the run ends with), so
/// the curves follow one fixed set of directions through training, as in the paper.
pub fn progress(run_dir: &std::path::Path) -> Result<Vec<ProgressRow>> {
    let r = run::Run::open(run_dir)?;
    let Some(task) = r
        .experiment
        .task
        .downcast::<crate::tasks::modular::ModularTask>()
    else {
        return Err(Error::Input(format!(
            "{}: progress measures need a modular-arithmetic run, not `{}`",
            run_dir.display(),
            r.experiment.config.task_name()
        )));
    };
    let load = crate::io::checkpoint::load_transformer;
    let last = load(&r.checkpoint(r.last_step()))?;
    let keys = analyze(&last, task.p, task.op, Some(task))?.key_frequencies;
    r.map_checkpoints(|step, path| {
        let a = analyze_with_keys(&load(path)?, task.p, task.op, Some(task), Some(&keys))?;
        Ok(ProgressRow {
            step,
            loss_all: a.loss_all,
            restricted_loss: a.restricted_loss,
            excluded_loss: a.excluded_loss,
            gini_w_e: a.gini_w_e,
            gini_w_l: a.gini_w_l,
            sum_sq_weights: a.sum_sq_weights,
            n_key_frequencies: keys.len(),
        })
    })
}

/// `progress.csv`'s text.
pub fn progress_csv(rows: &[ProgressRow]) -> String {
    let mut csv = String::from("step,loss_all,restricted_loss,excluded_loss,gini_W_E,gini_W_L,sum_sq_weights,n_key_frequencies\n");
    for r in rows {
        csv += &format!(
            "{},{:e},{:e},{:e},{},{},{:e},{}\n",
            r.step,
            r.loss_all,
            r.restricted_loss,
            r.excluded_loss,
            r.gini_w_e,
            r.gini_w_l,
            r.sum_sq_weights,
            r.n_key_frequencies
        );
    }
    csv
}
