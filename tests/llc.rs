//! Known-answer tests of the learning-coefficient estimator: a regular model (linear regression,
//! λ = d/2) and a singular one (y = a·x + b²·x², true a = b = 0: K(a, b) = (a² + 3b⁴)/2 for
//! x ~ N(0, 1), λ = 1/2 + 1/4 = 3/4, where a regular two-parameter model has 1).

use toylens::analysis::llc::{estimate, InitLoss, LlcConfig, NBeta};
use toylens::batch::{Batch, DenseBatch, Input, LossStats};
use toylens::engine::rng::Rng;
use toylens::hooks::{ActivationCache, CacheFilter, Hooks};
use toylens::models::linear::{Linear, LinearConfig};
use toylens::models::{Model, Scratch, TensorSpec};

#[path = "common/cli.rs"]
mod cli;
#[path = "common/regression.rs"]
mod regression;
use cli::toylens_cmd;
use regression::{fitted_regression, least_squares_on, regression_data};

fn settings() -> LlcConfig {
    LlcConfig {
        lr: 1e-3,
        localization: 1.0,
        nbeta: NBeta::Batch,
        chains: 8,
        draws: 2000,
        burnin: 500,
        steps_between_draws: 1,
        batch_size: Some(500),
        seed: 1,
        init_loss: InitLoss::Full,
        ..LlcConfig::default()
    }
}

#[test]
fn linear_regression_has_half_its_parameter_count() {
    let d = 10;
    let (model, data) = fitted_regression(10_000, d, false);
    let e = estimate(&model, &data, &settings()).unwrap();
    let theory = d as f64 / 2.0;
    assert!(
        (e.llc_mean - theory).abs() < 0.1 * theory,
        "λ̂ {:.3} ± {:.3}, theory {theory} (chains {:?}; warnings {:?})",
        e.llc_mean,
        e.llc_std,
        e.llc_per_chain,
        e.warnings
    );
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    eprintln!(
        "linear regression: λ̂ {:.3} ± {:.3} (theory {theory}), acceptance {:.2}",
        e.llc_mean, e.llc_std, e.mean_acceptance
    );
    // The same settings, same bits, on one thread or two: chains are seeded by (seed, chain) alone.
    for threads in [1, 2] {
        let again = toylens::engine::threads::with_threads(threads, || {
            estimate(&model, &data, &settings()).unwrap()
        });
        assert_eq!(again.llc_per_chain, e.llc_per_chain, "{threads} threads");
    }
}

/// y = a·x + b²·x²: parameters `[a, b]`, loss the mean of ½(y − ŷ)².
#[derive(Clone)]
struct Quadratic {
    w: Vec<f32>,
}

impl Quadratic {
    fn xy(batch: &Batch) -> (&[f32], &[f32]) {
        let Batch::Dense(DenseBatch { x, y: Some(y) }) = batch else {
            panic!("dense batches with targets")
        };
        (x.as_slice().unwrap(), y.as_slice().unwrap())
    }
}

fn stats(loss: f64) -> LossStats {
    LossStats {
        loss,
        ..Default::default()
    }
}

impl Model for Quadratic {
    fn arch(&self) -> &'static str {
        "quadratic"
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn params(&self) -> &[f32] {
        &self.w
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.w
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let one = |name: &str, at: usize| TensorSpec {
            name: name.into(),
            shape: vec![1],
            range: at..at + 1,
            trainable: true,
        };
        vec![one("a", 0), one("b", 1)]
    }
    fn hook_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn example_input(&self) -> Batch {
        unimplemented!()
    }
    fn evaluate(&self, _: &mut Scratch, batch: &Batch) -> toylens::Result<LossStats> {
        let (x, y) = Self::xy(batch);
        let (a, b) = (self.w[0] as f64, self.w[1] as f64);
        let l: f64 = x
            .iter()
            .zip(y)
            .map(|(&x, &y)| {
                let (x, y) = (x as f64, y as f64);
                0.5 * (y - a * x - b * b * x * x).powi(2)
            })
            .sum();
        Ok(stats(l / x.len() as f64))
    }
    fn loss_and_grad(
        &self,
        s: &mut Scratch,
        batch: &Batch,
        grads: &mut [f32],
    ) -> toylens::Result<LossStats> {
        let (x, y) = Self::xy(batch);
        let (a, b) = (self.w[0] as f64, self.w[1] as f64);
        let (mut ga, mut gb) = (0.0, 0.0);
        for (&x, &y) in x.iter().zip(y) {
            let (x, y) = (x as f64, y as f64);
            let r = a * x + b * b * x * x - y;
            ga += r * x;
            gb += r * 2.0 * b * x * x;
        }
        let n = x.len() as f64;
        grads[0] = (ga / n) as f32;
        grads[1] = (gb / n) as f32;
        self.evaluate(s, batch)
    }
    fn run(
        &self,
        _: Input,
        _: Hooks,
        _: Option<CacheFilter>,
    ) -> toylens::Result<(ndarray::ArrayD<f32>, ActivationCache)> {
        unimplemented!()
    }
    fn clone_box(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[test]
fn a_singular_model_has_its_learning_coefficient_not_the_regular_one() {
    // True a = b = 0; the noise is small so that the sample's own minimum sits close to 0.
    let data = regression_data(10_000, 1, &[0.0], 0.1, 5);
    let model = Quadratic { w: vec![0.0, 0.0] };
    let cfg = LlcConfig {
        localization: 0.1,
        draws: 4000,
        ..settings()
    };
    let e = estimate(&model, &data, &cfg).unwrap();
    // λ = 3/4; a regular model of two parameters has 1, and the a-direction alone 1/2.
    assert!(
        (e.llc_mean - 0.75).abs() < 0.075,
        "λ̂ {:.3} ± {:.3}, theory 0.75 (chains {:?}; warnings {:?})",
        e.llc_mean,
        e.llc_std,
        e.llc_per_chain,
        e.warnings
    );
    eprintln!(
        "y = a·x + b²·x²: λ̂ {:.3} ± {:.3} (theory 0.75), acceptance {:.2}",
        e.llc_mean, e.llc_std, e.mean_acceptance
    );
    // Clearly apart from the regular value: more than five standard errors below 1.
    let se = e.llc_std / (cfg.chains as f64).sqrt();
    assert!(1.0 - e.llc_mean > 5.0 * se, "λ̂ {} ± {se}", e.llc_mean);
}

#[test]
fn the_default_minibatch_on_a_smaller_training_set_is_the_whole_set_and_says_so() {
    let data = regression_data(100, 1, &[0.5], 0.1, 3);
    let model = Quadratic { w: vec![0.1, 0.1] };
    let short = LlcConfig {
        draws: 50,
        burnin: 10,
        chains: 2,
        ..settings()
    };
    let default = estimate(
        &model,
        &data,
        &LlcConfig {
            batch_size: None,
            ..short.clone()
        },
    )
    .unwrap();
    let whole = estimate(
        &model,
        &data,
        &LlcConfig {
            batch_size: Some(100),
            ..short.clone()
        },
    )
    .unwrap();
    assert_eq!(default.llc_mean.to_bits(), whole.llc_mean.to_bits());
    assert!(
        default.warnings[0].contains("default minibatch of 512")
            && default.warnings[0].contains("the whole set is used"),
        "{:?}",
        default.warnings
    );
    assert!(!whole
        .warnings
        .iter()
        .any(|w| w.contains("default minibatch")));
    // Given, a minibatch larger than the set is still an error.
    let e = estimate(
        &model,
        &data,
        &LlcConfig {
            batch_size: Some(512),
            ..short
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--batch-size") && e.contains("larger than the training set"),
        "{e}"
    );
}

#[test]
fn bad_settings_are_errors_that_name_them() {
    let data = regression_data(100, 2, &[1.0, 0.0], 1.0, 0);
    let model = Linear::new(LinearConfig {
        n_in: 2,
        n_out: 1,
        bias: true,
        seed: 0,
    })
    .unwrap();
    for (cfg, needle) in [
        (
            LlcConfig {
                lr: 0.0,
                ..settings()
            },
            "--lr",
        ),
        (
            LlcConfig {
                lr: -1.0,
                ..settings()
            },
            "--lr",
        ),
        (
            LlcConfig {
                chains: 0,
                ..settings()
            },
            "--chains",
        ),
        (
            LlcConfig {
                draws: 0,
                ..settings()
            },
            "--draws",
        ),
        (
            LlcConfig {
                batch_size: Some(101),
                ..settings()
            },
            "larger than the training set (100",
        ),
        (
            LlcConfig {
                localization: -1.0,
                ..settings()
            },
            "--localization",
        ),
    ] {
        let cfg = LlcConfig {
            batch_size: cfg.batch_size.map(|m| m.min(101)),
            ..cfg
        };
        let cfg = if needle.starts_with("larger") {
            cfg
        } else {
            LlcConfig {
                batch_size: Some(50),
                ..cfg
            }
        };
        let e = estimate(&model, &data, &cfg).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../shared/fixtures/progress-measures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn bad_command_lines_are_clear_errors() {
    let grokked = fixture("wd_10-1_mod_addition_loss_curve.pth");
    for (extra, needle) in [
        (vec!["--lr", "0"], "--lr"),
        (vec!["--lr", "-0.001"], "--lr"),
        (vec!["--chains", "0"], "--chains"),
        (vec!["--draws", "0"], "--draws"),
        (
            vec!["--batch-size", "5000"],
            "larger than the training set (3830",
        ),
        (
            vec!["--nbeta", "hot"],
            "nβ is `batch`, `dataset` or a number",
        ),
        (
            vec!["--restrict", "blocks.7.*"],
            "`blocks.7.*` matches no trainable parameter",
        ),
        (
            vec!["--restrict", "blocks.0.attn.head.9"],
            "`blocks.0.attn.W_Q` has 4 heads (0 to 3)",
        ),
        (vec!["--per-head", "--restrict", "embed.W_E"], "--restrict"),
    ] {
        let mut args = vec!["llc", grokked.as_str()];
        args.extend(extra);
        let (code, _, err) = toylens_cmd(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (code, _, err) = toylens_cmd(&["llc", &fixture("mod_addition_no_wd.pth")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot be rebuilt") && err.contains("split"),
        "{err}"
    );
}

#[test]
fn every_checkpoint_of_a_run_and_every_model_kind() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let r = run.to_str().unwrap();
    let (code, _, err) = toylens_cmd(&[
        "train",
        "grokking-tiny",
        "train.steps=200",
        "train.checkpoint_every=100",
        "train.log_checkpoints=2",
        "--quiet",
        "--out",
        r,
    ]);
    assert_eq!(code, 0, "{err}");
    let outputs = ["metrics.csv", "metrics.jsonl", "summary.json"];
    let before: Vec<Vec<u8>> = outputs
        .iter()
        .map(|f| std::fs::read(run.join(f)).unwrap())
        .collect();
    let small = [
        "--chains",
        "2",
        "--draws",
        "20",
        "--burnin",
        "5",
        "--batch-size",
        "64",
        "--lr",
        "1e-4",
    ];
    let mut args = vec!["llc", r];
    args.extend(small);
    let (code, out, err) = toylens_cmd(&args);
    assert_eq!(code, 0, "{err}");
    let steps = toylens::io::run::checkpoint_steps(&run);
    let csv = std::fs::read_to_string(run.join("analysis/llc.csv")).unwrap();
    assert_eq!(csv.lines().count(), steps.len() + 1, "{csv}");
    assert!(out.contains("λ̂"), "{out}");
    assert!(run.join("analysis/llc.png").exists());
    let trace = std::fs::read_to_string(run.join("analysis/llc_trace.csv")).unwrap();
    assert_eq!(trace.lines().count(), 1 + steps.len() * 2 * 20);
    for (f, b) in outputs.iter().zip(&before) {
        assert_eq!(&std::fs::read(run.join(f)).unwrap(), b, "llc changed {f}");
    }
    // The report shows it.
    let (code, _, err) = toylens_cmd(&["report", r]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("fig-llc"));
    // Every head's weight-restricted λ̂ at every checkpoint.
    let mut args = vec!["llc", r, "--per-head"];
    args.extend(small);
    let (code, out, err) = toylens_cmd(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blocks.0.attn.head.1: λ̂"), "{out}");
    let heads = std::fs::read_to_string(run.join("analysis/llc_heads.csv")).unwrap();
    assert_eq!(heads.lines().count(), 1 + steps.len() * 2, "{heads}");
    assert!(run.join("analysis/llc_heads.png").exists());
    // One restriction over the run: files of its own, the model's λ̂ (the report's) left alone.
    let mut args = vec!["llc", r, "--restrict", "blocks.0.attn.head.1"];
    args.extend(small);
    let (code, _, err) = toylens_cmd(&args);
    assert_eq!(code, 0, "{err}");
    let restricted = std::fs::read_to_string(run.join("analysis/llc_restricted.csv")).unwrap();
    assert!(restricted.starts_with("# sampled only: blocks.0.attn.head.1\n"));
    assert_eq!(
        std::fs::read_to_string(run.join("analysis/llc.csv")).unwrap(),
        csv
    );

    // The ToyMLP and superposition (fresh samples: the first training batches) take it too.
    for (preset, steps) in [
        ("toy-mlp", "train.steps=50"),
        ("superposition", "train.steps=50"),
    ] {
        let dir = d.path().join(preset);
        let p = dir.to_str().unwrap();
        let (code, _, err) = toylens_cmd(&["train", preset, steps, "--quiet", "--out", p]);
        assert_eq!(code, 0, "{err}");
        let ck = dir.join("final.safetensors");
        let (code, _, err) = toylens_cmd(&["llc", ck.to_str().unwrap(), "--per-head"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("needs a model with attention heads"), "{err}");
        let mut args = vec!["llc", ck.to_str().unwrap(), "--json"];
        args.extend(small);
        let (code, out, err) = toylens_cmd(&args);
        assert_eq!(code, 0, "{preset}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["llc_mean"].as_f64().unwrap().is_finite(), "{preset}: {v}");
        assert!(v["n_train"].as_u64().unwrap() >= 64, "{preset}: {v}");
    }
}

/// λ̂ at `model`'s weights, sampling only `restrict`.
fn restricted(model: &dyn Model, data: &Batch, cfg: &LlcConfig, restrict: &[&str]) -> f64 {
    let cfg = LlcConfig {
        restrict: restrict.iter().map(|s| s.to_string()).collect(),
        ..cfg.clone()
    };
    let e = estimate(model, data, &cfg).unwrap();
    eprintln!(
        "restricted to {restrict:?}: λ̂ {:.3} ± {:.3} (warnings {:?})",
        e.llc_mean, e.llc_std, e.warnings
    );
    e.llc_mean
}

#[test]
fn restricting_the_sampler_to_a_group_gives_that_groups_share() {
    // A regular model: λ = (its parameters) / 2, and each group's share is its count / 2.
    let (model, data) = fitted_regression(10_000, 10, true);
    let weight = restricted(&model, &data, &settings(), &["weight"]);
    assert!((weight - 5.0).abs() < 0.5, "weight: λ̂ {weight}, theory 5");
    let bias = restricted(&model, &data, &settings(), &["bias"]);
    assert!((bias - 0.5).abs() < 0.075, "bias: λ̂ {bias}, theory 0.5");
    // A pattern naming both is the whole model.
    let both = restricted(&model, &data, &settings(), &["*"]);
    let all = estimate(&model, &data, &settings()).unwrap().llc_mean;
    assert_eq!(both, all, "`*` samples what no restriction samples");
    // The singular model: a alone is regular (1/2), b alone has K = 3b⁴/2: λ = 1/4.
    let data = regression_data(10_000, 1, &[0.0], 0.1, 5);
    let model = Quadratic { w: vec![0.0, 0.0] };
    let cfg = LlcConfig {
        localization: 0.1,
        draws: 4000,
        ..settings()
    };
    let a = restricted(&model, &data, &cfg, &["a"]);
    assert!((a - 0.5).abs() < 0.05, "a: λ̂ {a}, theory 0.5");
    let b = restricted(&model, &data, &cfg, &["b"]);
    assert!((b - 0.25).abs() < 0.05, "b: λ̂ {b}, theory 0.25");
}

#[test]
fn a_pruned_models_dead_weights_are_never_sampled() {
    // Four of ten weights pruned (and 0 in the truth): the live six give λ = 3, and the sampler
    // moves nothing else.
    let d = 10;
    let dead = [1usize, 4, 7, 8];
    let live: Vec<usize> = (0..d).filter(|c| !dead.contains(c)).collect();
    let mut rng = Rng::new(9);
    let w_true: Vec<f32> = (0..d)
        .map(|c| {
            if dead.contains(&c) {
                0.0
            } else {
                rng.normal() as f32
            }
        })
        .collect();
    let data = regression_data(10_000, d, &w_true, 1.0, 4);
    let cfg = LinearConfig {
        n_in: d,
        n_out: 1,
        bias: false,
        seed: 0,
    };
    let model = Linear::from_params(cfg, least_squares_on(&data, &live)).unwrap();
    let mut mask = toylens::models::mask::Mask::full(d);
    for &c in &dead {
        mask.live[c] = false;
    }
    let ranges = toylens::analysis::components::select_ranges(&model, &[], Some(&mask)).unwrap();
    assert_eq!(ranges, vec![0..1, 2..4, 5..7, 9..10]);
    let mut none_live = mask.clone();
    none_live.live.fill(false);
    let err =
        toylens::analysis::components::select_ranges(&model, &["weight".into()], Some(&none_live))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("every weight of --restrict `weight` is pruned"),
        "{err}"
    );
    let e =
        toylens::analysis::llc::estimate_many_masked(&[&model], &data, &settings(), Some(&mask))
            .unwrap()
            .remove(0);
    assert!(
        (e.llc_mean - 3.0).abs() < 0.3,
        "λ̂ {:.3} ± {:.3}, theory 3 (warnings {:?})",
        e.llc_mean,
        e.llc_std,
        e.warnings
    );
}

#[test]
fn a_restriction_that_picks_nothing_is_an_error_naming_it() {
    let model = Quadratic { w: vec![0.0, 0.0] };
    let data = regression_data(1000, 1, &[0.0], 0.1, 5);
    for (sel, says) in [
        ("c", "`c` matches no trainable parameter"),
        ("blocks.0.attn.head.0", "`blocks.0.attn.head.0` matches no"),
    ] {
        let cfg = LlcConfig {
            restrict: vec![sel.into()],
            ..settings()
        };
        let err = estimate(&model, &data, &cfg).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
        assert!(err.contains("a, b"), "names what there is: {err}");
    }
}
