//! Every backward against central finite differences: each engine layer alone, then whole models.

use ndarray::Array2;
use toylens::engine::activation::{self, ActFn};
use toylens::engine::attention::{self, Geometry};
use toylens::engine::layernorm;
use toylens::engine::loss::{cross_entropy, RowLoss};
use toylens::engine::matmul::{linear, linear_backward};
use toylens::engine::rng::Rng;
use toylens::models::transformer::{InitScheme, Normalization};
use toylens::{TokenBatch, Transformer, TransformerConfig, Workspace};

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

/// Projected scalar `Σ c·y` in f64, so finite differences see the function, not rounding.
fn project(y: &[f32], c: &[f32]) -> f64 {
    y.iter().zip(c).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central differences of `f` at `x` for each index in `idx`, compared with `analytic`. Several step
/// sizes are tried and the best agreement counts: a large step can straddle a ReLU kink and a small
/// one drowns in f32 rounding, but a wrong backward disagrees at every step.
fn check_fd(
    name: &str,
    x: &mut [f32],
    analytic: &[f32],
    idx: impl Iterator<Item = usize>,
    eps: f32,
    mut f: impl FnMut(&[f32]) -> f64,
) {
    let mut worst = 0.0f64;
    let mut n = 0;
    for i in idx {
        let orig = x[i];
        let a = analytic[i] as f64;
        let mut best = (f64::INFINITY, 0.0);
        for e in [eps, eps / 3.0, eps / 10.0] {
            let mut at = |d: f32| {
                x[i] = orig + d;
                let y = f(x);
                x[i] = orig;
                y
            };
            let (up, down) = (at(e), at(-e));
            let (up2, down2) = (at(2.0 * e), at(-2.0 * e));
            // The steps actually taken, in f32.
            let h = ((orig + e) as f64) - ((orig - e) as f64);
            let h2 = ((orig + 2.0 * e) as f64) - ((orig - 2.0 * e) as f64);
            // Central differences over ±e, and the five-point stencil (its error is fourth order
            // in e where the central one's is second: entries where the loss bends sharply, whose
            // central difference at a large step is off and at a small one lost in f32's noise).
            let central = (up - down) / h;
            // 12e, from the steps taken (h ≈ 2e, h2 ≈ 4e).
            let five_point = (8.0 * (up - down) - (up2 - down2)) / (3.0 * h + 1.5 * h2);
            for fd in [central, five_point] {
                // Relative error, with an absolute floor at the f32 noise level of the differences.
                let err = ((fd - a).abs() - 5e-5).max(0.0) / fd.abs().max(a.abs()).max(1e-12);
                if err < best.0 {
                    best = (err, fd);
                }
            }
        }
        worst = worst.max(best.0);
        assert!(
            best.0 < 2e-2,
            "{name}[{i}]: finite difference {:.6e} vs backward {a:.6e}",
            best.1
        );
        n += 1;
    }
    assert!(n > 0);
    eprintln!("{name}: {n} entries, worst relative error {worst:.2e}");
}

#[test]
fn linear_backward_matches_finite_differences() {
    let mut rng = Rng::new(1);
    let (rows, n_in, n_out) = (5, 7, 4);
    let x = randn(&mut rng, rows * n_in, 1.0);
    let mut w = randn(&mut rng, n_in * n_out, 1.0);
    let mut b = randn(&mut rng, n_out, 1.0);
    let c = randn(&mut rng, rows * n_out, 1.0);
    let (mut dw, mut db, mut dx) = (
        vec![0.0; n_in * n_out],
        vec![0.0; n_out],
        vec![0.0; rows * n_in],
    );
    linear_backward(
        &c,
        &x,
        &w,
        &mut dw,
        Some(&mut db),
        Some((&mut dx, false)),
        rows,
        n_in,
        n_out,
    );
    let f = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut y = vec![0.0; rows * n_out];
        linear(&mut y, x, w, Some(b), rows, n_in, n_out);
        project(&y, &c)
    };
    let (w0, b0) = (w.clone(), b.clone());
    check_fd(
        "linear dx",
        &mut x.clone(),
        &dx,
        0..rows * n_in,
        1e-2,
        |x| f(x, &w0, &b0),
    );
    let x0 = x.clone();
    check_fd("linear dW", &mut w, &dw, 0..n_in * n_out, 1e-2, |w| {
        f(&x0, w, &b0)
    });
    let w0 = w.clone();
    check_fd("linear db", &mut b, &db, 0..n_out, 1e-2, |b| f(&x0, &w0, b));
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let mut rng = Rng::new(2);
    let (rows, d) = (6, 8);
    let mut x = randn(&mut rng, rows * d, 2.0);
    let mut w = randn(&mut rng, d, 1.0);
    let mut b = randn(&mut rng, d, 1.0);
    let c = randn(&mut rng, rows * d, 1.0);
    let eps = 1e-5;
    let run = |x: &[f32], w: &[f32], b: &[f32]| {
        let (mut xc, mut scale, mut xhat, mut y) = (
            vec![0.0; rows * d],
            vec![0.0; rows],
            vec![0.0; rows * d],
            vec![0.0; rows * d],
        );
        layernorm::center_and_scale(x, &mut xc, &mut scale, d, eps);
        layernorm::normalize(&xc, &scale, w, b, &mut xhat, &mut y);
        (y, xhat, scale)
    };
    let (_, xhat, scale) = run(&x, &w, &b);
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * d], vec![0.0; d], vec![0.0; d]);
    layernorm::backward(&c, &xhat, &scale, &w, &mut dx, false, &mut dw, &mut db);
    let (w0, b0, x0) = (w.clone(), b.clone(), x.clone());
    check_fd("ln dx", &mut x, &dx, 0..rows * d, 1e-2, |x| {
        project(&run(x, &w0, &b0).0, &c)
    });
    check_fd("ln dw", &mut w, &dw, 0..d, 1e-2, |w| {
        project(&run(&x0, w, &b0).0, &c)
    });
    check_fd("ln db", &mut b, &db, 0..d, 1e-2, |b| {
        project(&run(&x0, &w0, b).0, &c)
    });
}

#[test]
fn activation_backward_matches_finite_differences() {
    for act in [ActFn::Relu, ActFn::Gelu, ActFn::GeluNew] {
        let mut rng = Rng::new(3);
        // Keep relu's inputs away from its kink at 0.
        let mut x: Vec<f32> = randn(&mut rng, 40, 2.0)
            .into_iter()
            .map(|v| if v.abs() < 0.05 { v + 0.2 } else { v })
            .collect();
        let c = randn(&mut rng, 40, 1.0);
        let mut g = c.clone();
        let mut y = vec![0.0; 40];
        activation::forward(act, &x, &mut y);
        activation::backward(act, &x, &y, &mut g);
        check_fd(&format!("{act:?}"), &mut x, &g, 0..40, 1e-2, |x| {
            let mut y = vec![0.0; 40];
            activation::forward(act, x, &mut y);
            project(&y, &c)
        });
    }
}

#[test]
fn gelu_matches_reference_values() {
    // Float64 values (torch 2.15 `F.gelu`, transformer-lens 3.9 `utils.gelu_new`, on float64 inputs):
    // the truth, which torch's own f32 kernels miss by up to 1.3e-4 relative at x = -3.
    let x = [-3.0f32, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0];
    let gelu = [
        -0.004049694095f64,
        -0.1586552539,
        -0.1542687694,
        0.0,
        0.3457312306,
        0.8413447461,
        2.995950306,
    ];
    let gelu_new = [
        -0.003637392082f64,
        -0.1588080094,
        -0.1542859902,
        0.0,
        0.3457140098,
        0.8411919906,
        2.996362608,
    ];
    for (act, want) in [(ActFn::Gelu, gelu), (ActFn::GeluNew, gelu_new)] {
        let mut y = [0.0f32; 7];
        activation::forward(act, &x, &mut y);
        for i in 0..7 {
            let err = (y[i] as f64 - want[i]).abs() / want[i].abs().max(1e-30);
            assert!(
                err < 1e-6 || want[i] == 0.0 && y[i] == 0.0,
                "{act:?}({}) = {} want {} (relative error {err:.1e})",
                x[i],
                y[i],
                want[i]
            );
        }
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(4);
    let (b, p, h, dh) = (3, 4, 2, 5);
    // Rows shared between (batch, position) pairs, as layer-0 deduplication produces.
    let row_of: Vec<u32> = vec![0, 1, 2, 3, 0, 4, 2, 5, 6, 1, 2, 3];
    let n_rows = 7;
    for q_pos in [vec![0usize, 1, 2, 3], vec![1, 3]] {
        let g = Geometry {
            batch: b,
            n_pos: p,
            n_heads: h,
            d_head: dh,
            q_pos: &q_pos,
            row_of: &row_of,
            n_rows,
            attn_scale: (dh as f32).sqrt(),
        };
        let nq = q_pos.len();
        let n = h * n_rows * dh;
        let mut q = randn(&mut rng, n, 1.0);
        let mut k = randn(&mut rng, n, 1.0);
        let mut v = randn(&mut rng, n, 1.0);
        let c = randn(&mut rng, b * nq * h * dh, 1.0);
        let run = |q: &[f32], k: &[f32], v: &[f32]| {
            let mut s = vec![0.0; b * h * nq * p];
            let mut pat = vec![0.0; b * h * nq * p];
            let mut z = vec![0.0; b * nq * h * dh];
            attention::scores(&g, q, k, &mut s);
            attention::softmax(&s, &mut pat, p);
            attention::mix(&g, &pat, v, &mut z);
            (z, pat)
        };
        let (_, pat) = run(&q, &k, &v);
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        attention::backward(&g, &q, &k, &v, &pat, &c, &mut dq, &mut dk, &mut dv);
        let (q0, k0, v0) = (q.clone(), k.clone(), v.clone());
        check_fd("attn dq", &mut q, &dq, 0..n, 1e-2, |q| {
            project(&run(q, &k0, &v0).0, &c)
        });
        check_fd("attn dk", &mut k, &dk, 0..n, 1e-2, |k| {
            project(&run(&q0, k, &v0).0, &c)
        });
        check_fd("attn dv", &mut v, &dv, 0..n, 1e-2, |v| {
            project(&run(&q0, &k0, v).0, &c)
        });
    }
}

#[test]
fn cross_entropy_gradient_and_tiny_losses() {
    let mut rng = Rng::new(5);
    let (rows, v) = (4, 6);
    let mut logits = randn(&mut rng, rows * v, 2.0);
    let targets = [0u32, 3, 5, 2];
    let mut out = vec![RowLoss::default(); rows];
    let mut g = vec![0.0; rows * v];
    cross_entropy(&logits, v, &targets, &mut out, Some((&mut g, 1.0)));
    check_fd("cross entropy", &mut logits, &g, 0..rows * v, 1e-2, |l| {
        let mut o = vec![RowLoss::default(); rows];
        cross_entropy(l, v, &targets, &mut o, None);
        o.iter().map(|r| r.loss).sum()
    });
    // A confidently right row: the true loss is log1p(5·e^-25) ≈ 6.94e-11, which f32 logsumexp rounds to 0.
    let l = [25.0f32, 0.0, 0.0, 0.0, 0.0, 0.0];
    let mut o = [RowLoss::default()];
    let mut g = [0.0f32; 6];
    cross_entropy(&l, 6, &[0], &mut o, Some((&mut g, 1.0)));
    let exact = (5.0f64 * (-25.0f64).exp()).ln_1p();
    assert!(
        (o[0].loss - exact).abs() / exact < 1e-6,
        "loss {} vs {}",
        o[0].loss,
        exact
    );
    assert!(o[0].correct);
    assert!(
        ((-g[0] as f64) - 5.0 * (-25.0f64).exp()).abs() / exact < 1e-5,
        "gradient of the correct logit {}",
        g[0]
    );
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

fn ln_gelu_2l() -> TransformerConfig {
    TransformerConfig {
        n_layers: 2,
        d_model: 12,
        n_heads: 3,
        d_head: 4,
        d_mlp: Some(20),
        d_vocab: 9,
        d_vocab_out: 5,
        n_ctx: 6,
        act_fn: Some(ActFn::Gelu),
        normalization_type: Some(Normalization::LN),
        attn_only: false,
        seed: Some(3),
        eps: 1e-5,
        initializer_range: 0.5,
        init: InitScheme::TransformerLens,
        attn_bias: true,
        unembed_bias: true,
        ..TransformerConfig::nanda(8)
    }
}

fn attn_only_gelu_new() -> TransformerConfig {
    TransformerConfig {
        attn_only: true,
        d_mlp: None,
        act_fn: None,
        n_layers: 2,
        ..ln_gelu_2l()
    }
}

/// Random batch; loss at `loss_pos`.
fn batch(
    cfg: &TransformerConfig,
    b: usize,
    p: usize,
    loss_pos: Vec<usize>,
    seed: u64,
) -> TokenBatch {
    let mut rng = Rng::new(seed);
    let tokens = Array2::from_shape_fn((b, p), |_| rng.below(cfg.d_vocab as u64) as u32);
    let targets = Array2::from_shape_fn((b, loss_pos.len()), |_| {
        rng.below(cfg.d_vocab_out() as u64) as u32
    });
    TokenBatch {
        tokens,
        loss_pos,
        targets,
    }
}

fn check_model(name: &str, cfg: TransformerConfig, batch: TokenBatch) {
    check_model_with(name, cfg, batch, None);
}

/// [`check_model`] with layer 0's W_in fold forced on or off (None: the cost rule's choice).
fn check_model_with(name: &str, cfg: TransformerConfig, batch: TokenBatch, fold: Option<bool>) {
    let mut model = Transformer::new(cfg).unwrap();
    // Random (non-zero) biases and LN gains, so their gradients flow through non-trivial values.
    let mut rng = Rng::new(11);
    for s in model.layout.specs.clone() {
        if s.trainable && !s.name.contains(".W_") {
            for x in &mut model.params[s.range()] {
                *x += (rng.normal() * 0.3) as f32;
            }
        }
    }
    let mut ws = Workspace::new();
    ws.set_w_in_fold(fold);
    let mut grads = vec![0.0; model.layout.total];
    model.loss_and_grad(&mut ws, &batch, &mut grads).unwrap();
    if let Some(f) = fold {
        assert_eq!(
            ws.w_in_folded(),
            f,
            "{name}: the fold was not taken as forced"
        );
    }
    for s in &model.layout.specs {
        let g = &grads[s.range()];
        if s.name.ends_with("b_K") && !model.cfg.rotary() {
            // Exactly zero in exact arithmetic: b_K adds q·b_K to every score of a query's row,
            // and softmax ignores a shift shared by the whole row.
            assert!(
                g.iter().all(|&x| x.abs() < 1e-6),
                "{name}: {} should have a zero gradient",
                s.name
            );
        } else if s.trainable {
            assert!(
                g.iter().any(|&x| x != 0.0),
                "{name}: {} got no gradient",
                s.name
            );
        } else {
            assert!(
                g.iter().all(|&x| x == 0.0),
                "{name}: frozen {} got a gradient",
                s.name
            );
        }
    }
    let specs = model.layout.specs.clone();
    let mut params = model.params.clone();
    for s in specs.iter().filter(|s| s.trainable) {
        // Up to 12 entries per tensor, spread over it.
        let n = s.len();
        let step = (n / 12).max(1);
        check_fd(
            &format!("{name} {}", s.name),
            &mut params,
            &grads,
            (0..n).step_by(step).map(|i| s.offset + i),
            1e-2,
            |p| {
                model.params.copy_from_slice(p);
                let mut ws = Workspace::new();
                model.evaluate(&mut ws, &batch).unwrap().loss
            },
        );
    }
}

#[test]
fn nanda_model_gradients_match_finite_differences() {
    let cfg = nanda_small();
    let b = batch(&cfg, 10, 3, vec![2], 7);
    check_model("nanda", cfg, b);
}

#[test]
fn nanda_model_with_the_w_in_fold_matches_finite_differences() {
    // With and without attention biases (b_O enters the fold's bias).
    let cfg = nanda_small();
    let b = batch(&cfg, 10, 3, vec![2], 7);
    check_model_with("nanda folded", cfg, b, Some(true));
    let cfg = TransformerConfig {
        attn_bias: true,
        unembed_bias: true,
        ..nanda_small()
    };
    // The last token the same in every input, as Nanda's "=": one row holds every query.
    let mut b = batch(&cfg, 10, 3, vec![2], 17);
    b.tokens.column_mut(2).fill(3);
    check_model_with("nanda folded, biases, one query row", cfg, b, Some(true));
}

#[test]
fn two_layer_gelu_model_with_the_w_in_fold_matches_finite_differences() {
    // Layer 0 not the last (its MLP rows are every position, each its own row), GELU: the
    // second layer gets its input through the fold. A smaller init than ln_gelu_2l's: without
    // LayerNorms its larger activations leave b_K's gradient (zero in exact arithmetic) at 1.2e-6,
    // on the general path too.
    let cfg = TransformerConfig {
        normalization_type: None,
        n_ctx: 4,
        initializer_range: 0.25,
        ..ln_gelu_2l()
    };
    let b = batch(&cfg, 6, 4, vec![3], 5);
    check_model_with("two layers, GELU, folded", cfg, b, Some(true));
}

#[test]
fn the_w_in_fold_gives_the_general_paths_loss_and_gradients() {
    // Nanda's shape with a batch of repeated tokens, and models whose layer 0 is not the last (its
    // MLP rows are every position; ReLU, then GELU over a d_mlp of one full column block and a
    // partial one), each folded and not.
    let nanda = TransformerConfig {
        d_model: 128,
        n_heads: 4,
        d_head: 32,
        d_mlp: Some(512),
        attn_bias: true,
        ..TransformerConfig::nanda(23)
    };
    let two_layers = TransformerConfig {
        normalization_type: None,
        act_fn: Some(ActFn::Relu),
        n_ctx: 4,
        ..ln_gelu_2l()
    };
    let gelu = TransformerConfig {
        act_fn: Some(ActFn::Gelu),
        d_mlp: Some(70),
        ..two_layers.clone()
    };
    let cases = [
        (nanda, 3, vec![2]),
        (two_layers, 4, vec![1, 3]),
        (gelu, 4, vec![3]),
    ];
    for (n, (cfg, p, loss_pos)) in cases.into_iter().enumerate() {
        let mut b = batch(&cfg, 40, p, loss_pos, 5);
        if n == 0 {
            // Nanda's data: the "=" last, one row for every query.
            b.tokens.column_mut(2).fill(23);
        }
        let mut model = Transformer::new(cfg).unwrap();
        let mut rng = Rng::new(4);
        for s in model.layout.specs.clone() {
            if s.trainable && !s.name.contains(".W_") {
                for x in &mut model.params[s.range()] {
                    *x += (rng.normal() * 0.3) as f32;
                }
            }
        }
        let run = |fold: bool| {
            let mut ws = Workspace::new();
            ws.set_w_in_fold(Some(fold));
            let mut g = vec![0.0; model.layout.total];
            let stats = model.loss_and_grad(&mut ws, &b, &mut g).unwrap();
            assert_eq!(ws.w_in_folded(), fold);
            (stats.loss, g)
        };
        let (loss_f, g_f) = run(true);
        let (loss_g, g_g) = run(false);
        assert!(
            (loss_f - loss_g).abs() < 1e-6 * loss_g.abs(),
            "loss {loss_f} vs {loss_g}"
        );
        // b_K's gradient is zero in exact arithmetic (see check_model): rounding on both sides.
        for s in model
            .layout
            .specs
            .iter()
            .filter(|s| s.trainable && !s.name.ends_with("b_K"))
        {
            let (a, b) = (&g_f[s.range()], &g_g[s.range()]);
            let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
            let worst = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            // f32 rounding of two orders of summation (a wrong term would be off by O(1)). The
            // second layer's query and key gradients amplify the first layer's rounding through
            // the softmax's backward: 2.2e-5 with the fold's table as (v·W_O)·W_in, 2.5e-4 as
            // v·(W_O·W_in), where every other tensor stays within 3e-5 (finite differences
            // check the fold itself, above).
            assert!(
                worst <= 1e-3 * scale,
                "{}: fold vs general {worst:e} of {scale:e}",
                s.name
            );
            eprintln!(
                "{}: fold vs general {:.1e} of its largest entry",
                s.name,
                worst / scale
            );
        }
    }
}

#[test]
fn the_w_in_fold_is_taken_where_it_pays_or_when_asked() {
    // Nanda's model on its 3830 training pairs (W1): folded by default.
    let w1 = toylens::bench::W1::new(0).unwrap();
    let mut ws = Workspace::new();
    w1.model.evaluate(&mut ws, &w1.batch).unwrap();
    assert!(ws.w_in_folded(), "Nanda's model on its training set folds");
    // Four examples through W_in cost less than the fold's tables: the general path.
    let b = batch(&w1.model.cfg, 4, 3, vec![2], 1);
    w1.model.evaluate(&mut ws, &b).unwrap();
    assert!(!ws.w_in_folded(), "a batch of four does not fold");
    ws.set_w_in_fold(Some(true));
    w1.model.evaluate(&mut ws, &b).unwrap();
    assert!(ws.w_in_folded(), "asked for, it folds");
    ws.set_w_in_fold(Some(false));
    w1.model.evaluate(&mut ws, &w1.batch).unwrap();
    assert!(!ws.w_in_folded(), "asked not to, it does not");
    // grokking-tiny's width (d_model 32) on the same batch, and the digit adder of W3 (W_O·W_in alone
    // costs more than W_in on its 64 × 6 answer rows): the general path is cheaper.
    let mut ws = Workspace::new();
    let tiny = Transformer::new(TransformerConfig {
        d_model: 32,
        n_heads: 2,
        d_head: 16,
        d_mlp: Some(64),
        ..TransformerConfig::nanda(113)
    })
    .unwrap();
    tiny.evaluate(&mut ws, &w1.batch).unwrap();
    assert!(!ws.w_in_folded(), "d_model 32 does not fold");
    let w3 = toylens::bench::W3::new(0).unwrap();
    let toylens::batch::Batch::Tokens(w3_batch) = &w3.batch else {
        panic!("digits5 has token batches")
    };
    w3.model.evaluate(&mut ws, w3_batch).unwrap();
    assert!(!ws.w_in_folded(), "digits5 does not fold");
    // A model with a LayerNorm before its MLP has no fold to take, even when asked.
    ws.set_w_in_fold(Some(true));
    let ln = Transformer::new(ln_gelu_2l()).unwrap();
    let b = batch(&ln.cfg, 4, 3, vec![2], 1);
    ln.evaluate(&mut ws, &b).unwrap();
    assert!(!ws.w_in_folded(), "no fold through a LayerNorm");
}

#[test]
fn two_layer_ln_gelu_gradients_match_finite_differences() {
    let cfg = ln_gelu_2l();
    let b = batch(&cfg, 4, 6, vec![1, 3, 5], 8);
    check_model("2L LN gelu", cfg, b);
}

#[test]
fn attn_only_gelu_new_gradients_match_finite_differences() {
    let cfg = TransformerConfig {
        act_fn: Some(ActFn::GeluNew),
        attn_only: false,
        d_mlp: Some(8),
        ..attn_only_gelu_new()
    };
    let b = batch(&cfg, 3, 5, vec![4], 9);
    check_model("gelu_new", cfg, b);
    let cfg = attn_only_gelu_new();
    let b = batch(&cfg, 3, 5, vec![0, 4], 10);
    check_model("attn-only", cfg, b);
}

/// The positional options and smeared keys (positions.rs), with and without LayerNorm and an MLP.
fn position_variants() -> Vec<(&'static str, TransformerConfig)> {
    use toylens::models::transformer::PositionalEmbedding::{Rotary, Shortformer};
    let rotary = |base: TransformerConfig| TransformerConfig {
        positional_embedding_type: Rotary,
        ..base
    };
    vec![
        (
            "shortformer LN gelu",
            TransformerConfig {
                positional_embedding_type: Shortformer,
                ..ln_gelu_2l()
            },
        ),
        (
            "shortformer no LN",
            TransformerConfig {
                positional_embedding_type: Shortformer,
                act_fn: Some(ActFn::Gelu), // (ReLU's kinks upset finite differences)
                ..nanda_small()
            },
        ),
        ("rotary attn-only", rotary(attn_only_gelu_new())),
        (
            "rotary part of d_head, GPT-J pairs",
            TransformerConfig {
                rotary_dim: Some(2),
                rotary_adjacent_pairs: true,
                rotary_base: Some(50.0),
                ..rotary(ln_gelu_2l())
            },
        ),
        (
            "smeared keys attn-only",
            TransformerConfig {
                smear_keys: true,
                ..attn_only_gelu_new()
            },
        ),
        (
            "smeared keys, rotary, no LN",
            TransformerConfig {
                smear_keys: true,
                act_fn: Some(ActFn::Gelu),
                ..rotary(nanda_small())
            },
        ),
    ]
}

#[test]
fn positional_options_and_smeared_keys_match_finite_differences() {
    for (name, cfg) in position_variants() {
        let p = cfg.n_ctx.min(5);
        let b = batch(&cfg, 3, p, vec![1, p - 1], 21);
        check_model(name, cfg, b);
    }
}

/// A cache pass over inputs whose first tokens repeat splits by prefix (prefix.rs); with these
/// options it takes no layer-0 fold, and its logits and cache are the full forward's.
#[test]
fn positional_options_cache_inputs_with_repeated_prefixes() {
    use toylens::hooks::CacheFilter;
    for (name, cfg) in position_variants() {
        let p = cfg.n_ctx.min(3);
        let mut b = batch(&cfg, 8, p, vec![p - 1], 23);
        b.tokens.column_mut(0).fill(1);
        let model = Transformer::new(cfg).unwrap();
        let full = model.forward(b.tokens.view()).unwrap();
        let (logits, cache) = model
            .run_with_cache(b.tokens.view(), CacheFilter::All)
            .unwrap();
        let diff = (&logits - &full)
            .mapv(f32::abs)
            .fold(0.0f32, |m, &x| m.max(x));
        assert!(diff < 1e-5, "{name}: logits differ by {diff}");
        assert!(
            cache.map.contains_key("blocks.0.attn.hook_pattern"),
            "{name}"
        );
    }
}

#[test]
fn fast_path_logits_equal_full_forward() {
    let variants = position_variants().into_iter().map(|(_, c)| c);
    for cfg in [nanda_small(), ln_gelu_2l(), attn_only_gelu_new()]
        .into_iter()
        .chain(variants)
    {
        let p = cfg.n_ctx.min(5);
        let loss_pos = vec![p - 2, p - 1];
        let b = batch(&cfg, 6, p, loss_pos.clone(), 12);
        let model = Transformer::new(cfg).unwrap();
        let full = model.forward(b.tokens.view()).unwrap();
        let mut ws = Workspace::new();
        let stats = model.evaluate(&mut ws, &b).unwrap();
        // Recompute the loss from the full logits at the loss positions (the fast path's own).
        let v = model.cfg.d_vocab_out();
        let mut total = 0.0;
        for bi in 0..6 {
            for (i, &lp) in loss_pos.iter().enumerate() {
                let row: Vec<f64> = (0..v).map(|j| full[[bi, lp, j]] as f64).collect();
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                total += lse - row[b.targets[[bi, i]] as usize];
            }
        }
        let mean = total / (6 * loss_pos.len()) as f64;
        assert!(
            (mean - stats.loss).abs() < 1e-5 * mean.abs().max(1.0),
            "fast {} vs full {}",
            stats.loss,
            mean
        );
    }
}

#[test]
fn toy_mlp_backward_matches_finite_differences() {
    use toylens::models::toy_mlp::{ToyMlp, ToyMlpConfig, ToyMlpWorkspace};
    let cfg = ToyMlpConfig {
        p: 11,
        d_embed: 6,
        d_hidden: 10,
        seed: 4,
    };
    let m = ToyMlp::new(cfg.clone()).unwrap();
    // Repeated tokens (3 twice, as a and as b) exercise the shared embedding's scattered gradient.
    let pairs = vec![(3, 3), (1, 7), (10, 0), (3, 5), (6, 9)];
    let mut ws = ToyMlpWorkspace::default();
    let mut grads = vec![0.0; m.params.len()];
    let targets: Vec<u32> = pairs.iter().map(|&(a, b)| (a + b) % cfg.p as u32).collect();
    m.loss_and_grad(&mut ws, &pairs, &targets, &mut grads)
        .unwrap();
    let mut params = m.params.clone();
    let n = params.len();
    check_fd(
        "toy_mlp",
        &mut params,
        &grads,
        (0..n).step_by(3),
        1e-2,
        |p| {
            let m = ToyMlp::from_params(cfg.clone(), p.to_vec()).unwrap();
            m.evaluate(&mut ToyMlpWorkspace::default(), &pairs, &targets)
                .unwrap()
                .loss
        },
    );
}

#[test]
fn superposition_backward_matches_finite_differences() {
    use toylens::models::superposition::{Superposition, SuperpositionConfig};
    let cfg = SuperpositionConfig {
        n_instances: 3,
        n_features: 5,
        n_hidden: 2,
        importance_decay: 0.9,
        max_feature_probability: 1.0,
        min_feature_probability: 0.3,
        seed: 2,
        data_seed: 3,
    };
    let mut m = Superposition::new(cfg.clone()).unwrap();
    // Biases of 1 keep every output on the ReLU's linear side, away from the kink (with 0.3, one
    // pre-activation sat 8e-5 from zero and the finite differences straddled it), so every weight
    // gets a gradient that finite differences can see.
    let nw = 3 * 5 * 2;
    for b in &mut m.params[nw..] {
        *b = 1.0;
    }
    let x = cfg.features().train_batch(1, 16);
    let mut grads = vec![0.0; m.params.len()];
    m.loss_and_grad(&x, &mut grads);
    let mut params = m.params.clone();
    let n = params.len();
    check_fd("superposition", &mut params, &grads, 0..n, 1e-2, |p| {
        Superposition::from_params(cfg.clone(), p.to_vec())
            .unwrap()
            .instance_losses(&x)
            .iter()
            .sum()
    });
}

#[test]
fn bench_steps_in_a_folding_workspace_take_the_fold_and_train_alike() {
    let mut w = toylens::bench::W1::new(3).unwrap();
    let general = toylens::bench::train_steps(&mut w.model, &w.batch, w.optim, 2).unwrap();
    let mut w = toylens::bench::W1::new(3).unwrap();
    let mut ws = Workspace::new();
    ws.set_w_in_fold(Some(true));
    let folded =
        toylens::bench::train_steps_in(&mut ws, &mut w.model, &w.batch, w.optim, 2).unwrap();
    assert!(ws.w_in_folded());
    for (a, b) in general.losses.iter().zip(&folded.losses) {
        assert!(
            (a - b).abs() < 1e-5 * a,
            "{:?} against {:?}",
            general.losses,
            folded.losses
        );
    }
}

#[test]
fn the_mix_honours_weights_a_hook_wrote_after_the_query() {
    // TransformerLens mixes whatever pattern a hook leaves, causal or not.
    let (q_pos, row_of) = (vec![0usize, 1, 2, 3], (0..4).collect::<Vec<u32>>());
    let g = Geometry::new(1, 4, 1, 3, &q_pos, &row_of, 4);
    let v: Vec<f32> = (0..12).map(|x| x as f32).collect();
    let mut pattern = vec![0.0f32; 16];
    pattern[3] = 1.0; // query 0 on key 3
    pattern[4] = 1.0; // query 1 on key 0
    let mut z = vec![0.0f32; 12];
    attention::mix(&g, &pattern, &v, &mut z);
    assert_eq!(&z[..6], &[9.0, 10.0, 11.0, 0.0, 1.0, 2.0]);
    // The unhooked forward's mix reads rows up to the query only.
    attention::mix_causal(&g, &pattern, &v, &mut z);
    assert_eq!(&z[..6], &[0.0, 0.0, 0.0, 0.0, 1.0, 2.0]);
}

/// A vector-token model (in-context regression's): x·W_E embedding, squared error at some
/// positions, every trainable tensor against finite differences; the forward's predictions at
/// the loss positions are those the loss scored, and hook_embed is x·W_E.
#[test]
fn vector_token_model_gradients_match_finite_differences() {
    use toylens::batch::{Input, SequenceBatch};
    use toylens::models::Model;
    let cfg = TransformerConfig {
        vector_tokens: true,
        d_vocab: 5,
        d_vocab_out: 2,
        n_ctx: 8,
        init: InitScheme::Torch,
        attn_bias: false,
        ..ln_gelu_2l()
    };
    let mut model = Transformer::new(cfg).unwrap();
    let mut rng = Rng::new(5);
    for s in model.layout.specs.clone() {
        if s.trainable && !s.name.contains(".W_") {
            for x in &mut model.params[s.range()] {
                *x += (rng.normal() * 0.3) as f32;
            }
        }
    }
    let (b, p, loss_pos) = (3, 7, vec![0, 2, 4, 6]);
    let x = ndarray::Array3::from_shape_fn((b, p, 5), |_| rng.normal() as f32);
    let y = ndarray::Array3::from_shape_fn((b, loss_pos.len(), 2), |_| rng.normal() as f32);
    let batch = SequenceBatch {
        x: x.clone(),
        loss_pos: loss_pos.clone(),
        y: y.clone(),
    };
    let mut ws = Workspace::new();
    let mut grads = vec![0.0; model.layout.total];
    let stats = model
        .squared_error(&mut ws, &batch, Some(&mut grads))
        .unwrap();
    // The loss is the mean of (ŷ − y)² over the forward's predictions at the loss positions.
    let out = (&model as &dyn Model)
        .forward(Input::Sequences(x.view()))
        .unwrap();
    let mut sq = 0.0f64;
    for e in 0..b {
        for (j, &q) in loss_pos.iter().enumerate() {
            for o in 0..2 {
                sq += f64::from(out[[e, q, o]] - y[[e, j, o]]).powi(2);
            }
        }
    }
    let mean = sq / (b * loss_pos.len() * 2) as f64;
    assert!(
        (stats.loss - mean).abs() < 1e-5 * mean,
        "{} vs {mean}",
        stats.loss
    );
    for s in &model.layout.specs {
        let g = &grads[s.range()];
        if s.trainable {
            assert!(g.iter().any(|&v| v != 0.0), "{} got no gradient", s.name);
        } else {
            assert!(g.iter().all(|&v| v == 0.0), "frozen {} moved", s.name);
        }
    }
    let (_, cache) = model
        .run_input(
            toylens::models::transformer::SeqInput::Vectors(x.view()),
            toylens::hooks::Hooks::new(),
            Some(toylens::hooks::CacheFilter::All),
        )
        .unwrap();
    let embed = cache.get("hook_embed").unwrap();
    let w_e = model.param("embed.W_E").unwrap();
    for (e, q, c) in [(0, 0, 0), (2, 6, 11), (1, 3, 5)] {
        let want: f32 = (0..5).map(|i| x[[e, q, i]] * w_e[[i, c]]).sum();
        assert!(
            (embed[[e, q, c]] - want).abs() < 1e-5,
            "hook_embed[{e},{q},{c}]"
        );
    }
    let specs = model.layout.specs.clone();
    let mut params = model.params.clone();
    for s in specs.iter().filter(|s| s.trainable) {
        let n = s.len();
        check_fd(
            &format!("vector tokens {}", s.name),
            &mut params,
            &grads,
            (0..n).step_by((n / 12).max(1)).map(|i| s.offset + i),
            1e-2,
            |p| {
                model.params.copy_from_slice(p);
                model
                    .squared_error(&mut Workspace::new(), &batch, None)
                    .unwrap()
                    .loss
            },
        );
    }
}

/// PyTorch's nn.Linear start: every weight within ±1/√fan_in and filling it; LN gains 1, frozen
/// biases 0.
#[test]
fn torch_init_draws_within_each_layers_bound() {
    let cfg = TransformerConfig {
        init: InitScheme::Torch,
        attn_bias: false,
        d_model: 64,
        n_heads: 4,
        d_head: 16,
        d_mlp: Some(128),
        d_vocab: 5,
        n_ctx: 32,
        ..ln_gelu_2l()
    };
    let m = Transformer::new(cfg).unwrap();
    for (name, fan_in) in [
        ("embed.W_E", 5.0),
        ("pos_embed.W_pos", 32.0),
        ("blocks.0.attn.W_Q", 64.0),
        ("blocks.1.attn.W_O", 64.0),
        ("blocks.0.mlp.W_in", 64.0),
        ("blocks.0.mlp.b_in", 64.0),
        ("blocks.1.mlp.W_out", 128.0),
        ("blocks.1.mlp.b_out", 128.0),
        ("unembed.W_U", 64.0),
    ] {
        let w = m.param(name).unwrap();
        let bound = 1.0 / f32::sqrt(fan_in);
        let max = w.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
        assert!(
            max <= bound && max > 0.8 * bound,
            "{name}: max |w| {max}, bound {bound}"
        );
    }
    assert!(m
        .param("blocks.0.attn.b_Q")
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    assert!(m.param("blocks.0.ln1.w").unwrap().iter().all(|&x| x == 1.0));
}

/// A backward asked for block 1's gradient only stops above block 0: block 1's entries are the
/// full backward's bits, block 0's and the embeddings' are zero (what a weight-restricted λ̂ of a
/// layer-1 head skips).
#[test]
fn a_backward_for_an_upper_block_gives_its_bits_and_skips_the_rest() {
    use toylens::models::{Model, Scratch};
    let cfg = ln_gelu_2l();
    let model = Transformer::new(cfg.clone()).unwrap();
    let b = toylens::Batch::Tokens(batch(&cfg, 4, 6, vec![3, 5], 2));
    let n = model.layout.total;
    let (mut full, mut part) = (vec![0.0f32; n], vec![1.0f32; n]);
    Model::loss_and_grad(&model, &mut Scratch::new(), &b, &mut full).unwrap();
    let upper: Vec<std::ops::Range<usize>> = model
        .layout
        .specs
        .iter()
        .filter(|s| s.name.starts_with("blocks.1.attn"))
        .map(|s| s.range())
        .collect();
    let mut scratch = Scratch::new();
    model
        .loss_and_grad_of(&mut scratch, &b, &mut part, &upper)
        .unwrap();
    for s in &model.layout.specs {
        let (f, p) = (&full[s.range()], &part[s.range()]);
        if s.name.starts_with("blocks.0")
            || s.name.starts_with("embed.")
            || s.name.starts_with("pos_embed.")
        {
            assert!(p.iter().all(|&x| x == 0.0), "{} was computed", s.name);
        } else {
            assert_eq!(f, p, "{} differs", s.name);
        }
    }
    // The next plain call computes everything again.
    Model::loss_and_grad(&model, &mut scratch, &b, &mut part).unwrap();
    assert_eq!(full, part);
}
