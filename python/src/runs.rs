//! Training, sweeps and the analyses, as the CLI runs them. Reports cross as JSON (the Python
//! side makes dicts and numpy arrays of them); every function here writes only what its CLI
//! command writes, and the analyses write nothing.

use crate::model::PyModel;
use crate::{compute, guard, py_err, to_py};
use numpy::IntoPyArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use toylens::commands::{self, AnalyzeReport, LlcReport};
use toylens::io::run;
use toylens::train::{Control, Progress};

/// Set by Ctrl-C while a run trains.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// How many trainings hold the SIGINT handler, and Python's handler to put back after the last.
static SIGINT: Mutex<(usize, Option<libc::sigaction>)> = Mutex::new((0, None));

/// While alive, Ctrl-C sets [`STOP`] instead of raising KeyboardInterrupt in the middle of a step
/// (which Python could not do anyway while the GIL is released): the run then saves a checkpoint
/// and the binding raises KeyboardInterrupt itself.
struct CtrlC;

impl CtrlC {
    fn catch() -> Self {
        let mut s = SIGINT.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 == 0 {
            STOP.store(false, Ordering::Relaxed);
            // SAFETY: a plain sigaction install; the handler only stores to an atomic.
            unsafe {
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
                libc::sigemptyset(&mut new.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGINT, &new, &mut old) == 0 {
                    s.1 = Some(old);
                }
            }
        }
        s.0 += 1;
        CtrlC
    }
}

impl Drop for CtrlC {
    fn drop(&mut self) {
        let mut s = SIGINT.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= 1;
        if s.0 == 0 {
            if let Some(old) = s.1.take() {
                // SAFETY: restores the handler saved by `catch`.
                unsafe {
                    libc::sigaction(libc::SIGINT, &old, std::ptr::null_mut());
                }
            }
        }
    }
}

/// Progress lines into Python's `sys.stderr` (a notebook shows them under the cell).
fn write_stderr(line: &str) {
    Python::attach(|py| {
        if let Ok(err) = py.import("sys").and_then(|s| s.getattr("stderr")) {
            let _ = err.call_method1("write", (format!("{line}\n"),));
            let _ = err.call_method0("flush");
        }
    });
}

/// Train as `toylens train` does (same config resolution, same files, the run's pictures);
/// returns the run directory.
#[pyfunction]
#[pyo3(signature = (preset, overrides, out, resume, force, progress))]
fn _train(
    py: Python<'_>,
    preset: Option<String>,
    overrides: Vec<String>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    force: bool,
    progress: bool,
) -> PyResult<PathBuf> {
    let request = commands::train::TrainRequest {
        preset,
        overrides,
        out,
        resume,
        force,
    };
    let _ctrl_c = CtrlC::catch();
    let log: &(dyn Fn(&str) + Sync) = &write_stderr;
    let control = Control {
        stop: Some(&STOP),
        log: Some(log),
    };
    let shown = if progress {
        Progress::Auto
    } else {
        Progress::Quiet
    };
    let (dir, _) = compute(py, || request.run(shown, control))?;
    Ok(dir)
}

/// A run directory's record: summary (None while unfinished), config, metric columns (numpy),
/// checkpoint steps.
type RunInfo<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyDict>,
    Vec<u64>,
);

/// A run directory's record (see [`RunInfo`]).
#[pyfunction]
fn _run_info(py: Python<'_>, dir: PathBuf) -> PyResult<RunInfo<'_>> {
    let (summary, config, rows) = compute(py, || {
        Ok((
            run::read_summary(&dir)?,
            run::run_config(&dir)?,
            run::read_metrics(&dir)?,
        ))
    })?;
    let columns = PyDict::new(py);
    columns.set_item(
        "step",
        rows.iter()
            .map(|r| r.step as i64)
            .collect::<Vec<_>>()
            .into_pyarray(py),
    )?;
    if let Some(first) = rows.first() {
        for (i, (name, _)) in first.values.iter().enumerate() {
            let col: Vec<f64> = rows
                .iter()
                .map(|r| r.values.get(i).map_or(f64::NAN, |v| v.1))
                .collect();
            columns.set_item(name, col.into_pyarray(py))?;
        }
    }
    let summary = match summary {
        Some(s) => to_py(py, &s)?,
        None => py.None().into_bound(py),
    };
    let config = to_py(py, &config)?;
    Ok((summary, config, columns, run::checkpoint_steps(&dir)))
}

/// The embedded presets.
#[pyfunction]
fn presets() -> Vec<String> {
    toylens::config::PRESETS
        .iter()
        .map(|p| p.name.to_string())
        .collect()
}

/// The resolved config of a preset with overrides, as `toylens config` prints it.
#[pyfunction]
#[pyo3(signature = (preset, overrides))]
fn _config<'py>(
    py: Python<'py>,
    preset: String,
    overrides: Vec<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let cfg = toylens::config::resolve(&preset, &overrides).map_err(py_err)?;
    to_py(py, &cfg)
}

/// Plan a sweep and create its directory; returns it. `worker`: the interpreter that runs
/// `-m toylens._worker` for each run.
#[pyfunction]
#[pyo3(signature = (preset, args, out, jobs, yes, resume, worker, progress))]
#[allow(clippy::too_many_arguments)]
fn _sweep(
    py: Python<'_>,
    preset: Option<String>,
    args: Vec<String>,
    out: Option<PathBuf>,
    jobs: Option<usize>,
    yes: bool,
    resume: Option<PathBuf>,
    worker: PathBuf,
    progress: bool,
) -> PyResult<(PathBuf, Vec<(usize, String)>)> {
    let dir = match resume {
        Some(d) => {
            toylens::sweep::load(&d).map_err(py_err)?;
            d
        }
        None => {
            let name = preset.unwrap_or_else(|| "grokking".to_string());
            let m = toylens::sweep::plan(&name, &args, yes).map_err(py_err)?;
            let dir = out.unwrap_or_else(|| toylens::sweep::default_dir(&m));
            toylens::sweep::create(&dir, &m).map_err(py_err)?;
            dir
        }
    };
    let worker = toylens::sweep::local::Worker {
        program: worker,
        prefix: vec!["-m".into(), "toylens._worker".into()],
    };
    let report = guard(|| {
        py.detach(|| {
            toylens::sweep::local::run_local(&dir, &worker, jobs, |e| {
                use toylens::sweep::local::Event;
                if !progress {
                    return;
                }
                match e {
                    Event::Start(w, n) => write_stderr(&format!(
                        "{n} run(s) to do: {} at once, {} thread(s) each ({})",
                        w.jobs, w.threads, w.why
                    )),
                    Event::Finished(id, st) => write_stderr(&format!("run {id}: {}", st.label())),
                    _ => {}
                }
            })
        })
        .map_err(py_err)
    })?;
    Ok((dir, report.failed))
}

/// One run of a sweep, as `toylens sweep --task DIR N` (the worker's entry point). Returns
/// `trained`, `done` (finished before) or `elsewhere` (another process holds it).
#[pyfunction]
fn _sweep_task(py: Python<'_>, dir: PathBuf, id: usize) -> PyResult<&'static str> {
    use toylens::sweep::task::Outcome;
    let o = compute(py, || {
        toylens::sweep::task::run_task(&dir, id, Progress::Auto)
    })?;
    Ok(match o {
        Outcome::Trained(_) => "trained",
        Outcome::AlreadyDone => "done",
        Outcome::RunningElsewhere => "elsewhere",
    })
}

/// The sweep's table: axes, metric names, and a row per run (id, state, axis values, metrics).
#[pyfunction]
fn _sweep_table<'py>(py: Python<'py>, dir: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    let t = compute(py, || {
        let m = toylens::sweep::load(&dir)?;
        toylens::sweep::summary::table(&dir, &m)
    })?;
    let rows: Vec<Value> = t
        .rows
        .iter()
        .map(|r| json!({"id": r.id, "state": r.state, "values": r.values, "metrics": r.metrics}))
        .collect();
    to_py(
        py,
        &json!({"axes": t.axes, "metrics": t.metrics, "rows": rows}),
    )
}

fn path_of(target: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    if let Ok(m) = target.cast::<PyModel>() {
        return Ok(m.get().path.clone());
    }
    if let Ok(d) = target.getattr("dir") {
        return d.extract();
    }
    target.extract()
}

/// `toylens analyze` without files: a run directory or one checkpoint.
#[pyfunction]
#[pyo3(signature = (target, keys))]
fn _analyze<'py>(
    py: Python<'py>,
    target: &Bound<'py, PyAny>,
    keys: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let path = path_of(target)?;
    let rule: commands::KeyRule = toylens::error::choice("keys", keys).map_err(py_err)?;
    let v = compute(py, || {
        Ok(match commands::analyze_data(&path, rule)? {
            AnalyzeReport::Run { rows, phases, .. } => {
                json!({"kind": "modular_run", "rows": rows, "phases": phases})
            }
            AnalyzeReport::Modular {
                op,
                analysis,
                neurons,
                on_train_set,
                ..
            } => json!({"kind": "modular", "op": op, "analysis": analysis,
                "neurons": neurons, "on_train_set": on_train_set}),
            AnalyzeReport::DigitsRun { rows, last, .. } => {
                let rows: Vec<Value> = rows
                    .iter()
                    .map(|(s, d)| json!({"step": s, "digits": d}))
                    .collect();
                json!({"kind": "digits_run", "rows": rows, "last": last})
            }
            AnalyzeReport::Digits { report, .. } => json!({"kind": "digits", "report": report}),
            AnalyzeReport::Generic { report, .. } => json!({"kind": "generic", "report": report}),
            AnalyzeReport::Induction { phase, heads, .. } => {
                json!({"kind": "induction_run", "phase_change": phase, "heads": heads})
            }
            AnalyzeReport::Superposition {
                instances,
                n_features,
                n_hidden,
                ..
            } => json!({"kind": "superposition", "instances": instances,
                "n_features": n_features, "n_hidden": n_hidden}),
        })
    })?;
    to_py(py, &v)
}

/// `toylens ablate` without files.
#[pyfunction]
fn _ablate<'py>(py: Python<'py>, target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let path = path_of(target)?;
    let r = compute(py, || commands::ablate(&path, None))?;
    to_py(py, &r)
}

/// `toylens eval`: loss and accuracy on every set the checkpoint's task has.
#[pyfunction]
fn _eval<'py>(py: Python<'py>, target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let path = path_of(target)?;
    let r = compute(py, || commands::eval(&path))?;
    let sets: serde_json::Map<String, Value> = r
        .sets
        .iter()
        .map(|(n, l, a)| (n.to_string(), json!({"loss": l, "accuracy": a})))
        .collect();
    to_py(
        py,
        &json!({"what": r.what, "sets": sets, "recorded": r.recorded}),
    )
}

/// `toylens spikes` without files: the run's rule with the given parts changed.
#[pyfunction]
#[pyo3(signature = (run, column=None, ratio=None, window=None))]
fn _spikes<'py>(
    py: Python<'py>,
    run: PathBuf,
    column: Option<String>,
    ratio: Option<f64>,
    window: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let r = compute(py, || {
        let mut rule = toylens::io::run::run_config(&run)?.train.spikes;
        if let Some(c) = column {
            rule.column = c;
        }
        rule.ratio = ratio.unwrap_or(rule.ratio);
        rule.window = window.unwrap_or(rule.window);
        rule.check_named(str::to_string)?;
        toylens::analysis::spikes::forensics(&run, Some(&rule)).map(|(r, _)| r)
    })?;
    to_py(py, &r)
}

/// λ̂ by SGLD (`toylens llc`), of one checkpoint or of every checkpoint of a run.
#[pyfunction]
#[pyo3(signature = (target, lr, localization, nbeta, chains, draws, burnin, steps_between_draws, batch_size, seed, init_loss, restrict, per_head, mask, sampler, rmsprop_alpha, rmsprop_eps, diffusion, sample_on, observe, observe_examples, at_steps))]
#[allow(clippy::too_many_arguments)]
fn _llc<'py>(
    py: Python<'py>,
    target: &Bound<'py, PyAny>,
    lr: f64,
    localization: f64,
    nbeta: &Bound<'py, PyAny>,
    chains: usize,
    draws: usize,
    burnin: usize,
    steps_between_draws: usize,
    batch_size: Option<usize>,
    seed: u64,
    init_loss: &str,
    restrict: Vec<String>,
    per_head: bool,
    mask: Option<&Bound<'py, PyAny>>,
    sampler: &str,
    rmsprop_alpha: f64,
    rmsprop_eps: f64,
    diffusion: f64,
    sample_on: Option<String>,
    observe: Vec<String>,
    observe_examples: Option<usize>,
    at_steps: Vec<u64>,
) -> PyResult<Bound<'py, PyAny>> {
    use toylens::analysis::llc::{InitLoss, LlcConfig, NBeta, Sampler};
    if per_head && !restrict.is_empty() {
        return Err(PyValueError::new_err(
            "per_head estimates each head in turn: give it or restrict, not both",
        ));
    }
    let mask = mask.map(path_of).transpose()?;
    let path = path_of(target)?;
    let nbeta = match nbeta.extract::<f64>() {
        Ok(x) => NBeta::Value(x),
        Err(_) => NBeta::parse(&nbeta.extract::<String>()?)
            .map_err(|e| PyValueError::new_err(format!("nbeta: {e}")))?,
    };
    let init_loss: InitLoss = toylens::error::choice("init_loss", init_loss).map_err(py_err)?;
    let sampler: Sampler = toylens::error::choice("sampler", sampler).map_err(py_err)?;
    let cfg = LlcConfig {
        at_steps,
        sampler,
        rmsprop_alpha,
        rmsprop_eps,
        diffusion,
        sample_on,
        observe,
        observe_examples,
        lr,
        localization,
        nbeta,
        chains,
        draws,
        burnin,
        steps_between_draws,
        batch_size,
        seed,
        init_loss,
        restrict,
        mask,
    };
    let v = compute(py, || {
        Ok(match commands::llc_data(&path, &cfg, per_head)? {
            LlcReport::Checkpoint {
                estimate, n_train, ..
            } => json!({"kind": "checkpoint", "estimate": estimate, "n_train": n_train}),
            LlcReport::Run {
                steps,
                estimates,
                n_train,
                ..
            } => json!({"kind": "run", "steps": steps, "estimates": estimates, "n_train": n_train}),
            LlcReport::Calibration { cells, n_train, .. } => {
                json!({"kind": "calibration", "cells": cells, "n_train": n_train})
            }
            LlcReport::Heads {
                steps,
                heads,
                estimates,
                n_train,
                ..
            } => {
                json!({"kind": "heads", "steps": steps, "heads": heads, "estimates": estimates, "n_train": n_train})
            }
        })
    })?;
    to_py(py, &v)
}

/// The named sets `llc(sample_on=, observe=)` can name at a checkpoint or run: (name, what it holds).
#[pyfunction]
fn _llc_sets(py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    let path = path_of(target)?;
    compute(py, || commands::llc_set_names(&path))
}

/// One named set of a checkpoint's task as arrays: tokens, loss positions, targets and the
/// positions that count (token tasks), x, loss positions and y (vector sequences), or x and y
/// (dense ones).
#[pyfunction]
fn _named_set<'py>(
    py: Python<'py>,
    target: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<Bound<'py, PyDict>> {
    use toylens::batch::Batch;
    let path = path_of(target)?;
    let set = compute(py, || commands::named_set(&path, name))?;
    let d = PyDict::new(py);
    d.set_item("name", &set.name)?;
    d.set_item("about", &set.about)?;
    match set.batch {
        Batch::Tokens(b) => {
            d.set_item("tokens", b.tokens.mapv(i64::from).into_pyarray(py))?;
            d.set_item("loss_pos", b.loss_pos)?;
            d.set_item("targets", b.targets.mapv(i64::from).into_pyarray(py))?;
            match set.positions {
                Some(p) => d.set_item("positions", p.into_pyarray(py))?,
                None => d.set_item("positions", py.None())?,
            }
        }
        Batch::Dense(b) => {
            d.set_item("x", b.x.into_pyarray(py))?;
            match b.y {
                Some(y) => d.set_item("y", y.into_pyarray(py))?,
                None => d.set_item("y", py.None())?,
            }
        }
        Batch::Sequences(b) => {
            d.set_item("x", b.x.into_pyarray(py))?;
            d.set_item("loss_pos", b.loss_pos)?;
            d.set_item("y", b.y.into_pyarray(py))?;
        }
    }
    Ok(d)
}

/// A pruning mask of a checkpoint's weights (`toylens prune` without the file): the live
/// weights as boolean arrays by tensor name, and the counts.
#[pyfunction]
#[pyo3(signature = (target, sparsity, scope, method, tensors, seed))]
fn _prune<'py>(
    py: Python<'py>,
    target: &Bound<'py, PyAny>,
    sparsity: f64,
    scope: &str,
    method: &str,
    tensors: Vec<String>,
    seed: u64,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyAny>)> {
    use toylens::models::mask::{self, PruneMethod, PruneScope};
    let path = path_of(target)?;
    let scope: PruneScope = toylens::error::choice("scope", scope).map_err(py_err)?;
    let method: PruneMethod = toylens::error::choice("method", method).map_err(py_err)?;
    let (arrays, counts) = compute(py, || {
        let l = toylens::io::load_any(&path)?;
        let m = mask::prune(l.model.as_ref(), sparsity, scope, method, &tensors, seed)?;
        Ok((m.to_arrays(l.model.as_ref()), m.counts(&l.model.tensors())))
    })?;
    let d = PyDict::new(py);
    for (name, shape, live) in arrays {
        let a = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&shape),
            live.iter().map(|&x| x != 0.0).collect(),
        )
        .expect("mask shape");
        d.set_item(name, a.into_pyarray(py))?;
    }
    let counts: Vec<Value> = counts
        .iter()
        .map(|c| json!({"tensor": c.tensor, "live": c.live, "total": c.total}))
        .collect();
    Ok((d, to_py(py, &counts)?))
}

/// A lottery ticket (`toylens ticket`): trained into `out`; returns its summary.
#[pyfunction]
#[pyo3(signature = (run_dir, out, sparsity, rewind, source, rounds, scope, method, seed, overrides, control, progress))]
#[allow(clippy::too_many_arguments)]
fn _ticket<'py>(
    py: Python<'py>,
    run_dir: PathBuf,
    out: PathBuf,
    sparsity: f64,
    rewind: u64,
    source: Option<u64>,
    rounds: usize,
    scope: String,
    method: String,
    seed: u64,
    overrides: Vec<String>,
    control: Option<String>,
    progress: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let spec = commands::TicketSpec {
        run: run_dir,
        from: source,
        sparsity,
        rewind,
        rounds,
        scope: toylens::error::choice("scope", &scope).map_err(py_err)?,
        method: toylens::error::choice("method", &method).map_err(py_err)?,
        seed,
        overrides,
        control,
    };
    let shown = if progress {
        Progress::Auto
    } else {
        Progress::Quiet
    };
    let s = compute(py, || commands::ticket(&spec, &out, shown))?;
    to_py(py, &s)
}

/// Whether `dir` is a sweep directory.
#[pyfunction]
fn _is_sweep(dir: PathBuf) -> bool {
    toylens::sweep::is_sweep(Path::new(&dir))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_train, m)?)?;
    m.add_function(wrap_pyfunction!(_run_info, m)?)?;
    m.add_function(wrap_pyfunction!(presets, m)?)?;
    m.add_function(wrap_pyfunction!(_config, m)?)?;
    m.add_function(wrap_pyfunction!(_sweep, m)?)?;
    m.add_function(wrap_pyfunction!(_sweep_task, m)?)?;
    m.add_function(wrap_pyfunction!(_sweep_table, m)?)?;
    m.add_function(wrap_pyfunction!(_analyze, m)?)?;
    m.add_function(wrap_pyfunction!(_ablate, m)?)?;
    m.add_function(wrap_pyfunction!(_eval, m)?)?;
    m.add_function(wrap_pyfunction!(_llc, m)?)?;
    m.add_function(wrap_pyfunction!(_llc_sets, m)?)?;
    m.add_function(wrap_pyfunction!(_named_set, m)?)?;
    m.add_function(wrap_pyfunction!(_spikes, m)?)?;
    m.add_function(wrap_pyfunction!(_prune, m)?)?;
    m.add_function(wrap_pyfunction!(_ticket, m)?)?;
    m.add_function(wrap_pyfunction!(_is_sweep, m)?)?;
    Ok(())
}
