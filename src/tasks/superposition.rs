//! Toy Models of Superposition's data: sparse features, fresh every step, and a fixed evaluation
//! batch. The features' number, importances and probabilities are the model config's (each instance
//! sees its own probability), so the samples come from [`SuperpositionConfig`].

use super::TaskData;
use crate::batch::{Batch, DenseBatch, LossStats};
use crate::error::Result;
use crate::models::superposition::SuperpositionConfig;
use crate::models::{Model, Scratch};
use std::borrow::Cow;

pub struct SuperpositionData {
    cfg: SuperpositionConfig,
    batch_size: usize,
    eval: Batch,
}

fn dense(cfg: &SuperpositionConfig, x: Vec<f32>) -> Batch {
    let w = cfg.n_instances * cfg.n_features;
    Batch::Dense(DenseBatch {
        x: ndarray::Array2::from_shape_vec((x.len() / w, w), x).expect("whole examples"),
        y: None,
    })
}

impl SuperpositionData {
    pub fn new(cfg: SuperpositionConfig, batch_size: usize, n_eval: usize) -> Self {
        SuperpositionData {
            eval: dense(&cfg, cfg.eval_batch(n_eval)),
            cfg,
            batch_size,
        }
    }
}

impl TaskData for SuperpositionData {
    fn columns(&self) -> Vec<String> {
        let mut c = vec!["train_loss".to_string(), "test_loss".to_string()];
        c.extend((0..self.cfg.n_instances).map(|i| format!("test_loss_i{i}")));
        c
    }
    fn train_batch(&mut self, step: u64) -> Cow<'_, Batch> {
        Cow::Owned(dense(
            &self.cfg,
            self.cfg.train_batch(step, self.batch_size),
        ))
    }
    /// The objective (summed over instances) of the last step's batch as "train", the evaluation
    /// batch's as "test", and each instance's.
    fn metrics(
        &mut self,
        model: &dyn Model,
        scratch: &mut Scratch,
        last: Option<&LossStats>,
    ) -> Result<Vec<f64>> {
        let te = model.evaluate(scratch, &self.eval)?;
        let train = last.map_or(te.loss, |l| l.loss);
        let mut v = vec![train, te.loss];
        v.extend(te.per_position_loss);
        Ok(v)
    }
    fn train_set(&self) -> Option<Batch> {
        None
    }
}
