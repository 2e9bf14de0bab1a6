//! Training runs: the loop, evaluation, metrics (CSV, JSONL, TensorBoard), checkpoints with optimizer
//! state, and exact resume. Pictures of a run are the report layer's (`report::pictures`).
//!
//! A run is deterministic in its config: the same config gives the same weights bit for bit, for any
//! thread count, and a run killed at any moment and resumed ends exactly where an uninterrupted one
//! does, with the same metric files (wall times aside).

pub mod job;
pub mod monitors;
pub mod schedule;
pub mod tensorboard;

use crate::config::{self, Experiment, ExperimentConfig};
use crate::engine::adamw::AdamW;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, write_atomic};
use crate::io::run::{self, checkpoint_path, optim_path};
pub use crate::io::run::{MetricRow, Summary, DIGIT_TRANSITION_LOSS};
use crate::io::trace;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to treat the run directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Fail if the directory holds anything (but a ticket's `mask.safetensors`, `rounds/`, a norm
    /// control's `init.safetensors` and a run's own `data/`).
    New,
    /// Delete what the directory holds first.
    Force,
    /// Continue from the newest checkpoint in it.
    Resume,
}

/// How to show progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A live bar on a terminal, plain log lines otherwise.
    Auto,
    Quiet,
}

/// What a caller can do to a run while it trains (the Python bindings: Ctrl-C and notebook
/// progress lines).
#[derive(Clone, Copy, Default)]
pub struct Control<'a> {
    /// Set (by a signal handler, say) to stop: the run saves a checkpoint of the step it finished
    /// and returns [`Error::Interrupted`]; resuming continues to the same bits.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
    /// Receives the progress lines (instead of the log) when progress is `Auto`.
    pub log: Option<&'a (dyn Fn(&str) + Sync)>,
}

/// The config to continue the run in `dir` with: its own, with `overrides` of `train.*` only (a
/// longer budget, say).
pub fn resume_config(dir: &Path, overrides: &[String]) -> Result<ExperimentConfig> {
    if let Some(o) = overrides.iter().find(|o| !o.starts_with("train.")) {
        return Err(Error::Input(format!(
            "--resume may change train.* only (got `{o}`)"
        )));
    }
    if let Some(o) = overrides.iter().find(|o| o.starts_with("train.monitors")) {
        return Err(Error::config(
            "train.monitors",
            format!("cannot change when a run resumes: its metric files' columns are fixed (got `{o}`); analyse its checkpoints instead"),
        ));
    }
    let saved = run::run_config(dir)?;
    let cfg = config::apply_overrides(&saved, overrides)?;
    if cfg.train.trace_every != saved.train.trace_every {
        return Err(Error::config(
            "train.trace_every",
            format!(
                "cannot change when a run resumes: its trace holds a record every {} steps (got {})",
                saved.train.trace_every, cfg.train.trace_every
            ),
        ));
    }
    cfg.validate()?;
    Ok(cfg)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The optimizer file beside each checkpoint: AdamW's moments and step, and the run's clock.
fn encode_optim(opt: &AdamW, step: u64, wall: f64, start_unix: f64) -> Vec<u8> {
    let n = opt.exp_avg.len();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensors = vec![
        checkpoint::RawTensor {
            name: "exp_avg".into(),
            dtype: "F32",
            shape: vec![n],
            bytes: f32s(&opt.exp_avg),
        },
        checkpoint::RawTensor {
            name: "exp_avg_sq".into(),
            dtype: "F32",
            shape: vec![n],
            bytes: f32s(&opt.exp_avg_sq),
        },
    ];
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("step".to_string(), step.to_string());
    meta.insert("adam_step".to_string(), opt.step.to_string());
    meta.insert("wall_seconds".to_string(), format!("{wall:.17e}"));
    meta.insert("start_unix".to_string(), format!("{start_unix:.17e}"));
    checkpoint::serialize(tensors, &meta)
}

/// Optimizer state from an optimizer file: (optimizer, wall seconds, the run's start in Unix time).
fn load_optim(path: &Path, exp: &Experiment, n: usize) -> Result<(AdamW, f64, Option<f64>)> {
    let (arrays, meta) = checkpoint::read_arrays(path)?;
    let get = |k: &str| -> Result<Vec<f32>> {
        let a = arrays
            .get(k)
            .ok_or_else(|| Error::format(path, format!("missing tensor `{k}`")))?;
        if a.len() != n {
            return Err(Error::format(
                path,
                format!("tensor `{k}` has {} entries, the model {n}", a.len()),
            ));
        }
        Ok(a.iter().copied().collect())
    };
    let num = |k: &str| -> Result<f64> {
        meta.get(k)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::format(path, format!("missing metadata `{k}`")))
    };
    let mut opt = AdamW::new(exp.optim, n);
    opt.exp_avg = get("exp_avg")?;
    opt.exp_avg_sq = get("exp_avg_sq")?;
    opt.step = num("adam_step")? as u64;
    Ok((opt, num("wall_seconds")?, num("start_unix").ok()))
}
/// Open metric sinks of a run.
struct Sinks {
    csv: std::fs::File,
    jsonl: std::fs::File,
    tb: tensorboard::EventWriter,
    dir: PathBuf,
    /// The run's start, Unix seconds: TensorBoard's wall times are absolute.
    start_unix: f64,
}

impl Sinks {
    /// The metric files holding exactly `rows` (written atomically; `jsonl`: their lines as they
    /// were, so a resume keeps the rows before its checkpoint byte for byte), then open to append.
    fn create(
        dir: &Path,
        header: &str,
        rows: &[MetricRow],
        jsonl: &[String],
        start_unix: f64,
    ) -> Result<Self> {
        let mut csv = format!("{header}\n");
        for r in rows {
            csv += &format!("{}\n", r.csv());
        }
        let mut js = String::new();
        for l in jsonl {
            js += l;
            js.push('\n');
        }
        write_atomic(&dir.join(run::METRICS_CSV), csv.as_bytes())?;
        write_atomic(&dir.join(run::METRICS_JSONL), js.as_bytes())?;
        for e in std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
            {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            }
        }
        let open = |name: &str| {
            let p = dir.join(name);
            std::fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .map_err(|e| Error::io(&p, e))
        };
        let mut s = Sinks {
            csv: open(run::METRICS_CSV)?,
            jsonl: open(run::METRICS_JSONL)?,
            tb: tensorboard::EventWriter::create(dir, unix_now())?,
            dir: dir.to_path_buf(),
            start_unix,
        };
        for r in rows {
            s.tb_row(r)?;
        }
        s.tb.flush()?;
        Ok(s)
    }

    /// TensorBoard tags: `loss/train`, `accuracy/test`, `loss_per_digit/test_d3`, ..., `lr`.
    fn tb_row(&mut self, r: &MetricRow) -> Result<()> {
        let tags: Vec<(String, f32)> = r
            .values
            .iter()
            .filter(|(k, _)| k != "wall_time")
            .map(|(k, v)| (tb_tag(k), *v as f32))
            .collect();
        let refs: Vec<(&str, f32)> = tags.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let wall = self.start_unix + r.get("wall_time").unwrap_or(0.0);
        self.tb.scalars(wall, r.step, &refs)
    }

    fn write(&mut self, r: &MetricRow) -> Result<()> {
        let p = |n: &str| self.dir.join(n);
        writeln!(self.csv, "{}", r.csv()).map_err(|e| Error::io(p(run::METRICS_CSV), e))?;
        writeln!(self.jsonl, "{}", r.json()).map_err(|e| Error::io(p(run::METRICS_JSONL), e))?;
        self.tb_row(r)?;
        self.tb.flush()
    }
}

/// The spike rule's column must be one the run will write: the task's, a monitor's, `lr`,
/// `sum_sq_weights`, or `trace.loss` (with the trace on).
fn check_spike_column(exp: &Experiment, monitors: &[Box<dyn monitors::Monitor>]) -> Result<()> {
    let t = &exp.config.train;
    let col = t.spikes.column.as_str();
    if col == "trace.loss" {
        if t.trace_every == 0 {
            return Err(Error::config(
                "train.spikes.column",
                "trace.loss needs the trace (train.trace_every is 0)",
            ));
        }
        return Ok(());
    }
    if ["train_loss", "lr", "sum_sq_weights"].contains(&col) {
        return Ok(());
    }
    let mut known = exp.data()?.columns();
    known.extend(monitors.iter().flat_map(|m| m.columns()));
    if known.iter().any(|c| c == col) {
        return Ok(());
    }
    let near = crate::error::closest(col, known.iter().map(String::as_str), 1);
    Err(Error::config(
        "train.spikes.column",
        format!(
            "`{col}` is not a column of this run{}; it has {}, lr, sum_sq_weights and trace.loss",
            near.first()
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default(),
            known.join(", ")
        ),
    ))
}

/// Prepare the run directory according to `mode`; returns the step to resume from, if any.
fn prepare_dir(dir: &Path, mode: RunMode) -> Result<()> {
    // A ticket's run directory holds its mask and its pruning rounds (a norm control its rescaled
    // initialisation) before it starts, a sweep's run its executor's lock and logs, a run on arrays
    // from Python its data.
    let non_empty = dir.is_dir()
        && std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .any(|e| !run::placed_before_training(&e.file_name().to_string_lossy()))
            })
            .unwrap_or(false);
    match mode {
        RunMode::Resume => {
            if !dir.is_dir() {
                return Err(Error::Input(format!("{}: cannot resume: no such run directory", dir.display())));
            }
            std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        }
        RunMode::New if non_empty => {
            return Err(Error::Input(format!(
                "{}: the run directory exists and is not empty; use --resume to continue it or --force to overwrite it",
                dir.display()
            )))
        }
        RunMode::Force if dir.exists() => std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?,
        _ => {}
    }
    std::fs::create_dir_all(dir.join("checkpoints"))
        .map_err(|e| Error::io(dir.join("checkpoints"), e))?;
    // Leftovers of writes interrupted by a kill.
    for sub in [dir.to_path_buf(), dir.join("checkpoints")] {
        for e in std::fs::read_dir(&sub).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// TensorBoard tag of a metric column: `train_loss` → `loss/train`, `test_acc_d3` →
/// `accuracy_per_digit/test_d3`, `test_loss_i2` → `loss_per_instance/test_i2`.
fn tb_tag(col: &str) -> String {
    let parts: Vec<&str> = col.splitn(3, '_').collect();
    match parts.as_slice() {
        [split @ ("train" | "test"), "exact"] => format!("exact_match/{split}"),
        [split @ ("train" | "test"), what @ ("loss" | "acc")] => {
            format!(
                "{}/{split}",
                if *what == "acc" { "accuracy" } else { "loss" }
            )
        }
        [split @ ("train" | "test"), what @ ("loss" | "acc"), unit] => {
            let what = if *what == "acc" { "accuracy" } else { "loss" };
            let per = if unit.starts_with('d') {
                "digit"
            } else {
                "instance"
            };
            format!("{what}_per_{per}/{split}_{unit}")
        }
        _ => col.to_string(),
    }
}

/// Train `cfg` into `dir`; returns the summary (also in `summary.json`). The run's pictures are
/// drawn by `report::pictures::run`.
/// The one policy for a run that may have started before (a sweep's run, a ticket): continue it
/// from its newest checkpoint that loads; with none (killed before the first was complete), start
/// it again, keeping what was placed in it before training ([`run::placed_before_training`]).
pub fn train_or_continue(
    cfg: &ExperimentConfig,
    dir: &Path,
    progress: Progress,
) -> Result<Summary> {
    if !run::checkpoint_steps(dir).is_empty() {
        match train(cfg, dir, RunMode::Resume, progress) {
            Ok(s) => return Ok(s),
            Err(e @ Error::Interrupted { .. }) => return Err(e),
            Err(e) => tracing::warn!("{}: cannot resume ({e}); starting again", dir.display()),
        }
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if run::placed_before_training(&e.file_name().to_string_lossy()) {
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|e| Error::io(&p, e))?;
    }
    train(cfg, dir, RunMode::New, progress)
}

pub fn train(
    cfg: &ExperimentConfig,
    dir: &Path,
    mode: RunMode,
    progress: Progress,
) -> Result<Summary> {
    train_with(cfg, dir, mode, progress, Control::default())
}

/// [`train`], with a way to stop it and to receive its progress.
pub fn train_with(
    cfg: &ExperimentConfig,
    dir: &Path,
    mode: RunMode,
    progress: Progress,
    control: Control,
) -> Result<Summary> {
    let exp = cfg.resolve()?;
    exp.check_memory()?;
    // The thread pool with subnormals flushed (a no-op when the caller set it up already): late
    // training is otherwise 2.5x slower.
    crate::engine::threads::init(0);
    crate::engine::threads::flush_subnormals();
    // The loop runs on a pool thread: each parallel loop inside a step then starts where the pool
    // is, not by handing work over from the main thread (a fifth of a small model's step).
    rayon::scope(|_| train_on_pool(&exp, dir, mode, progress, control))
}

/// Where a resumed run starts: the newest checkpoint that loads, its optimizer state, and the
/// metric rows up to it (with their `metrics.jsonl` lines as they were). Reads only: a corrupt or
/// unreadable metrics file is an error and nothing is written.
struct ResumePoint {
    opt: AdamW,
    step: u64,
    wall: f64,
    start_unix: f64,
    rows: Vec<MetricRow>,
    lines: Vec<String>,
}

fn resume_point(exp: &Experiment, job: &mut job::Job, dir: &Path) -> Result<ResumePoint> {
    let n = job.model.n_params();
    let metrics = run::read_metric_lines(dir)?;
    for s in run::checkpoint_steps(dir).into_iter().rev() {
        match job
            .load(&checkpoint_path(dir, s))
            .and_then(|_| load_optim(&optim_path(dir, s), exp, n))
        {
            Ok((opt, wall, start)) => {
                let (lines, rows) = metrics.into_iter().filter(|(_, r)| r.step <= s).unzip();
                return Ok(ResumePoint {
                    opt,
                    step: s,
                    wall,
                    start_unix: start.unwrap_or_else(|| unix_now() - wall),
                    rows,
                    lines,
                });
            }
            Err(e) => tracing::warn!("skipping checkpoint of step {s}: {e}"),
        }
    }
    Err(Error::Input(format!(
        "{}: cannot resume: no checkpoint in {} loads with this config",
        dir.display(),
        dir.join("checkpoints").display()
    )))
}

fn train_on_pool(
    exp: &Experiment,
    dir: &Path,
    mode: RunMode,
    progress: Progress,
    control: Control,
) -> Result<Summary> {
    // Everything that can be refused is, before the directory is touched.
    let mut monitors = monitors::build(exp)?;
    check_spike_column(exp, &monitors)?;
    prepare_dir(dir, mode)?;
    let sched = &schedule::Schedule::of(&exp.config);
    let mut job = job::Job::new(exp)?;
    let n_params = job.model.n_params();
    let mut meta = HashMap::new();
    meta.insert(
        checkpoint::META_EXPERIMENT.to_string(),
        serde_json::to_string(&exp.config).expect("config json"),
    );
    meta.extend(job.mask_metadata(sched.mask.as_deref()));
    meta.extend(job.data_metadata());

    // Start fresh or from the newest checkpoint that loads.
    let point = match mode {
        RunMode::Resume => resume_point(exp, &mut job, dir)?,
        _ => ResumePoint {
            opt: AdamW::new(exp.optim, n_params),
            step: 0,
            wall: 0.0,
            start_unix: unix_now(),
            rows: Vec::new(),
            lines: Vec::new(),
        },
    };
    let ResumePoint {
        mut opt,
        step: start,
        wall: wall0,
        start_unix,
        mut rows,
        lines,
    } = point;
    // Written only once the resume point is known to be good: a refused resume changes nothing.
    if job.mask.is_some() {
        let counts = job.live_counts();
        for c in &counts {
            tracing::info!("{}: {} of {} weights live", c.tensor, c.live, c.total);
        }
        write_atomic(
            &dir.join("mask.json"),
            serde_json::to_string_pretty(&counts)
                .expect("counts json")
                .as_bytes(),
        )?;
    }
    write_atomic(
        &dir.join(run::CONFIG),
        config::to_yaml(&exp.config).as_bytes(),
    )?;
    let columns: Vec<String> = job
        .columns()
        .into_iter()
        .chain(monitors.iter().flat_map(|m| m.columns()))
        .collect();
    let header = std::iter::once("step".to_string())
        .chain(columns.iter().cloned())
        .chain(["lr", "sum_sq_weights", "wall_time"].map(String::from))
        .collect::<Vec<_>>()
        .join(",");
    let mut sinks = Sinks::create(dir, &header, &rows, &lines, start_unix)?;
    let tensors = job.model.tensors();
    let tensor_ranges: Vec<_> = tensors.iter().map(|t| t.range.clone()).collect();
    let trace_every = exp.config.train.trace_every;
    let mut trace = (trace_every > 0)
        .then(|| {
            let names = tensors.iter().map(|t| t.name.clone()).collect();
            trace::TraceWriter::create(dir, trace::TraceInfo::new(names, trace_every), start)
        })
        .transpose()?;

    let t0 = Instant::now();
    let wall = |t0: &Instant| wall0 + t0.elapsed().as_secs_f64();
    let mut grads = vec![0.0f32; n_params];
    let trainable = job.model.trainable_ranges();
    let total = sched.steps;
    let mut last_saved = start;
    let mut monitor_seconds = vec![0.0f64; monitors.len()];
    let mut row_of = |job: &mut job::Job, step: u64, lr: f64, wall: f64| -> Result<MetricRow> {
        let mut measured = job.metrics()?;
        for (m, seconds) in monitors.iter_mut().zip(&mut monitor_seconds) {
            let t = Instant::now();
            measured.extend(m.measure(job.model.as_ref())?);
            *seconds += t.elapsed().as_secs_f64();
        }
        let mut values: Vec<(String, f64)> = columns.iter().cloned().zip(measured).collect();
        values.extend([
            ("lr".to_string(), lr),
            ("sum_sq_weights".to_string(), job.model.sum_sq_weights()),
            ("wall_time".to_string(), wall),
        ]);
        Ok(MetricRow { step, values })
    };

    // Checkpoints are written and synced on a thread of their own while training goes on.
    let mut writes = checkpoint::BackgroundWrites::new()?;
    let save = |writes: &mut checkpoint::BackgroundWrites,
                job: &job::Job,
                opt: &AdamW,
                step: u64,
                wall: f64|
     -> Result<()> {
        writes.write(checkpoint_path(dir, step), job.encode(&meta))?;
        writes.write(
            optim_path(dir, step),
            encode_optim(opt, step, wall, start_unix),
        )
    };
    if start == 0 {
        let r = row_of(&mut job, 0, sched.lr_at(1), 0.0)?;
        sinks.write(&r)?;
        rows.push(r);
        save(&mut writes, &job, &opt, 0, 0.0)?;
    }
    let bar = (progress == Progress::Auto
        && control.log.is_none()
        && std::io::stderr().is_terminal())
    .then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .expect("progress template"),
        );
        b.set_position(start);
        b
    });
    let log_every = (total / 20).max(sched.eval_every);
    let mut stopped_early = false;
    let describe = |r: &MetricRow| {
        let mut m = format!(
            "train loss {:.3e}  test loss {:.3e}",
            r.get("train_loss").unwrap_or(f64::NAN),
            r.get("test_loss").unwrap_or(f64::NAN)
        );
        if let Some(a) = r.get("test_acc") {
            m += &format!("  test acc {a:.4}");
        }
        m
    };

    let mut traced = Vec::with_capacity(tensor_ranges.len());
    for step in start + 1..=total {
        let lr = sched.lr_at(step);
        let loss = job.loss_and_grad(step, &mut grads)?;
        if !loss.is_finite() {
            if let Some(t) = &mut trace {
                t.flush()?;
            }
            return Err(Error::Input(format!(
                "training diverged: the loss is {loss} at step {step}; the last good checkpoint is {} (try a smaller optim.lr)",
                checkpoint_path(dir, last_saved).display()
            )));
        }
        match &mut trace {
            Some(t) if step % trace_every == 0 => {
                opt.update_traced(
                    job.model.params_mut(),
                    &grads,
                    &trainable,
                    lr,
                    &tensor_ranges,
                    &mut traced,
                );
                t.push(&trace::TraceRecord {
                    step,
                    loss,
                    lr,
                    tensors: &traced,
                });
            }
            _ => opt.update(job.model.params_mut(), &grads, &trainable, lr),
        }

        let eval_now = step % sched.eval_every == 0 || step == total;
        if eval_now || sched.checkpoint_due(step) {
            if let Some(t) = &mut trace {
                t.flush()?;
            }
        }
        if eval_now {
            let r = row_of(&mut job, step, lr, wall(&t0))?;
            sinks.write(&r)?;
            let rate = (step - start) as f64 / t0.elapsed().as_secs_f64();
            if let Some(b) = &bar {
                b.set_message(format!("{}  {rate:.0} steps/s", describe(&r)));
            } else if progress == Progress::Auto && (step % log_every == 0 || step == total) {
                let line = format!("step {step}/{total}  {}  {rate:.0} steps/s", describe(&r));
                match control.log {
                    Some(log) => log(&line),
                    None => tracing::info!("{line}"),
                }
            }
            stopped_early = sched
                .early_stop_test_loss
                .is_some_and(|th| r.get("test_loss").is_some_and(|l| l < th));
            rows.push(r);
        }
        if sched.checkpoint_due(step) || stopped_early {
            if let Some(name) = job.model.non_finite_tensor() {
                if let Some(t) = &mut trace {
                    t.flush()?;
                }
                // The message names the last checkpoint as good: make sure it is on disk.
                writes.finish()?;
                return Err(Error::Input(format!(
                    "training diverged: `{name}` holds NaN/inf after step {step}; the last good checkpoint is {}",
                    checkpoint_path(dir, last_saved).display()
                )));
            }
            save(&mut writes, &job, &opt, step, wall(&t0))?;
            last_saved = step;
        }
        if let Some(b) = &bar {
            b.set_position(step);
        }
        if stopped_early {
            break;
        }
        if control
            .stop
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            if let Some(t) = &mut trace {
                t.flush()?;
            }
            if last_saved != step {
                save(&mut writes, &job, &opt, step, wall(&t0))?;
            }
            writes.finish()?;
            return Err(Error::Interrupted {
                step,
                checkpoint: checkpoint_path(dir, step),
            });
        }
    }
    if let Some(b) = bar {
        b.finish();
    }

    if let Some(t) = &mut trace {
        t.flush()?;
    }
    let last = rows.last().cloned().expect("at least the step-0 row");
    writes.write(dir.join(run::FINAL), job.encode(&meta))?;
    writes.finish()?;
    let wall_seconds = wall(&t0);
    let digits = exp
        .task
        .downcast::<crate::tasks::digits::DigitsTask>()
        .is_some();
    let summary = Summary {
        final_train_loss: last.get("train_loss").unwrap_or(f64::NAN),
        final_test_loss: last.get("test_loss").unwrap_or(f64::NAN),
        final_train_acc: last.get("train_acc"),
        final_test_acc: last.get("test_acc"),
        final_test_exact: last.get("test_exact"),
        steps: last.step,
        wall_seconds,
        steps_per_second: last.step as f64 / wall_seconds.max(1e-9),
        grok_step: rows
            .iter()
            .find(|r| r.get("test_acc").is_some_and(|a| a >= 0.99))
            .map(|r| r.step),
        digit_transition_steps: digits.then(|| {
            run::digit_transitions(&rows, DIGIT_TRANSITION_LOSS)
                .into_iter()
                .map(|(_, s)| s)
                .collect()
        }),
        digit_transition_loss: digits.then_some(DIGIT_TRANSITION_LOSS),
        stopped_early,
        monitor_seconds: exp
            .config
            .train
            .monitors
            .iter()
            .cloned()
            .zip(monitor_seconds)
            .collect(),
    };
    write_atomic(
        &dir.join(run::SUMMARY),
        serde_json::to_string_pretty(&summary)
            .expect("summary json")
            .as_bytes(),
    )?;
    Ok(summary)
}
