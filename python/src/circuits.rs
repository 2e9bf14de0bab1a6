//! Circuit analysis for `toylens.ActivationCache`, `toylens.patching` and `toylens.head_detector`
//! (`toylens/circuits.py` gives them TransformerLens's signatures): the library's
//! `analysis::circuits` on a model and the cache dict's arrays, lent without copies (borrowed
//! read-only for the call; another Python thread writing into them meanwhile is the caller's race,
//! as with any numpy array handed to native code).

use crate::compute;
use crate::model::PyModel;
use ndarray::{Array2, ArrayViewD};
use numpy::{IntoPyArray, PyArrayMethods, PyReadonlyArrayDyn};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::BTreeMap;
use std::sync::Mutex;
use toylens::analysis::circuits::detect::{self, ErrorMeasure, Exclude, HeadKind};
use toylens::analysis::circuits::patching::{self, Metric, ReceiverInput, Sweep};
use toylens::analysis::circuits::process::{self, Processing};
use toylens::analysis::circuits::resid::{self, Mode, Stack};
use toylens::analysis::circuits::weights::{self, Composition};
use toylens::error::choice;
use toylens::models::transformer::Transformer;

fn transformer(m: &PyModel) -> PyResult<&Transformer> {
    m.model
        .downcast::<Transformer>("circuit analysis")
        .map_err(crate::py_err)
}

/// The cache dict's arrays as float32 (a copy only where one is not); with `keep`, only the
/// entries it names.
fn cache_arrays<'py>(
    cache: &Bound<'py, PyDict>,
    keep: Option<&dyn Fn(&str) -> bool>,
) -> PyResult<Vec<(String, PyReadonlyArrayDyn<'py, f32>)>> {
    let np = cache.py().import("numpy")?;
    let mut out = Vec::new();
    for (k, v) in cache.iter() {
        let name: String = k.extract()?;
        if keep.is_some_and(|f| !f(&name)) {
            continue;
        }
        let a = np.call_method1("asarray", (v,))?;
        let a = if a.getattr("dtype")?.str()? == "float32" {
            a
        } else {
            a.call_method1("astype", ("float32",))?
        };
        let a = a
            .cast_into::<numpy::PyArrayDyn<f32>>()
            .map_err(|_| PyTypeError::new_err(format!("cache entry `{name}` is not an array")))?;
        out.push((name, a.readonly()));
    }
    Ok(out)
}

fn views<'a>(
    arrays: &'a [(String, PyReadonlyArrayDyn<'_, f32>)],
) -> BTreeMap<String, ArrayViewD<'a, f32>> {
    arrays
        .iter()
        .map(|(n, a)| (n.clone(), a.as_array()))
        .collect()
}

fn stack_out<'py>(py: Python<'py>, s: Stack) -> (Bound<'py, PyAny>, Vec<String>) {
    (s.components.into_pyarray(py).into_any(), s.labels)
}

/// A decomposition of the residual: `what` is `accumulated`, `decompose`, `heads`, `neurons` or
/// `full`; the flags are those functions' own.
#[pyfunction]
#[pyo3(signature = (model, cache, what, layer, mlp_input=false, apply_ln=false, incl_mid=false, mode="all", incl_embeds=true, incl_remainder=false, expand_neurons=true))]
#[allow(clippy::too_many_arguments)]
fn _resid<'py>(
    py: Python<'py>,
    model: &PyModel,
    cache: &Bound<'py, PyDict>,
    what: &str,
    layer: Option<usize>,
    mlp_input: bool,
    apply_ln: bool,
    incl_mid: bool,
    mode: &str,
    incl_embeds: bool,
    incl_remainder: bool,
    expand_neurons: bool,
) -> PyResult<(Bound<'py, PyAny>, Vec<String>)> {
    let m = transformer(model)?;
    let mode: Mode = choice("mode", mode).map_err(crate::py_err)?;
    // What the decompositions read: the residual points and outputs, z, the neurons, the scales.
    let read = |n: &str| {
        [
            "hook_embed",
            "hook_pos_embed",
            "hook_resid_pre",
            "hook_resid_mid",
            "hook_resid_post",
            "hook_attn_out",
            "hook_mlp_out",
            "attn.hook_z",
            "mlp.hook_post",
            "hook_scale",
        ]
        .iter()
        .any(|s| n.ends_with(s))
    };
    let arrays = cache_arrays(cache, Some(&read))?;
    let acts = views(&arrays);
    let stack = compute(py, || match what {
        "accumulated" => resid::accumulated_resid(m, &acts, layer, incl_mid, apply_ln, mlp_input),
        "decompose" => {
            resid::decompose_resid(m, &acts, layer, mlp_input, mode, apply_ln, incl_embeds)
        }
        "heads" => resid::stack_head_results(m, &acts, layer, incl_remainder, apply_ln),
        "neurons" => resid::stack_neuron_results(m, &acts, layer, incl_remainder, apply_ln),
        "full" => {
            resid::full_resid_decomposition(m, &acts, layer, mlp_input, expand_neurons, apply_ln)
        }
        other => Err(toylens::Error::Input(format!(
            "unknown decomposition `{other}`"
        ))),
    })?;
    Ok(stack_out(py, stack))
}

/// `accumulated_bias(layer, mlp_input, include_mlp_biases)` `[d_model]`.
#[pyfunction]
fn _accumulated_bias<'py>(
    py: Python<'py>,
    model: &PyModel,
    layer: usize,
    mlp_input: bool,
    include_mlp_biases: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let m = transformer(model)?;
    if layer > m.cfg.n_layers || (mlp_input && layer >= m.cfg.n_layers) {
        return Err(PyValueError::new_err(format!(
            "layer {layer} is out of range for accumulated_bias (n_layers = {})",
            m.cfg.n_layers
        )));
    }
    let b = resid::accumulated_bias(m, layer, mlp_input, include_mlp_biases);
    Ok(numpy::PyArray1::from_vec(py, b).into_any())
}

/// Composition scores `[L, H, L, H]` for mode `Q`, `K` or `V`.
#[pyfunction]
fn _composition_scores<'py>(
    py: Python<'py>,
    model: &PyModel,
    mode: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let m = transformer(model)?;
    let mode: Composition = choice("mode", mode).map_err(crate::py_err)?;
    let s = compute(py, || weights::composition_scores(m, mode))?;
    Ok(s.mapv(|x| x as f32).into_pyarray(py).into_any())
}

/// Every head's copying scores, as dicts.
#[pyfunction]
fn _copying_scores<'py>(py: Python<'py>, model: &PyModel) -> PyResult<Bound<'py, PyAny>> {
    let m = transformer(model)?;
    let s = compute(py, || weights::copying_scores(m))?;
    crate::to_py(py, &s)
}

/// The model with its weights processed (a new model).
#[pyfunction]
fn _process_weights(
    model: &PyModel,
    fold_ln: bool,
    center_writing_weights: bool,
    center_unembed: bool,
    fold_value_biases: bool,
) -> PyResult<PyModel> {
    let m = transformer(model)?;
    let steps = Processing {
        fold_ln,
        center_writing_weights,
        center_unembed,
        fold_value_biases,
    };
    let processed = process::process(m, steps).map_err(crate::py_err)?;
    Ok(model.with_model(Box::new(processed)))
}

fn tokens_2d(x: &Bound<'_, PyAny>, what: &str) -> PyResult<Array2<u32>> {
    let np = x.py().import("numpy")?;
    let a = np.call_method1("asarray", (x,))?;
    let kind: String = a.getattr("dtype")?.getattr("kind")?.extract()?;
    if kind != "i" && kind != "u" {
        return Err(PyTypeError::new_err(format!(
            "{what}: tokens are integers; got an array of dtype kind `{kind}`"
        )));
    }
    let a = a.call_method1("astype", ("int64",))?;
    let t: PyReadonlyArrayDyn<i64> = a.extract()?;
    let t = t.as_array();
    if let Some(v) = t.iter().find(|&&v| v < 0 || v > u32::MAX as i64) {
        return Err(PyValueError::new_err(format!(
            "{what}: {v} is not a token id"
        )));
    }
    let shape = t.shape().to_vec();
    let (r, c) = match shape.len() {
        1 => (1, shape[0]),
        2 => (shape[0], shape[1]),
        _ => {
            return Err(PyValueError::new_err(format!(
                "{what}: tokens are [batch, pos] (or [pos]); got shape {shape:?}"
            )))
        }
    };
    Ok(t.mapv(|v| v as u32)
        .into_shape_with_order((r, c))
        .expect("one or two axes"))
}

/// A `toylens.patching` metric object as the library's, or None for a Python callable.
fn metric_of(m: &Bound<'_, PyAny>, batch: usize) -> PyResult<Option<Metric>> {
    let Ok(spec) = m.getattr("_toylens_metric") else {
        return Ok(None);
    };
    let (kind, answers, wrong): (String, Vec<i64>, Option<Vec<i64>>) =
        spec.call1((batch,))?.extract()?;
    let ids = |v: Vec<i64>| -> PyResult<Vec<u32>> {
        v.into_iter()
            .map(|t| {
                u32::try_from(t)
                    .map_err(|_| PyValueError::new_err(format!("{t} is not a token id")))
            })
            .collect()
    };
    let answers = ids(answers)?;
    Ok(Some(match kind.as_str() {
        "logit_diff" => Metric::LogitDiff {
            answers,
            wrong: ids(wrong.unwrap_or_default())?,
        },
        "logit" => Metric::Logit { answers },
        "loss" => Metric::Loss { answers },
        "prob" => Metric::Prob { answers },
        k => return Err(PyValueError::new_err(format!("unknown metric `{k}`"))),
    }))
}

fn require_metric(m: &Bound<'_, PyAny>, batch: usize, what: &str) -> PyResult<Metric> {
    metric_of(m, batch)?.ok_or_else(|| {
        PyTypeError::new_err(format!(
            "{what} needs one of toylens.patching's metrics (logit_diff, logit, loss, prob): it \
             differentiates the metric"
        ))
    })
}

/// One `get_act_patch_*` sweep (`sweep` its name without the prefix).
#[pyfunction]
fn _patch_sweep<'py>(
    py: Python<'py>,
    model: &PyModel,
    corrupted: &Bound<'py, PyAny>,
    clean_cache: &Bound<'py, PyDict>,
    sweep: &str,
    metric: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = transformer(model)?;
    let sweep: Sweep = choice("sweep", sweep).map_err(crate::py_err)?;
    let corrupted = tokens_2d(corrupted, "corrupted_tokens")?;
    // Only the patched activation's entries.
    let act = sweep.family().0;
    let wanted: Vec<String> = (0..m.cfg.n_layers).map(|l| act.site(l).name()).collect();
    let keep = |n: &str| wanted.iter().any(|w| w == n);
    let arrays = cache_arrays(clean_cache, Some(&keep))?;
    let acts = views(&arrays);
    let out = match metric_of(metric, corrupted.nrows())? {
        Some(metric) => compute(py, || {
            patching::patch_sweep(m, corrupted.view(), &acts, sweep, &metric)
        })?,
        None => {
            if !metric.is_callable() {
                return Err(PyTypeError::new_err(
                    "patching_metric is a function of the logits or a toylens.patching metric",
                ));
            }
            // On the pool like every call; the metric with the GIL taken back, its first
            // exception raised as itself.
            let f = metric.clone().unbind();
            let raised: Mutex<Option<PyErr>> = Mutex::new(None);
            let r = compute(py, || {
                let mut call = |logits: ndarray::Array3<f32>| -> toylens::Result<f64> {
                    Python::attach(|py| {
                        f.bind(py)
                            .call1((logits.into_pyarray(py),))
                            .and_then(|v| v.call_method0("__float__")?.extract::<f64>())
                            .map_err(|e| {
                                let msg = e.to_string();
                                raised.lock().expect("metric error slot").get_or_insert(e);
                                toylens::Error::Input(format!("patching_metric raised {msg}"))
                            })
                    })
                };
                patching::patch_sweep_with(m, corrupted.view(), &acts, sweep, &mut call)
            });
            if let Some(e) = raised.into_inner().expect("metric error slot") {
                return Err(e);
            }
            r?
        }
    };
    Ok(out.into_pyarray(py).into_any())
}

/// Attribution patching of each of `sweeps`.
#[pyfunction]
fn _attribution_patch<'py>(
    py: Python<'py>,
    model: &PyModel,
    clean: &Bound<'py, PyAny>,
    corrupted: &Bound<'py, PyAny>,
    sweeps: Vec<String>,
    metric: &Bound<'py, PyAny>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let m = transformer(model)?;
    let sweeps: Vec<Sweep> = sweeps
        .iter()
        .map(|s| choice("sweep", s))
        .collect::<toylens::Result<_>>()
        .map_err(crate::py_err)?;
    let (clean, corrupted) = (
        tokens_2d(clean, "clean_tokens")?,
        tokens_2d(corrupted, "corrupted_tokens")?,
    );
    let metric = require_metric(metric, corrupted.nrows(), "attribution patching")?;
    let out = compute(py, || {
        patching::attribution_patch(m, clean.view(), corrupted.view(), &sweeps, &metric)
    })?;
    Ok(out
        .into_iter()
        .map(|a| a.into_pyarray(py).into_any())
        .collect())
}

/// Path patching of one sender and receiver, or (`sender` None) of every pair.
#[pyfunction]
#[pyo3(signature = (model, clean, corrupted, receiver_input, metric, freeze_mlps, sender=None, receiver=None))]
#[allow(clippy::too_many_arguments)]
fn _path_patch<'py>(
    py: Python<'py>,
    model: &PyModel,
    clean: &Bound<'py, PyAny>,
    corrupted: &Bound<'py, PyAny>,
    receiver_input: &str,
    metric: &Bound<'py, PyAny>,
    freeze_mlps: bool,
    sender: Option<(usize, usize)>,
    receiver: Option<(usize, usize)>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = transformer(model)?;
    let input: ReceiverInput = choice("receiver_input", receiver_input).map_err(crate::py_err)?;
    let (clean, corrupted) = (
        tokens_2d(clean, "clean_tokens")?,
        tokens_2d(corrupted, "corrupted_tokens")?,
    );
    let metric = require_metric(metric, corrupted.nrows(), "path patching")?;
    match (sender, receiver) {
        (Some(s), Some(r)) => {
            let v = compute(py, || {
                patching::path_patch(
                    m,
                    clean.view(),
                    corrupted.view(),
                    s,
                    r,
                    input,
                    &metric,
                    freeze_mlps,
                )
            })?;
            Ok(v.into_pyobject(py)?.into_any())
        }
        (None, None) => {
            let a = compute(py, || {
                patching::path_patch_sweep(
                    m,
                    clean.view(),
                    corrupted.view(),
                    input,
                    &metric,
                    freeze_mlps,
                )
            })?;
            Ok(a.into_pyarray(py).into_any())
        }
        _ => Err(PyValueError::new_err(
            "give both sender and receiver, or neither",
        )),
    }
}

/// The sequences the `heads` monitor and `toylens circuits` detect heads on, `[16, 2·half]`.
#[pyfunction]
fn _detector_tokens(py: Python<'_>, n_ctx: usize, d_vocab: usize) -> PyResult<Bound<'_, PyAny>> {
    let tokens = detect::detector_tokens(n_ctx, d_vocab).ok_or_else(|| {
        PyValueError::new_err(format!("head detection needs n_ctx >= 4 (got {n_ctx})"))
    })?;
    Ok(tokens.mapv(i64::from).into_pyarray(py).into_any())
}

/// Head detection scores `[n_layers, n_heads]` on `tokens` for a named pattern or an array;
/// with `cache`, from its attention patterns (TransformerLens's `cache=`) instead of a new run.
#[pyfunction]
#[pyo3(signature = (model, tokens, pattern, exclude_bos, exclude_current_token, error_measure, cache=None))]
#[allow(clippy::too_many_arguments)]
fn _detect_head<'py>(
    py: Python<'py>,
    model: &PyModel,
    tokens: &Bound<'py, PyAny>,
    pattern: &Bound<'py, PyAny>,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: &str,
    cache: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = transformer(model)?;
    let tokens = tokens_2d(tokens, "seq")?;
    let measure: ErrorMeasure = choice("error_measure", error_measure).map_err(crate::py_err)?;
    let exclude = Exclude {
        bos: exclude_bos,
        current_token: exclude_current_token,
    };
    let (b, p) = tokens.dim();
    if p < 2 || p > m.cfg.n_ctx {
        return Err(PyValueError::new_err(format!(
            "head detection needs sequences of 2 to n_ctx = {} tokens; these have {p}",
            m.cfg.n_ctx
        )));
    }
    let custom = if let Ok(name) = pattern.extract::<String>() {
        let kind: HeadKind = choice("detection_pattern", &name).map_err(crate::py_err)?;
        Err(kind)
    } else {
        let np = py.import("numpy")?;
        let a = np.call_method1("asarray", (pattern, "float32"))?;
        let a: PyReadonlyArrayDyn<f32> = a.extract()?;
        let a = a
            .as_array()
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| PyValueError::new_err("detection_pattern is [pos, pos]"))?
            .to_owned();
        let lower = a.indexed_iter().all(|((q, k), &x)| k <= q || x == 0.0);
        if a.dim() != (p, p) || !lower {
            return Err(PyValueError::new_err(format!(
                "the detection pattern must be lower triangular of shape ({p}, {p}); got {:?}",
                a.shape()
            )));
        }
        Ok(a)
    };
    let pattern_of = |seq: &[u32]| match &custom {
        Ok(a) => a.clone(),
        Err(kind) => kind.pattern(seq),
    };
    let scores = match cache {
        None => compute(py, || {
            detect::detect_with(m, tokens.view(), &pattern_of, exclude, measure)
        })?,
        Some(cache) => {
            // `[b, h, p, p]` per layer (or `[h, p, p]`: a cache without its batch axis).
            let want = [b, m.cfg.n_heads, p, p];
            let mut owned = Vec::new();
            for l in 0..m.cfg.n_layers {
                let name = format!("blocks.{l}.attn.hook_pattern");
                let a = cache.get_item(&name)?.ok_or_else(|| {
                    pyo3::exceptions::PyKeyError::new_err(format!("the cache has no `{name}`"))
                })?;
                let a: PyReadonlyArrayDyn<f32> = py
                    .import("numpy")?
                    .call_method1("asarray", (a, "float32"))?
                    .extract()?;
                let mut a = a.as_array().to_owned();
                if a.ndim() == 3 {
                    a = a.insert_axis(ndarray::Axis(0));
                }
                if a.shape() != want {
                    return Err(PyValueError::new_err(format!(
                        "the cache's `{name}` has shape {:?}; for these sequences it is {want:?}",
                        a.shape()
                    )));
                }
                owned.push(a.into_dimensionality::<ndarray::Ix4>().expect("checked"));
            }
            let views: Vec<_> = owned.iter().map(|a| a.view()).collect();
            detect::scores(&views, tokens.view(), &pattern_of, exclude, measure)
        }
    };
    Ok(scores.into_pyarray(py).into_any())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_resid, m)?)?;
    m.add_function(wrap_pyfunction!(_accumulated_bias, m)?)?;
    m.add_function(wrap_pyfunction!(_composition_scores, m)?)?;
    m.add_function(wrap_pyfunction!(_process_weights, m)?)?;
    m.add_function(wrap_pyfunction!(_copying_scores, m)?)?;
    m.add_function(wrap_pyfunction!(_patch_sweep, m)?)?;
    m.add_function(wrap_pyfunction!(_attribution_patch, m)?)?;
    m.add_function(wrap_pyfunction!(_path_patch, m)?)?;
    m.add_function(wrap_pyfunction!(_detect_head, m)?)?;
    m.add_function(wrap_pyfunction!(_detector_tokens, m)?)?;
    Ok(())
}
