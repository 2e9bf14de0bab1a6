//! Masks in training, pruning and lottery tickets (issue 12's mechanics).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toylens::io::checkpoint;
use toylens::models::mask::{prune, Mask, PruneMethod, PruneScope};

fn toylens(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_toylens"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) {
    let (code, err) = toylens(args);
    assert_eq!(code, 0, "{args:?}: {err}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run toylens with `args`, SIGKILL it once `dir` has the checkpoint (with optimizer state) of
/// `step`, and check it was killed before finishing.
fn kill_at_step<S: AsRef<std::ffi::OsStr>>(args: &[S], dir: &Path, step: u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_toylens"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = dir.join(format!("checkpoints/step_{step:06}.optim.safetensors"));
    let t = Instant::now();
    while !marker.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the run did not reach step {step}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dir.join("final.safetensors").exists(), "killed too late");
}

fn mask_of(path: &Path, model: &dyn toylens::models::Model) -> Mask {
    checkpoint::load_mask(path, model).unwrap().0
}

#[test]
fn global_magnitude_pruning_removes_exactly_the_smallest() {
    let m = toylens::Transformer::new(toylens::TransformerConfig::nanda(13)).unwrap();
    let specs = toylens::models::Model::tensors(&m);
    let chosen = toylens::models::mask::default_prunable(&m);
    assert!(
        chosen.contains(&"embed.W_E".to_string())
            && !chosen.contains(&"pos_embed.W_pos".to_string())
    );
    let mask = prune(&m, 0.3, PruneScope::Global, PruneMethod::Magnitude, &[], 0).unwrap();
    let idx: Vec<usize> = specs
        .iter()
        .filter(|s| chosen.contains(&s.name))
        .flat_map(|s| s.range.clone())
        .collect();
    let dead: Vec<usize> = idx.iter().copied().filter(|&i| !mask.live[i]).collect();
    assert_eq!(dead.len(), (0.3 * idx.len() as f64).floor() as usize);
    let max_dead = dead
        .iter()
        .map(|&i| m.params[i].abs())
        .fold(0.0f32, f32::max);
    let min_live = idx
        .iter()
        .filter(|&&i| mask.live[i])
        .map(|&i| m.params[i].abs())
        .fold(f32::INFINITY, f32::min);
    assert!(max_dead <= min_live);
    // Nothing outside the chosen tensors is touched.
    for s in specs.iter().filter(|s| !chosen.contains(&s.name)) {
        assert!(mask.live[s.range.clone()].iter().all(|&l| l), "{}", s.name);
    }
    // Per tensor: S of each.
    let layer = prune(&m, 0.3, PruneScope::Layer, PruneMethod::Magnitude, &[], 0).unwrap();
    for s in specs.iter().filter(|s| chosen.contains(&s.name)) {
        let d = layer.live[s.range.clone()].iter().filter(|&&l| !l).count();
        assert_eq!(
            d,
            (0.3 * s.range.len() as f64).floor() as usize,
            "{}",
            s.name
        );
    }
    // Random: the same count in each tensor as magnitude pruning, other entries.
    let random = prune(&m, 0.3, PruneScope::Global, PruneMethod::Random, &[], 5).unwrap();
    assert_ne!(random, mask);
    for s in &specs {
        let count = |m: &Mask| m.live[s.range.clone()].iter().filter(|&&l| !l).count();
        assert_eq!(count(&random), count(&mask), "{}", s.name);
    }
    // Ties: equal magnitudes go in parameter order.
    let lin = toylens::models::linear::Linear::from_params(
        toylens::models::linear::LinearConfig {
            n_in: 4,
            n_out: 1,
            bias: false,
            seed: 0,
        },
        vec![0.5, -0.5, 0.5, 0.1],
    )
    .unwrap();
    let t = prune(
        &lin,
        0.5,
        PruneScope::Global,
        PruneMethod::Magnitude,
        &[],
        0,
    )
    .unwrap();
    assert_eq!(t.live, vec![false, true, true, false]);
    // Bad input.
    for bad in [1.0, -0.1, 1.5] {
        let e = prune(&m, bad, PruneScope::Global, PruneMethod::Magnitude, &[], 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[0, 1)"), "{e}");
    }
    let e = prune(
        &m,
        0.5,
        PruneScope::Global,
        PruneMethod::Magnitude,
        &["blocks.0.mlp.W_inn".into()],
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("did you mean") && e.contains("blocks.0.mlp.W_in"),
        "{e}"
    );
}

fn tiny(dir: &Path, extra: &[&str]) {
    let mut a = vec![
        "train",
        "grokking-tiny",
        "train.checkpoint_every=100",
        "--quiet",
        "--out",
        s(dir),
    ];
    a.extend(extra);
    ok(&a);
}

#[test]
fn masked_weights_stay_zero_through_training_resume_and_tickets() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    tiny(&base, &["train.steps=300"]);
    let mask_path = d.path().join("m.safetensors");
    ok(&[
        "prune",
        s(&base.join("final.safetensors")),
        "--sparsity",
        "0.6",
        "--out",
        s(&mask_path),
    ]);
    // Train with it, killed and resumed on the way: the dead weights are exactly zero in every
    // checkpoint, and the end is the uninterrupted run's.
    let mask_arg = format!("train.mask={}", s(&mask_path));
    let whole = d.path().join("whole");
    tiny(
        &whole,
        &["train.steps=1500", "train.eval_every=10", &mask_arg],
    );
    let killed = d.path().join("killed");
    kill_at_step(
        &[
            "train",
            "grokking-tiny",
            "train.checkpoint_every=100",
            "train.steps=1500",
            "train.eval_every=10",
            &mask_arg,
            "--quiet",
            "--out",
            s(&killed),
        ],
        &killed,
        300,
    );
    ok(&["train", "--quiet", "--resume", s(&killed)]);
    assert_eq!(
        std::fs::read(whole.join("final.safetensors")).unwrap(),
        std::fs::read(killed.join("final.safetensors")).unwrap()
    );
    let fin = checkpoint::load(&killed.join("final.safetensors")).unwrap();
    let mask = mask_of(&mask_path, fin.model.as_ref());
    let dead = mask.live.iter().filter(|&&l| !l).count();
    assert!(dead > 1000, "{dead}");
    for step in toylens::io::run::checkpoint_steps(&killed) {
        let ck = checkpoint::load(&toylens::io::run::checkpoint_path(&killed, step)).unwrap();
        let w = ck.model.params();
        assert!(
            mask.live.iter().zip(w).all(|(&l, &x)| l || x == 0.0),
            "a dead weight is not zero at step {step}"
        );
        assert!(ck.metadata.contains_key("toylens.mask_crc32c"));
    }
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(killed.join("mask.json")).unwrap()).unwrap();
    assert!(counts
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["live"] != c["total"]));
    // Resuming with another mask is refused.
    let other = d.path().join("other.safetensors");
    ok(&[
        "prune",
        s(&base.join("final.safetensors")),
        "--sparsity",
        "0.3",
        "--out",
        s(&other),
    ]);
    let (code, err) = toylens(&[
        "train",
        "--quiet",
        "--resume",
        s(&killed),
        &format!("train.mask={}", s(&other)),
        "train.steps=1600",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("trained with mask") && err.contains("cannot resume"),
        "{err}"
    );
}

#[test]
fn a_ticket_rewinds_bit_for_bit_and_resumes_after_sigkill() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    tiny(&base, &["train.steps=300"]);
    // Sparsity 0 and rewind to step 100: the ticket starts from exactly those weights.
    let t0 = d.path().join("t0");
    ok(&[
        "ticket",
        s(&base),
        "--from",
        "final",
        "--sparsity",
        "0",
        "--rewind",
        "100",
        "--quiet",
        "--out",
        s(&t0),
        "train.steps=100",
    ]);
    let start = checkpoint::load(&t0.join("checkpoints/step_000000.safetensors")).unwrap();
    let k = checkpoint::load(&base.join("checkpoints/step_000100.safetensors")).unwrap();
    assert_eq!(start.model.params(), k.model.params());
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t0.join("ticket.json")).unwrap()).unwrap();
    assert_eq!(spec["rewind"], 100);
    // A ticket at 50% from the final weights, weight decay 0, killed and run again: the same end.
    let args = |out: &PathBuf| -> Vec<String> {
        [
            "ticket",
            s(&base),
            "--from",
            "final",
            "--sparsity",
            "0.5",
            "--quiet",
            "--out",
            s(out),
            "optim.weight_decay=0",
            "train.steps=1500",
            "train.eval_every=10",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let whole = d.path().join("whole");
    let a = args(&whole);
    ok(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let killed = d.path().join("killed");
    kill_at_step(&args(&killed), &killed, 300);
    let b = args(&killed);
    ok(&b.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    // The same weights (the metadata names each ticket's own mask path).
    let w = |p: &Path| {
        checkpoint::load(&p.join("final.safetensors"))
            .unwrap()
            .model
            .params()
            .to_vec()
    };
    assert_eq!(w(&whole), w(&killed));
    // The norm control: the dense model starts from the rewind point scaled to the ticket's norm.
    let nc = d.path().join("nc");
    ok(&[
        "ticket",
        s(&base),
        "--from",
        "final",
        "--sparsity",
        "0.5",
        "--control",
        "norm",
        "--quiet",
        "--out",
        s(&nc),
        "train.steps=50",
    ]);
    let trained = checkpoint::load(&base.join("final.safetensors")).unwrap();
    let m = prune(
        trained.model.as_ref(),
        0.5,
        PruneScope::Global,
        PruneMethod::Magnitude,
        &[],
        0,
    )
    .unwrap();
    let init = checkpoint::load(&base.join("checkpoints/step_000000.safetensors")).unwrap();
    let start = checkpoint::load(&nc.join("checkpoints/step_000000.safetensors")).unwrap();
    assert!(
        !start.metadata.contains_key("toylens.mask_crc32c"),
        "the control is dense"
    );
    let chosen = toylens::models::mask::default_prunable(init.model.as_ref());
    let norm = |w: &[f32], live: Option<&Mask>| -> f64 {
        init.model
            .tensors()
            .iter()
            .filter(|t| chosen.contains(&t.name))
            .flat_map(|t| t.range.clone())
            .filter(|&i| live.is_none_or(|m| m.live[i]))
            .map(|i| f64::from(w[i]).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (ticket_norm, control_norm) = (
        norm(init.model.params(), Some(&m)),
        norm(start.model.params(), None),
    );
    assert!(
        (ticket_norm / control_norm - 1.0).abs() < 1e-5,
        "{ticket_norm} vs {control_norm}"
    );
    // Only the prunable tensors are rescaled.
    for t in init
        .model
        .tensors()
        .iter()
        .filter(|t| !chosen.contains(&t.name))
    {
        assert_eq!(
            init.model.params()[t.range.clone()],
            start.model.params()[t.range.clone()],
            "{}",
            t.name
        );
    }
    // Iterative pruning: two rounds reach the target sparsity of the chosen tensors.
    let imp = d.path().join("imp");
    ok(&[
        "ticket",
        s(&base),
        "--from",
        "final",
        "--sparsity",
        "0.75",
        "--rounds",
        "2",
        "--quiet",
        "--out",
        s(&imp),
        "train.steps=100",
    ]);
    let fin = checkpoint::load(&imp.join("final.safetensors")).unwrap();
    let m = mask_of(&imp.join("mask.safetensors"), fin.model.as_ref());
    let chosen = toylens::models::mask::default_prunable(fin.model.as_ref());
    let n: usize = fin
        .model
        .tensors()
        .iter()
        .filter(|t| chosen.contains(&t.name))
        .map(|t| t.range.len())
        .sum();
    let dead = m.live.iter().filter(|&&l| !l).count();
    assert!(
        (dead as f64 / n as f64 - 0.75).abs() < 0.01,
        "{dead} of {n}"
    );
    assert!(imp.join("rounds/round_1/final.safetensors").exists());
}

#[test]
fn bad_ticket_and_mask_input_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    tiny(&base, &["train.steps=200"]);
    for (args, needles) in [
        (
            vec!["--from", "150", "--sparsity", "0.5"],
            vec!["--from 150", "has no checkpoint", "100, 200"],
        ),
        (
            vec!["--from", "final", "--sparsity", "0.5", "--rewind", "7"],
            vec!["--rewind 7", "has no checkpoint"],
        ),
        (vec!["--from", "final", "--sparsity", "1"], vec!["[0, 1)"]),
        (
            vec!["--from", "soon", "--sparsity", "0.5"],
            vec!["step or `final`"],
        ),
    ] {
        let mut a = vec!["ticket", s(&base)];
        a.extend(args);
        let (code, err) = toylens(&a);
        assert_eq!(code, 1, "{a:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{a:?}: {n}: {err}");
        }
    }
    // A mask whose tensor has another shape (a mask of a bigger model).
    let big = d.path().join("big");
    tiny(&big, &["train.steps=10", "model.d_mlp=128"]);
    let m = d.path().join("big_mask.safetensors");
    ok(&[
        "prune",
        s(&big.join("final.safetensors")),
        "--sparsity",
        "0.5",
        "--out",
        s(&m),
    ]);
    let (code, err) = toylens(&[
        "train",
        "grokking-tiny",
        "train.steps=10",
        &format!("train.mask={}", s(&m)),
        "--quiet",
        "--out",
        s(&d.path().join("x")),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("train.mask")
            && err.contains("blocks.0.mlp.W_in")
            && err.contains("[32, 128]")
            && err.contains("[32, 64]"),
        "{err}"
    );
}
