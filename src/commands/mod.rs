//! What each command of the `toylens` binary does, as library calls that return data: the binary
//! parses arguments and prints these (ripgrep's split). Files are written here, never into a run's
//! training outputs: `analyze` on a run writes into `RUN/analysis/`.

pub mod circuits;
pub mod spikes;
pub mod train;

use crate::analysis::{
    self, ablation, digits, induction, neurons, superposition as sp, toy_mlp, Analysis, Phases,
};
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, write_atomic};
use crate::io::{load_any, run, Loaded};
use crate::models::superposition::Superposition;
use crate::models::toy_mlp::ToyMlp;
use crate::report::figures;
use crate::tasks::modular::{self, Op};
use crate::tasks::TaskInfo;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Loss and accuracy of a model on named sets.
pub struct EvalReport {
    /// The model and task, in words.
    pub what: String,
    /// (set, loss, accuracy): all pairs, then train and test when the split is known.
    pub sets: Vec<(&'static str, f64, f64)>,
    /// What the original run recorded (train, test), for an imported `.pth`.
    pub recorded: Option<(f64, f64)>,
}

/// `toylens eval`: a modular-arithmetic model (transformer or ToyMLP) on all p² pairs, and on train
/// and test when the split is known; a model of a run on any other task on its train and test sets.
pub fn eval(path: &Path) -> Result<EvalReport> {
    let l = load_any(path)?;
    if let Some(exp) = l
        .experiment()?
        .filter(|e| e.task.downcast::<modular::ModularTask>().is_none())
    {
        let data = exp.data()?;
        let mut scratch = crate::models::Scratch::new();
        let mut sets = Vec::new();
        for (name, set) in [("train", data.train_set()), ("test", data.test_set())] {
            if let Some(b) = set {
                let s = l.model.evaluate(&mut scratch, &b)?;
                sets.push((name, s.loss, s.accuracy));
            }
        }
        return Ok(EvalReport {
            what: format!("{}, {}", l.model.arch(), exp.task.describe()),
            sets,
            recorded: None,
        });
    }
    let m = l.modular()?;
    let ev = modular::evaluate(l.model.as_ref(), m.p, m.op, m.split.as_ref())
        .map_err(|e| Error::format(path, e.to_string()))?;
    let mut sets = vec![("all", ev.loss_all, ev.acc_all)];
    if let (Some(lt), Some(at), Some(le), Some(ae)) =
        (ev.loss_train, ev.acc_train, ev.loss_test, ev.acc_test)
    {
        sets.push(("train", lt, at));
        sets.push(("test", le, ae));
    }
    Ok(EvalReport {
        what: format!("{}, (a {} b) mod {}", l.model.arch(), m.op.symbol(), m.p),
        sets,
        recorded: l.recorded_train_loss.zip(l.recorded_test_loss),
    })
}

/// How `analyze` picks the key frequencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyRule {
    /// The paper's: from W_L's Fourier norms.
    WL,
    /// Frequencies whose neuron clusters hold ≥ 5% of the clustered neurons.
    Neurons,
}

/// What `toylens analyze` found.
pub enum AnalyzeReport {
    /// A run directory of a modular-arithmetic transformer: the measures at every checkpoint.
    Run {
        rows: Vec<analysis::ProgressRow>,
        phases: Option<Phases>,
        files: Vec<PathBuf>,
    },
    /// One modular-arithmetic transformer checkpoint.
    Modular {
        op: Op,
        analysis: Analysis,
        neurons: neurons::NeuronFrequencies,
        /// Whether the excluded loss is on the train set (the split is known) or on all pairs.
        on_train_set: bool,
        files: Vec<PathBuf>,
    },
    /// A digits run: per-digit statistics at every checkpoint, and the last checkpoint in full.
    DigitsRun {
        rows: Vec<(u64, Vec<digits::DigitStats>)>,
        last: digits::CheckpointReport,
        files: Vec<PathBuf>,
    },
    /// One digits checkpoint.
    Digits {
        report: digits::CheckpointReport,
        files: Vec<PathBuf>,
    },
    /// A model on a task without analyses of its own (your own data, say): loss per position on
    /// each set, tensor norms, attention (for a run directory: of its last checkpoint).
    Generic {
        report: analysis::generic::GenericReport,
        files: Vec<PathBuf>,
    },
    /// An induction run: the phase change of its loss on repeats and the heads that formed across
    /// it (from the metric rows), and its last checkpoint's generic analysis.
    Induction {
        phase: Option<induction::PhaseChange>,
        heads: Option<induction::InductionHeads>,
        last: Box<AnalyzeReport>,
        files: Vec<PathBuf>,
    },
    /// A superposition checkpoint: each instance's geometry.
    Superposition {
        instances: Vec<sp::InstanceGeometry>,
        n_features: usize,
        n_hidden: usize,
        files: Vec<PathBuf>,
    },
}

/// `toylens analyze TARGET`: a run directory (pictures and `progress.csv` into `out`, by default
/// `RUN/analysis/`) or one checkpoint (pictures into `out` when given).
pub fn analyze(target: &Path, out: Option<&Path>, rule: KeyRule) -> Result<AnalyzeReport> {
    analyze_into(target, Some(out), rule)
}

/// What `analyze` finds, with no file written (`files` empty): for the Python bindings.
pub fn analyze_data(target: &Path, rule: KeyRule) -> Result<AnalyzeReport> {
    analyze_into(target, None, rule)
}

/// `files`: None writes nothing; `Some(out)` writes as `analyze` does.
fn analyze_into(
    target: &Path,
    files: Option<Option<&Path>>,
    rule: KeyRule,
) -> Result<AnalyzeReport> {
    let out = files.flatten();
    let run_dir = |target: &Path| -> Result<Option<PathBuf>> {
        let Some(out) = files else { return Ok(None) };
        let dir = out.map_or_else(|| target.join(run::ANALYSIS), Path::to_path_buf);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Some(dir))
    };
    // A run directory's task decides: digits and modular arithmetic have measures over training.
    let run_exp = match target.is_dir() {
        true => Some(run::run_config(target)?.resolve()?),
        false => None,
    };
    let run_task = run_exp.as_ref().map(|e| e.task.clone());
    let own_analysis = |task: &dyn crate::tasks::Task| {
        task.downcast::<crate::tasks::modular::ModularTask>()
            .is_some()
    };
    if run_task
        .as_ref()
        .is_some_and(|t| t.downcast::<crate::tasks::digits::DigitsTask>().is_some())
    {
        let (task, rows) = digits::over_training(target)?;
        let last_step = rows
            .last()
            .expect("over_training: at least one checkpoint")
            .0;
        let last_model = checkpoint::load_transformer(&run::checkpoint_path(target, last_step))?;
        let last = digits::checkpoint_report(&last_model, &task)?;
        let Some(dir) = run_dir(target)? else {
            return Ok(AnalyzeReport::DigitsRun {
                rows,
                last,
                files: Vec::new(),
            });
        };
        let csv = dir.join("digits.csv");
        write_atomic(&csv, digits::over_training_csv(&rows).as_bytes())?;
        let json = dir.join("digits_last.json");
        write_atomic(
            &json,
            serde_json::to_string(&last)
                .expect("report json")
                .as_bytes(),
        )?;
        let mut files = vec![csv, json];
        files.extend(figures::digits_run(&rows, &dir)?);
        files.extend(figures::digits_checkpoint(&last, &dir)?);
        return Ok(AnalyzeReport::DigitsRun { rows, last, files });
    }
    if run_task
        .as_ref()
        .is_some_and(|t| crate::tasks::in_context(t.as_ref()))
    {
        let rows = run::read_metrics(target)?;
        let shape = run_exp
            .as_ref()
            .expect("a run directory")
            .model
            .downcast::<crate::models::transformer::TransformerConfig>()
            .map(|c| (c.n_layers, c.n_heads));
        let phase = induction::run_phase_change(&rows);
        let heads = phase
            .as_ref()
            .zip(shape)
            .and_then(|(ph, (l, h))| induction::induction_heads(&rows, ph, l, h));
        let dir = run_dir(target)?;
        let last = run::last_checkpoint(target)?;
        let last = Box::new(analyze_into(&last, files.map(|_| dir.as_deref()), rule)?);
        let Some(dir) = dir else {
            return Ok(AnalyzeReport::Induction {
                phase,
                heads,
                last,
                files: Vec::new(),
            });
        };
        let json = dir.join("induction.json");
        let body = serde_json::json!({"phase_change": phase, "heads": heads});
        write_atomic(&json, body.to_string().as_bytes())?;
        let mut out = vec![json];
        out.extend(figures::induction_run(
            &rows,
            phase.as_ref(),
            heads.as_ref(),
            &dir,
        )?);
        return Ok(AnalyzeReport::Induction {
            phase,
            heads,
            last,
            files: out,
        });
    }
    if let Some(task) = &run_task {
        if !own_analysis(task.as_ref()) {
            // No measures over training of its own: its last checkpoint's analysis, into
            // RUN/analysis/.
            let dir = run_dir(target)?;
            let last = run::last_checkpoint(target)?;
            return analyze_into(&last, files.map(|_| dir.as_deref()), rule);
        }
        let rows = analysis::progress(target)?;
        let phases = analysis::phases(&rows);
        let Some(dir) = run_dir(target)? else {
            return Ok(AnalyzeReport::Run {
                rows,
                phases,
                files: Vec::new(),
            });
        };
        let csv = dir.join("progress.csv");
        write_atomic(&csv, analysis::progress_csv(&rows).as_bytes())?;
        let mut files = vec![csv];
        files.extend(figures::progress(&rows, phases.as_ref(), &dir)?);
        return Ok(AnalyzeReport::Run {
            rows,
            phases,
            files,
        });
    }
    let l = load_any(target)?;
    if let Some(m) = l.model.as_any().downcast_ref::<Superposition>() {
        let mut files = Vec::new();
        if let Some(dir) = out {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            for ext in ["png", "svg"] {
                let f = dir.join(format!("superposition.{ext}"));
                figures::superposition(m, &f)?;
                files.push(f);
            }
        }
        return Ok(AnalyzeReport::Superposition {
            instances: sp::geometry(m),
            n_features: m.cfg.n_features,
            n_hidden: m.cfg.n_hidden,
            files,
        });
    }
    if let Some(TaskInfo::Digits {
        n_digits,
        reverse_sum,
    }) = &l.task
    {
        let task = digits::task_of(*n_digits, *reverse_sum)?;
        let t = l.transformer()?;
        let (v, vo, ctx) = (t.cfg.d_vocab, t.cfg.d_vocab_out(), t.cfg.n_ctx);
        if v != task.d_vocab() || vo != task.d_vocab_out() || ctx < task.n_ctx() - 1 {
            return Err(Error::format(
                target,
                format!(
                    "the model (d_vocab {v}, d_vocab_out {vo}, n_ctx {ctx}) does not fit the {n_digits}-digit task it records (d_vocab {}, d_vocab_out {}, n_ctx {})",
                    task.d_vocab(),
                    task.d_vocab_out(),
                    task.n_ctx()
                ),
            ));
        }
        let report = digits::checkpoint_report(t, &task)?;
        let files = match out {
            Some(dir) => figures::digits_checkpoint(&report, dir)?,
            None => Vec::new(),
        };
        return Ok(AnalyzeReport::Digits { report, files });
    }
    if let Some(exp) = l.experiment()?.filter(|e| !own_analysis(e.task.as_ref())) {
        let report = analysis::generic::report(l.model.as_ref(), &exp)?;
        let mut files = Vec::new();
        if let Some(dir) = out {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let json = dir.join("analysis.json");
            write_atomic(
                &json,
                serde_json::to_string(&report)
                    .expect("report json")
                    .as_bytes(),
            )?;
            files.push(json);
            files.extend(figures::attention(&report.attention, dir)?);
        }
        return Ok(AnalyzeReport::Generic { report, files });
    }
    let t = l.transformer().map_err(|_| {
        Error::format(
            target,
            format!(
                "`analyze` covers modular-arithmetic transformers and superposition models; this is a `{}`{}",
                l.model.arch(),
                if l.model.arch() == "toy_mlp" { " (try `toylens ablate`)" } else { "" }
            ),
        )
    })?;
    let m = l.modular()?;
    let nf = neurons::neuron_frequencies(t, m.p)?;
    let keys = match rule {
        KeyRule::WL => None,
        KeyRule::Neurons => Some(neurons::key_frequencies_from_clusters(&nf)),
    };
    let a = analysis::analyze_with_keys(t, m.p, m.op, m.split.as_ref(), keys.as_deref())
        .map_err(|e| Error::format(target, e.to_string()))?;
    let files = match out {
        Some(dir) => figures::checkpoint(t, m.p, &a, &nf, dir)?,
        None => Vec::new(),
    };
    Ok(AnalyzeReport::Modular {
        op: m.op,
        analysis: a,
        neurons: nf,
        on_train_set: m.split.is_some(),
        files,
    })
}

/// What `toylens ablate` found: the loss and accuracy with nothing ablated, and every unit's row,
/// most damaging first.
#[derive(serde::Serialize)]
pub struct AblateReport {
    pub loss: f64,
    pub accuracy: f64,
    #[serde(rename = "ablations")]
    pub rows: Vec<ablation::AblationRow>,
    /// The pictures written (not part of the report's JSON).
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

/// `toylens ablate`: every neuron and head of a modular transformer (on all p² pairs), of a
/// transformer trained on any other token task (on the first examples of its training set), or
/// every hidden neuron of a ToyMLP (with heat maps of the top ones), zero- and mean-ablated.
pub fn ablate(path: &Path, out: Option<&Path>) -> Result<AblateReport> {
    let l = load_any(path)?;
    if let Some(TaskInfo::Digits { .. }) = &l.task {
        return Err(Error::format(
            path,
            "a digits model: `toylens analyze` gives its ablation per answer digit (every head and the top neurons, zeroed and mean-ablated)",
        ));
    }
    if let Some(out) = out {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    // A toylens run on another task: its transformer's heads and neurons on its training set.
    let other_task = l.experiment()?.is_some_and(|e| {
        e.task
            .downcast::<crate::tasks::modular::ModularTask>()
            .is_none()
    });
    if other_task {
        let t = l.transformer()?;
        let crate::batch::Batch::Tokens(b) = training_set(&l)?.head(ablation::GENERIC_EXAMPLES)
        else {
            return Err(Error::format(path, "ablation needs a task of tokens"));
        };
        let (loss, accuracy) = ablation::baseline_on(t, &b)?;
        let rows = ablation::ablate_on(t, &b)?;
        let files = match out {
            Some(dir) => figures::ablation(&rows, 20, dir)?,
            None => Vec::new(),
        };
        return Ok(AblateReport {
            loss,
            accuracy,
            rows,
            files,
        });
    }
    let m = l.modular()?;
    let ((loss, accuracy), rows, files) =
        if let Some(toy) = l.model.as_any().downcast_ref::<ToyMlp>() {
            let (base, rows) = toy_mlp::ablate_neurons(toy, m.op)?;
            let files = match out {
                Some(dir) => figures::toy_mlp(toy, &rows, 4, dir)?,
                None => Vec::new(),
            };
            (base, rows, files)
        } else {
            let t = l.transformer()?;
            let base = ablation::baseline(t, m.p, m.op)?;
            let rows = ablation::ablate_all(t, m.p, m.op)?;
            let files = match out {
                Some(dir) => figures::ablation(&rows, 20, dir)?,
                None => Vec::new(),
            };
            (base, rows, files)
        };
    Ok(AblateReport {
        loss,
        accuracy,
        rows,
        files,
    })
}

/// `toylens convert`: an original grokking `.pth` into a toylens safetensors checkpoint.
pub fn convert(input: &Path, output: &Path) -> Result<Loaded> {
    let l = load_any(input)?;
    l.transformer()?;
    let mut meta = HashMap::new();
    meta.insert("toylens.source".to_string(), input.display().to_string());
    checkpoint::save(output, l.model.as_ref(), l.task.as_ref(), &meta)?;
    Ok(l)
}

/// The task recorded with a loaded model, in words.
pub fn describe_task(t: Option<&TaskInfo>) -> String {
    t.map_or("task unknown".into(), |t| {
        serde_json::to_string(t).unwrap_or_default()
    })
}

/// Examples drawn from a task's training stream where every step samples fresh ones (digits with
/// `infinite`, superposition): λ̂ is estimated on this many of them, the first training batches.
pub const FRESH_EXAMPLES: usize = 8192;

/// The training set a loaded model was trained on, rebuilt: from the experiment its checkpoint
/// records (toylens checkpoints), or from the original split (an imported `.pth` that has one).
pub fn training_set(l: &Loaded) -> Result<crate::batch::Batch> {
    if let Some(exp) = l.experiment()? {
        let mut data = exp.data()?;
        if let Some(b) = data.train_set() {
            return Ok(b);
        }
        let bs = exp.config.train.batch_size.unwrap_or(FRESH_EXAMPLES).max(1);
        let parts: Vec<_> = (1..=FRESH_EXAMPLES.div_ceil(bs) as u64)
            .map(|s| data.train_batch(s).into_owned())
            .collect();
        return crate::batch::Batch::concat(&parts)
            .ok_or_else(|| Error::format(&l.path, "its training batches do not concatenate"));
    }
    if let Some(t) = l.task.as_ref().and_then(TaskInfo::modular_task) {
        return Ok(t.batch(&t.split_pairs().0).into());
    }
    Err(Error::format(
        &l.path,
        "its training data cannot be rebuilt: the file records no training run and no train/test split (the original no-weight-decay checkpoint has neither); λ̂ is estimated on the training set",
    ))
}

/// The set a λ̂ samples on (`--sample-on`, by default the training set) and the sets it observes
/// (`--observe`), from the checkpoint's task; an unknown name is an error listing the task's sets.
fn llc_sets(
    l: &Loaded,
    cfg: &crate::analysis::llc::LlcConfig,
) -> Result<(crate::batch::Batch, Vec<crate::tasks::NamedSet>)> {
    if cfg.sample_on.is_none() && cfg.observe.is_empty() {
        return Ok((training_set(l)?, Vec::new()));
    }
    let named = named_sets(l)?;
    let find =
        |flag: &str, name: &str| find_set(&named, name, &format!("--{flag} {name}"), &l.path);
    let sampling = match &cfg.sample_on {
        None => find("sample-on", "train")?,
        Some(name) => find("sample-on", name)?,
    };
    if sampling.positions.is_some() {
        return Err(Error::Input(format!(
            "--sample-on {}: that set counts only some loss positions of each example, and SGLD needs a set whose every position counts; observe it instead (--observe {})",
            sampling.name, sampling.name
        )));
    }
    let observed = cfg
        .observe
        .iter()
        .map(|name| find("observe", name))
        .collect::<Result<Vec<_>>>()?;
    Ok((sampling.batch, observed))
}

/// The named sets `--sample-on` and `--observe` can name at `target` (a checkpoint or a run's
/// last), with what each holds.
pub fn llc_set_names(target: &Path) -> Result<Vec<(String, String)>> {
    Ok(named_sets(&load_latest(target)?)?
        .into_iter()
        .map(|s| (s.name, s.about))
        .collect())
}

/// A checkpoint, or a run directory's last one.
fn load_latest(target: &Path) -> Result<Loaded> {
    if target.is_dir() {
        load_any(&run::last_checkpoint(target)?)
    } else {
        load_any(target)
    }
}

/// The set `name` among `named`, or an error (`what` and `path` say who asked) listing them.
fn find_set(
    named: &[crate::tasks::NamedSet],
    name: &str,
    what: &str,
    path: &Path,
) -> Result<crate::tasks::NamedSet> {
    named
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| {
            let known: Vec<String> = named
                .iter()
                .map(|s| format!("{} ({})", s.name, s.about))
                .collect();
            Error::Input(format!(
                "{what}: {} has no set `{name}`; its sets: {}",
                path.display(),
                known.join(", ")
            ))
        })
}

/// One named set of the task at `target` (a checkpoint or a run's last): the examples a λ̂ samples
/// on or observes, as toylens builds them.
pub fn named_set(target: &Path, name: &str) -> Result<crate::tasks::NamedSet> {
    find_set(&named_sets(&load_latest(target)?)?, name, name, target)
}

/// The task's named sets at a checkpoint: its own, and `train` always (rebuilt where the task
/// draws fresh samples).
fn named_sets(l: &Loaded) -> Result<Vec<crate::tasks::NamedSet>> {
    use crate::tasks::NamedSet;
    let mut named: Vec<NamedSet> = match l.experiment()? {
        Some(exp) => exp.data()?.named_sets(),
        None => Vec::new(),
    };
    if !named.iter().any(|s| s.name == "train") {
        named.insert(
            0,
            NamedSet::whole("train", "the training set", training_set(l)?),
        );
    }
    Ok(named)
}

/// What `toylens dynamics` found.
pub struct DynamicsReport {
    pub dynamics: crate::analysis::dynamics::Dynamics,
    /// The set the outputs are on, and how many of its examples.
    pub set: String,
    pub examples: usize,
    pub files: Vec<PathBuf>,
}

/// `toylens dynamics RUN`: essential dynamics of a run's outputs on one named set of its task (the
/// first `examples` examples, the same at every checkpoint): `dynamics.csv` (each checkpoint's PC
/// scores and turning angle) and `dynamics.png` into `out`, by default `RUN/analysis/`; None
/// writes nothing.
pub fn dynamics(
    run_dir: &Path,
    (set, examples): (&str, usize),
    cfg: &crate::analysis::dynamics::DynamicsConfig,
    out: Option<Option<&Path>>,
) -> Result<DynamicsReport> {
    use crate::analysis::dynamics;
    cfg.validate()?;
    if !run_dir.is_dir() {
        return Err(Error::Input(format!(
            "{}: essential dynamics reads a run directory (every checkpoint), not one file",
            run_dir.display()
        )));
    }
    if examples == 0 {
        return Err(Error::Input(
            "--examples: must be at least 1 (got 0)".into(),
        ));
    }
    let r = run::Run::open(run_dir)?;
    if r.steps.len() < 3 {
        return Err(Error::Input(format!(
            "{}: essential dynamics needs at least 3 checkpoints (this run has {})",
            run_dir.display(),
            r.steps.len()
        )));
    }
    let named = named_sets(&load_any(&r.checkpoint(r.last_step()))?)?;
    let chosen = find_set(&named, set, &format!("--set {set}"), run_dir)?.head(examples);
    let outputs: Vec<Vec<f32>> =
        r.map_checkpoints(|_, path| dynamics::outputs(load_any(path)?.model.as_ref(), &chosen))?;
    let d = dynamics::essential_dynamics(&r.steps, &outputs, cfg)?;
    let mut files = Vec::new();
    if let Some(out) = out {
        let dir = out.map_or_else(|| run_dir.join(run::ANALYSIS), Path::to_path_buf);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut csv = format!(
            "# outputs on `{set}` (first {} examples, {} values each); explained:{}; turns: angle ≥ {}° over a window of {} of the path in the top {} PCs\nstep",
            chosen.batch.len(),
            d.dims,
            d.explained
                .iter()
                .enumerate()
                .map(|(k, e)| format!(" PC{} {:.4}", k + 1, e))
                .collect::<String>(),
            cfg.min_angle,
            cfg.window,
            cfg.turn_components.min(d.explained.len())
        );
        for k in 0..d.explained.len() {
            csv += &format!(",pc{}", k + 1);
        }
        csv += ",angle,turn\n";
        for (i, s) in d.steps.iter().enumerate() {
            csv += &format!("{s}");
            for v in &d.scores[i] {
                csv += &format!(",{v:e}");
            }
            let turn = d.turns.iter().any(|t| t.index == i);
            csv += &format!(",{},{}\n", d.angles[i], u8::from(turn));
        }
        let p = dir.join("dynamics.csv");
        write_atomic(&p, csv.as_bytes())?;
        files.push(p);
        let metrics = run::read_metrics(run_dir)?;
        let llc = run::read_llc(run_dir)?;
        files.extend(figures::dynamics(&d, set, &metrics, llc.as_deref(), &dir)?);
    }
    Ok(DynamicsReport {
        dynamics: d,
        set: set.to_string(),
        examples: chosen.batch.len(),
        files,
    })
}

/// What `toylens llc` found.
pub enum LlcReport {
    Checkpoint {
        estimate: crate::analysis::llc::LlcEstimate,
        n_train: usize,
        files: Vec<PathBuf>,
    },
    Run {
        steps: Vec<u64>,
        estimates: Vec<crate::analysis::llc::LlcEstimate>,
        n_train: usize,
        files: Vec<PathBuf>,
    },
    Calibration {
        cells: Vec<crate::analysis::llc::CalibrationCell>,
        n_train: usize,
        files: Vec<PathBuf>,
    },
    /// Every head's weight-restricted λ̂ (`--per-head`): `estimates[checkpoint][head]`.
    Heads {
        steps: Vec<u64>,
        heads: Vec<String>,
        estimates: Vec<Vec<crate::analysis::llc::LlcEstimate>>,
        n_train: usize,
        files: Vec<PathBuf>,
    },
}

fn trace_csv(rows: &[(u64, &crate::analysis::llc::LlcEstimate)]) -> String {
    let mut csv = String::from("step,chain,draw,loss,distance\n");
    for (step, e) in rows {
        for (c, t) in e.chains.iter().enumerate() {
            for (d, (l, dist)) in t.losses.iter().zip(&t.distances).enumerate() {
                csv += &format!("{step},{c},{d},{l:e},{dist:e}\n");
            }
        }
    }
    csv
}

/// Every step's norms of the sampler's terms, one row per (chain, step).
fn norms_csv(e: &crate::analysis::llc::LlcEstimate) -> String {
    use crate::analysis::llc::StepNorms;
    let mut csv = format!("# sampler: {}\nchain,step", e.sampler.name());
    for c in StepNorms::COLUMNS {
        csv += &format!(",{c}");
    }
    csv.push('\n');
    for (c, t) in e.chains.iter().enumerate() {
        for (i, n) in t.norms.iter().enumerate() {
            csv += &format!("{c},{i}");
            for v in n.values() {
                csv += &format!(",{v:e}");
            }
            csv.push('\n');
        }
    }
    csv
}

fn chain_lines(e: &crate::analysis::llc::LlcEstimate) -> Vec<(String, Vec<(f64, f64)>)> {
    e.chains
        .iter()
        .enumerate()
        .map(|(c, t)| {
            (
                format!("chain {c}"),
                t.losses
                    .iter()
                    .enumerate()
                    .map(|(d, &l)| (d as f64, l))
                    .collect(),
            )
        })
        .collect()
}

/// `toylens llc`: λ̂ of one checkpoint (traces into `out` when given), or of every checkpoint of a
/// run (`llc.csv`, `llc_trace.csv` and `llc.png` into `out`, by default `RUN/analysis/`); with
/// `per_head`, every head's weight-restricted λ̂ ([`llc_heads_into`]).
pub fn llc(
    target: &Path,
    cfg: &crate::analysis::llc::LlcConfig,
    per_head: bool,
    out: Option<&Path>,
) -> Result<LlcReport> {
    if per_head {
        llc_heads_into(target, cfg, Some(out))
    } else {
        llc_into(target, cfg, Some(out))
    }
}

/// What `llc` finds, with no file written (`files` empty): for the Python bindings.
pub fn llc_data(
    target: &Path,
    cfg: &crate::analysis::llc::LlcConfig,
    per_head: bool,
) -> Result<LlcReport> {
    if per_head {
        llc_heads_into(target, cfg, None)
    } else {
        llc_into(target, cfg, None)
    }
}

/// `files`: None writes nothing; `Some(out)` writes as `llc` does.
fn llc_into(
    target: &Path,
    cfg: &crate::analysis::llc::LlcConfig,
    files: Option<Option<&Path>>,
) -> Result<LlcReport> {
    use crate::analysis::llc;
    let out = files.flatten();
    if target.is_dir() {
        let r = run::Run::open(target)?.only_steps(&cfg.at_steps)?;
        let loaded: Vec<Loaded> = r.map_checkpoints(|_, path| load_any(path))?;
        let steps = r.steps.clone();
        let (data, observed) = llc_sets(&loaded[0], cfg)?;
        let models: Vec<&dyn crate::models::Model> =
            loaded.iter().map(|l| l.model.as_ref()).collect();
        let mask = llc_mask(target, cfg, models[0])?;
        let estimates = llc::estimate_observed(&models, (&data, &observed), cfg, mask.as_ref())?;
        let Some(out) = files else {
            return Ok(LlcReport::Run {
                steps,
                estimates,
                n_train: data.len(),
                files: Vec::new(),
            });
        };
        let dir = out.map_or_else(|| target.join(run::ANALYSIS), Path::to_path_buf);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // Any estimate but the model's λ̂ by SGLD (which the report shows) gets files of its own,
        // its settings noted in the CSV.
        let stem = llc_stem(cfg);
        let stem = stem.as_str();
        let mut csv = llc_notes(cfg);
        csv += "step,llc_mean,llc_std,init_loss,nbeta,mean_acceptance";
        for c in 0..cfg.chains {
            csv += &format!(",llc_chain{c}");
        }
        for set in &cfg.observe {
            csv += &format!(",llc_{set},llc_std_{set},init_loss_{set}");
        }
        csv.push('\n');
        for (s, e) in steps.iter().zip(&estimates) {
            csv += &format!(
                "{s},{:e},{:e},{:e},{:e},{}",
                e.llc_mean, e.llc_std, e.init_loss, e.nbeta, e.mean_acceptance
            );
            for x in &e.llc_per_chain {
                csv += &format!(",{x:e}");
            }
            for o in &e.observed {
                csv += &format!(",{:e},{:e},{:e}", o.llc_mean, o.llc_std, o.init_loss);
            }
            csv.push('\n');
        }
        let (p_csv, p_trace) = (
            dir.join(format!("{stem}.csv")),
            dir.join(format!("{stem}_trace.csv")),
        );
        write_atomic(&p_csv, csv.as_bytes())?;
        let rows: Vec<(u64, &llc::LlcEstimate)> = steps.iter().copied().zip(&estimates).collect();
        write_atomic(&p_trace, trace_csv(&rows).as_bytes())?;
        let metrics = run::read_metrics(target)?;
        // The grokking phases, where the run has them (a modular-arithmetic transformer run).
        let phases = analysis::progress(target)
            .ok()
            .and_then(|r| analysis::phases(&r));
        let mut files = vec![p_csv, p_trace];
        files.extend(figures::llc(
            &steps,
            &estimates,
            &metrics,
            phases.as_ref(),
            (&dir, stem),
        )?);
        return Ok(LlcReport::Run {
            steps,
            estimates,
            n_train: data.len(),
            files,
        });
    }
    refuse_at_steps(target, cfg)?;
    let l = load_any(target)?;
    let (data, observed) = llc_sets(&l, cfg)?;
    let mask = llc_mask(target, cfg, l.model.as_ref())?;
    let estimate =
        llc::estimate_observed(&[l.model.as_ref()], (&data, &observed), cfg, mask.as_ref())?
            .remove(0);
    let mut files = Vec::new();
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let p = dir.join("llc_trace.csv");
        write_atomic(&p, trace_csv(&[(0, &estimate)]).as_bytes())?;
        files.push(p);
        let p = dir.join("llc_norms.csv");
        write_atomic(&p, norms_csv(&estimate).as_bytes())?;
        files.push(p);
        files.extend(figures::llc_norms(&estimate, dir)?);
        files.extend(figures::llc_traces(
            &chain_lines(&estimate),
            &format!(
                "{} chains: λ̂ = {:.3} ± {:.3}, L(w*) = {:.3e}",
                estimate.sampler.name(),
                estimate.llc_mean,
                estimate.llc_std,
                estimate.init_loss
            ),
            dir,
            "llc_trace",
        )?);
    }
    Ok(LlcReport::Checkpoint {
        estimate,
        n_train: data.len(),
        files,
    })
}

/// `--at-steps` picks a run's checkpoints; given with one checkpoint it would be ignored.
fn refuse_at_steps(target: &Path, cfg: &crate::analysis::llc::LlcConfig) -> Result<()> {
    if cfg.at_steps.is_empty() {
        return Ok(());
    }
    Err(Error::Input(format!(
        "--at-steps picks checkpoints of a run directory; {} is one checkpoint",
        target.display()
    )))
}

/// The file stem of a run's estimates: `llc` for the model's λ̂ by SGLD on its training set (the
/// one the report and `dynamics` read), and a name of their own for every other estimate
/// (`llc_restricted`, `_on_SET`, `_SAMPLER`), so that no estimate overwrites another kind.
fn llc_stem(cfg: &crate::analysis::llc::LlcConfig) -> String {
    let mut stem = String::from(if cfg.restrict.is_empty() {
        "llc"
    } else {
        "llc_restricted"
    });
    if let Some(set) = cfg.sample_on.as_deref().filter(|s| *s != "train") {
        stem += &format!("_on_{set}");
    }
    if cfg.sampler != crate::analysis::llc::Sampler::Sgld {
        stem += &format!("_{}", cfg.sampler.name().replace('-', "_"));
    }
    stem
}

/// `#` lines naming what sets an estimate apart from the model's λ̂ by SGLD on its training set.
fn llc_notes(cfg: &crate::analysis::llc::LlcConfig) -> String {
    let mut notes = String::new();
    if !cfg.restrict.is_empty() {
        notes += &format!("# sampled only: {}\n", cfg.restrict.join(", "));
    }
    if cfg.sampler != crate::analysis::llc::Sampler::Sgld {
        notes += &format!("# sampler: {}\n", cfg.sampler.name());
    }
    if let Some(set) = &cfg.sample_on {
        notes += &format!("# sampled on: {set}\n");
    }
    notes
}

/// `--observe` records sets at each draw of one estimate: per head and in a calibration grid there
/// is no column for them, so it is refused rather than ignored.
fn refuse_observe(cfg: &crate::analysis::llc::LlcConfig, with: &str) -> Result<()> {
    if cfg.observe.is_empty() {
        return Ok(());
    }
    Err(Error::Input(format!(
        "--observe records each set beside one estimate; {with} gives many: run it without --observe"
    )))
}

/// The pruning mask an estimate keeps: `--mask`'s file, else a run directory's own
/// `mask.safetensors` (a lottery ticket's), else none.
fn llc_mask(
    target: &Path,
    cfg: &crate::analysis::llc::LlcConfig,
    model: &dyn crate::models::Model,
) -> Result<Option<crate::models::mask::Mask>> {
    let own = target.join("mask.safetensors");
    let path = match &cfg.mask {
        Some(p) => p.clone(),
        None if target.is_dir() && own.is_file() => own,
        None => return Ok(None),
    };
    Ok(Some(crate::io::checkpoint::load_mask(&path, model)?.0))
}

/// `toylens llc --per-head`: each head's weight-restricted λ̂ (Wang et al. 2024: only that head's
/// Q/K/V/O slices sampled, everything else at w*), at one checkpoint or every checkpoint of a
/// run; `llc_heads.csv` (and for a run `llc_heads.png`) into `out`, by default `RUN/analysis/`.
/// `files`: None writes nothing.
fn llc_heads_into(
    target: &Path,
    cfg: &crate::analysis::llc::LlcConfig,
    files: Option<Option<&Path>>,
) -> Result<LlcReport> {
    use crate::analysis::{components, llc};
    let (steps, loaded) = if target.is_dir() {
        let r = run::Run::open(target)?.only_steps(&cfg.at_steps)?;
        let loaded: Vec<Loaded> = r.map_checkpoints(|_, path| load_any(path))?;
        (r.steps.clone(), loaded)
    } else {
        refuse_at_steps(target, cfg)?;
        (vec![0], vec![load_any(target)?])
    };
    refuse_observe(cfg, "--per-head")?;
    let (data, observed) = llc_sets(&loaded[0], cfg)?;
    let models: Vec<&dyn crate::models::Model> = loaded.iter().map(|l| l.model.as_ref()).collect();
    let heads = components::heads(models[0]);
    if heads.is_empty() {
        return Err(Error::Input(format!(
            "{}: --per-head needs a model with attention heads (this is a `{}` model)",
            target.display(),
            models[0].arch()
        )));
    }
    let mask = llc_mask(target, cfg, models[0])?;
    let mut by_head = Vec::new();
    for head in &heads {
        let one = llc::LlcConfig {
            restrict: vec![head.clone()],
            ..cfg.clone()
        };
        by_head.push(llc::estimate_observed(
            &models,
            (&data, &observed),
            &one,
            mask.as_ref(),
        )?);
    }
    // [checkpoint][head]
    let estimates: Vec<Vec<llc::LlcEstimate>> = (0..models.len())
        .map(|k| by_head.iter().map(|e| e[k].clone()).collect())
        .collect();
    let dir = match files {
        None => None,
        Some(Some(d)) => Some(d.to_path_buf()),
        Some(None) => target.is_dir().then(|| target.join(run::ANALYSIS)),
    };
    let mut files = Vec::new();
    if let Some(dir) = dir {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut csv = llc_notes(cfg);
        csv += "step,head,llc_mean,llc_std,init_loss,nbeta,mean_acceptance\n";
        for (s, row) in steps.iter().zip(&estimates) {
            for (h, e) in heads.iter().zip(row) {
                csv += &format!(
                    "{s},{h},{:e},{:e},{:e},{:e},{}\n",
                    e.llc_mean, e.llc_std, e.init_loss, e.nbeta, e.mean_acceptance
                );
            }
        }
        let p = dir.join("llc_heads.csv");
        write_atomic(&p, csv.as_bytes())?;
        files.push(p);
        if target.is_dir() {
            let metrics = run::read_metrics(target)?;
            files.extend(figures::llc_heads(
                &steps, &heads, &estimates, &metrics, &dir,
            )?);
        }
    }
    Ok(LlcReport::Heads {
        steps,
        heads,
        estimates,
        n_train: data.len(),
        files,
    })
}

/// `toylens llc --calibrate`: λ̂ over a grid of ε × nβ × γ, with the mean trace of each cell.
pub fn llc_calibrate(
    target: &Path,
    base: &crate::analysis::llc::LlcConfig,
    lrs: &[f64],
    nbetas: &[crate::analysis::llc::NBeta],
    localizations: &[f64],
    out: Option<&Path>,
) -> Result<LlcReport> {
    refuse_observe(base, "--calibrate")?;
    refuse_at_steps(target, base)?;
    let l = load_any(target)?;
    let (data, _) = llc_sets(&l, base)?;
    let mask = llc_mask(target, base, l.model.as_ref())?;
    let grid = (lrs, nbetas, localizations);
    let cells =
        crate::analysis::llc::calibrate(l.model.as_ref(), &data, base, grid, mask.as_ref())?;
    let mut files = Vec::new();
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut csv = llc_notes(base);
        csv += "lr,nbeta,localization,llc_mean,llc_std,init_loss,mean_acceptance,warnings\n";
        for c in &cells {
            let e = &c.estimate;
            csv += &format!(
                "{:e},{:e},{:e},{:e},{:e},{:e},{},{}\n",
                c.lr,
                c.nbeta,
                c.localization,
                e.llc_mean,
                e.llc_std,
                e.init_loss,
                e.mean_acceptance,
                e.warnings.len()
            );
        }
        let p = dir.join("llc_calibration.csv");
        write_atomic(&p, csv.as_bytes())?;
        files.push(p);
        let lines: Vec<(String, Vec<(f64, f64)>)> = cells
            .iter()
            .map(|c| {
                let n = c
                    .estimate
                    .chains
                    .iter()
                    .map(|t| t.losses.len())
                    .min()
                    .unwrap_or(0);
                let k = c.estimate.chains.len().max(1) as f64;
                (
                    format!("ε {:.0e}, nβ {:.3}, γ {}", c.lr, c.nbeta, c.localization),
                    (0..n)
                        .map(|d| {
                            let m: f64 =
                                c.estimate.chains.iter().map(|t| t.losses[d]).sum::<f64>() / k;
                            (d as f64, m)
                        })
                        .collect(),
                )
            })
            .collect();
        files.extend(figures::llc_traces(
            &lines,
            "Calibration: mean minibatch loss over the draws, per setting",
            dir,
            "llc_calibration",
        )?);
    }
    Ok(LlcReport::Calibration {
        cells,
        n_train: data.len(),
        files,
    })
}

/// `toylens prune`: a mask from a checkpoint's weights, written to `out`; its live counts.
#[allow(clippy::too_many_arguments)]
pub fn prune(
    path: &Path,
    sparsity: f64,
    scope: crate::models::mask::PruneScope,
    method: crate::models::mask::PruneMethod,
    tensors: &[String],
    seed: u64,
    out: &Path,
) -> Result<Vec<crate::models::mask::LiveCount>> {
    let l = load_any(path)?;
    let mask =
        crate::models::mask::prune(l.model.as_ref(), sparsity, scope, method, tensors, seed)?;
    checkpoint::save_mask(out, l.model.as_ref(), &mask)?;
    Ok(mask.counts(&l.model.tensors()))
}

/// Where a ticket comes from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TicketSpec {
    pub run: PathBuf,
    /// The checkpoint step the mask is taken from (None: `final.safetensors`).
    pub from: Option<u64>,
    pub sparsity: f64,
    pub rewind: u64,
    pub rounds: usize,
    pub scope: crate::models::mask::PruneScope,
    pub method: crate::models::mask::PruneMethod,
    pub seed: u64,
    pub overrides: Vec<String>,
    /// `norm`: instead of the ticket, the dense model with its rewound weights rescaled so that
    /// the prunable tensors' norm is the ticket's (the Grokking Tickets norm control).
    pub control: Option<String>,
}

fn step_checkpoint(run_dir: &Path, step: u64, what: &str) -> Result<PathBuf> {
    let steps = run::checkpoint_steps(run_dir);
    if steps.contains(&step) {
        return Ok(run::checkpoint_path(run_dir, step));
    }
    let list: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    Err(Error::Input(format!(
        "{what} {step}: {} has no checkpoint of that step; it has {}",
        run_dir.display(),
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    )))
}

/// Train `cfg` into `dir`, or continue it there if it was started (a ticket killed part-way
/// continues where it was: the same mask, the same bits); then its pictures.
fn train_or_continue(
    cfg: &crate::config::ExperimentConfig,
    dir: &Path,
    progress: crate::train::Progress,
) -> Result<crate::train::Summary> {
    let s = crate::train::train_or_continue(cfg, dir, progress)?;
    crate::report::pictures::run_pictures(dir, false)?;
    Ok(s)
}

fn write_ticket_json(spec: &TicketSpec, out: &Path) -> Result<()> {
    write_atomic(
        &out.join("ticket.json"),
        serde_json::to_string_pretty(spec)
            .expect("ticket json")
            .as_bytes(),
    )
}

/// The norm control: the dense model from the rewound weights, the prunable tensors scaled by
/// ‖m ⊙ w_K‖ / ‖w_K‖ (m the ticket's mask) so that their norm is the ticket's at its start.
fn norm_control(
    spec: &TicketSpec,
    from: &Path,
    rewind: &Path,
    scope: crate::models::mask::PruneScope,
    out: &Path,
    progress: crate::train::Progress,
) -> Result<crate::train::Summary> {
    use crate::models::mask::{default_prunable, prune, PruneMethod};
    let trained = load_any(from)?;
    let mask = prune(
        trained.model.as_ref(),
        spec.sparsity,
        scope,
        PruneMethod::Magnitude,
        &[],
        spec.seed,
    )?;
    let ck = checkpoint::load(rewind)?;
    let mut model = ck.model;
    let chosen = default_prunable(model.as_ref());
    let ranges: Vec<std::ops::Range<usize>> = model
        .tensors()
        .into_iter()
        .filter(|t| chosen.contains(&t.name))
        .map(|t| t.range)
        .collect();
    let w = model.params_mut();
    let (mut all, mut kept) = (0.0f64, 0.0f64);
    for r in &ranges {
        for i in r.clone() {
            let x = f64::from(w[i]) * f64::from(w[i]);
            all += x;
            if mask.live[i] {
                kept += x;
            }
        }
    }
    let factor = if all > 0.0 { (kept / all).sqrt() } else { 1.0 } as f32;
    for r in &ranges {
        w[r.clone()].iter_mut().for_each(|x| *x *= factor);
    }
    let init = out.join("init.safetensors");
    checkpoint::save(&init, model.as_ref(), ck.task.as_ref(), &ck.metadata)?;
    let mut overrides = spec.overrides.clone();
    overrides.push(format!("train.init_from={}", init.display()));
    let cfg = crate::config::apply_overrides(&run::run_config(&spec.run)?, &overrides)?;
    let s = train_or_continue(&cfg, out, progress)?;
    write_ticket_json(spec, out)?;
    Ok(s)
}

/// A checkpoint named on the command line: a step, or `final` (None).
pub fn checkpoint_step(name: &str, s: &str) -> Result<Option<u64>> {
    if s == "final" {
        return Ok(None);
    }
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| Error::Input(format!("{name}: `{s}` is a checkpoint step or `final`")))
}

impl TicketSpec {
    /// Where a ticket goes unless told: beside its run, `RUN-ticket-<from>-s<S>`.
    pub fn default_out(&self) -> PathBuf {
        let name = self.run.file_name().unwrap_or_default().to_string_lossy();
        let from = self
            .from
            .map_or_else(|| "final".to_string(), |s| s.to_string());
        self.run
            .with_file_name(format!("{name}-ticket-{from}-s{}", self.sparsity))
    }
}

/// `toylens ticket`: the mask from the run's checkpoint at `from`, the weights rewound to its step
/// `rewind`, trained with the run's config and `overrides`. With `rounds` R > 1, iterative
/// magnitude pruning: R times prune 1 − (1 − S)^(1/R) of what survives, rewind and train; the last
/// training is the ticket. Every run is an ordinary run directory; `out/ticket.json` says where
/// the mask came from.
pub fn ticket(
    spec: &TicketSpec,
    out: &Path,
    progress: crate::train::Progress,
) -> Result<crate::train::Summary> {
    use crate::models::mask::PruneMethod;
    let (scope, method) = (spec.scope, spec.method);
    if spec.rounds == 0 {
        return Err(Error::Input("--rounds must be at least 1".into()));
    }
    if spec.rounds > 1 && method == PruneMethod::Random {
        return Err(Error::Input(
            "--rounds: iterative pruning is by magnitude (a random mask needs one round)".into(),
        ));
    }
    if !(0.0..1.0).contains(&spec.sparsity) {
        return Err(Error::Input(format!(
            "--sparsity is the fraction removed, in [0, 1) (got {})",
            spec.sparsity
        )));
    }
    let run_dir = &spec.run;
    let base = run::run_config(run_dir)?;
    let from = match spec.from {
        Some(s) => step_checkpoint(run_dir, s, "--from")?,
        None => {
            let f = run_dir.join(run::FINAL);
            if !f.exists() {
                return Err(Error::Input(format!(
                    "--from final: {} has no {} (the run did not finish)",
                    run_dir.display(),
                    run::FINAL
                )));
            }
            f
        }
    };
    let rewind = step_checkpoint(run_dir, spec.rewind, "--rewind")?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if let Some(c) = &spec.control {
        if c != "norm" {
            return Err(Error::Input(format!("--control: `{c}` is `norm`")));
        }
        return norm_control(spec, &from, &rewind, scope, out, progress);
    }
    let mut source = from;
    let mut summary = None;
    for r in 1..=spec.rounds {
        let target = 1.0 - libm::pow(1.0 - spec.sparsity, r as f64 / spec.rounds as f64);
        let l = load_any(&source)?;
        let mask =
            crate::models::mask::prune(l.model.as_ref(), target, scope, method, &[], spec.seed)?;
        let dir = if r == spec.rounds {
            out.to_path_buf()
        } else {
            out.join("rounds").join(format!("round_{r}"))
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mask_path = dir.join("mask.safetensors");
        checkpoint::save_mask(&mask_path, l.model.as_ref(), &mask)?;
        let mut overrides = spec.overrides.clone();
        overrides.push(format!("train.mask={}", mask_path.display()));
        overrides.push(format!("train.init_from={}", rewind.display()));
        let cfg = crate::config::apply_overrides(&base, &overrides)?;
        let s = train_or_continue(&cfg, &dir, progress)?;
        source = dir.join(run::FINAL);
        summary = Some(s);
    }
    write_ticket_json(spec, out)?;
    Ok(summary.expect("at least one round"))
}
