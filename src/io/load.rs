//! Load a transformer from any supported file: a toylens safetensors checkpoint or an original
//! grokking `.pth` (recognised by content, not extension).

use super::{checkpoint, pth};
use crate::error::{Error, Result};
use crate::models::transformer::Transformer;
use crate::tasks::TaskInfo;
use std::io::Read;
use std::path::Path;

pub struct Loaded {
    pub model: Transformer,
    pub task: Option<TaskInfo>,
    /// Losses the original run recorded (imported `.pth` only).
    pub recorded_train_loss: Option<f64>,
    pub recorded_test_loss: Option<f64>,
}

pub fn load_model(path: &Path) -> Result<Loaded> {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| Error::io(path, e))?;
    if n >= 2 && &magic[..2] == b"PK" {
        let imp = pth::import_grokking(path)?;
        return Ok(Loaded {
            model: imp.model,
            task: Some(imp.task),
            recorded_train_loss: imp.recorded_train_loss,
            recorded_test_loss: imp.recorded_test_loss,
        });
    }
    let ck = checkpoint::load(path)?;
    let task = match ck.task {
        Some(t) => Some(serde_json::from_value::<TaskInfo>(t).map_err(|e| {
            Error::format(
                path,
                format!(
                    "metadata `{}` is not a task description: {e}",
                    checkpoint::META_TASK
                ),
            )
        })?),
        None => None,
    };
    Ok(Loaded {
        model: ck.model,
        task,
        recorded_train_loss: None,
        recorded_test_loss: None,
    })
}
