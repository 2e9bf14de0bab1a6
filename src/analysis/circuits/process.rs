//! Weight processing that keeps the function, as TransformerLens's `from_pretrained` defaults do it:
//! LayerNorm gains and biases folded into the matrices that read the normalised stream (whose
//! reading weights are then centred), writing weights centred where every reader is a
//! LayerNorm, the unembedding centred (softmax ignores a constant), and the value biases folded
//! into the output bias (each pattern row sums to 1). The processed model keeps its LayerNorms,
//! with unit gain and zero bias: the same parameter names, loadable by TransformerLens.

use crate::error::{Error, Result};
use crate::models::transformer::Transformer;
use serde::Serialize;

/// Which steps to take (all by default, as TransformerLens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Processing {
    pub fold_ln: bool,
    pub center_writing_weights: bool,
    pub center_unembed: bool,
    pub fold_value_biases: bool,
}

impl Default for Processing {
    fn default() -> Self {
        Processing {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
        }
    }
}

impl Processing {
    pub const NONE: Processing = Processing {
        fold_ln: false,
        center_writing_weights: false,
        center_unembed: false,
        fold_value_biases: false,
    };
}

/// Parameters by name, edited in f64 and written back.
struct Params<'a>(&'a mut Transformer);

impl Params<'_> {
    fn get(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let spec = self.0.layout.find(name).expect("a transformer parameter");
        let v = self.0.params[spec.range()]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        (spec.shape.clone(), v)
    }
    fn set(&mut self, name: &str, v: &[f64]) {
        let spec = self
            .0
            .layout
            .find(name)
            .expect("a transformer parameter")
            .range();
        for (o, &x) in self.0.params[spec].iter_mut().zip(v) {
            *o = x as f32;
        }
    }
}

/// `w [.., d, n]` (per-leading-index matrices reading `d`): `b[.., n] += ln_b · w`, `w *= ln_w`
/// along `d`, then `w` centred along `d`.
fn fold_into(p: &mut Params, w_name: &str, b_name: &str, ln_w: &[f64], ln_b: &[f64]) {
    let (shape, mut w) = p.get(w_name);
    let (_, mut b) = p.get(b_name);
    let (d, n) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    for (wm, bm) in w.chunks_exact_mut(d * n).zip(b.chunks_exact_mut(n)) {
        for k in 0..d {
            for j in 0..n {
                bm[j] += ln_b[k] * wm[k * n + j];
                wm[k * n + j] *= ln_w[k];
            }
        }
        for j in 0..n {
            let mean = (0..d).map(|k| wm[k * n + j]).sum::<f64>() / d as f64;
            for k in 0..d {
                wm[k * n + j] -= mean;
            }
        }
    }
    p.set(w_name, &w);
    p.set(b_name, &b);
}

/// The LayerNorm `prefix`'s gain and bias, which become 1 and 0.
fn take_ln(p: &mut Params, prefix: &str) -> (Vec<f64>, Vec<f64>) {
    let (_, w) = p.get(&format!("{prefix}.w"));
    let (_, b) = p.get(&format!("{prefix}.b"));
    p.set(&format!("{prefix}.w"), &vec![1.0; w.len()]);
    p.set(&format!("{prefix}.b"), &vec![0.0; b.len()]);
    (w, b)
}

/// Subtract the mean over the last axis (`d_model` for a writing weight or bias).
fn center_last(p: &mut Params, name: &str) {
    let (shape, mut v) = p.get(name);
    let d = shape[shape.len() - 1];
    for row in v.chunks_exact_mut(d) {
        let mean = row.iter().sum::<f64>() / d as f64;
        row.iter_mut().for_each(|x| *x -= mean);
    }
    p.set(name, &v);
}

/// A copy of `model` processed by `steps`: the same function (logits up to a constant per
/// position where the unembedding is centred), up to float rounding. A shortformer model's LN1
/// cannot fold (W_pos joins the queries' and keys' input after it), so `fold_ln` is refused there.
pub fn process(model: &Transformer, steps: Processing) -> Result<Transformer> {
    if steps.fold_ln && model.cfg.has_ln() && model.cfg.shortformer() {
        return Err(Error::Input(
            "fold_ln: a shortformer model adds W_pos to the queries' and keys' input after ln1, \
             so ln1 cannot fold into W_Q and W_K (process with fold_ln=False)"
                .into(),
        ));
    }
    let mut out = model.clone();
    let cfg = model.cfg.clone();
    let mut p = Params(&mut out);
    let (n_l, has_ln, has_mlp) = (cfg.n_layers, cfg.has_ln(), cfg.has_mlp());
    if steps.fold_ln && has_ln {
        for l in 0..n_l {
            let (w, b) = take_ln(&mut p, &format!("blocks.{l}.ln1"));
            for x in ["Q", "K", "V"] {
                let (wn, bn) = (
                    format!("blocks.{l}.attn.W_{x}"),
                    format!("blocks.{l}.attn.b_{x}"),
                );
                fold_into(&mut p, &wn, &bn, &w, &b);
            }
            if has_mlp {
                let (w, b) = take_ln(&mut p, &format!("blocks.{l}.ln2"));
                fold_into(
                    &mut p,
                    &format!("blocks.{l}.mlp.W_in"),
                    &format!("blocks.{l}.mlp.b_in"),
                    &w,
                    &b,
                );
            }
        }
        let (w, b) = take_ln(&mut p, "ln_final");
        fold_into(&mut p, "unembed.W_U", "unembed.b_U", &w, &b);
    }
    if steps.center_writing_weights && has_ln {
        center_last(&mut p, "embed.W_E");
        // (Only a standard W_pos writes to the residual stream.)
        if cfg.pos_in_resid() {
            center_last(&mut p, "pos_embed.W_pos");
        }
        for l in 0..n_l {
            center_last(&mut p, &format!("blocks.{l}.attn.W_O"));
            center_last(&mut p, &format!("blocks.{l}.attn.b_O"));
            if has_mlp {
                center_last(&mut p, &format!("blocks.{l}.mlp.W_out"));
                center_last(&mut p, &format!("blocks.{l}.mlp.b_out"));
            }
        }
    }
    if steps.center_unembed {
        center_last(&mut p, "unembed.W_U");
        center_last(&mut p, "unembed.b_U");
    }
    if steps.fold_value_biases {
        for l in 0..n_l {
            let (_, b_v) = p.get(&format!("blocks.{l}.attn.b_V"));
            let (shape, w_o) = p.get(&format!("blocks.{l}.attn.W_O"));
            let (_, mut b_o) = p.get(&format!("blocks.{l}.attn.b_O"));
            let (h_n, dh, d) = (shape[0], shape[1], shape[2]);
            for h in 0..h_n {
                for i in 0..dh {
                    for k in 0..d {
                        b_o[k] += b_v[h * dh + i] * w_o[(h * dh + i) * d + k];
                    }
                }
            }
            p.set(&format!("blocks.{l}.attn.b_O"), &b_o);
            p.set(&format!("blocks.{l}.attn.b_V"), &vec![0.0; b_v.len()]);
        }
    }
    Ok(out)
}
