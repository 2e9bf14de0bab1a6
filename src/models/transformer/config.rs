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

/// Where position enters the model, TransformerLens's `positional_embedding_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionalEmbedding {
    /// Learned `W_pos` added to the residual stream.
    #[default]
    Standard,
    /// Learned `W_pos` added to the inputs of the queries and keys only (after `ln1`), never to
    /// the residual stream: values and MLPs see no position.
    Shortformer,
    /// No `W_pos`: queries and keys rotated by their position (GPT-NeoX's halves, or GPT-J's
    /// adjacent pairs with `rotary_adjacent_pairs`), on the first `rotary_dim` entries of each head.
    Rotary,
}

impl PositionalEmbedding {
    fn is_standard(&self) -> bool {
        *self == PositionalEmbedding::Standard
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// TransformerLens' default ("gpt2"): every `W_*` ~ N(0, initializer_range²), biases 0, LN w=1 b=0.
    #[default]
    TransformerLens,
    /// The original grokking code: randn/sqrt(d_model) everywhere, `W_U` randn/sqrt(d_vocab), biases 0.
    Nanda,
    /// PyTorch's `nn.Linear` defaults, as models written with it start (the in-context regression
    /// code's, say): each weight and its trainable bias U(±1/√fan_in), fan_in being the width the
    /// layer reads (d_vocab for `W_E`, n_ctx for `W_pos` as a linear map of one-hot positions,
    /// d_model for Q/K/V, W_in and W_U, n_heads·d_head for W_O, d_mlp for W_out); LN w=1 b=0.
    Torch,
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
    /// TransformerLens's field; written only when it is not `standard`.
    #[serde(default, skip_serializing_if = "PositionalEmbedding::is_standard")]
    pub positional_embedding_type: PositionalEmbedding,
    /// Rotary models: how many entries of each head rotate (TransformerLens's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<usize>,
    /// Rotary models: the base of the frequencies; absent means 10000 (TransformerLens's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_base: Option<f64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub rotary_adjacent_pairs: bool,
    /// toylens's own (Olsson et al. 2022): each head's key at position j becomes
    /// σ(α)·k_j + (1 − σ(α))·k_{j−1} (k_0 kept), α learned per head as
    /// `blocks.L.attn.smear_alpha [n_heads]`. TransformerLens has no such field.
    #[serde(default, skip_serializing_if = "is_false")]
    pub smear_keys: bool,
    /// toylens's own: every input position is a real vector of width `d_vocab`, embedded as
    /// x·W_E, and the `d_vocab_out` outputs at a loss position are real values scored by squared
    /// error (in-context regression). TransformerLens has no such field.
    #[serde(default, skip_serializing_if = "is_false")]
    pub vector_tokens: bool,
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
            positional_embedding_type: PositionalEmbedding::Standard,
            rotary_dim: None,
            rotary_base: None,
            rotary_adjacent_pairs: false,
            smear_keys: false,
            vector_tokens: false,
        }
    }

    pub fn shortformer(&self) -> bool {
        self.positional_embedding_type == PositionalEmbedding::Shortformer
    }

    pub fn rotary(&self) -> bool {
        self.positional_embedding_type == PositionalEmbedding::Rotary
    }

    /// Whether `W_pos` is added to the residual stream (standard models only: shortformer ones add
    /// it to the queries' and keys' input, rotary ones have none).
    pub fn pos_in_resid(&self) -> bool {
        self.positional_embedding_type == PositionalEmbedding::Standard
    }

    /// Whether the model has `W_pos` (every kind but rotary).
    pub fn has_w_pos(&self) -> bool {
        !self.rotary()
    }

    /// Rotary models: the rotated entries per head (`rotary_dim`, else all of `d_head`).
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim.unwrap_or(self.d_head)
    }

    pub fn rotary_base(&self) -> f64 {
        self.rotary_base.unwrap_or(10000.0)
    }

    /// Whether layer 0's rows may be one per distinct (token, position): only when a row's
    /// queries, keys and values are functions of its token and position alone, computed from
    /// the residual row (standard positions, no smearing).
    pub fn rows_by_token_and_position(&self) -> bool {
        self.positional_embedding_type == PositionalEmbedding::Standard
            && !self.smear_keys
            && !self.vector_tokens
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
        let smear = if self.smear_keys { h } else { 0.0 };
        let pos = if self.has_w_pos() {
            self.n_ctx as f64
        } else {
            0.0
        };
        (self.d_vocab as f64 + pos) * d
            + self.n_layers as f64 * smear
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
        if self.rotary() {
            let r = self.rotary_dim();
            if r == 0 || r % 2 == 1 || r > self.d_head {
                return Err(Error::config(
                    format!("{prefix}rotary_dim"),
                    format!(
                        "must be even, at least 2 and at most d_head {} (got {r})",
                        self.d_head
                    ),
                ));
            }
            let base = self.rotary_base();
            if !(base.is_finite() && base > 1.0) {
                return Err(Error::config(
                    format!("{prefix}rotary_base"),
                    format!("must be a number above 1 (got {base})"),
                ));
            }
        } else {
            let set = [
                ("rotary_dim", self.rotary_dim.is_some()),
                ("rotary_base", self.rotary_base.is_some()),
                ("rotary_adjacent_pairs", self.rotary_adjacent_pairs),
            ];
            if let Some((k, _)) = set.iter().find(|(_, on)| *on) {
                return Err(Error::config(
                    format!("{prefix}{k}"),
                    "applies only with positional_embedding_type: rotary",
                ));
            }
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
    /// `standard` (the default), `shortformer` or `rotary`.
    #[serde(default)]
    pub positional_embedding_type: PositionalEmbedding,
    /// Rotary only: null means d_head.
    #[serde(default)]
    pub rotary_dim: Option<usize>,
    /// Rotary only: null means 10000.
    #[serde(default)]
    pub rotary_base: Option<f64>,
    #[serde(default)]
    pub rotary_adjacent_pairs: bool,
    /// Smeared keys (Olsson et al. 2022), a learned mix of each key with the previous one.
    #[serde(default)]
    pub smear_keys: bool,
}

/// The transformer's sizes from a task: vocabularies (or vector widths), context, and whether the
/// tokens are vectors.
fn sizes_from(io: &crate::batch::TaskIo) -> Result<(usize, usize, usize, bool)> {
    match *io {
        crate::batch::TaskIo::Tokens {
            d_vocab,
            d_vocab_out,
            n_ctx,
            ..
        } => Ok((d_vocab, d_vocab_out, n_ctx, false)),
        crate::batch::TaskIo::VectorSequences { d_in, d_out, n_ctx } => {
            Ok((d_in, d_out, n_ctx, true))
        }
        _ => Err(crate::models::wrong_io(
            "transformer",
            "token sequences or sequences of vectors",
            io,
        )),
    }
}

impl crate::models::ModelSection for TransformerSection {
    const NAME: &'static str = "transformer";
    fn configure(
        self,
        io: &crate::batch::TaskIo,
        seed: u64,
    ) -> Result<std::sync::Arc<dyn crate::models::ModelPlan>> {
        let (d_vocab, d_vocab_out, n_ctx, vector_tokens) = sizes_from(io)?;
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
            positional_embedding_type: self.positional_embedding_type,
            // Written out for TransformerLens, which needs it.
            rotary_dim: match self.positional_embedding_type {
                PositionalEmbedding::Rotary => Some(self.rotary_dim.unwrap_or(d_head)),
                _ => self.rotary_dim,
            },
            rotary_base: self.rotary_base,
            rotary_adjacent_pairs: self.rotary_adjacent_pairs,
            smear_keys: self.smear_keys,
            vector_tokens,
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
        // (Shortformer keeps each block's query/key input, smeared keys the keys before smearing.)
        let options =
            if self.shortformer() { d } else { 0.0 } + if self.smear_keys { hd } else { 0.0 };
        let per_position = (8.0 * hd + 2.0 * h * ctx + 14.0 * d + 3.0 * dm + options)
            * self.n_layers as f64
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
