//! The transformer's configuration, field for field `HookedTransformerConfig` where TransformerLens has
//! the field (so its JSON reads as a TransformerLens config), plus toylens' `init` scheme and the two
//! bias switches the original grokking model needs (it has no attention or unembedding biases).

use crate::engine::activation::ActFn;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Normalization {
    LN,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// TransformerLens' default ("gpt2"): every `W_*` ~ N(0, initializer_range²), biases 0, LN w=1 b=0.
    #[default]
    TransformerLens,
    /// The original grokking code: randn/sqrt(d_model) everywhere, `W_U` randn/sqrt(d_vocab), biases 0.
    Nanda,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_minus_one() -> f64 {
    -1.0
}
fn default_vocab_out() -> i64 {
    -1
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub d_head: usize,
    /// Hidden width of each MLP; absent when `attn_only`.
    #[serde(default)]
    pub d_mlp: Option<usize>,
    pub d_vocab: usize,
    /// Output vocabulary; -1 means `d_vocab` (as in TransformerLens).
    #[serde(default = "default_vocab_out")]
    pub d_vocab_out: i64,
    pub n_ctx: usize,
    /// `relu`, `gelu` or `gelu_new`; absent when `attn_only`.
    #[serde(default)]
    pub act_fn: Option<ActFn>,
    /// `"LN"` or null.
    #[serde(default)]
    pub normalization_type: Option<Normalization>,
    #[serde(default)]
    pub attn_only: bool,
    /// Seed of the weight initialisation.
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Standard deviation of TransformerLens' init; -1 means 0.8/sqrt(d_model).
    #[serde(default = "default_minus_one")]
    pub initializer_range: f64,
    #[serde(default)]
    pub init: InitScheme,
    /// Train `b_Q, b_K, b_V, b_O` (when false they stay zero and are still saved, for TransformerLens).
    #[serde(default = "yes")]
    pub attn_bias: bool,
    /// Train `b_U` (when false it stays zero).
    #[serde(default = "yes")]
    pub unembed_bias: bool,
}

impl TransformerConfig {
    /// Nanda et al.'s grokking model for modulus `p`: 1 layer, d_model 128, 4 heads × 32, d_mlp 512,
    /// ReLU, no LayerNorm, no attention/unembedding biases, inputs `a b =` and p+1 outputs as in the
    /// original code.
    pub fn nanda(p: usize) -> Self {
        TransformerConfig {
            n_layers: 1,
            d_model: 128,
            n_heads: 4,
            d_head: 32,
            d_mlp: Some(512),
            d_vocab: p + 1,
            d_vocab_out: (p + 1) as i64,
            n_ctx: 3,
            act_fn: Some(ActFn::Relu),
            normalization_type: None,
            attn_only: false,
            seed: Some(0),
            eps: 1e-5,
            initializer_range: -1.0,
            init: InitScheme::Nanda,
            attn_bias: false,
            unembed_bias: false,
        }
    }

    pub fn d_vocab_out(&self) -> usize {
        if self.d_vocab_out < 0 {
            self.d_vocab
        } else {
            self.d_vocab_out as usize
        }
    }

    pub fn has_mlp(&self) -> bool {
        !self.attn_only
    }

    pub fn d_mlp(&self) -> usize {
        if self.attn_only {
            0
        } else {
            self.d_mlp.unwrap_or(0)
        }
    }

    pub fn act(&self) -> ActFn {
        self.act_fn.unwrap_or(ActFn::Relu)
    }

    pub fn has_ln(&self) -> bool {
        self.normalization_type == Some(Normalization::LN)
    }

    pub fn initializer_range(&self) -> f64 {
        if self.initializer_range < 0.0 {
            0.8 / (self.d_model as f64).sqrt()
        } else {
            self.initializer_range
        }
    }

    /// How many parameters [`super::Layout::new`] lays out, counted without laying them out (a
    /// config of absurd sizes costs nothing to size), in f64 (which cannot overflow).
    pub fn parameter_count(&self) -> f64 {
        let (d, h, dh) = (self.d_model as f64, self.n_heads as f64, self.d_head as f64);
        let ln = if self.has_ln() { 2.0 * d } else { 0.0 };
        let attn = 4.0 * h * d * dh + 3.0 * h * dh + d;
        let mlp = if self.has_mlp() {
            let m = self.d_mlp() as f64;
            ln + 2.0 * d * m + m + d
        } else {
            0.0
        };
        let v_out = self.d_vocab_out() as f64;
        (self.d_vocab as f64 + self.n_ctx as f64) * d
            + self.n_layers as f64 * (ln + attn + mlp)
            + ln
            + (d + 1.0) * v_out
    }

    /// Check every field; errors name the key as `{prefix}field`.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let positive = [
            ("n_layers", self.n_layers),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("d_head", self.d_head),
            ("d_vocab", self.d_vocab),
            ("n_ctx", self.n_ctx),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(Error::config(format!("{prefix}{k}"), "must be at least 1"));
            }
        }
        if self.d_vocab_out == 0 || self.d_vocab_out < -1 {
            return Err(Error::config(
                format!("{prefix}d_vocab_out"),
                format!(
                    "must be at least 1, or -1 for d_vocab (got {})",
                    self.d_vocab_out
                ),
            ));
        }
        if !self.attn_only {
            match self.d_mlp {
                Some(d) if d > 0 => {}
                _ => {
                    return Err(Error::config(
                        format!("{prefix}d_mlp"),
                        "must be at least 1 unless attn_only is true",
                    ))
                }
            }
            if self.act_fn.is_none() {
                return Err(Error::config(
                    format!("{prefix}act_fn"),
                    "must be one of relu, gelu, gelu_new unless attn_only is true",
                ));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config(
                format!("{prefix}eps"),
                "must be a positive number",
            ));
        }
        if !self.initializer_range.is_finite()
            || (self.initializer_range < 0.0 && self.initializer_range != -1.0)
        {
            return Err(Error::config(
                format!("{prefix}initializer_range"),
                "must be non-negative, or -1 for 0.8/sqrt(d_model)",
            ));
        }
        Ok(())
    }
}

/// `model:` of `arch: transformer`: its shape; the vocabulary and context come from the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerSection {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    /// null: d_model / n_heads (TransformerLens's usual choice; a sweep of d_model × n_heads keeps it).
    pub d_head: Option<usize>,
    pub d_mlp: Option<usize>,
    pub act_fn: Option<ActFn>,
    pub normalization_type: Option<Normalization>,
    pub attn_only: bool,
    pub init: InitScheme,
    pub initializer_range: f64,
    pub attn_bias: bool,
    pub unembed_bias: bool,
}

impl crate::models::ModelSection for TransformerSection {
    const NAME: &'static str = "transformer";
    fn configure(
        self,
        io: &crate::batch::TaskIo,
        seed: u64,
    ) -> Result<std::sync::Arc<dyn crate::models::ModelPlan>> {
        let crate::batch::TaskIo::Tokens {
            d_vocab,
            d_vocab_out,
            n_ctx,
            ..
        } = *io
        else {
            return Err(crate::models::wrong_io(
                "transformer",
                "token sequences",
                io,
            ));
        };
        let d_head = match self.d_head {
            Some(d) => d,
            None if self.n_heads > 0 && self.d_model % self.n_heads == 0 => {
                self.d_model / self.n_heads
            }
            None => {
                return Err(Error::config(
                    "model.d_head",
                    format!(
                        "null means d_model / n_heads, but {} heads do not divide d_model {}",
                        self.n_heads, self.d_model
                    ),
                ))
            }
        };
        let cfg = TransformerConfig {
            n_layers: self.n_layers,
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_head,
            d_mlp: self.d_mlp,
            d_vocab,
            d_vocab_out: d_vocab_out as i64,
            n_ctx,
            act_fn: self.act_fn,
            normalization_type: self.normalization_type,
            attn_only: self.attn_only,
            seed: Some(seed),
            eps: 1e-5,
            initializer_range: self.initializer_range,
            init: self.init,
            attn_bias: self.attn_bias,
            unembed_bias: self.unembed_bias,
        };
        cfg.validate("model.")?;
        Ok(std::sync::Arc::new(cfg))
    }
}

impl crate::models::ModelPlan for TransformerConfig {
    fn build(&self) -> Result<Box<dyn crate::models::Model>> {
        Ok(Box::new(super::Transformer::new(self.clone())?))
    }
    fn memory(&self) -> crate::models::ModelMemory {
        let (d, hd, h, ctx) = (
            self.d_model as f64,
            self.n_heads as f64 * self.d_head as f64,
            self.n_heads as f64,
            self.n_ctx as f64,
        );
        let dm = if self.has_mlp() {
            self.d_mlp() as f64
        } else {
            0.0
        };
        // Attention works at every position; the last block's MLP and the unembedding on the fast
        // path only where loss is taken, but hooked runs and evaluation may ask for all.
        let per_position = (8.0 * hd + 2.0 * h * ctx + 14.0 * d + 3.0 * dm) * self.n_layers as f64
            + 2.0 * self.d_vocab_out() as f64;
        crate::models::ModelMemory {
            parameters: self.parameter_count(),
            activations_per_example: per_position * ctx,
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
