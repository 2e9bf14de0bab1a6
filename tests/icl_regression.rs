//! In-context linear regression end to end: the preset trains a vector-token transformer, its
//! metric columns, essential dynamics and λ̂ at chosen checkpoints of the run, and the errors of
//! its settings.

#[path = "common/cli.rs"]
mod cli;
use cli::toylens_cmd;

fn column(csv: &str, name: &str) -> Vec<f64> {
    let mut lines = csv.lines().filter(|l| !l.starts_with('#'));
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let i = header.iter().position(|h| *h == name).unwrap_or_else(|| {
        panic!("no column {name} in {header:?}");
    });
    lines
        .map(|l| l.split(',').nth(i).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn the_preset_trains_a_vector_token_transformer_that_dynamics_and_llc_read() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("icl");
    let r = run.to_str().unwrap();
    // The preset's model and data on a one-cycle schedule as short as the run and flat (its own
    // barely moves in a few hundred steps), on four fixed tasks so that the pretraining column is
    // there too.
    let (code, _, err) = toylens_cmd(&[
        "train",
        "icl-regression",
        "optim.one_cycle.total_steps=300",
        "optim.one_cycle.div_factor=1",
        "optim.one_cycle.final_div_factor=1",
        "train.steps=300",
        "train.batch_size=64",
        "train.eval_every=100",
        "train.checkpoint_every=100",
        "train.log_checkpoints=0",
        "data.n_eval=256",
        "data.num_tasks=4",
        "--quiet",
        "--out",
        r,
    ]);
    assert_eq!(code, 0, "{err}");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let test = column(&metrics, "test_loss");
    let gap = column(&metrics, "ridge_gap");
    let first = column(&metrics, "test_loss_first");
    let pretrain = column(&metrics, "test_loss_pretrain");
    // At the start the model knows nothing: about E[y²] = D + σ² = 4.125 everywhere.
    assert!((test[0] - 4.125).abs() < 1.0, "{test:?}");
    assert!(test.last() < test.first(), "{test:?}");
    // Nothing beats the Bayes-optimal ridge predictor on Gaussian tasks.
    assert!(gap.iter().all(|&g| g > 0.0), "{gap:?}");
    // With no pair in context the best guess is 0: the first prediction's loss stays near E[y²].
    assert!(first.iter().all(|&l| l > 3.0), "{first:?}");
    // Four tasks are easier to learn than all of them.
    assert!(pretrain.last() < test.last(), "{pretrain:?} vs {test:?}");

    let (code, out, err) = toylens_cmd(&["dynamics", r, "--json", "--examples", "32"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The predictions ŷ at the 16 x tokens of 32 sequences.
    assert_eq!(v["dims"], 32 * 16);
    // The report leaves out what reads tokens (circuits) and shows the rest.
    let (code, _, err) = toylens_cmd(&["report", r]);
    assert_eq!(code, 0, "{err}");
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(page.contains("Essential dynamics"), "no dynamics figure");

    let (code, out, err) = toylens_cmd(&[
        "llc",
        r,
        "--at-steps",
        "0,300",
        "--chains",
        "2",
        "--draws",
        "20",
        "--burnin",
        "10",
        "--batch-size",
        "64",
        "--lr",
        "0.0001",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let at = v["checkpoints"].as_array().unwrap_or_else(|| panic!("{v}"));
    let steps: Vec<u64> = at.iter().map(|c| c["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![0, 300]);
    assert!(at.iter().all(|c| c["llc_mean"].as_f64().is_some()), "{v}");
    let (code, _, err) = toylens_cmd(&["llc", r, "--at-steps", "150"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no checkpoint at step 150") && err.contains("300"),
        "{err}"
    );
}

#[test]
fn bad_settings_name_their_keys() {
    // Monitors that read tokens refuse a vector-token run before it trains.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("mon");
    let (code, _, err) = toylens_cmd(&[
        "train",
        "icl-regression",
        "train.monitors=[heads]",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("train.monitors") && err.contains("reads vectors"),
        "{err}"
    );
    for (args, key) in [
        (
            vec!["optim.one_cycle.total_steps=1000"],
            "optim.one_cycle.total_steps",
        ),
        (
            vec!["optim.one_cycle.pct_start=1.5"],
            "optim.one_cycle.pct_start",
        ),
        (vec!["optim.warmup_steps=10"], "optim.warmup_steps"),
        (vec!["data.num_tasks=0"], "data.num_tasks"),
        (vec!["data.noise_variance=-0.5"], "data.noise_variance"),
    ] {
        let mut a = vec!["config", "icl-regression"];
        a.extend(args.iter().copied());
        let (code, _, err) = toylens_cmd(&a);
        assert_ne!(code, 0, "{args:?} was accepted");
        assert!(err.contains(key), "{args:?}: {err}");
    }
}

#[test]
fn vector_token_training_is_the_same_on_one_and_two_threads() {
    use toylens::bench::{train_steps_traced_in, PresetStep};
    use toylens::engine::threads::with_threads;
    let steps = |threads| {
        with_threads(threads, || {
            let mut s = PresetStep::of("icl-regression", 1).unwrap();
            let r = train_steps_traced_in(
                &mut toylens::Workspace::new(),
                &mut s.model,
                &s.batch,
                s.optim,
                3,
                false,
            )
            .unwrap();
            (r.losses, s.model.params)
        })
    };
    let (l1, p1) = steps(1);
    let (l2, p2) = steps(2);
    assert_eq!(l1, l2);
    assert!(p1 == p2, "weights differ between 1 and 2 threads");
    assert!(l1[2] < l1[0], "{l1:?}");
}
