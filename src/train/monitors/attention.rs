//! Each head's attention over training, on the first [`EXAMPLES`] inputs of the task's test set:
//! per head, averaged over the examples and over the query positions that see more than one key,
//! the pattern's entropy (nats), its largest weight, and its weight on the previous token and on the
//! first position.

use super::{transformer, transformer_config, Monitor, MonitorKind};
use crate::batch::Batch;
use crate::config::Experiment;
use crate::error::Result;
use crate::hooks::CacheFilter;
use crate::models::Model;
use ndarray::{s, Array2};

pub const KIND: MonitorKind = MonitorKind {
    name: "attention",
    about: "any transformer on tokens: each head's attention entropy, largest weight, weight on the previous token and on the first position",
    build,
};

/// Test inputs the statistics average over.
pub const EXAMPLES: usize = 256;

const STATS: [&str; 4] = ["entropy", "max", "prev", "first"];

struct Attention {
    tokens: Array2<u32>,
    layers: usize,
    heads: usize,
}

fn build(exp: &Experiment) -> std::result::Result<Box<dyn Monitor>, String> {
    let cfg = transformer_config(exp)?;
    let data = exp.data().map_err(|e| e.to_string())?;
    let Some(Batch::Tokens(test)) = data.test_set() else {
        return Err("it needs a test set of token inputs".into());
    };
    if test.tokens.nrows() == 0 {
        return Err("its test set is empty".into());
    }
    if test.tokens.ncols() < 2 {
        return Err("its inputs have one position: attention has nothing to choose".into());
    }
    let n = test.tokens.nrows().min(EXAMPLES);
    Ok(Box::new(Attention {
        tokens: test.tokens.slice(s![..n, ..]).to_owned(),
        layers: cfg.n_layers,
        heads: cfg.n_heads,
    }))
}

impl Monitor for Attention {
    fn columns(&self) -> Vec<String> {
        let mut c = Vec::new();
        for l in 0..self.layers {
            for h in 0..self.heads {
                c.extend(STATS.iter().map(|s| format!("attention_L{l}H{h}_{s}")));
            }
        }
        c
    }

    fn measure(&mut self, model: &dyn Model) -> Result<Vec<f64>> {
        let model = transformer(model)?;
        let names: Vec<String> = (0..self.layers)
            .map(|l| format!("blocks.{l}.attn.hook_pattern"))
            .collect();
        let (_, cache) =
            model.run_with_cache(self.tokens.view(), CacheFilter::Names(names.clone()))?;
        let mut out = Vec::new();
        for name in &names {
            let p = cache.get(name)?; // [batch, head, query, key]
            let (b, heads, q) = (p.shape()[0], p.shape()[1], p.shape()[2]);
            for h in 0..heads {
                let mut sums = [0.0f64; 4];
                for e in 0..b {
                    for qi in 1..q {
                        let row = p.slice(s![e, h, qi, ..=qi]);
                        let mut entropy = 0.0;
                        let mut max = 0.0f64;
                        for &w in row {
                            let w = f64::from(w);
                            if w > 0.0 {
                                entropy -= w * libm::log(w);
                            }
                            max = max.max(w);
                        }
                        sums[0] += entropy;
                        sums[1] += max;
                        sums[2] += f64::from(row[qi - 1]);
                        sums[3] += f64::from(row[0]);
                    }
                }
                let n = (b * (q - 1)) as f64;
                out.extend(sums.map(|s| s / n));
            }
        }
        Ok(out)
    }
}
