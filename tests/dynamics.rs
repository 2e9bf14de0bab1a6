//! `toylens dynamics RUN`: essential dynamics of a run's outputs, its files, its figure in the
//! report, and its errors.

#[path = "common/cli.rs"]
mod cli;
use cli::toylens_cmd;

fn train(dir: &std::path::Path, steps: u64, every: u64) {
    let (code, _, err) = toylens_cmd(&[
        "train",
        "induction",
        &format!("train.steps={steps}"),
        &format!("train.checkpoint_every={every}"),
        "train.log_checkpoints=0",
        "train.eval_every=20",
        "--quiet",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_runs_outputs_trace_a_trajectory_with_its_files_and_report_figure() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("ind");
    train(&run, 100, 20);
    let r = run.to_str().unwrap();
    let (code, out, err) = toylens_cmd(&["dynamics", r, "--json", "--examples", "16"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps: Vec<u64> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![0, 20, 40, 60, 80, 100]);
    assert_eq!(v["set"], "test");
    assert_eq!(v["examples"], 16);
    // 16 sequences × their loss positions × the vocabulary.
    let dims = v["dims"].as_u64().unwrap();
    assert_eq!(dims % 16, 0);
    let explained: Vec<f64> = v["explained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(explained.len(), 3);
    assert!(explained.windows(2).all(|w| w[0] >= w[1]), "{explained:?}");
    assert!(explained.iter().sum::<f64>() <= 1.0 + 1e-9);
    // Training moves the outputs: the first component carries most of it.
    assert!(explained[0] > 0.3, "{explained:?}");
    let csv = std::fs::read_to_string(run.join("analysis/dynamics.csv")).unwrap();
    assert!(
        csv.starts_with("# outputs on `test` (first 16 examples"),
        "{csv}"
    );
    assert!(csv.contains("\nstep,pc1,pc2,pc3,angle,turn\n"), "{csv}");
    assert_eq!(csv.lines().count(), 2 + steps.len());
    assert!(run.join("analysis/dynamics.png").exists());
    // The same numbers again (outputs and PCA in one order on every thread count).
    let (_, again, _) = toylens_cmd(&["dynamics", r, "--json", "--examples", "16"]);
    let w: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(w["scores"], v["scores"]);
    // A set that counts some positions: only those, the same at every checkpoint.
    let (code, out, err) = toylens_cmd(&[
        "dynamics",
        r,
        "--json",
        "--examples",
        "16",
        "--set",
        "test_repeat",
        "--out",
        d.path().join("repeat").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let repeat: serde_json::Value = serde_json::from_str(&out).unwrap();
    let repeat_dims = repeat["dims"].as_u64().unwrap();
    assert!(
        repeat_dims > 0 && repeat_dims < dims,
        "{repeat_dims} vs {dims}"
    );
    assert_ne!(repeat["scores"], v["scores"]);
    // The report shows it.
    let (code, _, err) = toylens_cmd(&["report", r]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("fig-dynamics"), "no dynamics figure");
}

#[test]
fn too_few_checkpoints_a_missing_set_and_bad_settings_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("short");
    train(&run, 20, 20);
    let r = run.to_str().unwrap();
    let ckpt = run.join("final.safetensors");
    for (args, needle) in [
        (
            vec!["dynamics", r],
            "needs at least 3 checkpoints (this run has 2)",
        ),
        (
            vec!["dynamics", ckpt.to_str().unwrap()],
            "reads a run directory",
        ),
        (vec!["dynamics", r, "--window", "0.9"], "--window"),
        (vec!["dynamics", r, "--components", "1"], "--components"),
        (vec!["dynamics", r, "--examples", "0"], "--examples"),
    ] {
        let (code, _, err) = toylens_cmd(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let long = d.path().join("long");
    train(&long, 60, 20);
    let (code, _, err) = toylens_cmd(&["dynamics", long.to_str().unwrap(), "--set", "nope"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("has no set `nope`; its sets: train (the training set), test ("),
        "{err}"
    );
}
