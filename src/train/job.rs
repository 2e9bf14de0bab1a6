//! What the training loop trains: a model (any kind, through [`Model`]) on a task's data (through
//! [`TaskData`]). The loop owns the schedule, optimizer, metrics files and checkpoints.

use crate::batch::LossStats;
use crate::config::Experiment;
use crate::error::{Error, Result};
use crate::io::checkpoint;
use crate::models::mask::{LiveCount, Mask};
use crate::models::{Model, Scratch};
use crate::tasks::{TaskData, TaskInfo};
use std::collections::HashMap;
use std::path::Path;

/// Checkpoint metadata: the mask's file and its CRC-32C.
pub const META_MASK: &str = "toylens.mask";
pub const META_MASK_CRC: &str = "toylens.mask_crc32c";
/// The task's data checksum where its data comes from files ([`crate::tasks::Task::data_checksum`]).
pub const META_DATA_CRC: &str = "toylens.data_crc32c";

pub struct Job {
    pub model: Box<dyn Model>,
    data: Box<dyn TaskData>,
    scratch: Scratch,
    /// Evaluation has its own buffers: its batch shapes differ from training's.
    scratch_eval: Scratch,
    /// Statistics of the last update's batch.
    last: Option<LossStats>,
    info: Option<TaskInfo>,
    /// The task's data checksum, where its data comes from files.
    data_checksum: Option<String>,
    /// The pruning mask and its file's CRC-32C, when training a sparse model.
    pub mask: Option<(Mask, String)>,
}

impl Job {
    pub fn new(exp: &Experiment) -> Result<Self> {
        let mut model = exp.build_model()?;
        if let Some(p) = exp
            .config
            .train
            .init_from
            .as_deref()
            .map(std::path::Path::new)
        {
            let ck =
                checkpoint::load(p).map_err(|e| Error::config("train.init_from", e.to_string()))?;
            if ck.model.arch() != model.arch() || ck.model.config_json() != model.config_json() {
                return Err(Error::config(
                    "train.init_from",
                    format!("{}: its model config differs from this run's", p.display()),
                ));
            }
            model = ck.model;
        }
        let mask = match exp.config.train.mask.as_deref().map(std::path::Path::new) {
            Some(p) => {
                let (m, hash) = checkpoint::load_mask(p, model.as_ref())
                    .map_err(|e| Error::config("train.mask", e.to_string()))?;
                m.apply(model.params_mut());
                Some((m, hash))
            }
            None => None,
        };
        Ok(Job {
            model,
            data: exp.data()?,
            scratch: Scratch::new(),
            scratch_eval: Scratch::new(),
            last: None,
            info: exp.task.info(),
            data_checksum: exp.task.data_checksum(),
            mask,
        })
    }

    /// Live and total entries per tensor (all live without a mask).
    pub fn live_counts(&self) -> Vec<LiveCount> {
        let n = self.model.n_params();
        let full = Mask::full(n);
        let m = self.mask.as_ref().map_or(&full, |(m, _)| m);
        m.counts(&self.model.tensors())
    }

    /// What checkpoints record about the mask.
    pub fn mask_metadata(&self, path: Option<&Path>) -> Vec<(String, String)> {
        match (&self.mask, path) {
            (Some((_, hash)), Some(p)) => vec![
                (META_MASK.to_string(), p.display().to_string()),
                (META_MASK_CRC.to_string(), hash.clone()),
            ],
            _ => Vec::new(),
        }
    }

    /// What checkpoints record about the data, where it comes from files.
    pub fn data_metadata(&self) -> Vec<(String, String)> {
        self.data_checksum
            .iter()
            .map(|c| (META_DATA_CRC.to_string(), c.clone()))
            .collect()
    }

    /// Names of the values [`Job::metrics`] returns.
    pub fn columns(&self) -> Vec<String> {
        self.data.columns()
    }

    /// Loss of update `step`'s batch and its gradient (overwriting `grads`).
    pub fn loss_and_grad(&mut self, step: u64, grads: &mut [f32]) -> Result<f64> {
        let batch = self.data.train_batch(step);
        let s = self.model.loss_and_grad(&mut self.scratch, &batch, grads)?;
        // Dead weights get no gradient: AdamW's moments stay zero, and with them the weights.
        if let Some((m, _)) = &self.mask {
            m.apply(grads);
        }
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

    /// The checkpoint file of the model now (written by the caller).
    pub fn encode(&self, meta: &HashMap<String, String>) -> Vec<u8> {
        checkpoint::encode(self.model.as_ref(), self.info.as_ref(), meta)
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
        let recorded = ck.metadata.get(META_MASK_CRC);
        let ours = self.mask.as_ref().map(|(_, h)| h);
        if recorded != ours {
            return Err(Error::format(
                path,
                format!(
                    "it was trained with mask {} but the run now has mask {} (train.mask)",
                    recorded.map_or("none", |h| h.as_str()),
                    ours.map_or("none", |h| h.as_str())
                ),
            ));
        }
        let recorded = ck.metadata.get(META_DATA_CRC);
        if recorded != self.data_checksum.as_ref() {
            return Err(Error::format(
                path,
                format!(
                    "it was trained on data with checksum {} but the data files now give {}: they changed since the run started",
                    recorded.map_or("none", |h| h.as_str()),
                    self.data_checksum.as_deref().unwrap_or("none")
                ),
            ));
        }
        self.model = ck.model;
        Ok(())
    }
}
