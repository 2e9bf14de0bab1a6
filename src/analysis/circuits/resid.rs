//! The residual stream taken apart, with TransformerLens's `ActivationCache` semantics: the residual
//! at each layer (`accumulated_resid`), the outputs that sum to it (`decompose_resid`), each head's
//! and each neuron's output (`stack_head_results`, `stack_neuron_results`), everything at once
//! with the biases (`get_full_resid_decomposition`), a LayerNorm's frozen scale applied to a stack
//! (`apply_ln_to_stack`), and direct logit attribution. Stacks are `[components, batch, pos,
//! d_model]`; every decomposition sums to the residual it decomposes.

use super::{check_layer_or_end, Acts};
use crate::engine::matmul::{matmul, matmul_threads};
use crate::error::{Error, Result};
use crate::models::transformer::Transformer;
use ndarray::{
    s, Array2, Array3, Array4, ArrayView2, ArrayView3, ArrayView4, ArrayViewD, Axis, Ix3, Ix4, Zip,
};
use rayon::prelude::*;
use serde::Serialize;

/// Components stacked on axis 0 `[n, batch, pos, d_model]`, with a label each.
#[derive(Clone, Debug)]
pub struct Stack {
    pub components: Array4<f32>,
    pub labels: Vec<String>,
}

impl Stack {
    fn from_parts(parts: Vec<(String, Array3<f32>)>, shape: (usize, usize, usize)) -> Stack {
        let (b, p, d) = shape;
        let mut components = Array4::zeros((parts.len(), b, p, d));
        let mut labels = Vec::with_capacity(parts.len());
        for (i, (label, a)) in parts.into_iter().enumerate() {
            components.index_axis_mut(Axis(0), i).assign(&a);
            labels.push(label);
        }
        Stack { components, labels }
    }

    /// The sum over components `[batch, pos, d_model]`, in component order.
    pub fn sum(&self) -> Array3<f32> {
        let (_, b, p, d) = self.components.dim();
        let mut total = Array3::zeros((b, p, d));
        for c in self.components.axis_iter(Axis(0)) {
            total += &c;
        }
        total
    }
}

/// Which outputs `decompose_resid` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    All,
    Mlp,
    Attn,
}

/// The entry `name`, which must have shape `want` (an error naming both otherwise: a cache
/// from Python may hold anything).
fn shaped<'a>(acts: &'a dyn Acts, name: &str, want: &[usize]) -> Result<ArrayViewD<'a, f32>> {
    let a = acts.act(name)?;
    if a.shape() != want {
        return Err(Error::Input(format!(
            "cache entry `{name}` has shape {:?}; this model and the cache's inputs make it {want:?}",
            a.shape()
        )));
    }
    Ok(a)
}

/// Whether `hook_pos_embed` is a term of the residual stream (TransformerLens's decompositions
/// include it whenever it is cached, a shortformer model's too).
fn pos_in_resid(model: &Transformer) -> bool {
    model.cfg.pos_in_resid()
}

/// A `[batch, pos, width]` entry: width 1 for a LayerNorm scale, d_mlp for an MLP's neurons,
/// d_model for the rest; batch and positions those of the cache's `hook_embed`.
fn act3<'a>(model: &Transformer, acts: &'a dyn Acts, name: &str) -> Result<ArrayView3<'a, f32>> {
    let (b, p, _) = resid_shape(model, acts)?;
    let width = if name.ends_with("hook_scale") {
        1
    } else if name.ends_with("mlp.hook_post") || name.ends_with("mlp.hook_pre") {
        model.cfg.d_mlp()
    } else {
        model.cfg.d_model
    };
    Ok(shaped(acts, name, &[b, p, width])?
        .into_dimensionality::<Ix3>()
        .expect("checked: 3 axes"))
}

/// `[batch, pos, d_model]` of the cache's embeddings (the shape every stack shares).
fn resid_shape(model: &Transformer, acts: &dyn Acts) -> Result<(usize, usize, usize)> {
    let e = acts.act("hook_embed")?;
    let d = model.cfg.d_model;
    match *e.shape() {
        [b, p, dd] if dd == d => Ok((b, p, d)),
        _ => Err(Error::Input(format!(
            "cache entry `hook_embed` has shape {:?}; this model makes it [batch, pos, {d}]",
            e.shape()
        ))),
    }
}

fn layer_or_end(model: &Transformer, layer: Option<usize>) -> Result<usize> {
    let layer = layer.unwrap_or(model.cfg.n_layers);
    check_layer_or_end(model, layer)?;
    Ok(layer)
}

/// The residual stream before each layer up to `layer` (default: all, and the final one), with the
/// mid-layer points if `incl_mid`, and layer `layer`'s MLP input if `mlp_input`. With `apply_ln`
/// the stack goes through the LayerNorm that reads it: the final one recomputed per component
/// (the logit lens: each partial residual as if it were the final one), a block's with its cached
/// scale.
pub fn accumulated_resid(
    model: &Transformer,
    acts: &dyn Acts,
    layer: Option<usize>,
    incl_mid: bool,
    apply_ln: bool,
    mlp_input: bool,
) -> Result<Stack> {
    let n_l = model.cfg.n_layers;
    let layer = layer_or_end(model, layer)?;
    check_mlp_input(model, layer, mlp_input)?;
    let mut parts = Vec::new();
    for l in 0..=layer {
        if l == n_l {
            parts.push(("final_post".into(), resid_post(model, acts, n_l)?));
            continue;
        }
        parts.push((
            format!("{l}_pre"),
            act3(model, acts, &format!("blocks.{l}.hook_resid_pre"))?.to_owned(),
        ));
        if ((incl_mid && l < layer) || (mlp_input && l == layer)) && model.cfg.has_mlp() {
            parts.push((
                format!("{l}_mid"),
                act3(model, acts, &format!("blocks.{l}.hook_resid_mid"))?.to_owned(),
            ));
        }
    }
    let mut stack = Stack::from_parts(parts, resid_shape(model, acts)?);
    if apply_ln {
        if layer == n_l {
            recompute_final_ln(model, &mut stack.components);
        } else {
            apply_ln_to_stack(model, acts, &mut stack.components, Some(layer), mlp_input)?;
        }
    }
    Ok(stack)
}

/// The last block's output (`blocks.{n-1}.hook_resid_post`) for `n_l` layers.
fn resid_post(model: &Transformer, acts: &dyn Acts, n_l: usize) -> Result<Array3<f32>> {
    Ok(act3(model, acts, &format!("blocks.{}.hook_resid_post", n_l - 1))?.to_owned())
}

fn check_mlp_input(model: &Transformer, layer: usize, mlp_input: bool) -> Result<()> {
    if mlp_input && layer >= model.cfg.n_layers {
        return Err(Error::Input(format!(
            "mlp_input needs a layer below n_layers = {}; got layer {layer}",
            model.cfg.n_layers
        )));
    }
    if mlp_input && !model.cfg.has_mlp() {
        return Err(Error::Input(
            "mlp_input: this model is attention-only (it has no MLP input)".into(),
        ));
    }
    Ok(())
}

/// The embeddings and each layer's attention and MLP outputs before `layer` (and layer `layer`'s
/// attention output if `mlp_input`): they sum to the residual at that point.
pub fn decompose_resid(
    model: &Transformer,
    acts: &dyn Acts,
    layer: Option<usize>,
    mlp_input: bool,
    mode: Mode,
    apply_ln: bool,
    incl_embeds: bool,
) -> Result<Stack> {
    let layer = layer_or_end(model, layer)?;
    check_mlp_input(model, layer, mlp_input)?;
    let incl_attn = mode != Mode::Mlp;
    let incl_mlp = mode != Mode::Attn && model.cfg.has_mlp();
    let mut parts = Vec::new();
    if incl_embeds {
        parts.push(("embed".into(), act3(model, acts, "hook_embed")?.to_owned()));
        if pos_in_resid(model) {
            parts.push((
                "pos_embed".into(),
                act3(model, acts, "hook_pos_embed")?.to_owned(),
            ));
        }
    }
    let attn =
        |l: usize| act3(model, acts, &format!("blocks.{l}.hook_attn_out")).map(|a| a.to_owned());
    for l in 0..layer {
        if incl_attn {
            parts.push((format!("{l}_attn_out"), attn(l)?));
        }
        if incl_mlp {
            parts.push((
                format!("{l}_mlp_out"),
                act3(model, acts, &format!("blocks.{l}.hook_mlp_out"))?.to_owned(),
            ));
        }
    }
    if mlp_input && incl_attn {
        parts.push((format!("{layer}_attn_out"), attn(layer)?));
    }
    let mut stack = Stack::from_parts(parts, resid_shape(model, acts)?);
    if apply_ln {
        apply_ln_to_stack(model, acts, &mut stack.components, Some(layer), mlp_input)?;
    }
    Ok(stack)
}

/// One component of a stack, computed straight into its slot of the stack `[b·p, d]`.
enum Part<'a> {
    /// An activation `[b, p, d]` as it is.
    Copy(ArrayView3<'a, f32>),
    /// Head `h`'s output `z[.., h, ..] · W_O[h]` (z `[b, p, h, d_head]`, W_O `[d_head, d]`).
    Head(ArrayView4<'a, f32>, usize, ArrayView2<'a, f32>),
    /// Neuron `n`'s output `post[.., n] · W_out[n]` (post `[b, p, m]`, the row `[d]`).
    Neuron(ArrayView3<'a, f32>, usize, ndarray::ArrayView1<'a, f32>),
    /// The same `[d]` at every position.
    Bias(Vec<f32>),
}

impl Part<'_> {
    fn fill(&self, out: &mut [f32], d: usize) {
        match self {
            Part::Copy(a) => {
                for (o, x) in out.iter_mut().zip(a.iter()) {
                    *o = *x;
                }
            }
            Part::Head(z, h, w_o) => {
                // z[.., h, ..] gathered into rows, then one product with W_O[h].
                let dh = z.dim().3;
                let zh: Vec<f32> = z.slice(s![.., .., *h, ..]).iter().copied().collect();
                let rows = zh.len() / dh.max(1);
                let zh = ndarray::ArrayView2::from_shape((rows, dh), &zh).expect("z rows");
                let mut o = ndarray::ArrayViewMut2::from_shape((rows, d), out).expect("rows");
                matmul_threads(&mut o, &zh, w_o, false, 1);
            }
            Part::Neuron(post, n, w) => {
                let p = post.dim().1;
                let w = w.as_slice().expect("a row of W_out is contiguous");
                for (r, row) in out.chunks_exact_mut(d).enumerate() {
                    let a = post[[r / p, r % p, *n]];
                    for (o, &wv) in row.iter_mut().zip(w) {
                        *o = a * wv;
                    }
                }
            }
            Part::Bias(v) => {
                for row in out.chunks_exact_mut(d) {
                    row.copy_from_slice(v);
                }
            }
        }
    }
}

/// The stack of `parts` (labelled), each computed into its own slot, in parallel (each slot
/// zeroed just before its part fills it, while it is in cache: a neuron stack is large, and a
/// zero fill of all of it first would be one more pass over memory).
fn build(parts: Vec<(String, Part)>, (b, p, d): (usize, usize, usize)) -> Stack {
    let chunk = b * p * d;
    let n = parts.len();
    let mut data = crate::hooks::fresh_vec(n * chunk);
    data.spare_capacity_mut()[..n * chunk]
        .par_chunks_mut(chunk.max(1))
        .zip(parts.par_iter())
        .for_each(|(slot, (_, part))| {
            // SAFETY: f32 has no invalid bit patterns and no drop; the slot is zeroed before it
            // is viewed as floats, so every float of it is initialised whatever the part writes.
            let out = unsafe {
                std::ptr::write_bytes(slot.as_mut_ptr(), 0, slot.len());
                std::slice::from_raw_parts_mut(slot.as_mut_ptr().cast::<f32>(), slot.len())
            };
            part.fill(out, d);
        });
    // SAFETY: every one of the n·chunk floats was zeroed (and then filled) above.
    unsafe { data.set_len(n * chunk) };
    Stack {
        components: Array4::from_shape_vec((n, b, p, d), data).expect("stack shape"),
        labels: parts.into_iter().map(|(l, _)| l).collect(),
    }
}

fn z_of<'a>(model: &Transformer, acts: &'a dyn Acts, l: usize) -> Result<ArrayView4<'a, f32>> {
    let (b, p, _) = resid_shape(model, acts)?;
    let (h, dh) = (model.cfg.n_heads, model.cfg.d_head);
    let name = format!("blocks.{l}.attn.hook_z");
    Ok(shaped(acts, &name, &[b, p, h, dh])?
        .into_dimensionality::<Ix4>()
        .expect("checked: 4 axes"))
}

/// Every head's part in the layers before `layer`.
fn head_parts<'a>(
    model: &'a Transformer,
    acts: &'a dyn Acts,
    layer: usize,
) -> Result<Vec<(String, Part<'a>)>> {
    let mut parts = Vec::new();
    for l in 0..layer {
        let z = z_of(model, acts, l)?;
        let w_o = model.param(&format!("blocks.{l}.attn.W_O")).expect("W_O");
        let w_o = w_o
            .into_dimensionality::<ndarray::Ix3>()
            .expect("W_O [h, dh, d]");
        for h in 0..model.cfg.n_heads {
            parts.push((
                format!("L{l}H{h}"),
                Part::Head(z, h, w_o.index_axis_move(Axis(0), h)),
            ));
        }
    }
    Ok(parts)
}

/// Every neuron's part in the MLPs before `layer`.
fn neuron_parts<'a>(
    model: &'a Transformer,
    acts: &'a dyn Acts,
    layer: usize,
) -> Result<Vec<(String, Part<'a>)>> {
    let mut parts = Vec::new();
    for l in 0..layer {
        let post = act3(model, acts, &format!("blocks.{l}.mlp.hook_post"))?;
        let w_out = model
            .param(&format!("blocks.{l}.mlp.W_out"))
            .expect("W_out");
        let w_out = w_out
            .into_dimensionality::<ndarray::Ix2>()
            .expect("W_out [m, d]");
        for n in 0..model.cfg.d_mlp() {
            parts.push((
                format!("L{l}N{n}"),
                Part::Neuron(post, n, w_out.index_axis_move(Axis(0), n)),
            ));
        }
    }
    Ok(parts)
}

/// The last component becomes the residual at `layer` minus all the others.
fn set_remainder(
    model: &Transformer,
    acts: &dyn Acts,
    stack: &mut Stack,
    layer: usize,
) -> Result<()> {
    let mut rest = if layer == 0 && !pos_in_resid(model) {
        act3(model, acts, "hook_embed")?.to_owned()
    } else if layer == 0 {
        act3(model, acts, "hook_embed")?.to_owned() + act3(model, acts, "hook_pos_embed")?
    } else {
        act3(
            model,
            acts,
            &format!("blocks.{}.hook_resid_post", layer - 1),
        )?
        .to_owned()
    };
    let n = stack.labels.len() - 1;
    for i in 0..n {
        rest -= &stack.components.index_axis(Axis(0), i);
    }
    stack.components.index_axis_mut(Axis(0), n).assign(&rest);
    Ok(())
}

/// Each head's output `z_h · W_O[h]` (no bias) in the layers before `layer`, labelled `L{l}H{h}`;
/// with `incl_remainder`, the rest of the residual (`resid_post` of layer − 1 minus the heads).
pub fn stack_head_results(
    model: &Transformer,
    acts: &dyn Acts,
    layer: Option<usize>,
    incl_remainder: bool,
    apply_ln: bool,
) -> Result<Stack> {
    let layer = layer_or_end(model, layer)?;
    let parts = head_parts(model, acts, layer)?;
    stack_with_remainder(model, acts, parts, layer, incl_remainder, apply_ln)
}

/// `parts` stacked, with the rest of the residual at `layer` if `incl_remainder`, through that
/// layer's first LayerNorm if `apply_ln`.
fn stack_with_remainder(
    model: &Transformer,
    acts: &dyn Acts,
    mut parts: Vec<(String, Part)>,
    layer: usize,
    incl_remainder: bool,
    apply_ln: bool,
) -> Result<Stack> {
    if incl_remainder {
        parts.push(("remainder".into(), Part::Bias(vec![0.0; model.cfg.d_model])));
    }
    let mut stack = build(parts, resid_shape(model, acts)?);
    if incl_remainder {
        set_remainder(model, acts, &mut stack, layer)?;
    }
    if apply_ln {
        apply_ln_to_stack(model, acts, &mut stack.components, Some(layer), false)?;
    }
    Ok(stack)
}

/// Each neuron's output `post_n · W_out[n]` in the MLPs before `layer`, labelled `L{l}N{n}`; with
/// `incl_remainder`, the rest of the residual.
pub fn stack_neuron_results(
    model: &Transformer,
    acts: &dyn Acts,
    layer: Option<usize>,
    incl_remainder: bool,
    apply_ln: bool,
) -> Result<Stack> {
    let layer = layer_or_end(model, layer)?;
    if !model.cfg.has_mlp() {
        return Err(Error::Input(
            "stack_neuron_results: this model is attention-only (no neurons)".into(),
        ));
    }
    let parts = neuron_parts(model, acts, layer)?;
    stack_with_remainder(model, acts, parts, layer, incl_remainder, apply_ln)
}

/// The biases that reach the residual before `layer`: every `b_O`, and every `b_out` if
/// `include_mlp_biases` (TransformerLens's `accumulated_bias`).
pub fn accumulated_bias(
    model: &Transformer,
    layer: usize,
    mlp_input: bool,
    include_mlp_biases: bool,
) -> Vec<f32> {
    let mut bias = vec![0.0f32; model.cfg.d_model];
    let mut add = |name: String| {
        let b = model.param(&name).expect("a bias");
        for (o, &x) in bias.iter_mut().zip(b.iter()) {
            *o += x;
        }
    };
    for l in 0..layer {
        add(format!("blocks.{l}.attn.b_O"));
        if include_mlp_biases && model.cfg.has_mlp() {
            add(format!("blocks.{l}.mlp.b_out"));
        }
    }
    if mlp_input {
        add(format!("blocks.{layer}.attn.b_O"));
    }
    bias
}

/// Every head's output, every neuron's output (or, without `expand_neurons`, each MLP's output),
/// the embeddings and the summed biases: the residual at `layer` (its MLP input with `mlp_input`)
/// as a sum of the smallest pieces TransformerLens names.
pub fn full_resid_decomposition(
    model: &Transformer,
    acts: &dyn Acts,
    layer: Option<usize>,
    mlp_input: bool,
    expand_neurons: bool,
    apply_ln: bool,
) -> Result<Stack> {
    let layer = layer_or_end(model, layer)?;
    check_mlp_input(model, layer, mlp_input)?;
    let mut parts = head_parts(model, acts, layer + usize::from(mlp_input))?;
    if model.cfg.has_mlp() && layer > 0 {
        if expand_neurons {
            parts.extend(neuron_parts(model, acts, layer)?);
        } else {
            for l in 0..layer {
                let a = act3(model, acts, &format!("blocks.{l}.hook_mlp_out"))?;
                parts.push((format!("{l}_mlp_out"), Part::Copy(a)));
            }
        }
    }
    parts.push(("embed".into(), Part::Copy(act3(model, acts, "hook_embed")?)));
    if pos_in_resid(model) {
        parts.push((
            "pos_embed".into(),
            Part::Copy(act3(model, acts, "hook_pos_embed")?),
        ));
    }
    let bias = accumulated_bias(model, layer, mlp_input, expand_neurons);
    parts.push(("bias".into(), Part::Bias(bias)));
    let mut stack = build(parts, resid_shape(model, acts)?);
    if apply_ln {
        apply_ln_to_stack(model, acts, &mut stack.components, Some(layer), mlp_input)?;
    }
    Ok(stack)
}

/// The LayerNorm reading the residual at `layer` (the final one at n_layers; layer `layer`'s
/// `ln2` with `mlp_input`, else its `ln1`), frozen: each component centred and divided by the
/// scale that LayerNorm computed on the whole residual (its gain and bias not applied), so that
/// the components still sum to the normalised residual. Nothing happens without LayerNorm.
pub fn apply_ln_to_stack(
    model: &Transformer,
    acts: &dyn Acts,
    stack: &mut Array4<f32>,
    layer: Option<usize>,
    mlp_input: bool,
) -> Result<()> {
    if !model.cfg.has_ln() {
        return Ok(());
    }
    let layer = layer_or_end(model, layer)?;
    let key = ln_scale_name(model, layer, mlp_input);
    let scale = act3(model, acts, &key)?;
    let (_, b, p, _) = stack.dim();
    if scale.dim() != (b, p, 1) {
        return Err(Error::Input(format!(
            "`{key}` has shape {:?}, the stack's positions are [{b}, {p}]",
            scale.shape()
        )));
    }
    let scale: Vec<f32> = scale.iter().copied().collect();
    let d = stack.dim().3;
    let data = stack.as_slice_mut().expect("a stack is contiguous");
    data.par_chunks_mut((b * p * d).max(1)).for_each(|c| {
        for (x, &sc) in c.chunks_exact_mut(d).zip(&scale) {
            let mean = x.iter().sum::<f32>() / d as f32;
            x.iter_mut().for_each(|v| *v = (*v - mean) / sc);
        }
    });
    Ok(())
}

/// The cache name of the scale of the LayerNorm that reads the residual at `layer`.
fn ln_scale_name(model: &Transformer, layer: usize, mlp_input: bool) -> String {
    if layer == model.cfg.n_layers {
        "ln_final.hook_scale".into()
    } else {
        format!(
            "blocks.{layer}.ln{}.hook_scale",
            if mlp_input { 2 } else { 1 }
        )
    }
}

/// The final LayerNorm applied in full to each component on its own (gain and bias included), as
/// TransformerLens's `accumulated_resid(apply_ln=True)` does at the last layer.
fn recompute_final_ln(model: &Transformer, stack: &mut Array4<f32>) {
    let (Some(w), Some(b)) = (model.param("ln_final.w"), model.param("ln_final.b")) else {
        return;
    };
    let (w, b) = (
        w.into_dimensionality::<ndarray::Ix1>()
            .expect("ln_final.w [d]"),
        b.into_dimensionality::<ndarray::Ix1>()
            .expect("ln_final.b [d]"),
    );
    let eps = model.cfg.eps as f32;
    for mut c in stack.axis_iter_mut(Axis(0)) {
        for mut x in c.lanes_mut(Axis(2)) {
            let n = x.len() as f32;
            let mean = x.sum() / n;
            x.mapv_inplace(|v| v - mean);
            let var = x.iter().map(|v| v * v).sum::<f32>() / n;
            let scale = (var + eps).sqrt();
            Zip::from(&mut x)
                .and(&w)
                .and(&b)
                .for_each(|v, &w, &b| *v = *v / scale * w + b);
        }
    }
}

/// Direct logit attribution of each component to the difference between the logits of `answers`
/// and `wrong` (one per example; without `wrong`, the answer's logit itself) at position `pos`,
/// through the final LayerNorm frozen at its cached scale, its gain folded into the direction:
/// `[components + 1, batch]`, the last row the constant part (the final LayerNorm's bias and
/// `b_U`), so that each column sums to the logit difference the model computed, exactly up to
/// float rounding, for a stack that sums to the final residual.
pub fn direct_logit_attribution(
    model: &Transformer,
    acts: &dyn Acts,
    stack: &Stack,
    pos: usize,
    answers: &[u32],
    wrong: Option<&[u32]>,
) -> Result<Array2<f64>> {
    let (n, b, p, d) = stack.components.dim();
    if pos >= p {
        return Err(Error::Input(format!(
            "position {pos} is outside the input ({p} positions)"
        )));
    }
    super::check_answers(model, answers, b, "answer")?;
    if let Some(w) = wrong {
        super::check_answers(model, w, b, "wrong answer")?;
    }
    let w_u = model.param("unembed.W_U").expect("W_U");
    let b_u = model.param("unembed.b_U").expect("b_U");
    let ln = model.param("ln_final.w").zip(model.param("ln_final.b"));
    let scale = if model.cfg.has_ln() {
        Some(act3(model, acts, "ln_final.hook_scale")?)
    } else {
        None
    };
    let mut out = Array2::zeros((n + 1, b));
    for bi in 0..b {
        // direction[k] = Σ±W_U[k, t]; with LayerNorm, times its gain.
        let dir_of = |k: usize| -> f64 {
            let mut v = f64::from(w_u[[k, answers[bi] as usize]]);
            if let Some(w) = wrong {
                v -= f64::from(w_u[[k, w[bi] as usize]]);
            }
            v
        };
        let mut dir: Vec<f64> = (0..d).map(dir_of).collect();
        let mut constant = f64::from(b_u[[answers[bi] as usize]])
            - wrong.map_or(0.0, |w| f64::from(b_u[[w[bi] as usize]]));
        if let Some((g, beta)) = &ln {
            constant += (0..d).map(|k| f64::from(beta[[k]]) * dir[k]).sum::<f64>();
            for (k, x) in dir.iter_mut().enumerate() {
                *x *= f64::from(g[[k]]);
            }
        }
        for c in 0..n {
            let x = stack.components.slice(s![c, bi, pos, ..]);
            let mut v: Vec<f64> = x.iter().map(|&t| f64::from(t)).collect();
            if let Some(sc) = &scale {
                let mean = v.iter().sum::<f64>() / d as f64;
                let sc = f64::from(sc[[bi, pos, 0]]);
                v.iter_mut().for_each(|t| *t = (*t - mean) / sc);
            }
            out[[c, bi]] = v.iter().zip(&dir).map(|(a, b)| a * b).sum();
        }
        out[[n, bi]] = constant;
    }
    Ok(out)
}

/// The logit lens: the residual before each layer and after the last, each through the final
/// LayerNorm (recomputed) and the unembedding, at position `pos`: `(labels, logits [points,
/// batch, d_vocab_out])`.
pub fn logit_lens(
    model: &Transformer,
    acts: &dyn Acts,
    pos: usize,
) -> Result<(Vec<String>, ndarray::Array3<f32>)> {
    let stack = accumulated_resid(model, acts, None, true, true, false)?;
    let (n, b, p, d) = stack.components.dim();
    if pos >= p {
        return Err(Error::Input(format!(
            "position {pos} is outside the input ({p} positions)"
        )));
    }
    let v = model.cfg.d_vocab_out();
    let w_u = model.param("unembed.W_U").expect("W_U");
    let w_u = w_u
        .into_dimensionality::<ndarray::Ix2>()
        .expect("W_U [d, v]");
    let b_u = model.param("unembed.b_U").expect("b_U");
    let mut logits = ndarray::Array3::zeros((n, b, v));
    for c in 0..n {
        let x = stack.components.slice(s![c, .., pos, ..]).to_owned();
        let mut out = logits.index_axis_mut(Axis(0), c);
        for mut row in out.rows_mut() {
            row.assign(&b_u);
        }
        matmul(&mut out, &x.view(), &w_u, true);
        let _ = d;
    }
    Ok((stack.labels, logits))
}
