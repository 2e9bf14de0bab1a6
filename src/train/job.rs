//! What the training loop trains: a model (any kind, through [`Model`]) on a task's data (through
//! [`TaskData`]). The loop owns the schedule, optimizer, metrics files and checkpoints.

use crate::batch::LossStats;
use crate::config::Experiment;
use crate::error::{Error, Result};
use crate::io::checkpoint;
use crate::models::{Model, Scratch};
use crate::tasks::{TaskData, TaskInfo};
use std::collections::HashMap;
use std::path::Path;

pub struct Job {
    pub model: Box<dyn Model>,
    data: Box<dyn TaskData>,
    scratch: Scratch,
    /// Evaluation has its own buffers: its batch shapes differ from training's.
    scratch_eval: Scratch,
    /// Statistics of the last update's batch.
    last: Option<LossStats>,
    info: TaskInfo,
}

impl Job {
    pub fn new(exp: &Experiment) -> Result<Self> {
        Ok(Job {
            model: exp.build_model()?,
            data: exp.data(),
            scratch: Scratch::new(),
            scratch_eval: Scratch::new(),
            last: None,
            info: exp.task.info(),
        })
    }

    /// Names of the values [`Job::metrics`] returns.
    pub fn columns(&self) -> Vec<String> {
        self.data.columns()
    }

    /// Loss of update `step`'s batch and its gradient (overwriting `grads`).
    pub fn loss_and_grad(&mut self, step: u64, grads: &mut [f32]) -> Result<f64> {
        let batch = self.data.train_batch(step);
        let s = self.model.loss_and_grad(&mut self.scratch, &batch, grads)?;
        let loss = s.loss;
        self.last = Some(s);
        Ok(loss)
    }

    /// The task's metrics now.
    pub fn metrics(&mut self) -> Result<Vec<f64>> {
        self.data.metrics(
            self.model.as_ref(),
            &mut self.scratch_eval,
            self.last.as_ref(),
        )
    }

    pub fn save(&self, path: &Path, meta: &HashMap<String, String>) -> Result<()> {
        checkpoint::save(path, self.model.as_ref(), Some(&self.info), meta)
    }

    /// Replace the parameters by a checkpoint's, which must hold a model of this run's config.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let ck = checkpoint::load(path)?;
        if ck.model.arch() != self.model.arch()
            || ck.model.config_json() != self.model.config_json()
        {
            return Err(Error::format(
                path,
                "its model config differs from the run's config.yaml",
            ));
        }
        self.model = ck.model;
        Ok(())
    }
}
