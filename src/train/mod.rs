//! Training runs: the loop, evaluation, metrics (CSV, JSONL, TensorBoard), checkpoints with optimizer
//! state, exact resume, and the run's summary and loss plot.
//!
//! A run is deterministic in its config: the same config gives the same weights bit for bit, for any
//! thread count, and a run killed at any moment and resumed ends exactly where an uninterrupted one
//! does. Minibatch order is a pure function of (data seed, epoch), so no RNG state needs saving.

pub mod tensorboard;

use crate::config::{self, ExperimentConfig};
use crate::engine::adamw::AdamW;
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, write_atomic};
use crate::models::transformer::{Batch, LossStats, Transformer, Workspace};
use crate::report::plot::{self, Series};
use crate::tasks::modular::Pair;
use crate::tasks::TaskInfo;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to treat the run directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Fail if the directory holds anything.
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

/// One evaluation: losses and accuracies on the whole train and test sets after `step` updates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub step: u64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub lr: f64,
    pub sum_sq_weights: f64,
    pub wall_time: f64,
}

const CSV_HEADER: &str = "step,train_loss,train_acc,test_loss,test_acc,lr,sum_sq_weights,wall_time";

impl MetricRow {
    fn csv(&self) -> String {
        format!(
            "{},{:e},{},{:e},{},{:e},{:e},{:.3}",
            self.step,
            self.train_loss,
            self.train_acc,
            self.test_loss,
            self.test_acc,
            self.lr,
            self.sum_sq_weights,
            self.wall_time
        )
    }
}

/// What `summary.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub final_train_loss: f64,
    pub final_train_acc: f64,
    pub final_test_loss: f64,
    pub final_test_acc: f64,
    pub steps: u64,
    pub wall_seconds: f64,
    pub steps_per_second: f64,
    /// First evaluated step with test accuracy ≥ 0.99.
    pub grok_step: Option<u64>,
    pub stopped_early: bool,
}

/// Checkpoint file of step `s` (and its optimizer state beside it).
pub fn checkpoint_path(dir: &Path, step: u64) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("step_{step:06}.safetensors"))
}

fn optim_path(dir: &Path, step: u64) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("step_{step:06}.optim.safetensors"))
}

/// Whether a checkpoint is due after `step` updates: step 0, every `checkpoint_every`, log-spaced
/// ones before the first regular one, and the last step.
pub fn checkpoint_due(cfg: &ExperimentConfig, step: u64) -> bool {
    let t = &cfg.train;
    if step == 0 || step % t.checkpoint_every == 0 || step == t.steps {
        return true;
    }
    let n = t.log_checkpoints;
    (0..n).any(|i| {
        (t.checkpoint_every as f64)
            .powf(i as f64 / n as f64)
            .round() as u64
            == step
    })
}

/// The run's data: the full train and test batches, and the train pairs for minibatches.
struct Data {
    train_pairs: Vec<Pair>,
    train: Batch,
    test: Batch,
}

/// Minibatch of update `step` (1-based): epochs are shuffles of the train set seeded by (seed, epoch).
fn minibatch(cfg: &ExperimentConfig, data: &Data, step: u64, bs: usize) -> Batch {
    let n = data.train_pairs.len();
    let per_epoch = n.div_ceil(bs) as u64;
    let (epoch, k) = ((step - 1) / per_epoch, ((step - 1) % per_epoch) as usize);
    let mut idx: Vec<usize> = (0..n).collect();
    Rng::new(cfg.task().seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut idx);
    let pairs: Vec<Pair> = idx[k * bs..((k + 1) * bs).min(n)]
        .iter()
        .map(|&i| data.train_pairs[i])
        .collect();
    cfg.task().batch(&pairs)
}

fn sum_sq(model: &Transformer) -> f64 {
    model.params.iter().map(|&x| (x as f64) * (x as f64)).sum()
}

/// Optimizer state and progress, saved beside each checkpoint.
fn save_optim(path: &Path, opt: &AdamW, step: u64, wall: f64) -> Result<()> {
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
    write_atomic(path, &checkpoint::serialize(tensors, &meta))
}

/// (optimizer, wall seconds) from an optimizer file.
fn load_optim(path: &Path, cfg: &ExperimentConfig, n: usize) -> Result<(AdamW, f64)> {
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
    let mut opt = AdamW::new(cfg.adamw(), n);
    opt.exp_avg = get("exp_avg")?;
    opt.exp_avg_sq = get("exp_avg_sq")?;
    opt.step = num("adam_step")? as u64;
    Ok((opt, num("wall_seconds")?))
}

/// Steps that have both a checkpoint and its optimizer state, newest first.
fn checkpoint_steps(dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let s = name
                .strip_prefix("step_")?
                .strip_suffix(".optim.safetensors")?
                .parse()
                .ok()?;
            checkpoint_path(dir, s).exists().then_some(s)
        })
        .collect();
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps
}

/// Checkpoint steps of a run directory (with optimizer state), oldest first.
pub fn checkpoint_steps_ascending(dir: &Path) -> Vec<u64> {
    let mut s = checkpoint_steps(dir);
    s.reverse();
    s
}

/// Metric rows from `metrics.jsonl` up to `max_step`; a line cut short by a kill is ignored.
fn read_rows(dir: &Path, max_step: u64) -> Vec<MetricRow> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<MetricRow>(l).ok())
        .filter(|r| r.step <= max_step)
        .collect()
}

/// Open metric sinks of a run.
struct Sinks {
    csv: std::fs::File,
    jsonl: std::fs::File,
    tb: tensorboard::EventWriter,
    dir: PathBuf,
}

impl Sinks {
    /// Fresh files holding exactly `rows` (used at start and on resume, so replayed steps are not
    /// duplicated).
    fn create(dir: &Path, rows: &[MetricRow]) -> Result<Self> {
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
        let mut csv = format!("{CSV_HEADER}\n");
        let mut jsonl = String::new();
        for r in rows {
            csv += &format!("{}\n", r.csv());
            jsonl += &format!("{}\n", serde_json::to_string(r).expect("row json"));
        }
        write_atomic(&dir.join("metrics.csv"), csv.as_bytes())?;
        write_atomic(&dir.join("metrics.jsonl"), jsonl.as_bytes())?;
        let open = |name: &str| {
            let p = dir.join(name);
            std::fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .map_err(|e| Error::io(&p, e))
        };
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut s = Sinks {
            csv: open("metrics.csv")?,
            jsonl: open("metrics.jsonl")?,
            tb: tensorboard::EventWriter::create(dir, start)?,
            dir: dir.to_path_buf(),
        };
        for r in rows {
            s.tb_row(r)?;
        }
        s.tb.flush()?;
        Ok(s)
    }

    fn tb_row(&mut self, r: &MetricRow) -> Result<()> {
        self.tb.scalars(
            r.wall_time,
            r.step,
            &[
                ("loss/train", r.train_loss as f32),
                ("loss/test", r.test_loss as f32),
                ("accuracy/train", r.train_acc as f32),
                ("accuracy/test", r.test_acc as f32),
                ("lr", r.lr as f32),
                ("sum_sq_weights", r.sum_sq_weights as f32),
            ],
        )
    }

    fn write(&mut self, r: &MetricRow) -> Result<()> {
        let p = |n: &str| self.dir.join(n);
        writeln!(self.csv, "{}", r.csv()).map_err(|e| Error::io(p("metrics.csv"), e))?;
        writeln!(
            self.jsonl,
            "{}",
            serde_json::to_string(r).expect("row json")
        )
        .map_err(|e| Error::io(p("metrics.jsonl"), e))?;
        self.tb_row(r)?;
        self.tb.flush()
    }
}

/// Prepare the run directory according to `mode`; returns the step to resume from, if any.
fn prepare_dir(dir: &Path, mode: RunMode) -> Result<()> {
    let non_empty = dir.is_dir()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
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

/// The config a run directory was started with.
pub fn run_config(dir: &Path) -> Result<ExperimentConfig> {
    let p = dir.join("config.yaml");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let cfg = config::from_yaml(&text, &p.display().to_string())?;
    cfg.validate()?;
    Ok(cfg)
}

fn row_of(
    step: u64,
    lr: f64,
    model: &Transformer,
    tr: &LossStats,
    te: &LossStats,
    wall: f64,
) -> MetricRow {
    MetricRow {
        step,
        train_loss: tr.loss,
        train_acc: tr.accuracy,
        test_loss: te.loss,
        test_acc: te.accuracy,
        lr,
        sum_sq_weights: sum_sq(model),
        wall_time: wall,
    }
}

/// Train `cfg` into `dir`.
pub fn train(
    cfg: &ExperimentConfig,
    dir: &Path,
    mode: RunMode,
    progress: Progress,
) -> Result<Summary> {
    cfg.validate()?;
    // The thread pool with subnormals flushed (a no-op when the caller set it up already): late
    // training is otherwise 2.5x slower.
    crate::engine::threads::init(0);
    crate::engine::threads::flush_subnormals();
    prepare_dir(dir, mode)?;
    let task = cfg.task();
    let (train_pairs, test_pairs) = task.split_pairs();
    let data = Data {
        train: task.batch(&train_pairs),
        test: task.batch(&test_pairs),
        train_pairs,
    };
    let task_json = serde_json::to_value(TaskInfo::from_modular(&task)).expect("task json");
    let mut meta = HashMap::new();
    meta.insert(
        "toylens.experiment".to_string(),
        serde_json::to_string(cfg).expect("config json"),
    );

    // Start fresh or from the newest checkpoint that loads.
    let (mut model, mut opt, start, wall0, rows) = match mode {
        RunMode::Resume => {
            let mut found = None;
            for s in checkpoint_steps(dir) {
                let loaded = checkpoint::load(&checkpoint_path(dir, s)).and_then(|c| {
                    let (o, w) = load_optim(&optim_path(dir, s), cfg, c.model.layout.total)?;
                    Ok((c.model, o, w))
                });
                match loaded {
                    Ok((m, o, w)) if m.cfg == cfg.transformer() => {
                        found = Some((m, o, s, w));
                        break;
                    }
                    Ok(_) => {
                        return Err(Error::Input(format!(
                            "{}: its checkpoints do not match its config.yaml",
                            dir.display()
                        )))
                    }
                    Err(e) => tracing::warn!("skipping checkpoint of step {s}: {e}"),
                }
            }
            let (m, o, s, w) = found.ok_or_else(|| {
                Error::Input(format!(
                    "{}: cannot resume: no checkpoint in {}",
                    dir.display(),
                    dir.join("checkpoints").display()
                ))
            })?;
            let rows = read_rows(dir, s);
            (m, o, s, w, rows)
        }
        _ => {
            let m = Transformer::new(cfg.transformer())?;
            let o = AdamW::new(cfg.adamw(), m.layout.total);
            (m, o, 0, 0.0, Vec::new())
        }
    };
    write_atomic(&dir.join("config.yaml"), config::to_yaml(cfg).as_bytes())?;
    let mut sinks = Sinks::create(dir, &rows)?;
    let mut rows = rows;

    let t0 = Instant::now();
    let wall = |t0: &Instant| wall0 + t0.elapsed().as_secs_f64();
    let mut ws = Workspace::new();
    let mut ws_eval = Workspace::new();
    let mut grads = vec![0.0f32; model.layout.total];
    let trainable = model.layout.trainable_ranges();
    let total = cfg.train.steps;
    let mut last_saved = start;

    if start == 0 {
        let tr = model.evaluate(&mut ws_eval, &data.train)?;
        let te = model.evaluate(&mut ws_eval, &data.test)?;
        let r = row_of(0, cfg.lr_at(1), &model, &tr, &te, 0.0);
        sinks.write(&r)?;
        rows.push(r);
        checkpoint::save(&checkpoint_path(dir, 0), &model, Some(&task_json), &meta)?;
        save_optim(&optim_path(dir, 0), &opt, 0, 0.0)?;
    }

    let bar = (progress == Progress::Auto && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .expect("progress template"),
        );
        b.set_position(start);
        b
    });
    let log_every = (total / 20).max(cfg.train.eval_every);
    let mut stopped_early = false;

    for step in start + 1..=total {
        let lr = cfg.lr_at(step);
        let stats = match cfg.train.batch_size {
            None => model.loss_and_grad(&mut ws, &data.train, &mut grads)?,
            Some(bs) => {
                model.loss_and_grad(&mut ws, &minibatch(cfg, &data, step, bs), &mut grads)?
            }
        };
        if !stats.loss.is_finite() {
            return Err(Error::Input(format!(
                "training diverged: the loss is {} at step {step}; the last good checkpoint is {} (try a smaller optim.lr)",
                stats.loss,
                checkpoint_path(dir, last_saved).display()
            )));
        }
        opt.update(&mut model.params, &grads, &trainable, lr);

        let eval_now = step % cfg.train.eval_every == 0 || step == total;
        if eval_now {
            let tr = model.evaluate(&mut ws_eval, &data.train)?;
            let te = model.evaluate(&mut ws_eval, &data.test)?;
            let r = row_of(step, lr, &model, &tr, &te, wall(&t0));
            sinks.write(&r)?;
            if let Some(b) = &bar {
                let rate = (step - start) as f64 / t0.elapsed().as_secs_f64();
                b.set_message(format!(
                    "train {:.2e}  test {:.2e}  test acc {:.3}  {rate:.0} steps/s",
                    r.train_loss, r.test_loss, r.test_acc
                ));
            } else if progress == Progress::Auto && (step % log_every == 0 || step == total) {
                tracing::info!(
                    "step {step}/{total}  train loss {:.3e}  test loss {:.3e}  test acc {:.4}  {:.0} steps/s",
                    r.train_loss,
                    r.test_loss,
                    r.test_acc,
                    (step - start) as f64 / t0.elapsed().as_secs_f64()
                );
            }
            stopped_early = cfg
                .train
                .early_stop_test_loss
                .is_some_and(|th| r.test_loss < th);
            rows.push(r);
        }
        if checkpoint_due(cfg, step) || stopped_early {
            if let Some(s) = model
                .layout
                .specs
                .iter()
                .find(|s| model.params[s.range()].iter().any(|x| !x.is_finite()))
            {
                return Err(Error::Input(format!(
                    "training diverged: `{}` holds NaN/inf after step {step}; the last good checkpoint is {}",
                    s.name,
                    checkpoint_path(dir, last_saved).display()
                )));
            }
            checkpoint::save(&checkpoint_path(dir, step), &model, Some(&task_json), &meta)?;
            save_optim(&optim_path(dir, step), &opt, step, wall(&t0))?;
            last_saved = step;
        }
        if let Some(b) = &bar {
            b.set_position(step);
        }
        if stopped_early {
            break;
        }
    }
    if let Some(b) = bar {
        b.finish();
    }

    let last = rows.last().cloned().expect("at least the step-0 row");
    checkpoint::save(
        &dir.join("final.safetensors"),
        &model,
        Some(&task_json),
        &meta,
    )?;
    draw_losses(cfg, &rows, &dir.join("loss.png"))?;
    let wall_seconds = wall(&t0);
    let summary = Summary {
        final_train_loss: last.train_loss,
        final_train_acc: last.train_acc,
        final_test_loss: last.test_loss,
        final_test_acc: last.test_acc,
        steps: last.step,
        wall_seconds,
        steps_per_second: last.step as f64 / wall_seconds.max(1e-9),
        grok_step: rows.iter().find(|r| r.test_acc >= 0.99).map(|r| r.step),
        stopped_early,
    };
    write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .expect("summary json")
            .as_bytes(),
    )?;
    Ok(summary)
}

/// Log-y train and test loss of `rows` to `path` (PNG or SVG by extension).
fn draw_losses(cfg: &ExperimentConfig, rows: &[MetricRow], path: &Path) -> Result<()> {
    let train_pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.step as f64, r.train_loss)).collect();
    let test_pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.step as f64, r.test_loss)).collect();
    plot::log_y_lines(
        path,
        &format!(
            "(a {} b) mod {}, {:.0}% of pairs in train: loss",
            op_symbol(cfg),
            cfg.data.p,
            100.0 * cfg.data.frac_train
        ),
        "step",
        "loss",
        &[
            Series {
                name: "train",
                points: &train_pts,
                color: plot::BLUE_,
            },
            Series {
                name: "test",
                points: &test_pts,
                color: plot::ORANGE_,
            },
        ],
    )
}

/// Redraw a run's loss curves from its `metrics.jsonl` (into `loss.png`, or `loss.svg`).
pub fn plot_run(dir: &Path, svg: bool) -> Result<PathBuf> {
    let cfg = run_config(dir)?;
    let rows = read_rows(dir, u64::MAX);
    if rows.is_empty() {
        return Err(Error::format(dir.join("metrics.jsonl"), "no metric rows"));
    }
    let out = dir.join(if svg { "loss.svg" } else { "loss.png" });
    draw_losses(&cfg, &rows, &out)?;
    Ok(out)
}

fn op_symbol(cfg: &ExperimentConfig) -> &'static str {
    match cfg.data.op {
        crate::tasks::modular::Op::Add => "+",
        crate::tasks::modular::Op::Sub => "-",
        crate::tasks::modular::Op::Mul => "*",
    }
}
