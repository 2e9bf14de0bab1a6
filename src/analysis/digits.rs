//! Inside a digit adder: for each answer digit, where its probability goes relative to the naive sum
//! (the digit pair's sum mod 10, without the carry), its loss by sub-task (no carry, a carry, a
//! cascading carry through a 9), the attention of each answer position, and which heads and MLP
//! neurons it depends on (zero and mean ablation, loss increase per digit).
//!
//! All of it on one fixed evaluation set ([`eval_set`]): uniform pairs plus, for every place that can
//! receive one, pairs with a forced cascading carry (rare among uniform pairs: 1 in 20).

use crate::engine::loss::{cross_entropy, RowLoss};
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, CacheFilter, Hooks};
use crate::models::transformer::Transformer;
use crate::tasks::digits::{DigitsTask, Operands};
use ndarray::{Array2, Array3, Axis};
use rayon::prelude::*;
use serde::Serialize;

/// Uniform pairs in the evaluation set.
pub const N_UNIFORM: usize = 400;
/// Pairs with a forced cascading carry, per place that can receive one (10^2 and up).
pub const N_CASCADE: usize = 40;
/// Neurons kept in the per-digit ablation table (the most damaging when zeroed, on any digit).
pub const TOP_NEURONS: usize = 12;
const EVAL_SEED: u64 = 0xD161_75E7;

/// The sub-task of one answer digit on one example.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// No carry arrives: the digit is the pair's sum mod 10.
    NoCarry,
    /// The pair below sums to ≥ 10.
    Carry,
    /// The pair below sums to exactly 9 and itself receives a carry.
    Cascade,
}

pub const CASES: [Case; 3] = [Case::NoCarry, Case::Carry, Case::Cascade];

fn digit(x: u64, place: usize) -> u64 {
    (x / 10u64.pow(place as u32)) % 10
}

/// The naive digit at `place`: (a_k + b_k) mod 10, the carry ignored (0 for the leading digit).
pub fn naive_digit((a, b): Operands, place: usize) -> u32 {
    ((digit(a, place) + digit(b, place)) % 10) as u32
}

/// Whether a carry arrives at `place`.
pub fn carry_in((a, b): Operands, place: usize) -> bool {
    let m = 10u64.pow(place as u32);
    (a % m + b % m) >= m
}

/// The sub-task of the digit at `place`.
pub fn case(pair: Operands, place: usize) -> Case {
    if !carry_in(pair, place) {
        return Case::NoCarry;
    }
    let (a, b) = pair;
    if digit(a, place - 1) + digit(b, place - 1) == 9 {
        Case::Cascade
    } else {
        Case::Carry
    }
}

/// The fixed evaluation set of a digits task: [`N_UNIFORM`] uniform pairs, then for each place k from
/// 2 to n (the leading digit's place), [`N_CASCADE`] pairs whose digits at k − 1 sum to 9 and at
/// k − 2 to at least 10 (other digits uniform), so the digit at k receives a cascading carry.
pub struct EvalSet {
    pub pairs: Vec<Operands>,
    pub tokens: Array2<u32>,
    /// `[pairs, n + 1]`: the answer digits in the task's position order.
    pub targets: Array2<u32>,
    /// Place of each answer position.
    pub places: Vec<usize>,
    /// Positions whose logits predict the answer digits.
    pub loss_pos: Vec<usize>,
}

pub fn eval_set(task: &DigitsTask) -> EvalSet {
    let n = task.n_digits;
    let mut rng = Rng::new(EVAL_SEED);
    let mut pairs = task.sample(&mut rng, N_UNIFORM);
    let pow = |k: usize| 10u64.pow(k as u32);
    for k in 2..=n {
        for _ in 0..N_CASCADE {
            let (mut a, mut b) = task.sample(&mut rng, 1)[0];
            let set =
                |x: u64, place: usize, d: u64| x - digit(x, place) * pow(place) + d * pow(place);
            let d1 = rng.below(10);
            a = set(a, k - 1, d1);
            b = set(b, k - 1, 9 - d1);
            let d2 = 1 + rng.below(9);
            let e2 = 10 - d2 + rng.below(d2);
            a = set(a, k - 2, d2);
            b = set(b, k - 2, e2);
            pairs.push((a, b));
        }
    }
    let batch = task.batch(&pairs);
    // The last token is never attended to from an answer position (causal attention): drop it.
    let last = batch.loss_pos.last().copied().unwrap_or(0);
    let tokens = batch.tokens.slice(ndarray::s![.., ..=last]).to_owned();
    EvalSet {
        pairs,
        tokens,
        targets: batch.targets,
        places: task.places(),
        loss_pos: batch.loss_pos,
    }
}

/// Loss and accuracy of one digit on the examples of one case.
#[derive(Clone, Debug, Serialize)]
pub struct CaseStats {
    pub case: Case,
    pub n: usize,
    pub loss: f64,
    pub acc: f64,
}

/// One answer digit at one checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct DigitStats {
    /// 10^place.
    pub place: usize,
    pub loss: f64,
    pub acc: f64,
    pub cases: Vec<CaseStats>,
    /// Mean probability on (naive + δ) mod 10 for δ = 0, +1, −1, and on anything else: for examples
    /// whose digit receives no carry, and for those that receive one.
    pub offsets_no_carry: [f64; 4],
    pub offsets_carry: [f64; 4],
    /// Wrong argmax predictions, and the share of them one away from the true digit (mod 10).
    pub n_wrong: usize,
    pub off_by_one_share: f64,
}

/// Per answer digit, in position order; the logits are `[pairs, n + 1, 10]` at the answer positions.
pub fn digit_stats(set: &EvalSet, logits: &Array3<f32>) -> Vec<DigitStats> {
    let v = logits.shape()[2];
    (0..set.places.len())
        .map(|j| {
            let place = set.places[j];
            let lg = logits.index_axis(Axis(1), j).to_owned();
            let flat = lg.as_slice().expect("contiguous");
            let targets: Vec<u32> = set.targets.column(j).to_vec();
            let mut rows = vec![RowLoss::default(); targets.len()];
            cross_entropy(flat, v, &targets, &mut rows, None);
            let mut offsets = [[0.0f64; 4]; 2];
            let mut counts = [0usize; 2];
            let (mut wrong, mut by_one) = (0usize, 0usize);
            for (i, row) in flat.chunks_exact(v).enumerate() {
                let pair = set.pairs[i];
                let probs = softmax(row);
                let naive = naive_digit(pair, place) as usize;
                let c = usize::from(carry_in(pair, place));
                let o = &mut offsets[c];
                let (p0, p1, pm) = (
                    probs[naive],
                    probs[(naive + 1) % 10],
                    probs[(naive + 9) % 10],
                );
                o[0] += p0;
                o[1] += p1;
                o[2] += pm;
                o[3] += (1.0 - p0 - p1 - pm).max(0.0);
                counts[c] += 1;
                let arg = argmax(&probs);
                let t = targets[i] as usize;
                if arg != t {
                    wrong += 1;
                    if arg == (t + 1) % 10 || arg == (t + 9) % 10 {
                        by_one += 1;
                    }
                }
            }
            // NaN where no example is of the kind (no carry ever reaches the units digit).
            for (o, &c) in offsets.iter_mut().zip(&counts) {
                o.iter_mut().for_each(|x| *x /= c as f64);
            }
            let cases = CASES
                .iter()
                .map(|&cs| {
                    let idx: Vec<usize> = (0..set.pairs.len())
                        .filter(|&i| case(set.pairs[i], place) == cs)
                        .collect();
                    CaseStats {
                        case: cs,
                        n: idx.len(),
                        loss: mean_over(&idx, |i| rows[i].loss),
                        acc: mean_over(&idx, |i| f64::from(u8::from(rows[i].correct))),
                    }
                })
                .collect();
            DigitStats {
                place,
                loss: mean_over(&(0..rows.len()).collect::<Vec<_>>(), |i| rows[i].loss),
                acc: rows.iter().filter(|r| r.correct).count() as f64 / rows.len().max(1) as f64,
                cases,
                offsets_no_carry: offsets[0],
                offsets_carry: offsets[1],
                n_wrong: wrong,
                off_by_one_share: if wrong == 0 {
                    f64::NAN
                } else {
                    by_one as f64 / wrong as f64
                },
            }
        })
        .collect()
}

fn mean_over(idx: &[usize], f: impl Fn(usize) -> f64) -> f64 {
    if idx.is_empty() {
        return f64::NAN;
    }
    idx.iter().map(|&i| f(i)).sum::<f64>() / idx.len() as f64
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn argmax(p: &[f64]) -> usize {
    (0..p.len()).fold(0, |b, i| if p[i] > p[b] { i } else { b })
}

/// The answer positions' logits of `[pairs, ctx, v]`.
fn answer_logits(set: &EvalSet, full: &Array3<f32>) -> Array3<f32> {
    full.select(Axis(1), &set.loss_pos)
}

/// Per-digit statistics of a model on the evaluation set.
pub fn measure(model: &Transformer, set: &EvalSet) -> Result<Vec<DigitStats>> {
    let full = model.forward(set.tokens.view())?;
    Ok(digit_stats(set, &answer_logits(set, &full)))
}

fn pattern_names(model: &Transformer) -> Vec<String> {
    (0..model.cfg.n_layers)
        .map(|l| format!("blocks.{l}.attn.hook_pattern"))
        .collect()
}

/// Where every neuron reaches the logits linearly: the last layer's `hook_post` with no final
/// LayerNorm (None otherwise).
fn direct_neurons(model: &Transformer) -> Option<String> {
    let cfg = &model.cfg;
    (cfg.has_mlp() && !cfg.has_ln()).then(|| format!("blocks.{}.mlp.hook_post", cfg.n_layers - 1))
}

/// Each head's attention from each answer position over the key positions, averaged over the
/// evaluation set: `[layer][head]` of `[answer digits, key positions]`.
fn attention(
    model: &Transformer,
    set: &EvalSet,
    cache: &ActivationCache,
) -> Result<Vec<Vec<Array2<f64>>>> {
    let names = pattern_names(model);
    let mut out = Vec::new();
    for name in &names {
        let p = cache.get(name)?; // [batch, head, query, key]
        let mean = p.mean_axis(Axis(0)).expect("a batch");
        let heads = (0..mean.shape()[0])
            .map(|h| {
                let m = mean.index_axis(Axis(0), h);
                Array2::from_shape_fn((set.loss_pos.len(), m.shape()[1]), |(j, k)| {
                    f64::from(m[[set.loss_pos[j], k]])
                })
            })
            .collect();
        out.push(heads);
    }
    Ok(out)
}

/// Names of the input positions, for axes: `a2 a1 a0 + b2 b1 b0 = s3 s2 s1 s0` (places).
pub fn position_names(task: &DigitsTask) -> Vec<String> {
    let n = task.n_digits;
    let mut v: Vec<String> = (0..n).map(|i| format!("a{}", n - 1 - i)).collect();
    v.push("+".into());
    v.extend((0..n).map(|i| format!("b{}", n - 1 - i)));
    v.push("=".into());
    v.extend(task.places().iter().take(n).map(|p| format!("s{p}")));
    v
}

/// One ablated component: the loss increase on each answer digit (position order) when zeroed and
/// when replaced by its mean over the evaluation set.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentAblation {
    /// `L0H2` or `L0N317`.
    pub name: String,
    /// The hook it acts on, and the index along the head or neuron axis.
    pub hook: String,
    pub index: usize,
    pub zero: Vec<f64>,
    pub mean: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DigitAblation {
    pub places: Vec<usize>,
    pub baseline: Vec<f64>,
    /// Every head, then the [`TOP_NEURONS`] neurons most damaging on some digit.
    pub components: Vec<ComponentAblation>,
}

/// Mean loss per answer digit (cheaper than [`digit_stats`]).
fn per_digit_loss(set: &EvalSet, answer: &Array3<f32>) -> Vec<f64> {
    let v = answer.shape()[2];
    (0..set.places.len())
        .map(|j| {
            let lg = answer.index_axis(Axis(1), j).to_owned();
            let t: Vec<u32> = set.targets.column(j).to_vec();
            let mut rows = vec![RowLoss::default(); t.len()];
            cross_entropy(lg.as_slice().expect("contiguous"), v, &t, &mut rows, None);
            rows.iter().map(|r| r.loss).sum::<f64>() / t.len().max(1) as f64
        })
        .collect()
}

/// The per-digit loss with unit `idx` of axis 2 at hook `name` zeroed, and mean-ablated.
pub fn hooked_ablation(
    model: &Transformer,
    set: &EvalSet,
    name: &str,
    idx: usize,
) -> Result<[Vec<f64>; 2]> {
    let mut out = [Vec::new(), Vec::new()];
    for (i, mean_ablate) in [false, true].into_iter().enumerate() {
        let hook = super::ablation::unit_ablation(idx, mean_ablate);
        let full = model.run_with_hooks(set.tokens.view(), Hooks::new().add(name, hook))?;
        out[i] = per_digit_loss(set, &answer_logits(set, &full));
    }
    Ok(out)
}

/// Zero- and mean-ablate every head and every MLP neuron; keep the heads and the top neurons.
/// Neurons of the last layer without a final LayerNorm reach the logits linearly, so all of them
/// come from one cached run (exact); other neurons need a hooked run each and are left out.
fn ablate(
    model: &Transformer,
    set: &EvalSet,
    base_answer: &Array3<f32>,
    cache: &ActivationCache,
) -> Result<DigitAblation> {
    let cfg = &model.cfg;
    let baseline = per_digit_loss(set, base_answer);
    let diff = |v: Vec<f64>| -> Vec<f64> { v.iter().zip(&baseline).map(|(a, b)| a - b).collect() };
    let mut components = Vec::new();
    for l in 0..cfg.n_layers {
        for h in 0..cfg.n_heads {
            let hook = format!("blocks.{l}.attn.hook_z");
            let [z, m] = hooked_ablation(model, set, &hook, h)?;
            components.push(ComponentAblation {
                name: format!("L{l}H{h}"),
                hook,
                index: h,
                zero: diff(z),
                mean: diff(m),
            });
        }
    }
    let l = cfg.n_layers - 1;
    if let Some(name) = direct_neurons(model) {
        let post = cache.get(&name)?.select(Axis(1), &set.loss_pos); // [pairs, answers, d_mlp]
        let (w_out, w_u) = (
            model
                .param(&format!("blocks.{l}.mlp.W_out"))
                .expect("a transformer with an MLP"),
            model.param("unembed.W_U").expect("a transformer"),
        );
        let (d, v) = (cfg.d_model, cfg.d_vocab_out());
        let mut neurons: Vec<ComponentAblation> = (0..cfg.d_mlp())
            .into_par_iter()
            .map(|n| {
                let u: Vec<f32> = (0..v)
                    .map(|c| (0..d).map(|j| w_out[[n, j]] * w_u[[j, c]]).sum())
                    .collect();
                let act = post.index_axis(Axis(2), n); // [pairs, answers]
                let means = act.mean_axis(Axis(0)).expect("pairs");
                let mut r = [Vec::new(), Vec::new()];
                for (i, mean_ablate) in [false, true].into_iter().enumerate() {
                    let mut lg = base_answer.clone();
                    for ((p, j, c), x) in lg.indexed_iter_mut() {
                        let repl = if mean_ablate { means[j] } else { 0.0 };
                        *x -= (act[[p, j]] - repl) * u[c];
                    }
                    r[i] = per_digit_loss(set, &lg);
                }
                let [z, m] = r;
                ComponentAblation {
                    name: format!("L{l}N{n}"),
                    hook: name.clone(),
                    index: n,
                    zero: diff(z),
                    mean: diff(m),
                }
            })
            .collect();
        let worst = |c: &ComponentAblation| c.zero.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        neurons.sort_by(|a, b| worst(b).total_cmp(&worst(a)));
        neurons.truncate(TOP_NEURONS);
        components.extend(neurons);
    }
    Ok(DigitAblation {
        places: set.places.clone(),
        baseline,
        components,
    })
}

/// The digits task a checkpoint records, for analysis (the evaluation set depends only on n and
/// the order of the sum).
pub fn task_of(n_digits: usize, reverse_sum: bool) -> Result<DigitsTask> {
    let t = DigitsTask {
        n_digits,
        reverse_sum,
        infinite: true,
        frac_train: 0.3,
        n_eval: 1,
        seed: 0,
    };
    t.validate("data.")
        .map_err(|e| Error::Input(e.to_string()))?;
    Ok(t)
}

/// Per-digit statistics at each checkpoint of a run: (step, one entry per answer digit).
pub type OverTraining = Vec<(u64, Vec<DigitStats>)>;

/// Everything about one checkpoint, as `--json` gives it.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointReport {
    pub n_digits: usize,
    pub reverse_sum: bool,
    /// Examples in the evaluation set.
    pub n_eval: usize,
    /// Input position names (`a2 ... + b2 ... = s3 ...`).
    pub positions: Vec<String>,
    pub digits: Vec<DigitStats>,
    /// `[layer][head][answer digit][key position]`.
    pub attention: Vec<Vec<Vec<Vec<f64>>>>,
    pub ablation: DigitAblation,
}

pub fn checkpoint_report(model: &Transformer, task: &DigitsTask) -> Result<CheckpointReport> {
    let set = eval_set(task);
    // One cached run serves the statistics, the attention and the neurons' direct effects.
    let mut names = pattern_names(model);
    names.extend(direct_neurons(model));
    let (full, cache) = model.run_with_cache(set.tokens.view(), CacheFilter::Names(names))?;
    let answer = answer_logits(&set, &full);
    let attention = attention(model, &set, &cache)?
        .into_iter()
        .map(|heads| {
            heads
                .into_iter()
                .map(|a| a.outer_iter().map(|r| r.to_vec()).collect())
                .collect()
        })
        .collect();
    Ok(CheckpointReport {
        n_digits: task.n_digits,
        reverse_sum: task.reverse_sum,
        n_eval: set.pairs.len(),
        positions: position_names(task),
        digits: digit_stats(&set, &answer),
        attention,
        ablation: ablate(model, &set, &answer, &cache)?,
    })
}

/// Every checkpoint of a digits run, in step order: (the task, [(step, per-digit statistics)]).
pub fn over_training(run_dir: &std::path::Path) -> Result<(DigitsTask, OverTraining)> {
    let r = crate::io::run::Run::open(run_dir)?;
    let Some(task) = r.experiment.task.downcast::<DigitsTask>() else {
        return Err(Error::Input(format!(
            "{}: a digits run is needed, not `{}`",
            run_dir.display(),
            r.experiment.config.task_name()
        )));
    };
    let set = eval_set(task);
    let rows = r.map_checkpoints(|s, path| {
        let m = crate::io::checkpoint::load_transformer(path)?;
        Ok((s, measure(&m, &set)?))
    })?;
    Ok((task.clone(), rows))
}

/// Per answer digit (position order): for each case, the first checkpoint step at which its loss is
/// below [`crate::io::run::DIGIT_TRANSITION_LOSS`] (which sub-task the digit learns when).
pub fn case_transitions(rows: &[(u64, Vec<DigitStats>)]) -> Vec<(usize, [Option<u64>; 3])> {
    let Some((_, first)) = rows.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|j| {
            let mut t = [None; 3];
            for (c, slot) in t.iter_mut().enumerate() {
                *slot = rows
                    .iter()
                    .find(|(_, d)| d[j].cases[c].loss < crate::io::run::DIGIT_TRANSITION_LOSS)
                    .map(|(s, _)| *s);
            }
            (first[j].place, t)
        })
        .collect()
}

/// The over-training rows as CSV: step, place, then each case's loss and accuracy, the offsets
/// (no carry, then carry) and the off-by-one share.
pub fn over_training_csv(rows: &[(u64, Vec<DigitStats>)]) -> String {
    let mut s = String::from("step,place,loss,acc");
    for c in ["no_carry", "carry", "cascade"] {
        s += &format!(",loss_{c},acc_{c},n_{c}");
    }
    for split in ["no_carry", "carry"] {
        for d in ["naive", "plus1", "minus1", "other"] {
            s += &format!(",p_{d}_{split}");
        }
    }
    s += ",n_wrong,off_by_one_share\n";
    for (step, digits) in rows {
        for d in digits {
            s += &format!("{step},{},{},{}", d.place, d.loss, d.acc);
            for c in &d.cases {
                s += &format!(",{},{},{}", c.loss, c.acc, c.n);
            }
            for x in d.offsets_no_carry.iter().chain(&d.offsets_carry) {
                s += &format!(",{x}");
            }
            s += &format!(",{},{}\n", d.n_wrong, d.off_by_one_share);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_follow_the_carries() {
        // 199 + 1 = 200: units no carry in; tens carry; hundreds cascade (9 + 0 + carry).
        let p = (199, 1);
        assert_eq!(case(p, 0), Case::NoCarry);
        assert_eq!(case(p, 1), Case::Carry);
        assert_eq!(case(p, 2), Case::Cascade);
        assert_eq!(case(p, 3), Case::NoCarry);
        assert_eq!(naive_digit(p, 1), 9);
        assert_eq!(naive_digit(p, 2), 1);
        assert_eq!(case((550, 550), 3), Case::Carry);
        let task = task_of(3, false).unwrap();
        let set = eval_set(&task);
        assert_eq!(set.pairs.len(), N_UNIFORM + 2 * N_CASCADE);
        for (i, &p) in set.pairs.iter().enumerate().skip(N_UNIFORM) {
            let k = 2 + (i - N_UNIFORM) / N_CASCADE;
            assert_eq!(case(p, k), Case::Cascade, "{p:?} at 10^{k}");
        }
    }
}
