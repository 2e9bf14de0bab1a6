//! Fourier analysis and progress measures.

use std::path::Path;
use toylens::analysis::fourier::{FourierBasis, SumProjection};
use toylens::analysis::{analyze, analyze_with_keys, gini, progress};
use toylens::engine::rng::Rng;
use toylens::tasks::modular::Op;

#[test]
fn the_fourier_basis_is_orthonormal() {
    for p in [7, 8, 113] {
        let b = FourierBasis::new(p);
        assert_eq!(b.rows.len(), p);
        for i in 0..p {
            for j in 0..p {
                let dot: f64 = b.rows[i].iter().zip(&b.rows[j]).map(|(x, y)| x * y).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "p={p} rows {i},{j}: {dot}");
            }
        }
        assert_eq!(b.names[1], "cos 1");
        assert_eq!(b.names[2], "sin 1");
    }
}

#[test]
fn gini_of_known_vectors() {
    assert_eq!(gini(&[2.0; 10]), 0.0);
    let mut one_hot = vec![0.0; 100];
    one_hot[37] = 5.0;
    assert!((gini(&one_hot) - 0.99).abs() < 1e-12, "{}", gini(&one_hot));
    let g = gini(&[1.0, 2.0, 3.0, 4.0]);
    assert!((g - 0.25).abs() < 1e-12, "{g}");
}

#[test]
fn keeping_every_frequency_keeps_any_function_of_x_plus_y() {
    let p = 11;
    let mut rng = Rng::new(1);
    let f: Vec<Vec<f64>> = (0..p)
        .map(|_| (0..p).map(|_| rng.normal()).collect())
        .collect();
    let logits: Vec<Vec<f64>> = (0..p * p).map(|i| f[(i / p + i % p) % p].clone()).collect();
    let proj = SumProjection::new(&logits, p, |x, y| (x + y) % p);
    let all: Vec<usize> = (1..=p / 2).collect();
    let r = proj.restricted(&all);
    for s in 0..p {
        for c in 0..p {
            assert!((r[s][c] - f[s][c]).abs() < 1e-12, "s={s} c={c}");
        }
    }
    // Keeping nothing leaves the constant: the mean logit of each answer.
    let r0 = proj.restricted(&[]);
    for c in 0..p {
        let mean = (0..p).map(|s| f[s][c]).sum::<f64>() / p as f64;
        assert!((r0[3][c] - mean).abs() < 1e-12);
    }
}

fn grokked() -> toylens::io::pth::ImportedGrokking {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/progress-measures/wd_10-1_mod_addition_loss_curve.pth");
    toylens::io::pth::import_grokking(&p).expect("fixtures in ../shared")
}

#[test]
fn the_grokked_model_is_a_few_frequencies_of_x_plus_y() {
    let g = grokked();
    let task = g.task.modular_task().unwrap();
    let a = analyze(&g.model, 113, Op::Add, Some(&task)).unwrap();
    assert!(
        (3..=8).contains(&a.key_frequencies.len()),
        "{:?}",
        a.key_frequencies
    );
    assert!(a.loss_all < 1e-6);
    assert!(
        a.restricted_loss < 1e-5,
        "restricted loss {}",
        a.restricted_loss
    );
    assert!(
        a.excluded_loss > 1e3 * a.loss_all.max(a.restricted_loss),
        "excluded loss {}",
        a.excluded_loss
    );
    assert!(
        a.gini_w_l > 0.6 && a.gini_w_l > a.gini_w_e,
        "Gini W_L {} W_E {}",
        a.gini_w_l,
        a.gini_w_e
    );
    // Excluding nothing (on all pairs) is the full loss.
    let none = analyze_with_keys(&g.model, 113, Op::Add, None, Some(&[])).unwrap();
    assert!(
        (none.excluded_loss - none.loss_all).abs() <= 1e-12 * none.loss_all.max(1e-30),
        "{} vs {}",
        none.excluded_loss,
        none.loss_all
    );
    let json = serde_json::to_value(&a).unwrap();
    for k in [
        "key_frequencies",
        "loss_all",
        "restricted_loss",
        "excluded_loss",
        "gini_W_E",
        "gini_W_L",
        "sum_sq_weights",
    ] {
        assert!(!json[k].is_null(), "JSON lacks {k}");
    }
}

#[test]
fn progress_over_a_run_and_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("r");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toylens"))
        .args([
            "train",
            "grokking-tiny",
            "train.steps=200",
            "train.checkpoint_every=100",
            "--quiet",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = progress(&run).unwrap();
    assert_eq!(rows.first().unwrap().step, 0);
    assert_eq!(rows.last().unwrap().step, 200);
    // `analyze` on the run writes into its own folder and leaves the training outputs as they were.
    let outputs = [
        "config.yaml",
        "metrics.csv",
        "metrics.jsonl",
        "summary.json",
        "loss.png",
    ];
    let before: Vec<Vec<u8>> = outputs
        .iter()
        .map(|f| std::fs::read(run.join(f)).unwrap())
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toylens"))
        .arg("analyze")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run.join("analysis/progress.csv").exists());
    assert!(run.join("analysis/progress.png").exists());
    assert!(!run.join("progress.csv").exists());
    for (f, b) in outputs.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(run.join(f)).unwrap(),
            b,
            "analyze changed {f}"
        );
    }
    // A run directory without checkpoints.
    std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
    std::fs::create_dir(run.join("checkpoints")).unwrap();
    assert!(progress(&run)
        .unwrap_err()
        .to_string()
        .contains("no checkpoints"));
    // A model that is not a modular-addition model.
    let cfg = toylens::TransformerConfig {
        attn_only: true,
        d_mlp: None,
        act_fn: None,
        ..toylens::TransformerConfig::nanda(113)
    };
    let m = toylens::Transformer::new(cfg).unwrap();
    assert!(analyze(&m, 113, Op::Add, None)
        .unwrap_err()
        .to_string()
        .contains("no MLP"));
    let m = toylens::Transformer::new(toylens::TransformerConfig::nanda(7)).unwrap();
    assert!(analyze(&m, 113, Op::Add, None)
        .unwrap_err()
        .to_string()
        .contains("not a modular-arithmetic model"));
    assert!(analyze(&m, 7, Op::Mul, None).is_err());
}

#[test]
fn ablation_baseline_is_the_model_and_the_linear_shortcut_matches_hooked_runs() {
    use ndarray::{ArrayViewMutD, Axis};
    use toylens::analysis::ablation::{ablate_all, baseline, Unit};
    use toylens::hooks::Hooks;
    // A small trained-ish model: a few steps of the tiny preset would do, but random weights are a
    // sharper test of the algebra.
    let cfg = toylens::TransformerConfig {
        d_model: 32,
        n_heads: 2,
        d_head: 16,
        d_mlp: Some(24),
        seed: Some(4),
        ..toylens::TransformerConfig::nanda(13)
    };
    let model = toylens::Transformer::new(cfg).unwrap();
    let (loss, acc) = baseline(&model, 13, Op::Add).unwrap();
    let ev = toylens::tasks::modular::evaluate(&model, 13, Op::Add, None).unwrap();
    // The full path (hooks) and the shortcut path agree to f32 rounding.
    assert!(
        (loss - ev.loss_all).abs() < 1e-5 * ev.loss_all && (acc - ev.acc_all).abs() <= 1.0 / 169.0,
        "nothing ablated must be the model itself: {loss} vs {}",
        ev.loss_all
    );
    let rows = ablate_all(&model, 13, Op::Add).unwrap();
    assert_eq!(rows.iter().filter(|r| r.unit == Unit::Neuron).count(), 24);
    assert_eq!(rows.iter().filter(|r| r.unit == Unit::Head).count(), 2);
    assert!(
        rows.windows(2).all(|w| w[0].zero_loss >= w[1].zero_loss),
        "ranked"
    );
    // The linear shortcut (one cached run) against real hooked runs.
    let task = toylens::tasks::modular::ModularTask {
        p: 13,
        op: Op::Add,
        frac_train: 0.5,
        seed: 0,
        split: toylens::tasks::modular::Split::Random,
    };
    let b = task.batch(&task.all_pairs());
    for n in [0usize, 7, 23] {
        for mean in [false, true] {
            let hook = move |a: &mut ArrayViewMutD<f32>| {
                let mut c = a.index_axis_mut(Axis(2), n);
                if mean {
                    let m = c.mean_axis(Axis(0)).unwrap();
                    c.axis_iter_mut(Axis(0)).for_each(|mut r| r.assign(&m));
                } else {
                    c.fill(0.0);
                }
            };
            let out = model
                .run_with_hooks(
                    b.tokens.view(),
                    Hooks::new().add("blocks.0.mlp.hook_post", hook),
                )
                .unwrap();
            let v = model.cfg.d_vocab_out();
            let mut total = 0.0;
            for (i, &t) in b.targets.column(0).iter().enumerate() {
                let l: Vec<f64> = (0..v).map(|c| out[[i, 2, c]] as f64).collect();
                let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                total += m + l.iter().map(|x| (x - m).exp()).sum::<f64>().ln() - l[t as usize];
            }
            let hooked = total / b.targets.nrows() as f64;
            let r = rows
                .iter()
                .find(|r| r.unit == Unit::Neuron && r.index == n)
                .unwrap();
            let fast = if mean { r.mean_loss } else { r.zero_loss };
            assert!(
                (fast - hooked).abs() < 1e-5 * hooked,
                "neuron {n} mean={mean}: shortcut {fast} vs hooked {hooked}"
            );
        }
    }
}

#[test]
fn patching_moves_the_answer_and_patching_into_itself_changes_nothing() {
    use toylens::analysis::patching::patch;
    use toylens::hooks::PatchSpec;
    let g = grokked();
    let (src, tgt) = ([5u32, 7, 113], [20u32, 30, 113]);
    // The whole residual stream at the answer position carries the answer.
    let e = patch(
        &g.model,
        "blocks.0.hook_resid_post",
        &src,
        &tgt,
        50,
        PatchSpec {
            position: Some(2),
            head: None,
        },
    )
    .unwrap();
    assert_eq!(e.prediction_after, 12);
    assert!(e.loss_after > 10.0 && e.loss_before < 1e-5);
    // Into itself: nothing moves, for any hook point.
    for hook in [
        "hook_embed",
        "blocks.0.attn.hook_pattern",
        "blocks.0.mlp.hook_post",
    ] {
        let e = patch(&g.model, hook, &tgt, &tgt, 50, PatchSpec::default()).unwrap();
        assert_eq!(e.logit_before, e.logit_after, "{hook}");
        assert_eq!(e.loss_before, e.loss_after, "{hook}");
    }
    let err = patch(
        &g.model,
        "blocks.0.attn.hook_patern",
        &src,
        &tgt,
        50,
        PatchSpec::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("did you mean blocks.0.attn.hook_pattern"),
        "{err}"
    );
    assert!(patch(
        &g.model,
        "blocks.0.hook_resid_post",
        &src,
        &tgt,
        50,
        PatchSpec {
            position: None,
            head: Some(1)
        }
    )
    .is_err());
}

#[test]
fn neurons_are_assigned_their_frequency() {
    use ndarray::Array3;
    use toylens::analysis::neurons::{frequency_shares, neuron_frequencies};
    let p = 17;
    // Neuron 0: cos(3(x+y)); neuron 1: sin(5x)·cos(5y) + 0.1 noise-free offset; neuron 2: ReLU(cos(2x)+cos(2y)).
    let w = |k: usize, t: usize| std::f64::consts::TAU * (k * t) as f64 / p as f64;
    let grid = Array3::from_shape_fn((p, p, 3), |(x, y, n)| match n {
        0 => w(3, x + y).cos() as f32,
        1 => (w(5, x).sin() * w(5, y).cos() + 0.1) as f32,
        _ => (w(2, x).cos() + w(2, y).cos()).max(0.0) as f32,
    });
    let (best, share) = frequency_shares(&grid);
    assert_eq!(best, vec![3, 5, 2]);
    assert!(share[0] > 0.999 && share[1] > 0.999, "{share:?}");
    assert!(
        share[2] > 0.5,
        "ReLU of one frequency is mostly that frequency: {}",
        share[2]
    );
    // The grokked model's neurons cluster on its key frequencies.
    let g = grokked();
    let nf = neuron_frequencies(&g.model, 113).unwrap();
    let keys = analyze(&g.model, 113, Op::Add, None)
        .unwrap()
        .key_frequencies;
    let clustered: usize = nf.clusters.iter().map(|c| c.size).sum();
    let on_keys: usize = nf
        .clusters
        .iter()
        .filter(|c| keys.contains(&c.frequency))
        .map(|c| c.size)
        .sum();
    assert!(
        clustered > 256,
        "most neurons belong to a cluster: {clustered}"
    );
    assert!(
        on_keys as f64 > 0.9 * clustered as f64,
        "clusters {:?} vs keys {keys:?}",
        nf.clusters
    );
}

#[test]
fn cli_analyze_ablate_and_patch() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/progress-measures/wd_10-1_mod_addition_loss_curve.pth");
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_toylens"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "analyze",
        fixture.to_str().unwrap(),
        "--json",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "key_frequencies",
        "loss_all",
        "restricted_loss",
        "excluded_loss",
        "gini_W_E",
        "gini_W_L",
        "sum_sq_weights",
        "neuron_clusters",
    ] {
        assert!(!v[k].is_null(), "{k} missing");
    }
    for f in [
        "we_fourier_norms",
        "neuron_clusters",
        "neuron_activation",
        "attention_patterns",
    ] {
        for ext in ["png", "svg"] {
            let p = d.path().join(format!("{f}.{ext}"));
            assert!(
                std::fs::metadata(&p)
                    .map(|m| m.len() > 1000)
                    .unwrap_or(false),
                "{} missing or empty",
                p.display()
            );
        }
    }
    let out = run(&[
        "ablate",
        fixture.to_str().unwrap(),
        "--json",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ablations"].as_array().unwrap().len(), 512 + 4);
    assert!(d.path().join("ablation_ranking.png").exists());
    let out = run(&[
        "patch",
        fixture.to_str().unwrap(),
        "--hook",
        "blocks.0.hook_resid_post",
        "--source",
        "5,7",
        "--target",
        "20,30",
        "--position",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prediction_after"], 12);
    let out = run(&[
        "patch",
        fixture.to_str().unwrap(),
        "--hook",
        "blocks.0.mlp.hook_pots",
        "--source",
        "5,7",
        "--target",
        "20,30",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("blocks.0.mlp.hook_post")
            && !err.contains("panicked"),
        "{err}"
    );
    let out = run(&[
        "patch",
        fixture.to_str().unwrap(),
        "--hook",
        "hook_embed",
        "--source",
        "5,700",
        "--target",
        "20,30",
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("below p = 113")
    );
}

#[test]
fn analysing_a_checkpoint_of_another_task_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("digits.safetensors");
    let model = toylens::Transformer::new(toylens::TransformerConfig::nanda(13)).unwrap();
    let task = toylens::tasks::TaskInfo::Digits {
        n_digits: 3,
        reverse_sum: false,
    };
    toylens::io::checkpoint::save(&path, &model, Some(&task), &Default::default()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toylens"))
        .arg("analyze")
        .arg(&path)
        .output()
        .unwrap();
    // A modular-shaped model recorded as a digits model: analyze names the file and the mismatch.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("digits.safetensors")
            && err.contains("does not fit the 3-digit task")
            && !err.contains("panicked"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toylens"))
        .arg("ablate")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("`toylens analyze` gives its ablation per answer digit"),
        "{err}"
    );
}
