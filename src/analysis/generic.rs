//! What any model does on its task, whatever the task: loss and accuracy at every loss position on
//! the training and test sets, each tensor's norm, and for a transformer each head's mean attention
//! pattern with its previous-token and first-token scores. This is what `analyze` gives for a task
//! without analyses of its own (your own data, say).

use crate::batch::{Batch, LossStats};
use crate::config::Experiment;
use crate::error::Result;
use crate::hooks::CacheFilter;
use crate::models::transformer::Transformer;
use crate::models::{Model, Scratch};
use ndarray::{Axis, Ix4};
use serde::Serialize;

/// Examples of each set evaluated (the first ones).
pub const EXAMPLES: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub struct SetStats {
    pub examples: usize,
    pub loss: f64,
    /// NaN for regression.
    pub accuracy: f64,
    /// The share of examples right at every loss position.
    pub exact_match: f64,
    pub per_position_loss: Vec<f64>,
    pub per_position_accuracy: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorNorm {
    pub name: String,
    pub shape: Vec<usize>,
    pub norm: f64,
}

/// One head's attention, averaged over the test examples.
#[derive(Clone, Debug, Serialize)]
pub struct HeadAttention {
    pub layer: usize,
    pub head: usize,
    /// `[query, key]`.
    pub mean_pattern: Vec<Vec<f64>>,
    /// Mean attention from each position to the one before it (over positions 1..).
    pub previous_token: f64,
    /// Mean attention to position 0 (over positions 1..).
    pub first_token: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GenericReport {
    pub task: String,
    pub arch: String,
    pub train: Option<SetStats>,
    pub test: Option<SetStats>,
    pub tensor_norms: Vec<TensorNorm>,
    pub attention: Vec<HeadAttention>,
}

fn stats(n: usize, s: LossStats) -> SetStats {
    SetStats {
        examples: n,
        loss: s.loss,
        accuracy: s.accuracy,
        exact_match: s.exact_match,
        per_position_loss: s.per_position_loss,
        per_position_accuracy: s.per_position_accuracy,
    }
}

/// The report of `model`, trained in `exp`.
pub fn report(model: &dyn Model, exp: &Experiment) -> Result<GenericReport> {
    let data = exp.data()?;
    let mut scratch = Scratch::new();
    let mut eval = |b: Option<Batch>| -> Result<Option<SetStats>> {
        b.map(|b| {
            let b = b.head(EXAMPLES);
            Ok(stats(b.len(), model.evaluate(&mut scratch, &b)?))
        })
        .transpose()
    };
    let train = eval(data.train_set())?;
    let test_batch = data.test_set();
    let test = eval(test_batch.clone())?;
    let tensor_norms = model
        .tensors()
        .into_iter()
        .map(|t| TensorNorm {
            norm: model.params()[t.range.clone()]
                .iter()
                .map(|&x| x as f64 * x as f64)
                .sum::<f64>()
                .sqrt(),
            name: t.name,
            shape: t.shape,
        })
        .collect();
    let attention = match (
        model.as_any().downcast_ref::<Transformer>(),
        test_batch.map(|b| b.head(EXAMPLES)),
    ) {
        (Some(t), Some(Batch::Tokens(b))) => attention(t, &b.tokens)?,
        _ => Vec::new(),
    };
    Ok(GenericReport {
        task: exp.task.describe(),
        arch: model.arch().to_string(),
        train,
        test,
        tensor_norms,
        attention,
    })
}

/// Every head's mean pattern over `tokens`.
fn attention(model: &Transformer, tokens: &ndarray::Array2<u32>) -> Result<Vec<HeadAttention>> {
    let names: Vec<String> = (0..model.cfg.n_layers)
        .map(|l| format!("blocks.{l}.attn.hook_pattern"))
        .collect();
    let (_, cache) = model.run_with_cache(tokens.view(), CacheFilter::Names(names.clone()))?;
    let mut out = Vec::new();
    for (layer, name) in names.iter().enumerate() {
        let p = cache
            .get(name)?
            .clone()
            .into_dimensionality::<Ix4>()
            .map_err(|e| crate::error::Error::Input(format!("{name}: {e}")))?;
        let mean = p.mean_axis(Axis(0)).expect("at least one example");
        for (head, m) in mean.axis_iter(Axis(0)).enumerate() {
            let n = m.nrows();
            let avg = |f: &dyn Fn(usize) -> f32| -> f64 {
                if n < 2 {
                    return f64::NAN;
                }
                (1..n).map(|q| f(q) as f64).sum::<f64>() / (n - 1) as f64
            };
            out.push(HeadAttention {
                layer,
                head,
                previous_token: avg(&|q| m[[q, q - 1]]),
                first_token: avg(&|q| m[[q, 0]]),
                mean_pattern: m
                    .rows()
                    .into_iter()
                    .map(|r| r.iter().map(|&v| v as f64).collect())
                    .collect(),
            });
        }
    }
    Ok(out)
}
