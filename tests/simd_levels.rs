//! The same bits at every SIMD level this machine has, each forced through the dispatch
//! (`simd::set_level`): the hot kernels one by one, the matrix products at awkward shapes, the
//! grokking step with and without layer 0's W_in fold, and a few training steps of every preset
//! through the CLI (`TOYLENS_SIMD`). On an AVX-512 machine this compares AVX-512, AVX2 and the
//! baseline; a machine with less compares what it has.
//!
//! The baseline has no FMA, and `gemm`'s baseline kernels multiply and add separately, so matrix
//! products (and what is built on them) are compared across the FMA levels only; every other
//! kernel at all levels.

use ndarray::ArrayView2;
use std::fmt::Debug;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use toylens::engine::activation::{self, ActFn};
use toylens::engine::adamw::{AdamW, AdamWConfig};
use toylens::engine::attention::{self, Geometry};
use toylens::engine::fold::{self, KeyRows};
use toylens::engine::loss::{self, RowLoss};
use toylens::engine::matmul::{matmul_threads, view, view_mut};
use toylens::engine::rng::Rng;
use toylens::engine::simd::{self, Level};
use toylens::engine::{layernorm, threads::with_threads};

/// The level is one setting for the whole process: one test at a time may change it.
static LEVEL_LOCK: Mutex<()> = Mutex::new(());

/// The levels with FMA this machine has (where the matrix products must agree).
fn fma_levels() -> Vec<Level> {
    Level::available()
        .into_iter()
        .filter(|&l| l != Level::Baseline)
        .collect()
}

/// `f` at each of `levels`; every result must equal the first. Returns the first.
fn same_at<T: PartialEq + Debug>(levels: &[Level], what: &str, f: impl Fn() -> T) -> T {
    let _guard = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let results: Vec<T> = levels
        .iter()
        .map(|&l| {
            simd::set_level(l).unwrap();
            assert_eq!(simd::level(), l);
            f()
        })
        .collect();
    simd::set_level(Level::best()).unwrap();
    for (l, r) in levels.iter().zip(&results).skip(1) {
        assert!(
            *r == results[0],
            "{what}: {} gives other bits than {}",
            l.name(),
            levels[0].name()
        );
    }
    results.into_iter().next().expect("at least one level")
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn normals(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    let mut v = vec![0.0; n];
    rng.fill_normal_f32(&mut v);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

#[test]
fn the_machine_has_the_levels_the_tests_compare() {
    let levels = Level::available();
    eprintln!(
        "SIMD levels here: {:?} (in force: {})",
        levels,
        simd::level().name()
    );
    assert_eq!(levels[0], Level::Baseline);
    #[cfg(target_arch = "x86_64")]
    assert!(
        levels.contains(&Level::Avx2),
        "every x86-64 machine this project runs on has AVX2 and FMA"
    );
    assert!(Level::parse_available("no-such-level").is_err());
    assert_eq!(
        Level::parse_available("AVX2").ok(),
        Level::Avx2.is_available().then_some(Level::Avx2)
    );
}

#[test]
fn elementwise_and_row_kernels_give_the_same_bits_at_every_level() {
    let mut rng = Rng::new(7);
    let (rows, d) = (37, 83); // odd sizes: every loop's tail runs
    let x = normals(&mut rng, rows * d, 3.0);
    let dy = normals(&mut rng, rows * d, 1.0);
    let w = normals(&mut rng, d, 1.0);
    let b = normals(&mut rng, d, 0.5);
    same_at(&Level::available(), "activations", || {
        let mut out = Vec::new();
        for act in [ActFn::Relu, ActFn::Gelu, ActFn::GeluNew] {
            let mut post = vec![0.0; x.len()];
            activation::forward(act, &x, &mut post);
            let mut g = dy.clone();
            activation::backward(act, &x, &post, &mut g);
            out.push((bits(&post), bits(&g)));
        }
        let mut post = vec![0.0; x.len()];
        activation::bias_relu(&x, &b, &mut post);
        out.push((bits(&post), vec![]));
        out
    });
    same_at(&Level::available(), "LayerNorm", || {
        let (mut xc, mut scale) = (vec![0.0; x.len()], vec![0.0; rows]);
        layernorm::center_and_scale(&x, &mut xc, &mut scale, d, 1e-5);
        let (mut xhat, mut y) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        layernorm::normalize(&xc, &scale, &w, &b, &mut xhat, &mut y);
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; d], vec![0.0; d]);
        layernorm::backward(&dy, &xhat, &scale, &w, &mut dx, false, &mut dw, &mut db);
        [bits(&y), bits(&dx), bits(&dw), bits(&db)]
    });
    same_at(&Level::available(), "cross-entropy", || {
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 7) % d as u32).collect();
        let mut out = vec![RowLoss::default(); rows];
        let mut g = vec![0.0; x.len()];
        loss::cross_entropy(&x, d, &targets, &mut out, Some((&mut g, 1.0 / rows as f64)));
        let losses: Vec<u64> = out.iter().map(|r| r.loss.to_bits()).collect();
        (losses, loss::mean(&out).to_bits(), bits(&g))
    });
    same_at(&Level::available(), "AdamW", || {
        let mut p = x.clone();
        let mut opt = AdamW::new(
            AdamWConfig {
                weight_decay: 1.0,
                ..Default::default()
            },
            p.len(),
        );
        for _ in 0..3 {
            let all = 0..p.len();
            opt.update(&mut p, &dy, &[all], 1e-3);
        }
        (bits(&p), bits(&opt.exp_avg), bits(&opt.exp_avg_sq))
    });
    same_at(&Level::available(), "column sums and exp", || {
        let big = normals(&mut rng.clone(), 600 * d, 1.0); // more than one block of rows
        let mut sums = b.clone();
        simd::column_sums_add(&mut sums, &big, 600, d);
        let e: Vec<f32> = x.iter().map(|&v| simd::exp_f32(v * 10.0)).collect();
        (bits(&sums), bits(&e))
    });
}

#[test]
fn attention_and_the_w_in_fold_give_the_same_bits_at_every_level() {
    let mut rng = Rng::new(11);
    // 3 examples of 4 positions, queries at 1 and 3; rows shared as layer 0's (token, position)
    // rows are (each row at one position).
    let (batch, n_pos, h, dh, m) = (3, 4, 2, 20, 100); // dh: not a multiple of 16; m: 64 + 36
    let q_pos = [1usize, 3];
    let row_of: Vec<u32> = (0..batch * n_pos)
        .map(|i| ((i % n_pos) * 2 + (i / n_pos) % 2) as u32)
        .collect();
    let n_rows = 2 * n_pos;
    let g = Geometry::new(batch, n_pos, h, dh, &q_pos, &row_of, n_rows);
    let q = normals(&mut rng, h * n_rows * dh, 1.0);
    let k = normals(&mut rng, h * n_rows * dh, 1.0);
    let v = normals(&mut rng, h * n_rows * dh, 1.0);
    let n_pat = batch * h * q_pos.len() * n_pos;
    let dz = normals(&mut rng, batch * q_pos.len() * h * dh, 1.0);
    let pattern = same_at(&Level::available(), "attention", || {
        let mut scores = vec![0.0; n_pat];
        attention::scores(&g, &q, &k, &mut scores);
        let mut pattern = vec![0.0; n_pat];
        attention::softmax(&scores, &mut pattern, n_pos);
        let mut z = vec![0.0; dz.len()];
        attention::mix(&g, &pattern, &v, &mut z);
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        attention::backward(&g, &q, &k, &v, &pattern, &dz, &mut dq, &mut dk, &mut dv);
        (
            bits(&scores),
            bits(&pattern),
            bits(&z),
            bits(&dq),
            bits(&dk),
            bits(&dv),
        )
    })
    .1;
    let pattern: Vec<f32> = pattern.into_iter().map(f32::from_bits).collect();
    let own = normals(&mut rng, n_rows * m, 1.0);
    let vals = normals(&mut rng, h * n_rows * m, 1.0);
    let bias = normals(&mut rng, m, 0.1);
    let dout = normals(&mut rng, batch * q_pos.len() * m, 1.0);
    same_at(&Level::available(), "the W_in fold", || {
        let rq = batch * q_pos.len();
        let (mut pre, mut post) = (vec![0.0; rq * m], vec![0.0; rq * m]);
        fold::mix(
            &g,
            &pattern,
            &own,
            &vals,
            &bias,
            ActFn::Relu,
            Some(&mut pre),
            &mut post,
        );
        let mut keys = KeyRows::default();
        keys.build(&g);
        let (mut dvals, mut dpattern) = (vec![0.0; vals.len()], vec![0.0; n_pat]);
        fold::share_backward(
            &g,
            &keys,
            &pattern,
            &vals,
            &dout,
            m,
            &mut dvals,
            &mut dpattern,
        );
        (bits(&pre), bits(&post), bits(&dvals), bits(&dpattern))
    });
}

/// The operands of a product `a [m, k] · b [k, n]` and a destination, drawn from the shape.
fn operands((m, k, n): (usize, usize, usize)) -> [Vec<f32>; 3] {
    let mut rng = Rng::new((m * 31 + k * 7 + n) as u64);
    [
        normals(&mut rng, m * k, 1.0),
        normals(&mut rng, k * n, 1.0),
        normals(&mut rng, m * n, 1.0),
    ]
}

/// `a` and `b` as `[m, k]` and `[k, n]`, read as stored transposed when asked.
fn views<'a>(
    a: &'a [f32],
    b: &'a [f32],
    (m, k, n): (usize, usize, usize),
    (a_t, b_t): (bool, bool),
) -> (ArrayView2<'a, f32>, ArrayView2<'a, f32>) {
    (
        if a_t {
            view(a, k, m).reversed_axes()
        } else {
            view(a, m, k)
        },
        if b_t {
            view(b, n, k).reversed_axes()
        } else {
            view(b, k, n)
        },
    )
}

/// `c (+)= a · b` on `threads` threads, each operand stored transposed when asked.
fn product(
    (m, k, n): (usize, usize, usize),
    (a_t, b_t): (bool, bool),
    accumulate: bool,
    threads: usize,
) -> Vec<u32> {
    let [a, b, mut c] = operands((m, k, n));
    let (av, bv) = views(&a, &b, (m, k, n), (a_t, b_t));
    with_threads(threads, || {
        matmul_threads(&mut view_mut(&mut c, m, n), &av, &bv, accumulate, threads)
    });
    bits(&c)
}

#[test]
fn matrix_products_give_the_same_bits_at_every_fma_level_and_thread_count() {
    // Each shape takes a path of gemm's that depends on the CPU, or did: one row or one column
    // of output (gemm's matrix-vector kernels sum across lanes), small outputs with contiguous
    // depth on both sides (its horizontal kernels), depths over 512 (its block depth comes from
    // the cache), depths of 1 and 2, and the grokking step's own shapes.
    let shapes = [
        (1, 128, 512),
        (1, 512, 128),
        (512, 128, 1),
        (1, 300, 1),
        (7, 600, 9),
        (16, 64, 16),
        (3, 2, 70),
        (5, 1, 5),
        (40, 1500, 50),
        (128, 3000, 80),
        (113, 128, 512),
        (128, 2047, 113),
    ];
    let levels = fma_levels();
    for &(m, k, n) in &shapes {
        let [a, b, c0] = operands((m, k, n));
        for layout in [(false, false), (true, false), (false, true), (true, true)] {
            let (av, bv) = views(&a, &b, (m, k, n), layout);
            for accumulate in [false, true] {
                let what = format!("{:?} {layout:?} accumulate {accumulate}", (m, k, n));
                let c = same_at(&levels, &what, || {
                    let one = product((m, k, n), layout, accumulate, 1);
                    let two = product((m, k, n), layout, accumulate, 2);
                    assert!(one == two, "{what}: 1 and 2 threads differ");
                    one
                });
                // And it is the product.
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k).map(|d| av[[i, d]] as f64 * bv[[d, j]] as f64).sum();
                        let want = s + if accumulate {
                            c0[i * n + j] as f64
                        } else {
                            0.0
                        };
                        let got = f32::from_bits(c[i * n + j]) as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + want.abs()),
                            "{what}: {got} against {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_grokking_step_gives_the_same_bits_at_every_fma_level_with_and_without_the_fold() {
    for fold in [true, false] {
        same_at(&fma_levels(), &format!("W1, fold {fold}"), || {
            let w = toylens::bench::W1::new(3).unwrap();
            let mut ws = toylens::Workspace::new();
            ws.set_w_in_fold(Some(fold));
            let mut g = vec![0.0f32; w.model.layout.total];
            let stats = w.model.loss_and_grad(&mut ws, &w.batch, &mut g).unwrap();
            assert_eq!(ws.w_in_folded(), fold);
            (stats.loss.to_bits(), bits(&g))
        });
    }
}

/// A run's final weights, metric rows (wall time left out) and optimizer trace.
fn short_run(args: &[&str], level: Level, dir: &Path) -> (Vec<u8>, Vec<String>, Vec<u8>) {
    let out = Command::new(env!("CARGO_BIN_EXE_toylens"))
        .args(args)
        .args(["--quiet", "--force", "--out"])
        .arg(dir)
        .env(simd::LEVEL_ENV, level.name())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} at {}: {}",
        level.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let rows = metrics
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("wall_time");
            v.to_string()
        })
        .collect();
    (
        std::fs::read(dir.join("final.safetensors")).unwrap(),
        rows,
        std::fs::read(dir.join("trace.npy")).unwrap(),
    )
}

#[test]
fn every_preset_trains_to_the_same_bits_at_every_fma_level() {
    let tmp = tempfile::tempdir().unwrap();
    let runs: &[&[&str]] = &[
        // Full batch, d_mlp 512: takes layer 0's W_in fold.
        &["train", "grokking", "train.steps=3", "train.eval_every=1"],
        &[
            "train",
            "grokking-tiny",
            "train.steps=30",
            "train.eval_every=10",
            "train.monitors=[progress, attention]",
        ],
        &[
            "train",
            "digits3",
            "train.steps=10",
            "train.eval_every=5",
            "train.monitors=[digits]",
        ],
        &["train", "digits5", "train.steps=4", "train.eval_every=2"],
        &["train", "toy-mlp", "train.steps=60", "train.eval_every=20"],
        &[
            "train",
            "superposition",
            "train.steps=60",
            "train.eval_every=20",
        ],
    ];
    for (i, args) in runs.iter().enumerate() {
        let dir = tmp.path().join(i.to_string());
        same_at(&fma_levels(), &args.join(" "), || {
            short_run(args, simd::level(), &dir)
        });
    }
}

#[test]
fn a_bad_simd_level_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_toylens"))
        .arg("presets")
        .env(simd::LEVEL_ENV, "avx9000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TOYLENS_SIMD=avx9000") && err.contains("baseline"),
        "{err}"
    );
}

/// `toylens circuits --json` on a 2-layer LayerNorm run: the same bytes at every FMA level and on
/// 1 or 2 threads (patching passes, factored SVDs and eigenvalues, decompositions).
#[test]
fn circuit_analysis_gives_the_same_bits_at_every_fma_level_and_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    short_run(
        &[
            "train",
            "grokking-tiny",
            "model.n_layers=2",
            "model.normalization_type=LN",
            "model.attn_bias=true",
            "train.steps=30",
        ],
        Level::best(),
        &run,
    );
    let circuits = |level: Level, threads: &str| -> Vec<u8> {
        let out = Command::new(env!("CARGO_BIN_EXE_toylens"))
            .args([
                "circuits",
                run.to_str().unwrap(),
                "--examples",
                "8",
                "--json",
            ])
            .args(["--threads", threads])
            .env(simd::LEVEL_ENV, level.name())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let first = same_at(&fma_levels(), "toylens circuits", || {
        circuits(simd::level(), "2")
    });
    assert!(first.len() > 1000, "a report");
    assert!(
        circuits(Level::best(), "1") == first,
        "1 thread gives other bits than 2"
    );
}
