//! Load a model from any supported file: a toylens safetensors checkpoint of any kind, or an
//! original grokking `.pth` (recognised by content, not extension).

use super::{checkpoint, pth};
use crate::error::{Error, Result};
use crate::models::transformer::Transformer;
use crate::models::Model;
use crate::tasks::modular::{ModularTask, Op};
use crate::tasks::TaskInfo;
use std::io::Read;
use std::path::{Path, PathBuf};

pub struct Loaded {
    pub path: PathBuf,
    pub model: Box<dyn Model>,
    pub task: Option<TaskInfo>,
    /// Losses the original run recorded (imported `.pth` only).
    pub recorded_train_loss: Option<f64>,
    pub recorded_test_loss: Option<f64>,
    /// The checkpoint's metadata (empty for an imported `.pth`).
    pub metadata: std::collections::HashMap<String, String>,
}

/// The modular task a model was trained on: its modulus, operation and (when known) its split.
pub struct ModularOf {
    pub p: usize,
    pub op: Op,
    pub split: Option<ModularTask>,
}

impl Loaded {
    /// The model as a transformer, or an error naming the file and what it holds.
    pub fn transformer(&self) -> Result<&Transformer> {
        self.model
            .downcast::<Transformer>("a transformer")
            .map_err(|e| Error::format(&self.path, e.to_string()))
    }

    /// The modular task of this model. Without a recorded task or experiment (an imported or older
    /// file): (a + b) mod p with p = d_vocab − 1, '=' being the last token.
    pub fn modular(&self) -> Result<ModularOf> {
        match &self.task {
            Some(t @ TaskInfo::Modular { p, op, .. }) => Ok(ModularOf {
                p: *p,
                op: *op,
                split: t.modular_task(),
            }),
            Some(other) => Err(Error::format(
                &self.path,
                format!(
                    "this needs a model trained on modular arithmetic; this one was trained on {}",
                    serde_json::to_string(other).unwrap_or_default()
                ),
            )),
            None => {
                // A toylens run records its experiment: its task is another one, not a guess.
                if let Some(json) = self.metadata.get(crate::io::checkpoint::META_EXPERIMENT) {
                    let task = crate::config::from_json(json, "toylens.experiment")
                        .map(|c| c.task_name())
                        .unwrap_or("unknown");
                    return Err(Error::format(
                        &self.path,
                        format!(
                            "this needs a model trained on modular arithmetic; this one was trained on the `{task}` task"
                        ),
                    ));
                }
                let t = self.transformer()?;
                let p = t
                    .cfg
                    .d_vocab
                    .checked_sub(1)
                    .filter(|&p| p >= 2)
                    .ok_or_else(|| {
                        Error::format(
                            &self.path,
                            "the model's vocabulary is too small for a modulus",
                        )
                    })?;
                Ok(ModularOf {
                    p,
                    op: Op::Add,
                    split: None,
                })
            }
        }
    }
}

/// Load any model toylens reads: a `.pth` of the original grokking code is imported; a safetensors
/// checkpoint is dispatched on its recorded kind.
pub fn load_any(path: &Path) -> Result<Loaded> {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| Error::io(path, e))?;
    if n >= 2 && &magic[..2] == b"PK" {
        let imp = pth::import_grokking(path)?;
        return Ok(Loaded {
            path: path.to_path_buf(),
            model: Box::new(imp.model),
            task: Some(imp.task),
            recorded_train_loss: imp.recorded_train_loss,
            recorded_test_loss: imp.recorded_test_loss,
            metadata: Default::default(),
        });
    }
    let ck = checkpoint::load(path)?;
    Ok(Loaded {
        path: path.to_path_buf(),
        model: ck.model,
        task: ck.task,
        recorded_train_loss: None,
        recorded_test_loss: None,
        metadata: ck.metadata,
    })
}

impl Loaded {
    /// The experiment this checkpoint was trained in, when it records one (toylens checkpoints of a
    /// training run do: metadata `toylens.experiment`).
    pub fn experiment(&self) -> Result<Option<crate::config::Experiment>> {
        self.metadata
            .get(crate::io::checkpoint::META_EXPERIMENT)
            .map(|j| {
                crate::config::from_json(
                    j,
                    &format!("{} (toylens.experiment)", self.path.display()),
                )
                .and_then(|c| c.resolve())
            })
            .transpose()
    }
}
