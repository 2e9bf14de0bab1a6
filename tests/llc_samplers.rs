//! The samplers beside SGLD (RMSprop-SGLD, SGNHT), their per-step norms, and the observed sets of
//! the data-refined LLC: known answers on linear regression (λ = d/2), exact identities of the
//! norms, and the task's named sets through the command line.

use toylens::analysis::llc::{estimate, estimate_observed, LlcConfig, NBeta, Sampler};
#[path = "common/cli.rs"]
mod cli;
#[path = "common/regression.rs"]
#[allow(dead_code)]
mod regression;
use cli::toylens_cmd;
use regression::fitted_regression;
use toylens::batch::Batch;
use toylens::models::linear::Linear;
use toylens::models::Model;
use toylens::tasks::NamedSet;

fn regression(n: usize, d: usize) -> (Linear, Batch) {
    fitted_regression(n, d, false)
}

fn settings(sampler: Sampler) -> LlcConfig {
    LlcConfig {
        sampler,
        lr: 1e-3,
        localization: 1.0,
        nbeta: NBeta::Batch,
        chains: 8,
        draws: 2000,
        burnin: 500,
        batch_size: Some(500),
        seed: 1,
        ..LlcConfig::default()
    }
}

#[test]
fn each_sampler_finds_half_the_parameter_count_of_linear_regression() {
    let d = 10;
    let (model, data) = regression(10_000, d);
    let theory = d as f64 / 2.0;
    for cfg in [
        // The preconditioner G ≤ 1/eps = 10 multiplies the step: ε·G is what SGLD's ε was.
        LlcConfig {
            lr: 1e-4,
            ..settings(Sampler::RmspropSgld)
        },
        // devinterp's SGNHT: no localization.
        LlcConfig {
            localization: 0.0,
            lr: 1e-4,
            ..settings(Sampler::Sgnht)
        },
    ] {
        let e = estimate(&model, &data, &cfg).unwrap();
        let name = cfg.sampler.name();
        eprintln!(
            "{name}: λ̂ {:.3} ± {:.3} (theory {theory})",
            e.llc_mean, e.llc_std
        );
        assert!(
            (e.llc_mean - theory).abs() < 0.1 * theory,
            "{name}: λ̂ {:.3} ± {:.3}, theory {theory} (chains {:?}; warnings {:?})",
            e.llc_mean,
            e.llc_std,
            e.llc_per_chain,
            e.warnings
        );
        assert!(e.warnings.is_empty(), "{name}: {:?}", e.warnings);
        assert!(e.mean_acceptance.is_nan(), "{name}: MALA is SGLD's");
        // Chains are seeded by (seed, chain) alone: the same bits on one thread or two.
        let short = LlcConfig {
            draws: 100,
            burnin: 10,
            ..cfg.clone()
        };
        let runs: Vec<Vec<f64>> = [1, 2]
            .iter()
            .map(|&t| {
                toylens::engine::threads::with_threads(t, || {
                    estimate(&model, &data, &short).unwrap().llc_per_chain
                })
            })
            .collect();
        assert_eq!(runs[0], runs[1], "{name}");
    }
}

#[test]
fn the_step_norms_are_the_terms_the_update_applies() {
    let d = 10;
    let (model, data) = regression(2_000, d);
    let cfg = LlcConfig {
        chains: 2,
        draws: 50,
        burnin: 0,
        localization: 30.0,
        ..settings(Sampler::Sgld)
    };
    let e = estimate(&model, &data, &cfg).unwrap();
    let (lr, gamma) = (cfg.lr, cfg.localization);
    for chain in &e.chains {
        assert_eq!(chain.norms.len(), 50);
        assert_eq!(chain.norms[0].distance, 0.0, "the first step starts at w*");
        for (i, n) in chain.norms.iter().enumerate() {
            // SGLD: no preconditioner, the localization term is (ε/2)·γ·δ.
            assert_eq!(n.scaled_grad, n.unscaled_grad);
            let want = 0.5 * lr * gamma * n.distance;
            assert!(
                (n.localization - want).abs() <= 1e-5 * want.max(1e-12),
                "step {i}: {} vs {want}",
                n.localization
            );
            // √ε·η over d weights: E‖·‖² = ε·d.
            let expected = (lr * d as f64).sqrt();
            assert!(
                (n.noise / expected - 1.0).abs() < 0.8,
                "step {i}: noise {} vs {expected}",
                n.noise
            );
            assert_eq!(n.thermostat, 0.0);
        }
        // The draws' distances are the norms' (the draw is taken before its step's update).
        assert_eq!(chain.distances[0], chain.norms[0].distance);
    }
    // RMSprop: the preconditioner 1 / (√v + eps) ≤ 1 / eps scales the gradient term.
    let rms = LlcConfig {
        rmsprop_eps: 0.5,
        ..cfg.clone()
    };
    let rms = estimate(
        &model,
        &data,
        &LlcConfig {
            sampler: Sampler::RmspropSgld,
            ..rms
        },
    )
    .unwrap();
    for chain in &rms.chains {
        for n in &chain.norms {
            assert!(n.scaled_grad <= n.unscaled_grad / 0.5 * (1.0 + 1e-6));
        }
    }
    // SGNHT: the thermostat starts at A and moves by mean(p²) − ε each step.
    let nht = estimate(
        &model,
        &data,
        &LlcConfig {
            sampler: Sampler::Sgnht,
            localization: 0.0,
            lr: 1e-4,
            ..cfg
        },
    )
    .unwrap();
    for chain in &nht.chains {
        assert!(chain.norms.iter().all(|n| n.thermostat.is_finite()));
        assert_ne!(chain.norms[0].thermostat, 0.01);
        assert_eq!(chain.norms[0].localization, 0.0);
    }
}

#[test]
fn an_observed_copy_of_the_sampling_set_gives_the_same_llc() {
    // Full-batch chains: each draw's loss is the whole set's at that point, which is what the
    // observed set (the same examples) records there.
    let (model, data) = regression(400, 4);
    let cfg = LlcConfig {
        chains: 3,
        draws: 200,
        burnin: 50,
        batch_size: Some(400),
        observe_examples: Some(400),
        ..settings(Sampler::Sgld)
    };
    let set = NamedSet::whole("again", "the sampling set", data.clone());
    let half = NamedSet::whole("half", "its first half", data.head(200));
    let e = estimate_observed(&[&model as &dyn Model], (&data, &[set, half]), &cfg, None)
        .unwrap()
        .remove(0);
    assert_eq!(e.observed.len(), 2);
    let same = &e.observed[0];
    assert_eq!(same.set, "again");
    for (a, b) in same.llc_per_chain.iter().zip(&e.llc_per_chain) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{a} vs {b}");
    }
    assert!((same.init_loss - e.init_loss).abs() <= 1e-6 * e.init_loss);
    // Half the examples: the same posterior measured on fewer points, a different number.
    assert_ne!(e.observed[1].llc_mean, same.llc_mean);
    assert!(e.observed[1].llc_mean.is_finite());
    for t in &e.chains {
        assert_eq!(t.observed[0].len(), t.losses.len());
    }
}

#[test]
fn sampler_settings_out_of_range_are_errors_that_name_them() {
    let (model, data) = regression(200, 2);
    for (cfg, needle) in [
        (
            LlcConfig {
                rmsprop_alpha: 1.0,
                ..settings(Sampler::RmspropSgld)
            },
            "--rmsprop-alpha",
        ),
        (
            LlcConfig {
                rmsprop_eps: 0.0,
                ..settings(Sampler::RmspropSgld)
            },
            "--rmsprop-eps",
        ),
        (
            LlcConfig {
                diffusion: 1.5,
                ..settings(Sampler::Sgnht)
            },
            "--diffusion",
        ),
        (
            LlcConfig {
                observe_examples: Some(0),
                ..settings(Sampler::Sgld)
            },
            "--observe-examples",
        ),
    ] {
        let cfg = LlcConfig {
            batch_size: Some(100),
            ..cfg
        };
        let e = estimate(&model, &data, &cfg).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

#[test]
fn a_tasks_named_sets_are_observed_through_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("ind");
    let r = run.to_str().unwrap();
    let (code, _, err) = toylens_cmd(&[
        "train",
        "induction",
        "train.steps=30",
        "train.eval_every=30",
        "train.checkpoint_every=30",
        "--quiet",
        "--out",
        r,
    ]);
    assert_eq!(code, 0, "{err}");
    let ckpt = run.join("final.safetensors");
    let c = ckpt.to_str().unwrap();
    let (code, out, err) = toylens_cmd(&["llc", c, "--observe", "list"]);
    assert_eq!(code, 0, "{err}");
    for name in ["train", "test", "test_first", "test_repeat"] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{name}: {out}");
    }
    let small = ["--chains", "2", "--draws", "10", "--burnin", "5"];
    let out_dir = d.path().join("llc");
    let mut args = vec!["llc", c, "--json", "--observe", "test_first,test_repeat"];
    args.extend(["--observe-examples", "32", "--sampler", "sgnht"]);
    args.extend(["--localization", "0", "--out", out_dir.to_str().unwrap()]);
    args.extend(small);
    let (code, out, err) = toylens_cmd(&args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sampler"], "sgnht");
    let observed = v["observed"].as_array().unwrap();
    assert_eq!(observed.len(), 2);
    assert_eq!(observed[1]["set"], "test_repeat");
    for o in observed {
        assert!(o["llc_mean"].as_f64().unwrap().is_finite(), "{o}");
        assert!(o["init_loss"].as_f64().unwrap() > 0.0, "{o}");
    }
    let norms = std::fs::read_to_string(out_dir.join("llc_norms.csv")).unwrap();
    assert!(norms.starts_with("# sampler: sgnht\nchain,step,scaled_grad,"));
    assert_eq!(norms.lines().count(), 2 + 2 * 15);
    assert!(out_dir.join("llc_norms.png").exists());
    // Sampled on the evaluation set (the data-refined LLC), observed on the repeats.
    let mut args = vec!["llc", c, "--json", "--sample-on", "test"];
    args.extend(["--observe", "test_repeat", "--batch-size", "64"]);
    args.extend(small);
    let (code, out, err) = toylens_cmd(&args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["llc_mean"].as_f64().unwrap().is_finite());
    // Over the run: a column per observed set in llc.csv.
    let mut args = vec!["llc", r, "--observe", "test_repeat", "--batch-size", "64"];
    args.extend(small);
    let (code, _, err) = toylens_cmd(&args);
    assert_eq!(code, 0, "{err}");
    let csv = std::fs::read_to_string(run.join("analysis/llc.csv")).unwrap();
    let header = csv.lines().find(|l| l.starts_with("step,")).unwrap();
    assert!(
        header.ends_with(",llc_test_repeat,llc_std_test_repeat,init_loss_test_repeat"),
        "{header}"
    );
    assert!(run.join("analysis/llc.png").exists());
    // Another sampler's estimate over the run has files of its own: llc.csv stays the SGLD one.
    let mut args = vec!["llc", r, "--sampler", "sgnht", "--localization", "0"];
    args.extend(["--batch-size", "64"]);
    args.extend(small);
    let (code, _, err) = toylens_cmd(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(run.join("analysis/llc.csv")).unwrap(),
        csv
    );
    let sgnht = std::fs::read_to_string(run.join("analysis/llc_sgnht.csv")).unwrap();
    assert!(sgnht.starts_with("# sampler: sgnht\nstep,"), "{sgnht}");
    for (extra, needle) in [
        (
            vec!["--per-head", "--observe", "test"],
            "--observe records each set beside one estimate; --per-head gives many",
        ),
        (
            vec!["--observe", "repeats"],
            "has no set `repeats`; its sets: train (",
        ),
        (
            vec!["--sample-on", "test_repeat"],
            "--sample-on test_repeat: that set counts only some loss positions",
        ),
        (vec!["--sampler", "hmc"], "invalid value 'hmc'"),
        (vec!["--diffusion", "0"], "--diffusion"),
    ] {
        let mut args = vec!["llc", c];
        args.extend(extra);
        let (code, _, err) = toylens_cmd(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn the_digit_adders_observe_each_digit() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("digits");
    let r = run.to_str().unwrap();
    let (code, _, err) = toylens_cmd(&[
        "train",
        "digits3",
        "data.infinite=false",
        "data.frac_train=0.01",
        "model.d_model=64",
        "model.d_mlp=128",
        "model.d_head=16",
        "train.steps=20",
        "train.eval_every=20",
        "--quiet",
        "--out",
        r,
    ]);
    assert_eq!(code, 0, "{err}");
    let c = run.join("final.safetensors");
    let mut args = vec!["llc", c.to_str().unwrap(), "--json"];
    args.extend(["--observe", "test_d0,test_d3", "--sample-on", "train_d0"]);
    args.extend(["--chains", "2", "--draws", "10", "--burnin", "5"]);
    let (code, out, err) = toylens_cmd(&args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let observed = v["observed"].as_array().unwrap();
    assert_eq!(observed[0]["set"], "test_d0");
    assert_eq!(observed[1]["set"], "test_d3");
    // Each digit is its own loss: different values at w*.
    assert_ne!(observed[0]["init_loss"], observed[1]["init_loss"]);
}
