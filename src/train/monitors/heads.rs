//! The heads of an induction circuit over training: per head its previous-token and induction
//! (prefix-matching) scores and its copying score, and the K-composition of every later head with
//! every earlier one: `toylens circuits`'s detectors (TransformerLens's `detect_head`, the `mul`
//! measure, on the same 16 repeated random sequences) and weight scores, at every evaluation.

use super::{transformer, transformer_config, Monitor, MonitorKind};
use crate::analysis::circuits::detect::{self, ErrorMeasure, Exclude, HeadKind};
use crate::analysis::circuits::weights::{self, Composition};
use crate::config::Experiment;
use crate::error::Result;
use crate::models::Model;
use ndarray::Array2;

pub const KIND: MonitorKind = MonitorKind {
    name: "heads",
    about: "any transformer with a context of 4+: each head's previous-token, induction and copying scores, and each later head's K-composition with each earlier one",
    build,
};

struct Heads {
    tokens: Array2<u32>,
    layers: usize,
    heads: usize,
}

fn build(exp: &Experiment) -> std::result::Result<Box<dyn Monitor>, String> {
    let cfg = transformer_config(exp)?;
    let Some(tokens) = detect::detector_tokens(cfg.n_ctx, cfg.d_vocab) else {
        return Err(format!(
            "its detectors read a sequence repeated once, which needs a context of 4 or more (n_ctx is {})",
            cfg.n_ctx
        ));
    };
    Ok(Box::new(Heads {
        tokens,
        layers: cfg.n_layers,
        heads: cfg.n_heads,
    }))
}

const SCORES: [&str; 3] = ["prev", "induction", "copying"];

impl Monitor for Heads {
    fn columns(&self) -> Vec<String> {
        let mut c = Vec::new();
        for l in 0..self.layers {
            for h in 0..self.heads {
                c.extend(SCORES.iter().map(|s| format!("heads_L{l}H{h}_{s}")));
            }
        }
        for lb in 1..self.layers {
            for hb in 0..self.heads {
                for la in 0..lb {
                    for ha in 0..self.heads {
                        c.push(format!("heads_kcomp_L{la}H{ha}_L{lb}H{hb}"));
                    }
                }
            }
        }
        c
    }

    fn measure(&mut self, model: &dyn Model) -> Result<Vec<f64>> {
        let model = transformer(model)?;
        let score = |kind| {
            detect::detect(
                model,
                self.tokens.view(),
                kind,
                Exclude::default(),
                ErrorMeasure::Mul,
            )
        };
        let prev = score(HeadKind::PreviousToken)?;
        let induction = score(HeadKind::Induction)?;
        let copying = weights::copying_scores(model)?;
        let mut out = Vec::new();
        for l in 0..self.layers {
            for h in 0..self.heads {
                let c = copying[l * self.heads + h].score;
                out.extend([prev[[l, h]], induction[[l, h]], c]);
            }
        }
        if self.layers > 1 {
            let k = weights::composition_scores(model, Composition::K)?;
            for lb in 1..self.layers {
                for hb in 0..self.heads {
                    for la in 0..lb {
                        for ha in 0..self.heads {
                            out.push(k[[la, ha, lb, hb]]);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}
