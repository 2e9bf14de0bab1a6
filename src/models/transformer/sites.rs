//! The transformer's hook points, named and shaped as in TransformerLens 3.x (b: batch, p: positions,
//! q: query positions, h: heads):
//!
//! | name | shape |
//! | --- | --- |
//! | `hook_embed`, `hook_pos_embed` | `[b, p, d_model]` |
//! | `blocks.L.hook_resid_pre`, `hook_attn_out`, `hook_resid_mid`, `hook_mlp_out`, `hook_resid_post` | `[b, p, d_model]` |
//! | `blocks.L.ln1.hook_scale`, `ln2.hook_scale`, `ln_final.hook_scale` | `[b, p, 1]` |
//! | `blocks.L.ln1.hook_normalized`, `ln2.hook_normalized`, `ln_final.hook_normalized` | `[b, p, d_model]` (before gain and bias) |
//! | `blocks.L.attn.hook_q`, `hook_k`, `hook_v`, `hook_z` | `[b, p, h, d_head]` |
//! | `blocks.L.attn.hook_rot_q`, `hook_rot_k` (rotary models) | `[b, p, h, d_head]` |
//! | `blocks.L.attn.hook_smeared_k` (smeared keys, toylens's own) | `[b, p, h, d_head]` |
//! | `blocks.L.attn.hook_attn_scores`, `hook_pattern` | `[b, h, q, p]` |
//! | `blocks.L.mlp.hook_pre`, `hook_post` | `[b, p, d_mlp]` |
//! | `unembed.hook_in` | `[b, p, d_model]`; `unembed.hook_out`: `[b, p, d_vocab_out]` |
//!
//! LayerNorm points exist only in models with LayerNorm, MLP points only in models with an MLP,
//! `hook_pos_embed` in every model but rotary ones. The keys that meet the queries are the last of
//! `hook_k`, `hook_rot_k`, `hook_smeared_k` that the model has.

use super::TransformerConfig;
use crate::error::{closest, Error, Result};

/// One hook point of the transformer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    Embed,
    PosEmbed,
    ResidPre(usize),
    Ln1Scale(usize),
    Ln1Normalized(usize),
    Q(usize),
    K(usize),
    V(usize),
    RotQ(usize),
    RotK(usize),
    SmearedK(usize),
    AttnScores(usize),
    Pattern(usize),
    Z(usize),
    AttnOut(usize),
    ResidMid(usize),
    Ln2Scale(usize),
    Ln2Normalized(usize),
    MlpPre(usize),
    MlpPost(usize),
    MlpOut(usize),
    ResidPost(usize),
    LnFinalScale,
    LnFinalNormalized,
    UnembedIn,
    UnembedOut,
}

impl Site {
    pub fn name(&self) -> String {
        use Site::*;
        match *self {
            Embed => "hook_embed".into(),
            PosEmbed => "hook_pos_embed".into(),
            ResidPre(l) => format!("blocks.{l}.hook_resid_pre"),
            Ln1Scale(l) => format!("blocks.{l}.ln1.hook_scale"),
            Ln1Normalized(l) => format!("blocks.{l}.ln1.hook_normalized"),
            Q(l) => format!("blocks.{l}.attn.hook_q"),
            K(l) => format!("blocks.{l}.attn.hook_k"),
            V(l) => format!("blocks.{l}.attn.hook_v"),
            RotQ(l) => format!("blocks.{l}.attn.hook_rot_q"),
            RotK(l) => format!("blocks.{l}.attn.hook_rot_k"),
            SmearedK(l) => format!("blocks.{l}.attn.hook_smeared_k"),
            AttnScores(l) => format!("blocks.{l}.attn.hook_attn_scores"),
            Pattern(l) => format!("blocks.{l}.attn.hook_pattern"),
            Z(l) => format!("blocks.{l}.attn.hook_z"),
            AttnOut(l) => format!("blocks.{l}.hook_attn_out"),
            ResidMid(l) => format!("blocks.{l}.hook_resid_mid"),
            Ln2Scale(l) => format!("blocks.{l}.ln2.hook_scale"),
            Ln2Normalized(l) => format!("blocks.{l}.ln2.hook_normalized"),
            MlpPre(l) => format!("blocks.{l}.mlp.hook_pre"),
            MlpPost(l) => format!("blocks.{l}.mlp.hook_post"),
            MlpOut(l) => format!("blocks.{l}.hook_mlp_out"),
            ResidPost(l) => format!("blocks.{l}.hook_resid_post"),
            LnFinalScale => "ln_final.hook_scale".into(),
            LnFinalNormalized => "ln_final.hook_normalized".into(),
            UnembedIn => "unembed.hook_in".into(),
            UnembedOut => "unembed.hook_out".into(),
        }
    }

    /// The block a hook point is in (None for the embeddings, the final LayerNorm, the unembedding).
    pub fn layer(&self) -> Option<usize> {
        use Site::*;
        match *self {
            ResidPre(l) | Ln1Scale(l) | Ln1Normalized(l) | Q(l) | K(l) | V(l) | RotQ(l)
            | RotK(l) | SmearedK(l) | AttnScores(l) | Pattern(l) | Z(l) | AttnOut(l)
            | ResidMid(l) | Ln2Scale(l) | Ln2Normalized(l) | MlpPre(l) | MlpPost(l) | MlpOut(l)
            | ResidPost(l) => Some(l),
            Embed | PosEmbed | LnFinalScale | LnFinalNormalized | UnembedIn | UnembedOut => None,
        }
    }

    /// Every hook point of a model with this config, in the order the forward pass reaches them.
    pub fn all(cfg: &TransformerConfig) -> Vec<Site> {
        use Site::*;
        let mut v = vec![Embed];
        if cfg.has_w_pos() {
            v.push(PosEmbed);
        }
        for l in 0..cfg.n_layers {
            v.push(ResidPre(l));
            if cfg.has_ln() {
                v.extend([Ln1Scale(l), Ln1Normalized(l)]);
            }
            v.extend([Q(l), K(l), V(l)]);
            if cfg.rotary() {
                v.extend([RotQ(l), RotK(l)]);
            }
            if cfg.smear_keys {
                v.push(SmearedK(l));
            }
            v.extend([AttnScores(l), Pattern(l), Z(l), AttnOut(l)]);
            if cfg.has_mlp() {
                v.push(ResidMid(l));
                if cfg.has_ln() {
                    v.extend([Ln2Scale(l), Ln2Normalized(l)]);
                }
                v.extend([MlpPre(l), MlpPost(l), MlpOut(l)]);
            }
            v.push(ResidPost(l));
        }
        if cfg.has_ln() {
            v.extend([LnFinalScale, LnFinalNormalized]);
        }
        v.extend([UnembedIn, UnembedOut]);
        v
    }

    /// The hook point called `name` in a model with this config, or an error listing close names.
    pub fn parse(cfg: &TransformerConfig, name: &str) -> Result<Site> {
        let all = Site::all(cfg);
        if let Some(s) = all.iter().find(|s| s.name() == name) {
            return Ok(*s);
        }
        let names: Vec<String> = all.iter().map(|s| s.name()).collect();
        Err(Error::UnknownHook {
            name: name.to_string(),
            suggestions: closest(name, names.iter().map(|s| s.as_str()), 3),
        })
    }
}

/// (position axis, head axis) of a hook point's activation in TransformerLens layout.
pub fn patch_axes(site: Site) -> (usize, Option<usize>) {
    match site {
        Site::Q(_)
        | Site::K(_)
        | Site::V(_)
        | Site::RotQ(_)
        | Site::RotK(_)
        | Site::SmearedK(_)
        | Site::Z(_) => (1, Some(2)),
        Site::AttnScores(_) | Site::Pattern(_) => (2, Some(1)),
        _ => (1, None),
    }
}
