//! Watching training: the optimizer trace, monitors at every evaluation, and spike forensics.

use std::path::Path;
use toylens::analysis;
use toylens::config::{self, SpikeRule};
use toylens::engine::adamw::UpdateStats;
use toylens::io::{checkpoint, run, trace};
use toylens::train::{train, Progress, RunMode};

fn tensors_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let (arrays, _) = checkpoint::read_arrays(path).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = arrays
        .into_iter()
        .map(|(k, a)| (k, a.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    v.sort();
    v
}

fn run_with(dir: &Path, overrides: &[&str]) {
    let mut o: Vec<String> = [
        "train.steps=120",
        "train.eval_every=20",
        "train.checkpoint_every=20",
        "train.log_checkpoints=0",
    ]
    .map(String::from)
    .to_vec();
    o.extend(overrides.iter().map(|s| s.to_string()));
    let cfg = config::resolve("grokking-tiny", &o).unwrap();
    train(&cfg, dir, RunMode::New, Progress::Quiet).unwrap();
}

/// The progress monitor at each evaluation is `toylens analyze` of the checkpoint of that step,
/// to the bit; and neither monitors nor the trace change the training bits.
#[test]
fn monitors_equal_analyze_at_the_same_steps_and_change_no_training_bits() {
    let d = tempfile::tempdir().unwrap();
    let (watched, plain) = (d.path().join("watched"), d.path().join("plain"));
    run_with(&watched, &["train.monitors=[progress, attention]"]);
    run_with(&plain, &["train.trace_every=0"]);
    assert_eq!(
        tensors_of(&watched.join(run::FINAL)),
        tensors_of(&plain.join(run::FINAL)),
        "monitors or the trace changed the weights"
    );
    assert!(!plain.join(trace::TRACE_NPY).exists());

    let r = run::Run::open(&watched).unwrap();
    let task = r
        .experiment
        .task
        .downcast::<toylens::tasks::modular::ModularTask>()
        .unwrap()
        .clone();
    let rows = run::read_metrics(&watched).unwrap();
    assert_eq!(rows.len(), 7, "steps 0, 20, ..., 120");
    for row in &rows {
        let model =
            checkpoint::load_transformer(&run::checkpoint_path(&watched, row.step)).unwrap();
        let a = analysis::analyze(&model, task.p, task.op, Some(&task)).unwrap();
        let col = |k: &str| row.get(&format!("progress_{k}")).unwrap();
        assert_eq!(col("loss_all"), a.loss_all, "step {}", row.step);
        assert_eq!(col("restricted_loss"), a.restricted_loss);
        assert_eq!(col("excluded_loss"), a.excluded_loss);
        assert_eq!(col("gini_W_E"), a.gini_w_e);
        assert_eq!(col("gini_W_L"), a.gini_w_l);
        assert_eq!(col("n_key_frequencies"), a.key_frequencies.len() as f64);
        let shares = toylens::train::monitors::progress::frequency_shares(&a.w_l_frequency_norms);
        for (k, s) in shares.iter().enumerate() {
            assert_eq!(col(&format!("W_L_share_f{}", k + 1)), *s);
        }
        // Attention: 4 statistics per head, an entropy within [0, ln n_ctx].
        let e = row.get("attention_L0H0_entropy").unwrap();
        assert!((0.0..=3f64.ln() + 1e-9).contains(&e), "entropy {e}");
        let first = row.get("attention_L0H0_first").unwrap();
        assert!((0.0..=1.0).contains(&first));
    }
    // The keys' shares moved: the monitor watches something that changes.
    let share = |r: &run::MetricRow| r.get("progress_gini_W_L").unwrap();
    assert_ne!(share(&rows[0]), share(&rows[6]));

    // The trace: a record per step, each tensor's norms as the weights say.
    let t = trace::read(&watched).unwrap().unwrap();
    assert_eq!(t.steps, (1..=120).collect::<Vec<u64>>());
    let model = checkpoint::load_transformer(&watched.join(run::FINAL)).unwrap();
    let w = t.field("weight_norm").unwrap();
    for (k, name) in t.info.tensors.iter().enumerate() {
        let p = model.param(name).unwrap();
        let norm = p.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        assert!(
            (f64::from(w[[119, k]]) - norm).abs() <= 1e-5 * norm.max(1e-30),
            "{name}: {} against {norm}",
            w[[119, k]]
        );
    }
    let g = t.field("grad_norm").unwrap();
    let k = t
        .info
        .tensors
        .iter()
        .position(|n| n == "embed.W_E")
        .unwrap();
    assert!(g.column(k).iter().all(|&x| x > 0.0));
    let rows_plain = run::read_metrics(&plain).unwrap();
    for (a, b) in rows.iter().zip(&rows_plain) {
        assert_eq!(a.get("train_loss"), b.get("train_loss"));
    }
    // The trace's loss of step 21 is that of the full training batch under step 20's weights,
    // which the metric row of step 20 evaluates too.
    assert!((t.loss[20] - rows[1].get("train_loss").unwrap()).abs() < 1e-5 * t.loss[20]);
}

/// Every third step traced; then a resume keeps the records up to its checkpoint and rewrites none.
#[test]
fn a_trace_every_k_steps_resumes_to_the_same_bytes() {
    let d = tempfile::tempdir().unwrap();
    let (whole, resumed) = (d.path().join("whole"), d.path().join("resumed"));
    run_with(&whole, &["train.trace_every=3"]);
    let t = trace::read(&whole).unwrap().unwrap();
    assert_eq!(t.steps, (1..=40).map(|i| 3 * i).collect::<Vec<u64>>());
    assert_eq!(t.info.every, 3);
    // Half the run, then resumed with the budget raised: the same bytes.
    run_with(&resumed, &["train.trace_every=3", "train.steps=60"]);
    let cfg = toylens::train::resume_config(&resumed, &["train.steps=120".into()]).unwrap();
    // Records past the checkpoint (a kill's leftovers) are dropped on resume.
    std::fs::remove_file(resumed.join(run::FINAL)).unwrap();
    for p in [
        run::checkpoint_path(&resumed, 60),
        run::optim_path(&resumed, 60),
    ] {
        std::fs::remove_file(p).unwrap();
    }
    train(&cfg, &resumed, RunMode::Resume, Progress::Quiet).unwrap();
    assert_eq!(
        std::fs::read(whole.join(trace::TRACE_NPY)).unwrap(),
        std::fs::read(resumed.join(trace::TRACE_NPY)).unwrap()
    );
}

fn refused(dir: &Path, overrides: &[&str]) -> String {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let msg = match config::resolve("digits3", &o) {
        Err(e) => e.to_string(),
        Ok(cfg) => train(&cfg, dir, RunMode::New, Progress::Quiet)
            .expect_err("refused")
            .to_string(),
    };
    assert!(
        !dir.exists(),
        "{msg}: the refused run wrote {}",
        dir.display()
    );
    msg
}

#[test]
fn bad_monitors_and_spike_rules_are_refused_before_training_starts() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("run");
    let m = refused(&dir, &["train.monitors=[digit]"]);
    assert!(
        m.contains("train.monitors") && m.contains("did you mean `digits`"),
        "{m}"
    );
    let m = refused(&dir, &["train.monitors=[progress]"]);
    assert!(
        m.contains("train.monitors")
            && m.contains("`progress` does not apply")
            && m.contains("modular"),
        "{m}"
    );
    let m = refused(&dir, &["train.monitors=[digits, digits]"]);
    assert!(m.contains("twice"), "{m}");
    let m = refused(&dir, &["train.spikes.ratio=0.5"]);
    assert!(
        m.contains("train.spikes.ratio") && m.contains("above 1"),
        "{m}"
    );
    let m = refused(&dir, &["train.spikes.window=1"]);
    assert!(m.contains("train.spikes.window"), "{m}");
    let m = refused(&dir, &["train.spikes.column=test_los"]);
    assert!(
        m.contains("train.spikes.column") && m.contains("did you mean `test_loss`"),
        "{m}"
    );
    let m = refused(
        &dir,
        &["train.spikes.column=trace.loss", "train.trace_every=0"],
    );
    assert!(m.contains("trace_every"), "{m}");
    // A monitor on a model it cannot read.
    let m = match config::resolve("toy-mlp", &["train.monitors=[attention]".into()]) {
        Ok(cfg) => train(&cfg, &dir, RunMode::New, Progress::Quiet)
            .unwrap_err()
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(m.contains("reads a transformer"), "{m}");
    assert!(!dir.exists());
    // On --resume, the trace's spacing and the monitors stay as the run has them.
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config::resolve("digits3", &[]).unwrap();
    std::fs::write(dir.join(run::CONFIG), config::to_yaml(&cfg)).unwrap();
    let resume = |o: &str| {
        toylens::train::resume_config(&dir, &[o.to_string()])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let m = resume("train.trace_every=5").unwrap_err();
    assert!(
        m.contains("train.trace_every") && m.contains("every 1 steps"),
        "{m}"
    );
    assert!(
        resume("train.trace_every=1").is_ok(),
        "the same spacing resumes"
    );
    let m = resume("train.monitors=[digits]").unwrap_err();
    assert!(m.contains("train.monitors"), "{m}");
}

/// A made-up run with one spike whose story is known: W_U's gradient rises two steps before
/// W_in's, W_U sat in the ε regime, and digit d2 carried the extra loss.
#[test]
fn spike_forensics_tell_a_known_story() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cfg = config::resolve("digits3", &[]).unwrap();
    std::fs::write(dir.join(run::CONFIG), config::to_yaml(&cfg)).unwrap();
    let mut jsonl = String::new();
    for s in (0..=300u64).step_by(10) {
        let spike = (200..=220).contains(&s);
        let row = run::MetricRow {
            step: s,
            values: vec![
                ("train_loss".into(), if spike { 0.5 } else { 0.05 }),
                ("test_loss_d2".into(), if spike { 0.9 } else { 0.02 }),
                ("test_loss_d1".into(), 0.03),
                ("lr".into(), 1e-3),
            ],
        };
        jsonl += &row.json();
        jsonl.push('\n');
    }
    std::fs::write(dir.join(run::METRICS_JSONL), jsonl).unwrap();
    let names = vec![
        "blocks.0.mlp.W_in".to_string(),
        "unembed.W_U".to_string(),
        "frozen".to_string(),
    ];
    let mut w = trace::TraceWriter::create(dir, trace::TraceInfo::new(names, 1), 0).unwrap();
    for s in 1..=300u64 {
        let stats = |rise_at: u64, eps: u64| UpdateStats {
            grad_sq: if (rise_at..=215).contains(&s) {
                100.0
            } else {
                1.0
            },
            update_sq: if (rise_at + 1..=215).contains(&s) {
                9.0
            } else {
                1.0
            },
            weight_sq: 4.0,
            below_eps: if (rise_at..=215).contains(&s) { 0 } else { eps },
            entries: 100,
            max_ratio: 0.01,
        };
        w.push(&trace::TraceRecord {
            step: s,
            loss: 0.05,
            lr: 1e-3,
            tensors: &[stats(195, 0), stats(193, 40), UpdateStats::default()],
        });
    }
    w.flush().unwrap();
    let rule = SpikeRule::default();
    let (r, _) = analysis::spikes::forensics(dir, Some(&rule)).unwrap();
    assert_eq!(r.spikes.len(), 1, "{:?}", r.spikes);
    let sp = &r.spikes[0];
    assert_eq!((sp.before, sp.start, sp.end), (190, 200, 220));
    assert!((sp.ratio - 10.0).abs() < 1e-9);
    let order: Vec<&str> = sp.tensors.iter().map(|t| t.tensor.as_str()).collect();
    assert_eq!(
        order,
        ["unembed.W_U", "blocks.0.mlp.W_in"],
        "the frozen tensor has no gradient"
    );
    assert_eq!(sp.tensors[0].grad_rise_step, Some(193));
    assert_eq!(sp.tensors[0].update_rise_step, Some(194));
    assert!((sp.tensors[0].grad_peak / sp.tensors[0].grad_baseline - 10.0).abs() < 1e-6);
    assert!((sp.tensors[0].eps_share_before - 0.4).abs() < 1e-6);
    assert_eq!(sp.eps_regime, Some(true));
    assert_eq!(sp.columns[0].column, "test_loss_d2");
    // Drawn, and the text names the first riser.
    let out = toylens::commands::spikes::SpikesRequest {
        run: dir.to_path_buf(),
        ..Default::default()
    }
    .run()
    .unwrap();
    assert!(out.files.iter().any(|f| f.ends_with("spike_1.png")));
    // A later call that finds fewer spikes leaves no window of an earlier one behind.
    let windows = dir.join(run::ANALYSIS).join("spikes");
    std::fs::write(windows.join("spike_2.png"), b"stale").unwrap();
    std::fs::write(windows.join("spike_notes.png"), b"someone's").unwrap();
    toylens::commands::spikes::SpikesRequest {
        run: dir.to_path_buf(),
        ..Default::default()
    }
    .run()
    .unwrap();
    assert!(!windows.join("spike_2.png").exists());
    assert!(windows.join("spike_1.png").exists() && windows.join("spike_notes.png").exists());
    // The flags are named as the command line spells them.
    let e = toylens::commands::spikes::SpikesRequest {
        run: dir.to_path_buf(),
        ratio: Some(0.5),
        ..Default::default()
    }
    .run()
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("--ratio") && e.contains("above 1"), "{e}");
    let text = analysis::spikes::describe(&out.report);
    assert!(
        text.contains("unembed.W_U") && text.contains("involved"),
        "{text}"
    );
    // A rule that sees nothing at this ratio.
    let high = SpikeRule {
        ratio: 20.0,
        ..rule
    };
    assert!(analysis::spikes::forensics(dir, Some(&high))
        .unwrap()
        .0
        .spikes
        .is_empty());
}

/// A trace file that is cut short, or whose records are not the layout trace.json describes, is
/// an error naming it (never a panic); records past the header's count (a kill between a flush's
/// records and its header) are left out, as np.load leaves them.
#[test]
fn a_damaged_trace_is_an_error_and_the_header_counts_the_records() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let info = |n: usize| trace::TraceInfo::new((0..n).map(|k| format!("t{k}")).collect(), 1);
    let stats = [UpdateStats {
        grad_sq: 4.0,
        entries: 10,
        below_eps: 5,
        ..Default::default()
    }; 2];
    let record = |step| trace::TraceRecord {
        step,
        loss: 0.5,
        lr: 1e-3,
        tensors: &stats,
    };
    let mut w = trace::TraceWriter::create(dir, info(2), 0).unwrap();
    for s in 1..=3 {
        w.push(&record(s));
    }
    w.flush().unwrap();
    let t = trace::read(dir).unwrap().unwrap();
    assert_eq!(t.steps, [1, 2, 3]);
    assert_eq!(t.field("grad_norm").unwrap()[[2, 1]], 2.0);
    assert_eq!(t.field("eps_share").unwrap()[[0, 0]], 0.5);
    // Whole records past the header's count.
    let npy = dir.join("trace.npy");
    let bytes = std::fs::read(&npy).unwrap();
    let header = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let rec = (bytes.len() - header) / 3;
    let mut longer = bytes.clone();
    longer.extend_from_slice(&bytes[bytes.len() - rec..]);
    std::fs::write(&npy, &longer).unwrap();
    assert_eq!(trace::read(dir).unwrap().unwrap().steps.len(), 3);
    // Cut inside its header.
    std::fs::write(&npy, &bytes[..40]).unwrap();
    let e = trace::read(dir).unwrap_err().to_string();
    assert!(
        e.contains("trace.npy") && e.contains("not a trace file"),
        "{e}"
    );
    // Records of three tensors where trace.json says two; and resuming onto it.
    std::fs::write(&npy, &bytes).unwrap();
    let json = dir.join("trace.json");
    let two = std::fs::read(&json).unwrap();
    std::fs::write(&json, serde_json::to_string(&info(3)).unwrap()).unwrap();
    let e = trace::read(dir).unwrap_err().to_string();
    assert!(
        e.contains("trace.npy") && e.contains("record layout"),
        "{e}"
    );
    std::fs::write(&json, &two).unwrap();
    std::fs::write(&npy, &bytes[..100]).unwrap();
    let e = trace::TraceWriter::create(dir, info(2), 2)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("trace.npy"), "{e}");
}
