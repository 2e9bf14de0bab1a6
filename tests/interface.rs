//! The model interface and the issue-9 guarantees: a model added through the recipe (linear
//! regression) trains, checkpoints, resumes, loads through `load_any` and takes hooks; a run killed
//! twenty times resumes to the same bytes; bad input is a clear error that changes nothing.

use ndarray::ArrayD;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toylens::batch::Batch;
use toylens::hooks::{self, CacheFilter, Hooks};
use toylens::io::load_any;
use toylens::train::{train, Progress, RunMode};

fn toylens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toylens"))
}

const REGRESSION: &str = "
seed: 3
data:
  task: regression
  n_in: 4
  n_out: 2
  n_train: 512
  n_test: 256
  noise_std: 0.1
  true_weights: random
  seed: null
model:
  arch: linear
  bias: true
optim:
  lr: 0.05
  weight_decay: 0.0
  beta1: 0.9
  beta2: 0.999
  eps: 1.0e-8
  warmup_steps: 0
train:
  steps: 400
  batch_size: 64
  eval_every: 20
  checkpoint_every: 100
  log_checkpoints: 3
  early_stop_test_loss: null
";

#[test]
fn a_model_added_through_the_recipe_trains_resumes_loads_and_takes_hooks() {
    let d = tempfile::tempdir().unwrap();
    let cfg = toylens::config::from_yaml(REGRESSION, "test").unwrap();
    let whole = d.path().join("whole");
    let s = train(&cfg, &whole, RunMode::New, Progress::Quiet).unwrap();
    // ½‖y − ŷ‖² at the noise floor: ½ · σ² · n_out = 0.01.
    assert!(
        (s.final_test_loss - 0.01).abs() < 0.003,
        "test loss {}",
        s.final_test_loss
    );
    // Half the budget, then a resume to the whole: the same weights, bit for bit.
    let half = d.path().join("half");
    let short = toylens::config::apply_overrides(&cfg, &["train.steps=200".into()]).unwrap();
    train(&short, &half, RunMode::New, Progress::Quiet).unwrap();
    let cont = toylens::train::resume_config(&half, &["train.steps=400".into()]).unwrap();
    train(&cont, &half, RunMode::Resume, Progress::Quiet).unwrap();
    let w = |dir: &Path| load_any(&dir.join("final.safetensors")).unwrap();
    let (a, b) = (w(&whole), w(&half));
    assert_eq!(a.model.arch(), "linear");
    assert_eq!(a.model.params(), b.model.params());
    assert_eq!(
        std::fs::read(whole.join("metrics.csv")).unwrap().len(),
        std::fs::read(half.join("metrics.csv")).unwrap().len()
    );
    // Named parameters, hooks and the cache through the interface.
    let m = a.model.as_ref();
    assert_eq!(m.param("weight").unwrap().shape(), &[2, 4]);
    assert_eq!(m.param("bias").unwrap().shape(), &[2]);
    let shapes = m.hook_shapes().unwrap();
    assert_eq!(
        shapes,
        vec![
            ("hook_in".to_string(), vec![1, 4]),
            ("hook_out".to_string(), vec![1, 2])
        ]
    );
    let x = ndarray::Array2::from_shape_fn((3, 4), |(i, j)| (i + j) as f32);
    let input = toylens::batch::Input::Dense(x.view());
    let (out, cache) = m.run_with_cache(input, CacheFilter::All).unwrap();
    assert_eq!(&out, cache.get("hook_out").unwrap());
    let zeroed = m
        .run_with_hooks(input, Hooks::new().add("hook_in", hooks::zero_ablate()))
        .unwrap();
    let bias = m.param("bias").unwrap();
    for row in zeroed.rows() {
        assert_eq!(row.to_vec(), bias.iter().copied().collect::<Vec<f32>>());
    }
    // Loss and gradient on an arbitrary batch, without knowing the kind.
    let batch = m.example_input();
    let mut grads = vec![0.0; m.n_params()];
    m.loss_and_grad(&mut Default::default(), &batch, &mut grads)
        .unwrap();
    assert!(matches!(batch, Batch::Dense(_)));
    // Every checkpoint of the run loads as the same kind.
    for s in toylens::io::run::checkpoint_steps(&whole) {
        let path = toylens::io::run::checkpoint_path(&whole, s);
        let l = load_any(&path).unwrap();
        assert_eq!(l.model.arch(), "linear");
        // The header alone names the kind and the task.
        let h = toylens::io::checkpoint::peek(&path).unwrap();
        assert_eq!(h.arch, "linear");
        assert!(matches!(
            h.task,
            Some(toylens::tasks::TaskInfo::Regression(_))
        ));
    }
}

/// A metrics file without its wall-time column (the last one).
fn without_wall_time(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap();
    text.lines()
        .map(|l| match l.find(",\"wall_time\":") {
            Some(i) => l[..i].to_string(),
            None => l.rsplit_once(',').map_or(l, |(a, _)| a).to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn spawn(args: &[&str], dir: &Path, resume: bool) -> std::process::Child {
    let mut c = toylens();
    if resume {
        c.args(["train", "--quiet", "--resume"]).arg(dir);
    } else {
        c.args(args).arg("--out").arg(dir);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_run_killed_twenty_times_resumes_to_the_same_bytes_trace_and_monitors_included() {
    let d = tempfile::tempdir().unwrap();
    let (whole, killed): (PathBuf, PathBuf) = (d.path().join("whole"), d.path().join("killed"));
    let args = [
        "train",
        "grokking-tiny",
        "train.steps=4000",
        "train.eval_every=10",
        "train.checkpoint_every=40",
        "train.monitors=[progress, attention]",
        "--quiet",
    ];
    let out = toylens()
        .args(args)
        .arg("--out")
        .arg(&whole)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut kills = 0;
    let t = Instant::now();
    while kills < 20 && !killed.join("final.safetensors").exists() {
        let mut child = spawn(&args, &killed, kills > 0);
        if kills == 0 {
            // The first kill once step 0's checkpoint exists (before it there is nothing to resume).
            while !killed
                .join("checkpoints/step_000000.optim.safetensors")
                .exists()
            {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "the run did not start"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(20 + rng % 180));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(
        kills >= 10,
        "the run finished after {kills} kills: make it longer"
    );
    let out = toylens()
        .args(["train", "--quiet", "--resume"])
        .arg(&killed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(whole.join("final.safetensors")).unwrap(),
        std::fs::read(killed.join("final.safetensors")).unwrap(),
        "weights after {kills} kills differ"
    );
    // The optimizer trace, byte for byte; the monitors are metric columns.
    assert_eq!(
        std::fs::read(whole.join("trace.npy")).unwrap(),
        std::fs::read(killed.join("trace.npy")).unwrap(),
        "the trace after {kills} kills differs"
    );
    for f in ["metrics.csv", "metrics.jsonl"] {
        let (a, b) = (
            without_wall_time(&whole.join(f)),
            without_wall_time(&killed.join(f)),
        );
        assert!(
            a.contains("progress_restricted_loss"),
            "{f} holds the monitors"
        );
        assert_eq!(a.lines().count(), b.lines().count(), "{f}: row count");
        for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
            assert_eq!(x, y, "{f} line {} differs after {kills} kills", i + 1);
        }
    }
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("checkpoints")] {
        for e in std::fs::read_dir(&sub).unwrap().flatten() {
            if e.path().is_file() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn resume_refuses_a_corrupt_or_unreadable_metrics_file_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let out = toylens()
        .args([
            "train",
            "grokking-tiny",
            "train.steps=200",
            "train.eval_every=20",
            "--quiet",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success());
    let jsonl = run.join("metrics.jsonl");
    let good = std::fs::read_to_string(&jsonl).unwrap();
    for (what, text) in [
        (
            "a garbled line",
            good.replacen("\"train_loss\":", "\"train_loss\":x", 3),
        ),
        ("an empty file", String::new() + "not json\n"),
        ("steps out of order", {
            let mut l: Vec<&str> = good.lines().collect();
            l.swap(1, 2);
            l.join("\n") + "\n"
        }),
    ] {
        std::fs::write(&jsonl, &text).unwrap();
        let before = snapshot(&run);
        let out = toylens()
            .args(["train", "--quiet", "--resume"])
            .arg(&run)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("metrics.jsonl") && err.contains("line"),
            "{what}: {err}"
        );
        assert!(snapshot(&run) == before, "{what}: the resume changed files");
    }
    // Unreadable: a directory in its place.
    std::fs::remove_file(&jsonl).unwrap();
    std::fs::create_dir(&jsonl).unwrap();
    let before = snapshot(&run);
    let out = toylens()
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("metrics.jsonl"), "{err}");
    assert!(snapshot(&run) == before);
}

#[test]
fn a_hook_replacing_an_activation_with_the_wrong_shape_is_an_error() {
    let m = toylens::Transformer::new(toylens::TransformerConfig::nanda(7)).unwrap();
    let tokens = ndarray::Array2::<u32>::zeros((2, 3));
    let e = m
        .run_with_hooks(
            tokens.view(),
            Hooks::new().try_add(
                "blocks.0.mlp.hook_post",
                hooks::replace_with(ArrayD::zeros(ndarray::IxDyn(&[5, 3]))),
            ),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blocks.0.mlp.hook_post") && e.contains("[5, 3]") && e.contains("[2, 3, 512]"),
        "{e}"
    );
    let e = m
        .run_with_hooks(
            tokens.view(),
            Hooks::new().try_add(
                "blocks.0.hook_resid_post",
                hooks::patch_from(
                    ArrayD::zeros(ndarray::IxDyn(&[1, 3, 128])),
                    Default::default(),
                    1,
                    None,
                ),
            ),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[1, 3, 128]") && e.contains("[2, 3, 128]"),
        "{e}"
    );
}

#[test]
fn analysing_a_multiplication_model_and_training_one_too_large_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("mul.safetensors");
    let model = toylens::Transformer::new(toylens::TransformerConfig::nanda(13)).unwrap();
    let task: toylens::tasks::TaskInfo =
        serde_json::from_value(serde_json::json!({"name": "modular", "p": 13, "op": "mul"}))
            .unwrap();
    toylens::io::checkpoint::save(&path, &model, Some(&task), &Default::default()).unwrap();
    let out = toylens().arg("analyze").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("(a · b) mod 13") && err.contains("no such basis"),
        "{err}"
    );

    let run = d.path().join("huge");
    let out = toylens()
        .args([
            "train",
            "grokking-tiny",
            "model.d_mlp=100000000",
            "--quiet",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("model.d_mlp") && err.contains("GB") && err.contains("available"),
        "{err}"
    );
    assert!(!run.join("checkpoints").exists(), "nothing is written");
}
