//! Toy Models of Superposition's data: sparse features, fresh every step, and a fixed evaluation
//! batch. Each instance sees its own feature probability; the model weighs its loss by the
//! features' importances (both in [`FeatureSpec`], which the task hands the model).

use super::{Footprint, Task, TaskData, TaskSection};
use crate::batch::{Batch, DenseBatch, FeatureSpec, LossStats, TaskIo};
use crate::error::{Error, Result};
use crate::models::{Model, Scratch};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// `data:` of `task: superposition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperpositionSection {
    pub n_features: usize,
    /// Models trained at once, each at its own feature probability.
    pub n_instances: usize,
    /// Feature i has importance `importance_decay^i`.
    pub importance_decay: f64,
    /// Instance 0's feature probability...
    pub max_feature_probability: f64,
    /// ...down to the last instance's, log-spaced (1 to 0.05 is the paper's 20^−linspace(0, 1, n)).
    pub min_feature_probability: f64,
    /// Examples in the fixed evaluation batch.
    pub n_eval: usize,
    /// Seed of the data; null means the top-level `seed`.
    pub seed: Option<u64>,
}

/// The features and the size of the evaluation batch.
#[derive(Clone, Debug, PartialEq)]
pub struct SuperpositionTask {
    pub features: FeatureSpec,
    pub n_eval: usize,
}

impl TaskSection for SuperpositionSection {
    const NAME: &'static str = "superposition";
    fn configure(self, seed: u64) -> Result<Arc<dyn Task>> {
        let features = FeatureSpec {
            n_features: self.n_features,
            n_instances: self.n_instances,
            importance_decay: self.importance_decay,
            max_feature_probability: self.max_feature_probability,
            min_feature_probability: self.min_feature_probability,
            data_seed: self.seed.unwrap_or(seed),
        };
        features.validate()?;
        Ok(Arc::new(SuperpositionTask {
            features,
            n_eval: self.n_eval,
        }))
    }
}

impl Task for SuperpositionTask {
    fn io(&self) -> TaskIo {
        TaskIo::SparseFeatures(self.features.clone())
    }
    fn fresh_samples(&self) -> bool {
        true
    }
    fn make_data(&self, batch_size: Option<usize>) -> Result<Box<dyn TaskData>> {
        let bs = batch_size.ok_or_else(|| {
            Error::config("train.batch_size", "must be set: fresh samples every step")
        })?;
        Ok(Box::new(SuperpositionData::new(
            self.features.clone(),
            bs,
            self.n_eval,
        )))
    }
    fn info(&self) -> Option<super::TaskInfo> {
        Some(super::TaskInfo::Superposition {})
    }
    fn footprint(&self, batch_size: Option<usize>) -> Footprint {
        let f = &self.features;
        let at_once = batch_size.unwrap_or(1).max(self.n_eval) as f64;
        Footprint {
            examples_at_once: at_once,
            data_bytes: self.n_eval as f64 * f.n_instances as f64 * f.n_features as f64 * 4.0,
        }
    }
    fn describe(&self) -> String {
        format!(
            "superposition, {} features, {} instances",
            self.features.n_features, self.features.n_instances
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

pub struct SuperpositionData {
    cfg: FeatureSpec,
    batch_size: usize,
    eval: Batch,
}

fn dense(cfg: &FeatureSpec, x: Vec<f32>) -> Batch {
    let w = cfg.n_instances * cfg.n_features;
    Batch::Dense(DenseBatch {
        x: ndarray::Array2::from_shape_vec((x.len() / w, w), x).expect("whole examples"),
        y: None,
    })
}

impl SuperpositionData {
    pub fn new(cfg: FeatureSpec, batch_size: usize, n_eval: usize) -> Self {
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
    fn test_set(&self) -> Option<Batch> {
        Some(self.eval.clone())
    }
}
