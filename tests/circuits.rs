//! Circuit analysis is exact: decompositions sum to the residual they decompose, direct logit
//! attributions to the logit differences, the factored matrix's SVD and eigenvalues are those of
//! the full product, attribution patching is the small-interpolation limit of exact patching,
//! weight processing keeps the function; and bad input is an error naming it.

use ndarray::{s, Array2, Array3, ArrayD, ArrayViewMutD, Axis};
use toylens::analysis::circuits::detect::{self, ErrorMeasure, Exclude, HeadKind};
use toylens::analysis::circuits::factored::{self, FactoredMatrix};
use toylens::analysis::circuits::patching::{self, Metric, ReceiverInput, Sweep};
use toylens::analysis::circuits::process::{process, Processing};
use toylens::analysis::circuits::resid::{self, Mode};
use toylens::analysis::circuits::weights::{self, Composition};
use toylens::engine::activation::ActFn;
use toylens::engine::rng::Rng;
use toylens::hooks::{CacheFilter, Hooks};
use toylens::models::transformer::{InitScheme, Normalization};
use toylens::{Transformer, TransformerConfig};

/// 2 layers, LayerNorm, GELU MLPs, every bias trained (and nonzero after `perturb`).
fn ln_2l() -> TransformerConfig {
    TransformerConfig {
        n_layers: 2,
        d_model: 16,
        n_heads: 3,
        d_head: 4,
        d_mlp: Some(24),
        d_vocab: 11,
        d_vocab_out: 11,
        n_ctx: 8,
        act_fn: Some(ActFn::Gelu),
        normalization_type: Some(Normalization::LN),
        attn_only: false,
        seed: Some(5),
        eps: 1e-5,
        initializer_range: 0.4,
        init: InitScheme::TransformerLens,
        attn_bias: true,
        unembed_bias: true,
        ..TransformerConfig::nanda(10)
    }
}

fn attn_only_3l() -> TransformerConfig {
    TransformerConfig {
        n_layers: 3,
        attn_only: true,
        d_mlp: None,
        act_fn: None,
        normalization_type: None,
        ..ln_2l()
    }
}

fn nanda_small() -> TransformerConfig {
    TransformerConfig {
        d_model: 16,
        n_heads: 2,
        d_head: 8,
        d_mlp: Some(32),
        ..TransformerConfig::nanda(7)
    }
}

/// A model whose biases and LayerNorm parameters are random too (a fresh init leaves them 0/1).
fn model(cfg: TransformerConfig) -> Transformer {
    let mut m = Transformer::new(cfg).unwrap();
    let mut rng = Rng::new(17);
    for spec in m.layout.specs.clone() {
        if spec.name.contains(".b") || spec.name.contains("ln") || spec.name.contains("b_") {
            for x in &mut m.params[spec.range()] {
                *x += 0.3 * rng.normal() as f32;
            }
        }
    }
    m
}

fn tokens(cfg: &TransformerConfig, b: usize, p: usize, seed: u64) -> Array2<u32> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_fn((b, p), |_| rng.below(cfg.d_vocab as u64) as u32)
}

fn close(a: &ArrayD<f32>, b: &ArrayD<f32>, tol: f32, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let worst = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: off by {worst} (scale {scale})"
    );
}

#[test]
fn decompositions_sum_to_the_residual_they_decompose() {
    for cfg in [ln_2l(), attn_only_3l(), nanda_small()] {
        let m = model(cfg.clone());
        let t = tokens(&cfg, 4, cfg.n_ctx.min(6), 1);
        let (_, cache) = m.run_with_cache(t.view(), CacheFilter::All).unwrap();
        let n = cfg.n_layers;
        let get = |k: String| cache.get(&k).unwrap().clone();
        let final_resid = get(format!("blocks.{}.hook_resid_post", n - 1));
        let d = resid::decompose_resid(&m, &cache, None, false, Mode::All, false, true).unwrap();
        close(&d.stack_sum(), &final_resid, 1e-5, "decompose_resid");
        let f = resid::full_resid_decomposition(&m, &cache, None, false, true, false).unwrap();
        close(
            &f.stack_sum(),
            &final_resid,
            1e-5,
            "full decomposition (neurons)",
        );
        let f2 = resid::full_resid_decomposition(&m, &cache, None, false, false, false).unwrap();
        close(
            &f2.stack_sum(),
            &final_resid,
            1e-5,
            "full decomposition (MLPs)",
        );
        let h = resid::stack_head_results(&m, &cache, None, true, false).unwrap();
        close(&h.stack_sum(), &final_resid, 1e-5, "heads + remainder");
        let a = resid::accumulated_resid(&m, &cache, None, true, false, false).unwrap();
        assert_eq!(a.labels.last().unwrap(), "final_post");
        close(
            &a.components
                .index_axis(Axis(0), a.labels.len() - 1)
                .to_owned()
                .into_dyn(),
            &final_resid,
            0.0,
            "accumulated_resid's last",
        );
        for l in 0..n {
            let pre = get(format!("blocks.{l}.hook_resid_pre"));
            let d =
                resid::decompose_resid(&m, &cache, Some(l), false, Mode::All, false, true).unwrap();
            close(&d.stack_sum(), &pre, 1e-5, &format!("decompose_resid({l})"));
            if cfg.has_mlp() {
                let mid = get(format!("blocks.{l}.hook_resid_mid"));
                let f = resid::full_resid_decomposition(&m, &cache, Some(l), true, true, false)
                    .unwrap();
                close(
                    &f.stack_sum(),
                    &mid,
                    1e-5,
                    &format!("full decomposition, mlp_input {l}"),
                );
                let n_mlp = f.labels.iter().filter(|x| x.contains('N')).count();
                assert_eq!(n_mlp, l * cfg.d_mlp(), "neurons before layer {l}");
            }
        }
        // With LayerNorm, the frozen final LayerNorm maps the stack onto the normalised residual.
        if cfg.has_ln() {
            let f = resid::full_resid_decomposition(&m, &cache, None, false, true, true).unwrap();
            let normalized = get("ln_final.hook_normalized".into());
            close(
                &f.stack_sum(),
                &normalized,
                1e-4,
                "frozen LayerNorm of the stack",
            );
        }
    }
}

trait StackSum {
    fn stack_sum(&self) -> ArrayD<f32>;
}
impl StackSum for resid::Stack {
    fn stack_sum(&self) -> ArrayD<f32> {
        self.sum().into_dyn()
    }
}

#[test]
fn direct_logit_attributions_sum_to_the_logit_differences() {
    for cfg in [ln_2l(), attn_only_3l(), nanda_small()] {
        let m = model(cfg.clone());
        let t = tokens(&cfg, 5, cfg.n_ctx.min(5), 2);
        let (logits, cache) = m.run_with_cache(t.view(), CacheFilter::All).unwrap();
        let stack = resid::full_resid_decomposition(&m, &cache, None, false, true, false).unwrap();
        let v = cfg.d_vocab_out() as u32;
        let answers: Vec<u32> = (0..5).map(|i| i % v).collect();
        let wrong: Vec<u32> = (0..5).map(|i| (i + 2) % v).collect();
        let pos = t.ncols() - 1;
        let dla = resid::direct_logit_attribution(&m, &cache, &stack, pos, &answers, Some(&wrong))
            .unwrap();
        for b in 0..5 {
            let want = f64::from(logits[[b, pos, answers[b] as usize]])
                - f64::from(logits[[b, pos, wrong[b] as usize]]);
            let got: f64 = dla.column(b).sum();
            assert!(
                (got - want).abs() < 1e-4 * want.abs().max(1.0),
                "example {b}: attributions sum to {got}, logit difference {want}"
            );
        }
    }
}

#[test]
fn logit_lens_ends_at_the_logits() {
    let cfg = ln_2l();
    let m = model(cfg.clone());
    let t = tokens(&cfg, 3, 6, 3);
    let (logits, cache) = m.run_with_cache(t.view(), CacheFilter::All).unwrap();
    let (labels, lens) = resid::logit_lens(&m, &cache, 5).unwrap();
    assert_eq!(labels, ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]);
    let last = lens
        .index_axis(Axis(0), labels.len() - 1)
        .to_owned()
        .into_dyn();
    close(
        &last,
        &logits.slice(s![.., 5, ..]).to_owned().into_dyn(),
        1e-5,
        "lens",
    );
}

#[test]
fn factored_matrices_agree_with_their_full_products() {
    let mut rng = Rng::new(4);
    let mut rand = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.normal());
    for (l, m, r) in [(10, 3, 10), (7, 4, 9), (6, 8, 5)] {
        let f = FactoredMatrix::new(rand(l, m), rand(m, r)).unwrap();
        let full = f.product();
        let svd = f.svd();
        let rebuilt = (&svd.u * &svd.s.view().insert_axis(Axis(0))).dot(&svd.v.t());
        let err = (&rebuilt - &full)
            .iter()
            .fold(0.0f64, |a, x| a.max(x.abs()));
        assert!(err < 1e-10, "U S Vᵀ differs from AB by {err}");
        let direct = factored::svd(full.view());
        let k = svd.s.len();
        for i in 0..k {
            assert!((svd.s[i] - direct.s[i]).abs() < 1e-10, "singular value {i}");
        }
        let utu = svd.u.t().dot(&svd.u);
        assert!(
            (&utu - &Array2::<f64>::eye(k))
                .iter()
                .all(|x| x.abs() < 1e-10),
            "U orthonormal"
        );
        let fro = full.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((f.norm() - fro).abs() < 1e-10 * fro, "norm");
        assert_eq!(f.corner(3), full.slice(s![..3, ..3]));
        if l == r {
            let ev = f.eigenvalues().unwrap();
            let full_ev = factored::eigenvalues(full.view());
            // AB has the same nonzero eigenvalues as BA, and l − m zeros more.
            for (i, z) in ev.iter().enumerate() {
                let w = full_ev[i];
                assert!(
                    factored::modulus(&(z - w)) < 1e-8 * factored::modulus(z).max(1.0),
                    "eigenvalue {i}: {z} vs {w}"
                );
            }
            assert!(full_ev[ev.len()..]
                .iter()
                .all(|z| factored::modulus(z) < 1e-8));
        }
    }
    assert!(FactoredMatrix::new(rand(3, 2), rand(3, 2)).is_err());
    assert!(FactoredMatrix::new(rand(3, 2), rand(2, 4))
        .unwrap()
        .eigenvalues()
        .is_err());
}

#[test]
fn composition_scores_are_those_of_the_full_circuits() {
    let cfg = ln_2l();
    let m = model(cfg.clone());
    let full_norm = |x: &Array2<f64>| x.iter().map(|v| v * v).sum::<f64>().sqrt();
    for mode in Composition::ALL {
        let scores = weights::composition_scores(&m, mode).unwrap();
        for ha in 0..3 {
            for hb in 0..3 {
                let a = weights::ov(&m, 0, ha).unwrap().product();
                let b = match mode {
                    Composition::Q => weights::qk(&m, 1, hb).unwrap().product(),
                    Composition::K => weights::qk(&m, 1, hb).unwrap().product().t().to_owned(),
                    Composition::V => weights::ov(&m, 1, hb).unwrap().product(),
                };
                let want = full_norm(&a.dot(&b)) / (full_norm(&a) * full_norm(&b));
                let got = scores[[0, ha, 1, hb]];
                assert!(
                    (got - want).abs() < 1e-9,
                    "{mode:?} L0H{ha}→L1H{hb}: {got} vs {want}"
                );
                assert_eq!(scores[[1, hb, 0, ha]], 0.0, "only earlier → later");
            }
        }
    }
    let one = model(nanda_small());
    let err = weights::composition_scores(&one, Composition::Q)
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 layer"), "{err}");
}

/// The part of an activation one patch covers.
type Select = dyn Fn(ArrayViewMutD<f32>) -> ArrayViewMutD<f32>;

/// The corrupted run with `clean` at the sweep's `index` blended in by `alpha`.
fn blended_metric(
    m: &Transformer,
    corrupted: &Array2<u32>,
    clean: &toylens::hooks::ActivationCache,
    (name, select): (&str, &Select),
    alpha: f32,
    metric: &Metric,
) -> f64 {
    let src = clean.get(name).unwrap().clone();
    let hooks = Hooks::new().add(name, move |a: &mut ArrayViewMutD<f32>| {
        let mut diff = src.clone();
        diff -= &a.view();
        let mut part = select(a.view_mut());
        let d = select(diff.view_mut());
        part.zip_mut_with(&d, |x, &dv| *x += alpha * dv);
    });
    let logits = m.run_with_hooks(corrupted.view(), hooks).unwrap();
    metric.eval(logits.view(), false).0
}

#[test]
fn attribution_patching_is_the_limit_of_small_interpolations() {
    let cfg = ln_2l();
    let m = model(cfg.clone());
    let clean = tokens(&cfg, 3, 6, 5);
    let corrupted = tokens(&cfg, 3, 6, 6);
    let metrics = [
        Metric::LogitDiff {
            answers: vec![1, 2, 3],
            wrong: vec![4, 5, 6],
        },
        Metric::Loss {
            answers: vec![1, 2, 3],
        },
        Metric::Prob {
            answers: vec![7, 0, 2],
        },
    ];
    let sweeps = [
        Sweep::ResidPre,
        Sweep::AttnOut,
        Sweep::MlpOut,
        Sweep::AttnHeadOutByPos,
        Sweep::AttnHeadQByPos,
        Sweep::AttnHeadKByPos,
        Sweep::AttnHeadVByPos,
        Sweep::AttnHeadPatternByPos,
    ];
    let (_, clean_cache) = m.run_with_cache(clean.view(), CacheFilter::All).unwrap();
    for metric in &metrics {
        let attr = patching::attribution_patch(&m, clean.view(), corrupted.view(), &sweeps, metric)
            .unwrap();
        // One index of each: (sweep, hook name, selection).
        type Sel = Box<Select>;
        let at = |axes: Vec<(usize, usize)>| -> Sel {
            Box::new(move |mut a: ArrayViewMutD<f32>| {
                for &(ax, i) in &axes {
                    a.collapse_axis(Axis(ax), i);
                }
                a
            })
        };
        let cases: Vec<(usize, &str, Vec<usize>, Sel)> = vec![
            (0, "blocks.1.hook_resid_pre", vec![1, 4], at(vec![(1, 4)])),
            (1, "blocks.0.hook_attn_out", vec![0, 5], at(vec![(1, 5)])),
            (2, "blocks.0.hook_mlp_out", vec![0, 5], at(vec![(1, 5)])),
            (
                3,
                "blocks.0.attn.hook_z",
                vec![0, 5, 1],
                at(vec![(1, 5), (2, 1)]),
            ),
            (
                4,
                "blocks.1.attn.hook_q",
                vec![1, 5, 2],
                at(vec![(1, 5), (2, 2)]),
            ),
            (
                5,
                "blocks.1.attn.hook_k",
                vec![1, 3, 0],
                at(vec![(1, 3), (2, 0)]),
            ),
            (
                6,
                "blocks.0.attn.hook_v",
                vec![0, 2, 1],
                at(vec![(1, 2), (2, 1)]),
            ),
            (
                7,
                "blocks.1.attn.hook_pattern",
                vec![1, 2, 5],
                at(vec![(1, 2), (2, 5)]),
            ),
        ];
        for (k, name, idx, sel) in &cases {
            let eps = 1e-2;
            let up = blended_metric(&m, &corrupted, &clean_cache, (name, sel), eps, metric);
            let down = blended_metric(&m, &corrupted, &clean_cache, (name, sel), -eps, metric);
            let slope = (up - down) / (2.0 * f64::from(eps));
            let got = attr[*k][idx.as_slice()];
            assert!(
                (got - slope).abs() < 2e-3 * slope.abs().max(0.05),
                "{metric:?} {name} {idx:?}: attribution {got}, slope {slope}"
            );
        }
    }
}

#[test]
fn patching_the_clean_run_into_itself_recovers_it_and_sweeps_have_tl_shapes() {
    let cfg = ln_2l();
    let m = model(cfg.clone());
    let clean = tokens(&cfg, 2, 5, 7);
    let corrupted = tokens(&cfg, 2, 5, 8);
    let metric = Metric::LogitDiff {
        answers: vec![1, 2],
        wrong: vec![3, 4],
    };
    let (_, clean_cache) = m.run_with_cache(clean.view(), CacheFilter::All).unwrap();
    let clean_metric = patching::metric_of(&m, clean.view(), &metric).unwrap();
    for sweep in Sweep::ALL {
        let r = patching::patch_sweep(&m, corrupted.view(), &clean_cache, sweep, &metric).unwrap();
        assert_eq!(r.shape(), sweep.shape(&m, 5).as_slice(), "{}", sweep.name());
    }
    // The whole residual stream before layer 0 at every position is the clean run.
    let mut full = Hooks::new();
    let src = clean_cache.get("blocks.0.hook_resid_pre").unwrap().clone();
    full = full.add("blocks.0.hook_resid_pre", move |a| a.assign(&src));
    let logits = m.run_with_hooks(corrupted.view(), full).unwrap();
    let v = metric.eval(logits.view(), false).0;
    assert!((v - clean_metric).abs() < 1e-4, "{v} vs {clean_metric}");
    // Patching the last position's final residual alone moves the metric to the clean value.
    let r = patching::patch_sweep(&m, corrupted.view(), &clean_cache, Sweep::ResidPre, &metric)
        .unwrap();
    let _ = r;
    let r = patching::patch_sweep(
        &m,
        clean.view(),
        &clean_cache,
        Sweep::AttnHeadOutAllPos,
        &metric,
    )
    .unwrap();
    assert!(
        r.iter().all(|x| (x - clean_metric).abs() < 1e-4),
        "self-patch changes nothing"
    );
}

#[test]
fn path_patching_from_every_head_and_to_itself() {
    let cfg = ln_2l();
    let m = model(cfg.clone());
    let clean = tokens(&cfg, 2, 5, 9);
    let corrupted = tokens(&cfg, 2, 5, 10);
    let metric = Metric::LogitDiff {
        answers: vec![1, 2],
        wrong: vec![3, 4],
    };
    let base = patching::metric_of(&m, corrupted.view(), &metric).unwrap();
    for input in ReceiverInput::ALL {
        let all =
            patching::path_patch_sweep(&m, clean.view(), corrupted.view(), input, &metric, false)
                .unwrap();
        assert_eq!(all.shape(), &[2, 3, 2, 3]);
        assert!(all[[1, 0, 0, 0]].is_nan() && all[[0, 0, 0, 1]].is_nan());
        let one = patching::path_patch(
            &m,
            clean.view(),
            corrupted.view(),
            (0, 2),
            (1, 1),
            input,
            &metric,
            false,
        )
        .unwrap();
        assert_eq!(one, all[[0, 2, 1, 1]]);
        // A clean input equal to the corrupted one carries nothing down any path.
        let same = patching::path_patch(
            &m,
            corrupted.view(),
            corrupted.view(),
            (0, 1),
            (1, 2),
            input,
            &metric,
            true,
        )
        .unwrap();
        assert!((same - base).abs() < 1e-4, "{same} vs {base}");
    }
}

#[test]
fn weight_processing_keeps_the_function() {
    for cfg in [ln_2l(), attn_only_3l(), nanda_small()] {
        let m = model(cfg.clone());
        let t = tokens(&cfg, 3, cfg.n_ctx.min(6), 11);
        let before = m.forward(t.view()).unwrap();
        let p = process(&m, Processing::default()).unwrap();
        let after = p.forward(t.view()).unwrap();
        // Logits up to a constant per position (the centred unembedding).
        let centre = |x: &Array3<f32>| {
            let mean = x.mean_axis(Axis(2)).unwrap().insert_axis(Axis(2));
            (x - &mean).into_dyn()
        };
        close(&centre(&after), &centre(&before), 1e-4, "processed logits");
        if cfg.has_ln() {
            let w = p.param("blocks.1.ln1.w").unwrap();
            assert!(w.iter().all(|&x| x == 1.0), "LayerNorm gain folded");
            let w_q = p.param("blocks.0.attn.W_Q").unwrap();
            let col_mean = w_q.index_axis(Axis(0), 0).mean_axis(Axis(0)).unwrap();
            assert!(
                col_mean.iter().all(|x| x.abs() < 1e-6),
                "reading weights centred"
            );
        }
        let b_v = p.param("blocks.0.attn.b_V").unwrap();
        assert!(b_v.iter().all(|&x| x == 0.0), "value biases folded");
        let nothing = process(&m, Processing::NONE).unwrap();
        assert_eq!(nothing.params, m.params);
    }
}

#[test]
fn head_detectors_score_the_patterns_they_look_for() {
    let t = [3u32, 5, 7, 3, 5, 7];
    let prev = HeadKind::PreviousToken.pattern(&t);
    assert_eq!(prev[[1, 0]], 1.0);
    assert_eq!(prev.sum(), 5.0);
    let dup = HeadKind::DuplicateToken.pattern(&t);
    assert_eq!((dup[[3, 0]], dup[[4, 1]], dup[[0, 0]]), (1.0, 1.0, 0.0));
    let ind = HeadKind::Induction.pattern(&t);
    assert_eq!((ind[[3, 1]], ind[[5, 3]], ind.sum()), (1.0, 1.0, 3.0));
    // A pattern that is exactly the (row-normalised) detection pattern scores 1 by `mul`.
    let mut a = prev.clone();
    a[[0, 0]] = 1.0;
    let mul = detect::similarity(a.view(), prev.view(), Exclude::default(), ErrorMeasure::Mul);
    assert!((mul - 5.0 / 6.0).abs() < 1e-12, "{mul}");
    let abs = detect::similarity(
        prev.view(),
        prev.view(),
        Exclude::default(),
        ErrorMeasure::Abs,
    );
    assert_eq!(abs, 1.0);
    // A real model: scores in [0, 1], one per head.
    let cfg = attn_only_3l();
    let m = model(cfg.clone());
    let rep = detect::repeated_random_tokens(1, 4, 4, cfg.d_vocab);
    assert_eq!(rep.slice(s![.., ..4]), rep.slice(s![.., 4..]));
    for kind in HeadKind::ALL {
        let s =
            detect::detect(&m, rep.view(), kind, Exclude::default(), ErrorMeasure::Mul).unwrap();
        assert_eq!(s.shape(), &[3, 3]);
        assert!(s.iter().all(|x| (0.0..=1.0).contains(x)), "{kind:?}: {s}");
    }
}

#[test]
fn bad_input_is_an_error_naming_it() {
    let cfg = ln_2l();
    let m = model(cfg.clone());
    let err = |r: Result<_, toylens::Error>| -> String {
        match r {
            Ok(()) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = err(weights::qk(&m, 2, 0).map(|_| ()));
    assert!(e.contains("layer 2 is out of range"), "{e}");
    let e = err(weights::ov(&m, 0, 3).map(|_| ()));
    assert!(e.contains("head 3 is out of range"), "{e}");
    let clean = tokens(&cfg, 2, 5, 1);
    let corrupted = tokens(&cfg, 2, 4, 2);
    let metric = Metric::Logit {
        answers: vec![1, 2],
    };
    let (_, cache) = m.run_with_cache(clean.view(), CacheFilter::All).unwrap();
    let e = err(
        patching::patch_sweep(&m, corrupted.view(), &cache, Sweep::ResidPre, &metric).map(|_| ()),
    );
    assert!(
        e.contains("clean and corrupted inputs differ in shape"),
        "{e}"
    );
    let e = err(patching::attribution_patch(
        &m,
        clean.view(),
        corrupted.view(),
        &[Sweep::ResidPre],
        &metric,
    )
    .map(|_| ()));
    assert!(e.contains("differ in shape"), "{e}");
    let outside = Metric::LogitDiff {
        answers: vec![1, 2],
        wrong: vec![3, 11],
    };
    let e =
        err(patching::patch_sweep(&m, clean.view(), &cache, Sweep::ResidPre, &outside).map(|_| ()));
    assert!(
        e.contains("wrong answer 11") && e.contains("outside the output vocabulary"),
        "{e}"
    );
    let e = err(patching::path_patch(
        &m,
        clean.view(),
        clean.view(),
        (1, 0),
        (0, 1),
        ReceiverInput::Q,
        &metric,
        false,
    )
    .map(|_| ()));
    assert!(e.contains("after the sender's"), "{e}");
    let e = err(patching::path_patch(
        &m,
        clean.view(),
        clean.view(),
        (0, 5),
        (1, 1),
        ReceiverInput::Q,
        &metric,
        false,
    )
    .map(|_| ()));
    assert!(e.contains("head 5 is out of range"), "{e}");
    let e =
        err(resid::decompose_resid(&m, &cache, Some(3), false, Mode::All, false, true).map(|_| ()));
    assert!(e.contains("layer 3 is out of range"), "{e}");
    let attn_only = model(attn_only_3l());
    let t = tokens(&attn_only_3l(), 1, 4, 1);
    let (_, c) = attn_only
        .run_with_cache(t.view(), CacheFilter::All)
        .unwrap();
    let e = err(patching::patch_sweep(
        &attn_only,
        t.view(),
        &c,
        Sweep::MlpOut,
        &Metric::Logit { answers: vec![0] },
    )
    .map(|_| ()));
    assert!(e.contains("attention-only"), "{e}");
    let e = err(detect::detect(
        &m,
        tokens(&cfg, 1, 1, 1).view(),
        HeadKind::Induction,
        Exclude::default(),
        ErrorMeasure::Mul,
    )
    .map(|_| ()));
    assert!(e.contains("2 to n_ctx"), "{e}");
}

fn toylens_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_toylens"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_circuits_command_draws_and_records_a_two_layer_run() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let out = toylens_cli(&[
        "train",
        "grokking-tiny",
        "model.n_layers=2",
        "model.normalization_type=LN",
        "model.attn_bias=true",
        "train.steps=60",
        "--quiet",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = toylens_cli(&["circuits", run.to_str().unwrap(), "--examples", "16"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("direct logit attribution"), "{text}");
    let dir = run.join("analysis").join("circuits");
    for f in [
        "dla.png",
        "dla.svg",
        "patch_blocks_exact.png",
        "patch_blocks_attribution.png",
        "patch_heads_exact.svg",
        "path_patching.png",
        "composition_raw.png",
        "composition_processed.png",
        "copying.png",
        "circuit_attention_fourier.png",
        "circuit_w_l_fourier.png",
    ] {
        assert!(dir.join(f).exists(), "no {f}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("circuits.json")).unwrap()).unwrap();
    let dla: f64 = json["dla"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    let clean = json["clean_logit_diff"].as_f64().unwrap();
    assert!(
        (dla - clean).abs() < 1e-3 * clean.abs().max(1.0),
        "DLA sums to {dla}, not {clean}"
    );
    assert_eq!(json["composition"]["raw"].as_array().unwrap().len(), 3);
    assert_eq!(json["examples"], 16);
    // Not a transformer: a clear error.
    let lin = d.path().join("lin");
    let out = toylens_cli(&[
        "train",
        "linear",
        "train.steps=5",
        "--quiet",
        "--out",
        lin.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = toylens_cli(&["circuits", lin.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("transformer"),
        "{err}"
    );
}

/// The sweeps' shortcuts (patches skipped where they cannot reach the last position, passes
/// started at the patched block with only the last position computed there) give what full
/// hooked passes give (the Python tests compare both with TransformerLens's one forward per
/// patch).
#[test]
fn patching_sweeps_equal_one_forward_per_patch() {
    for cfg in [ln_2l(), attn_only_3l()] {
        let m = model(cfg.clone());
        let clean = tokens(&cfg, 3, 5, 21);
        let corrupted = tokens(&cfg, 3, 5, 22);
        let metric = Metric::LogitDiff {
            answers: vec![1, 2, 3],
            wrong: vec![4, 5, 6],
        };
        let (_, cache) = m.run_with_cache(clean.view(), CacheFilter::All).unwrap();
        for sweep in Sweep::ALL {
            let (act, _) = sweep.family();
            if !cfg.has_mlp() && matches!(sweep, Sweep::ResidMid | Sweep::MlpOut) {
                continue;
            }
            let fast = patching::patch_sweep(&m, corrupted.view(), &cache, sweep, &metric).unwrap();
            let mut slow_metric = |l: Array3<f32>| Ok(metric.eval(l.view(), false).0);
            let slow =
                patching::patch_sweep_with(&m, corrupted.view(), &cache, sweep, &mut slow_metric)
                    .unwrap();
            let worst = fast
                .iter()
                .zip(slow.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f64, f64::max);
            assert!(worst < 1e-4, "{} ({act:?}): off by {worst}", sweep.name());
        }
    }
}
