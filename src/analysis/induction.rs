//! The in-context-learning phase change of an induction run, read off the metric rows its task and
//! `heads` monitor wrote at every evaluation (no checkpoint is rerun).
//!
//! **Definition.** Take the loss on repeats (`test_loss_repeat`) over evaluations. Its steepest
//! fall is the largest drop over a window of a thirtieth of the run's evaluations (at least one).
//! The *plateau* is the median loss over the tenth of the evaluations just before that window, the
//! *final* level the median over the run's last tenth. There is a phase change when the loss falls
//! by at least 0.5 nats and a quarter of the plateau between the two; its **onset** is the first
//! evaluation after the plateau's window where the loss has fallen a tenth of the way from the
//! plateau to the final level, its **middle** where it has fallen half of the way, its **end**
//! where it has fallen three quarters of the way.
//!
//! The *induction head* is the head whose induction score rose most from the onset to the middle
//! (in a later layer where there is one; a one-layer model's own, with smeared keys). Its
//! K-composition with each earlier head is read at the end, and the earlier head with the highest
//! previous-token score there is the *previous-token head*.

use crate::io::run::MetricRow;
use serde::Serialize;

/// Where the loss on repeats fell (steps of evaluations).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseChange {
    pub onset: u64,
    pub middle: u64,
    pub end: u64,
    /// The loss on repeats on the plateau before and at the end of the run.
    pub plateau: f64,
    pub last: f64,
}

/// The heads that formed across the phase change, by the monitor's columns.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InductionHeads {
    /// (layer, head) of the head whose induction score rose most from onset to middle.
    pub induction_head: (usize, usize),
    pub induction_score: Score,
    /// (layer, head) of the earlier head with the highest previous-token score at the end, and
    /// that score (None in a one-layer model).
    pub previous_token_head: Option<((usize, usize), Score)>,
    /// The induction head's copying score.
    pub copying_score: Score,
    /// K-composition of the induction head with each earlier head at the end: ((layer, head),
    /// score), highest first (empty in a one-layer model).
    pub k_composition: Vec<((usize, usize), f64)>,
}

/// A head's score at the onset, middle and end of the phase change.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Score {
    pub onset: f64,
    pub middle: f64,
    pub end: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The phase change of `loss` (one value per evaluation at `steps`), by the module's definition.
pub fn phase_change(steps: &[u64], loss: &[f64]) -> Option<PhaseChange> {
    let n = loss.len();
    if n < 10 || steps.len() != n || loss.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let w = (n / 30).max(1);
    let tenth = (n / 10).max(1);
    if n <= tenth + w {
        return None;
    }
    // The first of equally steep windows.
    let mut steepest = tenth;
    for i in tenth..n - w {
        if loss[i] - loss[i + w] > loss[steepest] - loss[steepest + w] {
            steepest = i;
        }
    }
    let plateau = median(&mut loss[steepest - tenth..steepest].to_vec());
    let last = median(&mut loss[n - tenth..].to_vec());
    let fall = plateau - last;
    if fall < 0.5 || fall < 0.25 * plateau {
        return None;
    }
    let crossing = |share: f64| {
        (steepest..n)
            .find(|&i| loss[i] <= plateau - share * fall)
            .map(|i| steps[i])
    };
    Some(PhaseChange {
        onset: crossing(0.1)?,
        middle: crossing(0.5)?,
        end: crossing(0.75)?,
        plateau,
        last,
    })
}

/// The phase change of an induction run's metric rows (its task's `test_loss_repeat`).
pub fn run_phase_change(rows: &[MetricRow]) -> Option<PhaseChange> {
    let pts: Vec<(u64, f64)> = rows
        .iter()
        .filter_map(|r| r.get("test_loss_repeat").map(|v| (r.step, v)))
        .collect();
    let (steps, loss): (Vec<u64>, Vec<f64>) = pts.into_iter().unzip();
    phase_change(&steps, &loss)
}

/// The value of `column` at the evaluation of `step`.
fn at(rows: &[MetricRow], column: &str, step: u64) -> Option<f64> {
    rows.iter().find(|r| r.step == step)?.get(column)
}

/// The heads across `phase`, from the `heads` monitor's columns (None without them).
pub fn induction_heads(
    rows: &[MetricRow],
    phase: &PhaseChange,
    n_layers: usize,
    n_heads: usize,
) -> Option<InductionHeads> {
    let score = |col: &str| -> Option<Score> {
        Some(Score {
            onset: at(rows, col, phase.onset)?,
            middle: at(rows, col, phase.middle)?,
            end: at(rows, col, phase.end)?,
        })
    };
    let mut best: Option<((usize, usize), Score)> = None;
    for l in n_layers.min(2) - 1..n_layers {
        for h in 0..n_heads {
            let s = score(&format!("heads_L{l}H{h}_induction"))?;
            if best.is_none_or(|(_, b)| s.middle - s.onset > b.middle - b.onset) {
                best = Some(((l, h), s));
            }
        }
    }
    let ((li, hi), induction_score) = best?;
    let mut prev: Option<((usize, usize), Score)> = None;
    let mut k_composition = Vec::new();
    for l in 0..li {
        for h in 0..n_heads {
            let s = score(&format!("heads_L{l}H{h}_prev"))?;
            if prev.is_none_or(|(_, b)| s.end > b.end) {
                prev = Some(((l, h), s));
            }
            let k = at(rows, &format!("heads_kcomp_L{l}H{h}_L{li}H{hi}"), phase.end)?;
            k_composition.push(((l, h), k));
        }
    }
    k_composition.sort_by(|a, b| b.1.total_cmp(&a.1));
    Some(InductionHeads {
        induction_head: (li, hi),
        induction_score,
        previous_token_head: prev,
        copying_score: score(&format!("heads_L{li}H{hi}_copying"))?,
        k_composition,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plateau_then_a_fall_is_a_phase_change_and_a_slow_slide_is_not() {
        let steps: Vec<u64> = (0..100).map(|i| i * 10).collect();
        // 4 nats until step 400, down to 1 by step 500, then flat.
        let abrupt: Vec<f64> = steps
            .iter()
            .map(|&s| match s {
                0..=400 => 4.0,
                401..=500 => 4.0 - 3.0 * (s - 400) as f64 / 100.0,
                _ => 1.0,
            })
            .collect();
        let p = phase_change(&steps, &abrupt).unwrap();
        assert_eq!((p.plateau, p.last), (4.0, 1.0));
        assert_eq!((p.onset, p.middle, p.end), (410, 450, 480));
        // A plateau that never falls (a one-layer model) has none.
        let flat: Vec<f64> = steps.iter().map(|&s| 3.3 - s as f64 * 1e-4).collect();
        assert_eq!(phase_change(&steps, &flat), None);
    }
}
