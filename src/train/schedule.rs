//! The training schedule: steps, batches, evaluation, checkpoints and the learning rate of each
//! update, from a config's `train` and `optim` sections.

use crate::config::ExperimentConfig;

/// Steps, batches, evaluation, checkpoints and the learning-rate schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub steps: u64,
    pub batch_size: Option<usize>,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub log_checkpoints: u32,
    pub early_stop_test_loss: Option<f64>,
    pub lr: f64,
    pub warmup_steps: u64,
    pub one_cycle: Option<crate::config::OneCycle>,
    /// The pruning mask's file, if any.
    pub mask: Option<std::path::PathBuf>,
    /// The checkpoint whose weights the run starts from, if not the seed's initialisation.
    pub init_from: Option<std::path::PathBuf>,
}

impl Schedule {
    /// Learning rate of update `t` (1-based): linear warm-up as the original code's
    /// `LambdaLR(lambda s: min(s / warmup, 1))`, or the one-cycle schedule.
    pub fn lr_at(&self, t: u64) -> f64 {
        if let Some(c) = &self.one_cycle {
            return c.lr_at(self.lr, t);
        }
        let w = self.warmup_steps;
        if w == 0 {
            self.lr
        } else {
            self.lr * ((t - 1) as f64 / w as f64).min(1.0)
        }
    }

    /// Whether a checkpoint is due after `step` updates: step 0, every `checkpoint_every`,
    /// log-spaced ones before the first regular one, and the last step.
    pub fn checkpoint_due(&self, step: u64) -> bool {
        if step == 0 || step % self.checkpoint_every == 0 || step == self.steps {
            return true;
        }
        if step > self.checkpoint_every {
            // The log-spaced ones all lie below the first regular one.
            return false;
        }
        let n = self.log_checkpoints;
        (0..n).any(|i| {
            libm::pow(self.checkpoint_every as f64, i as f64 / n as f64).round() as u64 == step
        })
    }
}

impl Schedule {
    /// The schedule of a config.
    pub fn of(cfg: &ExperimentConfig) -> Schedule {
        let t = &cfg.train;
        Schedule {
            steps: t.steps,
            batch_size: t.batch_size,
            eval_every: t.eval_every,
            checkpoint_every: t.checkpoint_every,
            log_checkpoints: t.log_checkpoints,
            early_stop_test_loss: t.early_stop_test_loss,
            mask: t.mask.as_ref().map(std::path::PathBuf::from),
            init_from: t.init_from.as_ref().map(std::path::PathBuf::from),
            lr: cfg.optim.lr,
            warmup_steps: cfg.optim.warmup_steps,
            one_cycle: cfg.optim.one_cycle.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_fall_at_zero_the_log_spaced_steps_every_interval_and_the_end() {
        let sched = Schedule {
            steps: 2500,
            batch_size: None,
            eval_every: 100,
            checkpoint_every: 1000,
            log_checkpoints: 4,
            early_stop_test_loss: None,
            lr: 1e-3,
            warmup_steps: 0,
            one_cycle: None,
            mask: None,
            init_from: None,
        };
        let due: Vec<u64> = (0..=3000).filter(|&s| sched.checkpoint_due(s)).collect();
        // 1000^(i/4) rounded: 1, 6, 32, 178.
        assert_eq!(due, [0, 1, 6, 32, 178, 1000, 2000, 2500, 3000]);
        let none = Schedule {
            log_checkpoints: 0,
            ..sched
        };
        let due: Vec<u64> = (0..=2500).filter(|&s| none.checkpoint_due(s)).collect();
        assert_eq!(due, [0, 1000, 2000, 2500]);
    }

    #[test]
    fn one_cycle_is_pytorchs_linear_one_cycle() {
        // torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.003, total_steps=10, pct_start=0.5,
        // div_factor=4, final_div_factor=10, anneal_strategy="linear", cycle_momentum=False):
        // get_last_lr() before each of the ten optimizer steps.
        let torch = [
            0.00075, 0.0013125, 0.001875, 0.0024375, 0.003, 0.002415, 0.00183, 0.001245, 0.00066,
            7.5e-05,
        ];
        let c = crate::config::OneCycle {
            total_steps: 10,
            pct_start: 0.5,
            div_factor: 4.0,
            final_div_factor: 10.0,
        };
        for (t, want) in (1..=10).zip(torch) {
            let got = c.lr_at(0.003, t);
            assert!((got - want).abs() < 1e-12, "update {t}: {got} vs {want}");
        }
    }
}
