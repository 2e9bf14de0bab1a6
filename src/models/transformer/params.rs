//! Where each parameter lives in the flat buffer, under its TransformerLens name and shape.

use super::config::{InitScheme, TransformerConfig};
use crate::engine::rng::Rng;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    /// False for parameters kept at zero (biases the config switches off); still saved.
    pub trainable: bool,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LnIds {
    pub w: usize,
    pub b: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct MlpIds {
    pub w_in: usize,
    pub b_in: usize,
    pub w_out: usize,
    pub b_out: usize,
}

#[derive(Clone, Debug)]
pub struct BlockIds {
    pub ln1: Option<LnIds>,
    pub w_q: usize,
    pub b_q: usize,
    pub w_k: usize,
    pub b_k: usize,
    pub w_v: usize,
    pub b_v: usize,
    pub w_o: usize,
    pub b_o: usize,
    /// Smeared keys: α per head, `blocks.L.attn.smear_alpha [n_heads]` (σ(α) is the key's own share).
    pub smear: Option<usize>,
    pub ln2: Option<LnIds>,
    pub mlp: Option<MlpIds>,
}

/// Index of every parameter (into `specs`), plus where each one sits in the flat buffer.
#[derive(Clone, Debug)]
pub struct Layout {
    pub specs: Vec<ParamSpec>,
    pub total: usize,
    pub w_e: usize,
    /// Absent in rotary models.
    pub w_pos: Option<usize>,
    pub blocks: Vec<BlockIds>,
    pub ln_final: Option<LnIds>,
    pub w_u: usize,
    pub b_u: usize,
}

struct Builder {
    specs: Vec<ParamSpec>,
    total: usize,
}

impl Builder {
    fn add(&mut self, name: String, shape: &[usize], trainable: bool) -> usize {
        let spec = ParamSpec {
            name,
            shape: shape.to_vec(),
            offset: self.total,
            trainable,
        };
        self.total += spec.len();
        self.specs.push(spec);
        self.specs.len() - 1
    }
    fn ln(&mut self, prefix: &str, d: usize) -> LnIds {
        LnIds {
            w: self.add(format!("{prefix}.w"), &[d], true),
            b: self.add(format!("{prefix}.b"), &[d], true),
        }
    }
}

impl Layout {
    pub fn new(cfg: &TransformerConfig) -> Self {
        let (d, h, dh) = (cfg.d_model, cfg.n_heads, cfg.d_head);
        let mut bld = Builder {
            specs: Vec::new(),
            total: 0,
        };
        let w_e = bld.add("embed.W_E".into(), &[cfg.d_vocab, d], true);
        let w_pos = cfg
            .has_w_pos()
            .then(|| bld.add("pos_embed.W_pos".into(), &[cfg.n_ctx, d], true));
        let mut blocks = Vec::new();
        for l in 0..cfg.n_layers {
            let p = format!("blocks.{l}");
            let ln1 = cfg.has_ln().then(|| bld.ln(&format!("{p}.ln1"), d));
            let ab = cfg.attn_bias;
            let w_q = bld.add(format!("{p}.attn.W_Q"), &[h, d, dh], true);
            let w_k = bld.add(format!("{p}.attn.W_K"), &[h, d, dh], true);
            let w_v = bld.add(format!("{p}.attn.W_V"), &[h, d, dh], true);
            let w_o = bld.add(format!("{p}.attn.W_O"), &[h, dh, d], true);
            let b_q = bld.add(format!("{p}.attn.b_Q"), &[h, dh], ab);
            let b_k = bld.add(format!("{p}.attn.b_K"), &[h, dh], ab);
            let b_v = bld.add(format!("{p}.attn.b_V"), &[h, dh], ab);
            let b_o = bld.add(format!("{p}.attn.b_O"), &[d], ab);
            // α = 0 at init: every key half its own, half its predecessor's.
            let smear = cfg
                .smear_keys
                .then(|| bld.add(format!("{p}.attn.smear_alpha"), &[h], true));
            let (ln2, mlp) = if cfg.has_mlp() {
                let ln2 = cfg.has_ln().then(|| bld.ln(&format!("{p}.ln2"), d));
                let m = cfg.d_mlp();
                let mlp = MlpIds {
                    w_in: bld.add(format!("{p}.mlp.W_in"), &[d, m], true),
                    b_in: bld.add(format!("{p}.mlp.b_in"), &[m], true),
                    w_out: bld.add(format!("{p}.mlp.W_out"), &[m, d], true),
                    b_out: bld.add(format!("{p}.mlp.b_out"), &[d], true),
                };
                (ln2, Some(mlp))
            } else {
                (None, None)
            };
            blocks.push(BlockIds {
                ln1,
                w_q,
                b_q,
                w_k,
                b_k,
                w_v,
                b_v,
                w_o,
                b_o,
                smear,
                ln2,
                mlp,
            });
        }
        let ln_final = cfg.has_ln().then(|| bld.ln("ln_final", d));
        let w_u = bld.add("unembed.W_U".into(), &[d, cfg.d_vocab_out()], true);
        let b_u = bld.add("unembed.b_U".into(), &[cfg.d_vocab_out()], cfg.unembed_bias);
        Layout {
            specs: bld.specs,
            total: bld.total,
            w_e,
            w_pos,
            blocks,
            ln_final,
            w_u,
            b_u,
        }
    }

    #[inline]
    pub fn get<'a>(&self, data: &'a [f32], id: usize) -> &'a [f32] {
        &data[self.specs[id].range()]
    }

    #[inline]
    pub fn get_mut<'a>(&self, data: &'a mut [f32], id: usize) -> &'a mut [f32] {
        &mut data[self.specs[id].range()]
    }

    pub fn find(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// Ranges of the flat buffer the optimizer updates, merged where adjacent.
    pub fn trainable_ranges(&self) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for s in self.specs.iter().filter(|s| s.trainable) {
            match out.last_mut() {
                Some(r) if r.end == s.offset => r.end = s.offset + s.len(),
                _ => out.push(s.range()),
            }
        }
        out
    }

    /// Fresh weights for `cfg` (deterministic in `cfg.seed`).
    pub fn init(&self, cfg: &TransformerConfig) -> Vec<f32> {
        let mut data = vec![0.0f32; self.total];
        let mut rng = Rng::new(cfg.seed.unwrap_or(0));
        for s in &self.specs {
            let leaf = s.name.rsplit('.').next().unwrap_or("");
            let dst = &mut data[s.range()];
            if cfg.init == InitScheme::Torch {
                if let Some(fan_in) = torch_fan_in(cfg, leaf).filter(|_| s.trainable) {
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    for x in dst.iter_mut() {
                        *x = ((2.0 * rng.uniform() - 1.0) * bound) as f32;
                    }
                } else if s.name.ends_with(".w") {
                    dst.fill(1.0);
                }
                continue;
            }
            let std = if leaf.starts_with("W_") {
                match cfg.init {
                    InitScheme::TransformerLens => cfg.initializer_range(),
                    InitScheme::Nanda if leaf == "W_U" => 1.0 / (cfg.d_vocab as f64).sqrt(),
                    InitScheme::Nanda => 1.0 / (cfg.d_model as f64).sqrt(),
                    InitScheme::Torch => unreachable!("handled above"),
                }
            } else {
                0.0
            };
            if std > 0.0 {
                for x in dst.iter_mut() {
                    *x = (rng.normal() * std) as f32;
                }
            } else if s.name.ends_with(".w") {
                dst.fill(1.0); // LayerNorm gain
            }
        }
        data
    }
}

/// The width PyTorch's `nn.Linear` would read for parameter `leaf` (its bound is 1/√fan_in), or
/// None for LayerNorm's and the smearing's (which keep their own starts).
fn torch_fan_in(cfg: &TransformerConfig, leaf: &str) -> Option<usize> {
    Some(match leaf {
        "W_E" => cfg.d_vocab,
        "W_pos" => cfg.n_ctx,
        "W_Q" | "W_K" | "W_V" | "b_Q" | "b_K" | "b_V" | "W_in" | "b_in" | "W_U" | "b_U" => {
            cfg.d_model
        }
        "W_O" | "b_O" => cfg.n_heads * cfg.d_head,
        "W_out" | "b_out" => cfg.d_mlp(),
        _ => return None,
    })
}
