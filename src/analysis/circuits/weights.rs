//! Circuits read off the weights: each head's QK and OV circuits as factored matrices, the Q-, K- and
//! V-composition scores between heads of different layers, the full circuits through the embedding
//! and unembedding, and the OV circuits' copying scores ("A Mathematical Framework for Transformer
//! Circuits"; TransformerLens's `model.QK`, `model.OV`, `all_composition_scores`).

use super::factored::{composition_score, dot, modulus, Complex, FactoredMatrix};
use super::{check_head, check_layer};
use crate::error::{Error, Result};
use crate::models::transformer::Transformer;
use ndarray::{s, Array2, Array4, Axis};
use serde::Serialize;

/// A parameter as f64, `[rows, cols]` (leading axes indexed by `at`).
pub(crate) fn matrix(model: &Transformer, name: &str, at: &[usize]) -> Array2<f64> {
    let mut a = model
        .param(name)
        .unwrap_or_else(|| panic!("the transformer has `{name}`"));
    for &i in at {
        a = a.index_axis_move(Axis(0), i);
    }
    a.into_dimensionality::<ndarray::Ix2>()
        .expect("a matrix")
        .mapv(f64::from)
}

/// `W_E [d_vocab, d_model]`.
pub fn w_e(model: &Transformer) -> Array2<f64> {
    matrix(model, "embed.W_E", &[])
}

/// `W_U [d_model, d_vocab_out]`.
pub fn w_u(model: &Transformer) -> Array2<f64> {
    matrix(model, "unembed.W_U", &[])
}

/// Head `h` of layer `l`'s QK circuit `W_Q W_Kᵀ` `[d_model (query side), d_model (key side)]`.
pub fn qk(model: &Transformer, l: usize, h: usize) -> Result<FactoredMatrix> {
    check_layer(model, l)?;
    check_head(model, h)?;
    let wq = matrix(model, &format!("blocks.{l}.attn.W_Q"), &[h]);
    let wk = matrix(model, &format!("blocks.{l}.attn.W_K"), &[h]);
    FactoredMatrix::new(wq, wk.t().to_owned())
}

/// Head `h` of layer `l`'s OV circuit `W_V W_O` `[d_model (read), d_model (written)]`.
pub fn ov(model: &Transformer, l: usize, h: usize) -> Result<FactoredMatrix> {
    check_layer(model, l)?;
    check_head(model, h)?;
    let wv = matrix(model, &format!("blocks.{l}.attn.W_V"), &[h]);
    let wo = matrix(model, &format!("blocks.{l}.attn.W_O"), &[h]);
    FactoredMatrix::new(wv, wo)
}

/// Which input of the later head an earlier head's output composes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Composition {
    /// Into the query: `OV_A · QK_B`.
    #[value(name = "Q")]
    Q,
    /// Into the key: `OV_A · QK_Bᵀ`.
    #[value(name = "K")]
    K,
    /// Into the value: `OV_A · OV_B`.
    #[value(name = "V")]
    V,
}

impl Composition {
    pub const ALL: [Composition; 3] = [Composition::Q, Composition::K, Composition::V];
    pub fn name(self) -> &'static str {
        match self {
            Composition::Q => "Q",
            Composition::K => "K",
            Composition::V => "V",
        }
    }
}

/// Composition scores of every head pair, `[layer_A, head_A, layer_B, head_B]`, as TransformerLens's
/// `all_composition_scores(mode)`: nonzero only where layer_A < layer_B. A model of one layer has
/// no pairs: an error.
pub fn composition_scores(model: &Transformer, mode: Composition) -> Result<Array4<f64>> {
    let (n_l, n_h) = (model.cfg.n_layers, model.cfg.n_heads);
    if n_l < 2 {
        return Err(Error::Input(format!(
            "composition scores need heads in two layers; this model has {n_l} layer{}",
            if n_l == 1 { "" } else { "s" }
        )));
    }
    let ovs: Vec<Vec<FactoredMatrix>> = (0..n_l)
        .map(|l| (0..n_h).map(|h| ov(model, l, h)).collect::<Result<_>>())
        .collect::<Result<_>>()?;
    let mut out = Array4::zeros((n_l, n_h, n_l, n_h));
    for lb in 1..n_l {
        for hb in 0..n_h {
            let right = match mode {
                Composition::Q => qk(model, lb, hb)?,
                Composition::K => qk(model, lb, hb)?.t(),
                Composition::V => ovs[lb][hb].clone(),
            };
            for (la, heads) in ovs.iter().enumerate().take(lb) {
                for (ha, left) in heads.iter().enumerate() {
                    out[[la, ha, lb, hb]] = composition_score(left, &right)?;
                }
            }
        }
    }
    Ok(out)
}

/// The circuits through the embedding and unembedding of one head and the MLP.
#[derive(Clone, Debug)]
pub struct FullCircuits {
    /// `W_E W_QK W_Eᵀ` `[d_vocab (query token), d_vocab (key token)]` per head of layer 0.
    pub attention: Vec<Array2<f64>>,
    /// `W_E W_OV W_in` `[d_vocab, d_mlp]` per head of layer 0 (models with an MLP).
    pub neuron_input: Vec<Array2<f64>>,
    /// `W_E W_OV W_U` `[d_vocab, d_vocab_out]` per head of layer 0.
    pub ov: Vec<Array2<f64>>,
    /// `W_L = W_out W_U` `[d_mlp, d_vocab_out]` of layer 0's MLP.
    pub w_l: Option<Array2<f64>>,
}

/// The full circuits of layer 0 (the three effective matrices of Nanda et al.'s 1-layer model, and
/// each head's full OV circuit), with the raw weights (no LayerNorm folded; see `process`).
pub fn full_circuits(model: &Transformer) -> Result<FullCircuits> {
    let we = w_e(model);
    let wu = w_u(model);
    let n_h = model.cfg.n_heads;
    let mlp = model.cfg.has_mlp();
    let w_in = mlp.then(|| matrix(model, "blocks.0.mlp.W_in", &[]));
    let mut out = FullCircuits {
        attention: Vec::with_capacity(n_h),
        neuron_input: Vec::new(),
        ov: Vec::with_capacity(n_h),
        w_l: mlp.then(|| dot(matrix(model, "blocks.0.mlp.W_out", &[]).view(), wu.view())),
    };
    for h in 0..n_h {
        let qk = qk(model, 0, h)?.after(we.view())?.times(we.t())?;
        out.attention.push(qk.product());
        let ov_e = ov(model, 0, h)?.after(we.view())?;
        if let Some(w_in) = &w_in {
            out.neuron_input.push(ov_e.times(w_in.view())?.product());
        }
        out.ov.push(ov_e.times(wu.view())?.product());
    }
    Ok(out)
}

/// How much a head's OV circuit copies.
#[derive(Clone, Debug, Serialize)]
pub struct CopyingScore {
    pub layer: usize,
    pub head: usize,
    /// `Re(Σλ) / Σ|λ|` over the nonzero eigenvalues of the full OV circuit `W_E W_OV W_U` (the
    /// Framework paper's score), in [−1, 1].
    pub score: f64,
    /// The share of those eigenvalues (counted) whose real part is positive.
    pub positive_share: f64,
    /// TransformerLens's demo's `OV_copying_score`: `Re(Σλ) / Σ|λ|` over the eigenvalues of
    /// `model.OV` (`W_V W_O`, no embedding or unembedding).
    pub ov_score: f64,
    /// The share of input tokens whose largest output logit in the full OV circuit is the token
    /// itself (TransformerLens's demo's top-1 check).
    pub top1: f64,
}

/// Copying scores of every head (see [`CopyingScore`]): the full OV circuit `W_E W_OV W_U` over
/// the tokens the input and output vocabularies share (a grokking model's `=` left out), its
/// eigenvalues from the small `d_head × d_head` product.
pub fn copying_scores(model: &Transformer) -> Result<Vec<CopyingScore>> {
    let (we, wu) = (w_e(model), w_u(model));
    let n = we.nrows().min(wu.ncols());
    let (we, wu) = (we.slice(s![..n, ..]), wu.slice(s![.., ..n]));
    let mut out = Vec::new();
    for l in 0..model.cfg.n_layers {
        for h in 0..model.cfg.n_heads {
            let ov = ov(model, l, h)?;
            let full = ov.after(we)?.times(wu)?;
            let (score, positive_share) = eigen_scores(&full.eigenvalues()?);
            let (ov_score, _) = eigen_scores(&ov.eigenvalues()?);
            let product = full.product();
            let hits = product
                .outer_iter()
                .enumerate()
                .filter(|(i, row)| {
                    let best = row
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map(|(j, _)| j);
                    best == Some(*i)
                })
                .count();
            out.push(CopyingScore {
                layer: l,
                head: h,
                score,
                positive_share,
                ov_score,
                top1: hits as f64 / n.max(1) as f64,
            });
        }
    }
    Ok(out)
}

/// `(Re(Σλ)/Σ|λ|, share with Re λ > 0)` over the nonzero eigenvalues (a factored product adds
/// zeros, which count neither way).
fn eigen_scores(ev: &[Complex<f64>]) -> (f64, f64) {
    let scale = ev.iter().map(modulus).fold(0.0, f64::max);
    let nonzero: Vec<&Complex<f64>> = ev.iter().filter(|z| modulus(z) > 1e-9 * scale).collect();
    let positive = nonzero.iter().filter(|z| z.re > 0.0).count();
    let abs: f64 = nonzero.iter().map(|z| modulus(z)).sum();
    let re: f64 = nonzero.iter().map(|z| z.re).sum();
    (
        if abs > 0.0 { re / abs } else { 0.0 },
        positive as f64 / nonzero.len().max(1) as f64,
    )
}
