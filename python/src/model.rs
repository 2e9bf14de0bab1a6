//! `toylens.Model`: any model kind behind the library's `Model` interface, run from Python with
//! TransformerLens's calls (`model(tokens)`, `run_with_cache`, `run_with_hooks`).

use crate::{compute, to_py};
use ndarray::{Array2, ArrayD, ArrayViewMutD, Dimension, IxDyn};
use numpy::{IntoPyArray, PyReadonlyArrayDyn, ToPyArray};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::path::PathBuf;
use std::sync::Mutex;
use toylens::batch::Input;
use toylens::hooks::{CacheFilter, Hooks};
use toylens::models::Model;

/// A model loaded from a checkpoint (any kind toylens trains, or an original grokking `.pth`).
#[pyclass(name = "Model", module = "toylens", frozen)]
pub struct PyModel {
    pub(crate) model: Box<dyn Model>,
    pub(crate) path: PathBuf,
    task: Option<toylens::tasks::TaskInfo>,
}

/// What a model runs on: tokens (`[batch, pos]` integers), dense inputs (`[batch, features]`) or
/// vector tokens (`[batch, pos, width]` floats).
enum OwnedInput {
    Tokens(Array2<u32>),
    Dense(Array2<f32>),
    Sequences(ndarray::Array3<f32>),
}

impl OwnedInput {
    fn view(&self) -> Input<'_> {
        match self {
            OwnedInput::Tokens(t) => Input::Tokens(t.view()),
            OwnedInput::Dense(x) => Input::Dense(x.view()),
            OwnedInput::Sequences(x) => Input::Sequences(x.view()),
        }
    }
}

/// A numpy array, a list or a CPU torch tensor as the model's input; a 1-D input is one example.
fn input_of(x: &Bound<'_, PyAny>) -> PyResult<OwnedInput> {
    let np = x.py().import("numpy")?;
    let a = np.call_method1("asarray", (x,))?;
    let kind: String = a.getattr("dtype")?.getattr("kind")?.extract()?;
    let ndim: usize = a.getattr("ndim")?.extract()?;
    if ndim == 3 && kind == "f" {
        let a = a.call_method1("astype", ("float32",))?;
        let d: PyReadonlyArrayDyn<f32> = a.extract()?;
        let x = d
            .as_array()
            .to_owned()
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        return Ok(OwnedInput::Sequences(x));
    }
    if ndim == 0 || ndim > 2 {
        let shape: Vec<usize> = a.getattr("shape")?.extract()?;
        return Err(PyValueError::new_err(format!(
            "the input has shape {shape:?}; the model takes [batch, pos] tokens, [batch, features] values (or one example, 1-D) or [batch, pos, width] vector tokens"
        )));
    }
    match kind.as_str() {
        "i" | "u" => {
            let a = a.call_method1("astype", ("int64",))?;
            let t: PyReadonlyArrayDyn<i64> = a.extract()?;
            let t = t.as_array();
            if let Some((at, &v)) = t
                .indexed_iter()
                .find(|(_, &v)| v < 0 || v > u32::MAX as i64)
            {
                return Err(PyValueError::new_err(format!(
                    "token {v} at {:?} is not a token id (they count from 0)",
                    at.as_array_view().to_vec()
                )));
            }
            Ok(OwnedInput::Tokens(as_2d(t.mapv(|v| v as u32), ndim)))
        }
        "f" => {
            let a = a.call_method1("astype", ("float32",))?;
            let d: PyReadonlyArrayDyn<f32> = a.extract()?;
            Ok(OwnedInput::Dense(as_2d(d.as_array().to_owned(), ndim)))
        }
        k => Err(PyTypeError::new_err(format!(
            "the input's dtype kind is `{k}`; tokens are integers, dense inputs floats"
        ))),
    }
}

/// A 1-D input as one example; a 2-D one as it is.
fn as_2d<T>(a: ArrayD<T>, ndim: usize) -> Array2<T> {
    let shape = a.shape().to_vec();
    let (rows, cols) = if ndim == 1 {
        (1, shape[0])
    } else {
        (shape[0], shape[1])
    };
    a.into_shape_with_order((rows, cols))
        .expect("one or two axes")
}

/// `names_filter` as TransformerLens takes it: None (everything), a name, a list of names, or a
/// function of the name. Resolved to a list here, so the forward pass needs no Python.
fn filter_names(
    model: &dyn Model,
    names_filter: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Vec<String>>> {
    let Some(f) = names_filter.filter(|f| !f.is_none()) else {
        return Ok(None);
    };
    if let Ok(s) = f.cast::<PyString>() {
        return Ok(Some(vec![s.to_string()]));
    }
    if f.is_callable() {
        let mut keep = Vec::new();
        for n in model.hook_names() {
            if f.call1((n.as_str(),))?.is_truthy()? {
                keep.push(n);
            }
        }
        return Ok(Some(keep));
    }
    let names: Vec<String> = f.extract().map_err(|_| {
        PyTypeError::new_err(
            "names_filter is None, a hook name, a list of names, or a function of the name",
        )
    })?;
    Ok(Some(names))
}

fn cache_dict<'py>(
    py: Python<'py>,
    cache: toylens::hooks::ActivationCache,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, a) in cache.map {
        // Moved into numpy, not copied.
        d.set_item(name, a.into_pyarray(py))?;
    }
    Ok(d)
}

/// A hook as TransformerLens calls it: `fn(activation, hook)`, where `hook` is the hook point's
/// name (a `str` with `.name`, so both `hook_name` and `hook.name` work). The function returns a
/// replacement (same shape, or one that broadcasts) or None, after changing the array in place or
/// not at all.
fn call_hook(
    point: &Bound<'_, PyAny>,
    f: &Bound<'_, PyAny>,
    act: &mut ArrayViewMutD<f32>,
) -> PyResult<()> {
    let py = f.py();
    let arr = act.to_pyarray(py);
    let ret = f.call1((arr.clone(), point))?;
    let np = py.import("numpy")?;
    let src = if ret.is_none() {
        arr.into_any()
    } else {
        np.call_method1("asarray", (ret,))?
            .call_method1("astype", ("float32",))?
    };
    let src: PyReadonlyArrayDyn<f32> = src.extract()?;
    let src = src.as_array();
    let Some(b) = src.broadcast(act.raw_dim()) else {
        return Err(PyValueError::new_err(format!(
            "hook `{}` returned shape {:?}; the activation is {:?}",
            point.str()?,
            src.shape(),
            act.shape()
        )));
    };
    act.assign(&b);
    Ok(())
}

/// A hook that runs in Rust, with no call into Python per forward pass: `toylens.hooks.zero`,
/// `toylens.hooks.mean`, `toylens.hooks.replace(array)`.
#[pyclass(name = "RustHook", module = "toylens.hooks", frozen)]
pub struct RustHook {
    kind: RustHookKind,
}

enum RustHookKind {
    Zero,
    Mean,
    Replace(ArrayD<f32>),
}

#[pymethods]
impl RustHook {
    fn __repr__(&self) -> String {
        match &self.kind {
            RustHookKind::Zero => "toylens.hooks.zero".into(),
            RustHookKind::Mean => "toylens.hooks.mean".into(),
            RustHookKind::Replace(a) => format!("toylens.hooks.replace(<array {:?}>)", a.shape()),
        }
    }
}

/// Zero ablation, in Rust.
#[pyfunction]
fn _zero_hook() -> RustHook {
    RustHook {
        kind: RustHookKind::Zero,
    }
}

/// Mean ablation over the batch (axis 0), in Rust.
#[pyfunction]
fn _mean_hook() -> RustHook {
    RustHook {
        kind: RustHookKind::Mean,
    }
}

/// Replace the activation with `value` (same shape, or one that broadcasts), in Rust.
#[pyfunction]
fn replace(value: &Bound<'_, PyAny>) -> PyResult<RustHook> {
    let a = value
        .py()
        .import("numpy")?
        .call_method1("asarray", (value, "float32"))?;
    let a: PyReadonlyArrayDyn<f32> = a.extract()?;
    Ok(RustHook {
        kind: RustHookKind::Replace(a.as_array().to_owned()),
    })
}

/// A hook of `fwd_hooks`: a Python function, or one of toylens's Rust hooks.
enum HookOf {
    Python(Py<PyAny>),
    Rust(Py<RustHook>),
}

impl PyModel {
    /// Another model in this one's place (its path and task): a processed copy.
    pub(crate) fn with_model(&self, model: Box<dyn Model>) -> Self {
        PyModel {
            model,
            path: self.path.clone(),
            task: self.task.clone(),
        }
    }

    pub(crate) fn new(loaded: toylens::io::Loaded) -> Self {
        PyModel {
            model: loaded.model,
            path: loaded.path,
            task: loaded.task,
        }
    }

    /// The forward pass, with Python hooks (called with the GIL taken back) and a cache.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        fwd_hooks: Vec<(String, HookOf)>,
        keep: Option<Option<Vec<String>>>,
    ) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyDict>>)> {
        let input = input_of(input)?;
        let hook_point = py.import("toylens._hooks")?.getattr("HookPoint")?.unbind();
        let mut points = Vec::new();
        for (name, _) in &fwd_hooks {
            points.push(hook_point.call1(py, (name.as_str(),))?);
        }
        // The first exception a Python hook raised: re-raised as itself, traceback and all.
        let raised: Mutex<Option<PyErr>> = Mutex::new(None);
        let model = self.model.as_ref();
        let with_cache = keep.is_some();
        let result = compute(py, || {
            let mut hooks = Hooks::new();
            for ((name, f), point) in fwd_hooks.iter().zip(&points) {
                let raised = &raised;
                hooks = match f {
                    HookOf::Rust(h) => match &h.get().kind {
                        RustHookKind::Zero => {
                            hooks.add(name.clone(), toylens::hooks::zero_ablate())
                        }
                        RustHookKind::Mean => {
                            hooks.add(name.clone(), toylens::hooks::mean_ablate())
                        }
                        RustHookKind::Replace(v) => {
                            hooks.try_add(name.clone(), toylens::hooks::replace_with(v.clone()))
                        }
                    },
                    HookOf::Python(f) => hooks.try_add(name.clone(), move |act| {
                        Python::attach(|py| {
                            call_hook(point.bind(py), f.bind(py), act).map_err(|e| {
                                let msg = e.to_string();
                                raised.lock().expect("hook error slot").get_or_insert(e);
                                msg
                            })
                        })
                    }),
                };
            }
            let filter = keep.map(|names| match names {
                None => CacheFilter::All,
                Some(ns) => CacheFilter::Names(ns),
            });
            model.run(input.view(), hooks, filter)
        });
        if let Some(e) = raised.into_inner().expect("hook error slot") {
            return Err(e);
        }
        let (out, cache) = result?;
        let cache = if with_cache {
            Some(cache_dict(py, cache)?)
        } else {
            None
        };
        Ok((out.into_pyarray(py).into_any(), cache))
    }
}

#[pymethods]
impl PyModel {
    /// The kind: `transformer`, `toy_mlp`, `superposition`, `linear`.
    #[getter]
    fn arch(&self) -> &'static str {
        self.model.arch()
    }

    /// The model's config, as its checkpoints record it (TransformerLens's field names for the
    /// transformer).
    #[getter]
    fn cfg<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.model.config_json())
    }

    /// The file it was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The task the checkpoint records (`{"name": "modular", "p": 113, ...}`), or None.
    #[getter]
    fn task<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.task {
            Some(t) => to_py(py, t),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// Hook-point names, in the order the forward pass reaches them.
    #[getter]
    fn hook_names(&self) -> Vec<String> {
        self.model.hook_names()
    }

    #[getter]
    fn n_params(&self) -> usize {
        self.model.params().len()
    }

    /// Every tensor of the checkpoint's state dict (parameters and buffers), as numpy arrays under
    /// the checkpoint's names: `torch.from_numpy` each and `load_state_dict(strict=True)` takes it.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let params = self.model.params();
        for t in self.model.tensors() {
            let a = ndarray::ArrayView::from_shape(IxDyn(&t.shape), &params[t.range.clone()])
                .expect("spec shape matches its range");
            d.set_item(&t.name, a.to_pyarray(py))?;
        }
        for b in self.model.buffers() {
            let arr = match b.dtype {
                "F32" => {
                    let v: Vec<f32> = b
                        .bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect();
                    ArrayD::from_shape_vec(IxDyn(&b.shape), v)
                        .expect("buffer shape")
                        .into_pyarray(py)
                        .into_any()
                }
                "BOOL" => {
                    let v: Vec<bool> = b.bytes.iter().map(|&x| x != 0).collect();
                    ArrayD::from_shape_vec(IxDyn(&b.shape), v)
                        .expect("buffer shape")
                        .into_pyarray(py)
                        .into_any()
                }
                other => {
                    return Err(PyValueError::new_err(format!(
                        "buffer `{}` has dtype {other}, which the bindings do not convert",
                        b.name
                    )))
                }
            };
            d.set_item(&b.name, arr)?;
        }
        Ok(d)
    }

    /// A weight under its TransformerLens name: a tensor of the state dict, or (`attn.W_Q`, say)
    /// one of every block stacked on a new first axis, as `model.W_Q` is `[n_layers, ...]`.
    fn weight<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let params = self.model.params();
        let tensors = self.model.tensors();
        let view = |n: &str| {
            tensors.iter().find(|t| t.name == n).map(|t| {
                ndarray::ArrayView::from_shape(IxDyn(&t.shape), &params[t.range.clone()])
                    .expect("spec shape matches its range")
            })
        };
        if let Some(a) = view(name) {
            return Ok(a.to_pyarray(py).into_any());
        }
        let per_layer: Vec<_> = (0..)
            .map_while(|l| view(&format!("blocks.{l}.{name}")))
            .collect();
        if per_layer.is_empty() {
            return Err(pyo3::exceptions::PyKeyError::new_err(format!(
                "the model has no weight `{name}` (nor `blocks.L.{name}`)"
            )));
        }
        let views: Vec<_> = per_layer.iter().map(|a| a.view()).collect();
        let stacked = ndarray::stack(ndarray::Axis(0), &views).expect("same shape per layer");
        Ok(stacked.into_pyarray(py).into_any())
    }

    /// The output (logits `[batch, pos, d_vocab_out]` for the transformer) of `input`: tokens as
    /// integers `[batch, pos]` (or one example, 1-D), or dense inputs as floats.
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.forward(py, input, Vec::new(), None)?.0)
    }

    /// `(output, cache)`: the cache maps hook names to arrays in TransformerLens's shapes (moved
    /// into numpy, not copied). `names_filter`: None (all), a name, a list, or `fn(name) -> bool`.
    /// As in TransformerLens, `unembed.hook_out` shares its memory with the output, and
    /// `unembed.hook_in` with the last `hook_resid_post` when there is no final LayerNorm.
    #[pyo3(signature = (input, names_filter=None))]
    fn run_with_cache<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        names_filter: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        let model = self.model.as_ref();
        let names = filter_names(model, names_filter)?.unwrap_or_else(|| model.hook_names());
        let (request, shared) = shared_request(model, &names);
        let (out, cache) = self.forward(py, input, Vec::new(), Some(Some(request)))?;
        let cache = cache.expect("asked for a cache");
        // Entries equal to another or to the output: views of that array, as TransformerLens
        // gives the same storage (an in-place change to one shows in the other there too).
        for (alias, target) in &shared {
            let of = match target {
                None => out.clone(),
                Some(t) => cache.get_item(t)?.expect("requested"),
            };
            cache.set_item(alias, of.call_method0("view")?)?;
        }
        for (_, target) in shared {
            if let Some(t) = target.filter(|t| !names.contains(t)) {
                cache.del_item(t)?;
            }
        }
        Ok((out, cache))
    }

    /// The output with `fwd_hooks`, a list of `(hook_name, fn)`; `fn(activation, hook)` returns a
    /// replacement array or None (having changed the array in place, or only looked).
    #[pyo3(signature = (input, fwd_hooks=None))]
    fn run_with_hooks<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        fwd_hooks: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut hooks = Vec::new();
        if let Some(list) = fwd_hooks.filter(|h| !h.is_none()) {
            for item in list.try_iter()? {
                let item = item?;
                let pair = item.cast::<PyTuple>().ok().filter(|t| t.len() == 2);
                let Some(pair) = pair else {
                    return Err(PyTypeError::new_err(
                        "fwd_hooks is a list of (hook_name, fn) pairs",
                    ));
                };
                let name: String = pair.get_item(0)?.extract()?;
                let f = pair.get_item(1)?;
                if let Ok(h) = f.cast::<RustHook>() {
                    hooks.push((name, HookOf::Rust(h.clone().unbind())));
                    continue;
                }
                if !f.is_callable() {
                    return Err(PyTypeError::new_err(format!(
                        "the hook for `{name}` is not callable"
                    )));
                }
                hooks.push((name, HookOf::Python(f.unbind())));
            }
        }
        Ok(self.forward(py, input, hooks, None)?.0)
    }

    /// The model inside TransformerLens (a `HookedTransformer` on 3.x, a `TransformerBridge` on
    /// 4.x), weights loaded with `strict=True`.
    fn to_transformer_lens<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("toylens.transformer_lens")?
            .call_method1("to_transformer_lens", (slf,))
    }

    fn __repr__(&self) -> String {
        format!(
            "toylens.Model({}, {} parameters, from {})",
            self.model.arch(),
            self.model.params().len(),
            self.path.display()
        )
    }
}

/// Load a checkpoint: a toylens safetensors file of any model kind, or an original grokking `.pth`.
#[pyfunction]
fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyModel> {
    let loaded = compute(py, || toylens::io::load_any(&path))?;
    Ok(PyModel::new(loaded))
}

/// What to ask the model for to cache `names`: each entry that equals another or the output
/// (`Model::same_activations`) is left out, its source asked for instead; and those pairs.
fn shared_request(
    model: &dyn Model,
    names: &[String],
) -> (Vec<String>, Vec<(String, Option<String>)>) {
    let mut request = names.to_vec();
    let mut shared = Vec::new();
    for (alias, target) in model.same_activations() {
        if !request.contains(&alias) {
            continue;
        }
        request.retain(|n| *n != alias);
        if let Some(t) = target.as_ref().filter(|t| !request.contains(t)) {
            request.push(t.clone());
        }
        shared.push((alias, target));
    }
    (request, shared)
}

/// Seconds per `run_with_cache` call measured inside Rust (the bindings' overhead benchmark):
/// the same call with no Python in the loop (every hook point; the entries `run_with_cache`
/// shares with another, left out as it leaves them out). Returns one time per repetition.
#[pyfunction]
fn _rust_run_with_cache_seconds(
    py: Python<'_>,
    model: &PyModel,
    input: &Bound<'_, PyAny>,
    repeats: usize,
) -> PyResult<Vec<f64>> {
    let input = input_of(input)?;
    let m = model.model.as_ref();
    compute(py, || {
        let mut times = Vec::new();
        for _ in 0..repeats {
            let t0 = std::time::Instant::now();
            let (request, _) = shared_request(m, &m.hook_names());
            let filter = CacheFilter::Names(request);
            let (out, cache) = m.run(input.view(), Hooks::new(), Some(filter))?;
            times.push(t0.elapsed().as_secs_f64());
            drop((out, cache));
        }
        Ok(times)
    })
}

/// Raise a Rust panic inside the library (tests check that it arrives as a RuntimeError).
#[pyfunction]
fn _panic_for_test(py: Python<'_>) -> PyResult<()> {
    compute(py, || -> toylens::Result<()> { panic!("a test panic") })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<RustHook>()?;
    m.add_function(wrap_pyfunction!(_zero_hook, m)?)?;
    m.add_function(wrap_pyfunction!(_mean_hook, m)?)?;
    m.add_function(wrap_pyfunction!(replace, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(_rust_run_with_cache_seconds, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    Ok(())
}
