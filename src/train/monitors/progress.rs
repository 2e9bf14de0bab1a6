//! Nanda et al.'s progress measures of a modular-arithmetic model, as `toylens analyze` gives them
//! for one checkpoint (its own key frequencies): losses on all pairs, restricted and excluded loss,
//! the Gini coefficients of W_E and W_L, the number of key frequencies, and each frequency's share
//! of W_L's non-constant squared Fourier norm (which frequencies the circuit is forming on).

use super::{transformer, transformer_config, Monitor, MonitorKind};
use crate::analysis;
use crate::config::Experiment;
use crate::error::Result;
use crate::models::Model;
use crate::tasks::modular::{ModularTask, Op};

pub const KIND: MonitorKind = MonitorKind {
    name: "progress",
    about: "modular arithmetic: restricted and excluded loss, Gini of W_E and W_L, key frequencies and each frequency's share of W_L",
    build,
};

struct Progress {
    task: ModularTask,
}

fn build(exp: &Experiment) -> std::result::Result<Box<dyn Monitor>, String> {
    let cfg = transformer_config(exp)?;
    let Some(task) = exp.task.downcast::<ModularTask>() else {
        return Err(format!(
            "it needs a modular-arithmetic task (data.task: modular), not `{}`",
            exp.config.task_name()
        ));
    };
    if task.op == Op::Mul {
        return Err("the Fourier analysis covers data.op add and sub, not mul".into());
    }
    if !cfg.has_mlp() {
        return Err("it reads W_L = W_out·W_U, and the model has no MLP (model.attn_only)".into());
    }
    Ok(Box::new(Progress { task: task.clone() }))
}

impl Monitor for Progress {
    fn columns(&self) -> Vec<String> {
        let mut c: Vec<String> = [
            "loss_all",
            "restricted_loss",
            "excluded_loss",
            "gini_W_E",
            "gini_W_L",
            "n_key_frequencies",
        ]
        .map(|s| format!("progress_{s}"))
        .to_vec();
        c.extend((1..=(self.task.p - 1) / 2).map(|k| format!("progress_W_L_share_f{k}")));
        c
    }

    fn measure(&mut self, model: &dyn Model) -> Result<Vec<f64>> {
        let t = &self.task;
        let a = analysis::analyze(transformer(model)?, t.p, t.op, Some(t))?;
        let mut v = vec![
            a.loss_all,
            a.restricted_loss,
            a.excluded_loss,
            a.gini_w_e,
            a.gini_w_l,
            a.key_frequencies.len() as f64,
        ];
        v.extend(frequency_shares(&a.w_l_frequency_norms));
        Ok(v)
    }
}

/// Each non-constant frequency's share of the squared norm (0 where all are zero).
pub fn frequency_shares(norms: &[f64]) -> Vec<f64> {
    let sq: Vec<f64> = norms[1..].iter().map(|x| x * x).collect();
    let total: f64 = sq.iter().sum();
    sq.iter()
        .map(|x| if total > 0.0 { x / total } else { 0.0 })
        .collect()
}
