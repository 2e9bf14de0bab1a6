//! Hooks and cache: names, shapes and the semantics of reading and replacing activations.

use ndarray::{Array2, ArrayD, Axis};
use std::cell::RefCell;
use toylens::engine::activation::ActFn;
use toylens::hooks::{self, CacheFilter, Hooks, PatchSpec};
use toylens::models::transformer::Normalization;
use toylens::models::transformer::{patch_axes, Site};
use toylens::models::Model;
use toylens::{Error, Transformer, TransformerConfig};

fn model() -> Transformer {
    Transformer::new(TransformerConfig {
        n_layers: 2,
        d_model: 16,
        n_heads: 2,
        d_head: 8,
        d_mlp: Some(24),
        d_vocab: 11,
        d_vocab_out: 11,
        n_ctx: 5,
        act_fn: Some(ActFn::Gelu),
        normalization_type: Some(Normalization::LN),
        seed: Some(9),
        ..TransformerConfig::nanda(10)
    })
    .unwrap()
}

fn tokens() -> Array2<u32> {
    Array2::from_shape_fn((4, 5), |(i, j)| ((i * 7 + j * 3) % 11) as u32)
}

/// Largest difference relative to the largest magnitude.
fn rel_diff<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>, b: &ndarray::Array<f32, D>) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let d = (a - b).iter().fold(0.0f32, |m, x| m.max(x.abs()));
    d / scale
}

#[test]
fn no_hooks_changes_nothing() {
    let m = model();
    let watch = |site: &str| {
        m.run_with_hooks(tokens().view(), Hooks::new().add(site, |_| {}))
            .unwrap()
    };
    // Hooked passes take the full path: a hook that changes nothing changes nothing, bit for bit,
    // wherever it is.
    let hooked = watch("blocks.0.hook_resid_mid");
    assert_eq!(hooked, watch("hook_embed"));
    assert_eq!(hooked, watch("blocks.1.mlp.hook_post"));
    // A pass without hooks takes exact shortcuts (layer 0 per distinct row, W_O and W_in folded),
    // which round differently.
    let plain = m.forward(tokens().view()).unwrap();
    let d = rel_diff(&plain, &hooked);
    assert!(d < 1e-6, "plain and hooked passes differ by {d:e}");
}

#[test]
fn cache_has_every_hook_with_transformer_lens_shapes() {
    let m = model();
    let (_, cache) = m.run_with_cache(tokens().view(), CacheFilter::All).unwrap();
    assert_eq!(cache.len(), Site::all(&m.cfg).len());
    assert_eq!(cache.get("hook_embed").unwrap().shape(), &[4, 5, 16]);
    assert_eq!(
        cache.get("blocks.1.attn.hook_q").unwrap().shape(),
        &[4, 5, 2, 8]
    );
    assert_eq!(
        cache.get("blocks.1.attn.hook_pattern").unwrap().shape(),
        &[4, 2, 5, 5]
    );
    assert_eq!(
        cache.get("blocks.0.ln2.hook_scale").unwrap().shape(),
        &[4, 5, 1]
    );
    assert_eq!(
        cache.get("blocks.0.mlp.hook_post").unwrap().shape(),
        &[4, 5, 24]
    );
    // Patterns are causal and sum to one.
    let pat = cache.get("blocks.0.attn.hook_pattern").unwrap();
    for ((b, h, q, k), &v) in pat
        .view()
        .into_dimensionality::<ndarray::Ix4>()
        .unwrap()
        .indexed_iter()
    {
        if k > q {
            assert_eq!(v, 0.0, "[{b},{h},{q},{k}]");
        }
    }
    for s in pat.sum_axis(Axis(3)).iter() {
        assert!((s - 1.0).abs() < 1e-6);
    }
    // A name filter keeps just those.
    let (_, c) = m
        .run_with_cache(
            tokens().view(),
            CacheFilter::Names(vec!["blocks.1.hook_resid_post".into()]),
        )
        .unwrap();
    assert_eq!(
        c.map.keys().collect::<Vec<_>>(),
        ["blocks.1.hook_resid_post"]
    );
    let (_, c) = m
        .run_with_cache(
            tokens().view(),
            CacheFilter::Predicate(Box::new(|n: &str| n.ends_with("hook_z"))),
        )
        .unwrap();
    assert_eq!(c.len(), 2);
}

/// Every cache entry of a pass without hooks against the same entry of a hooked pass (the full
/// path), for inputs whose first tokens repeat: the unhooked pass splits there, computing the last
/// block's rows at those positions once per distinct prefix.
fn check_split_cache(m: &Transformer, tokens: &Array2<u32>) {
    let (logits, cache) = m.run_with_cache(tokens.view(), CacheFilter::All).unwrap();
    let watch = Hooks::new().add("hook_embed", |_| {});
    let (full_logits, full) = m.run(tokens.view(), watch, Some(CacheFilter::All)).unwrap();
    assert_eq!(cache.len(), full.len());
    let d = rel_diff(&logits, &full_logits);
    assert!(d < 1e-6, "logits differ by {d:e}");
    for (name, want) in &full.map {
        let got = cache.get(name).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}");
        // Masked scores (-inf) in the same places; the finite values compared.
        let masked = |a: &ArrayD<f32>| a.mapv(|x| x == f32::NEG_INFINITY);
        assert_eq!(masked(got), masked(want), "{name}: masked entries");
        let finite = |a: &ArrayD<f32>| a.mapv(|x| if x.is_finite() { x } else { 0.0 });
        let d = rel_diff(&finite(got), &finite(want));
        assert!(d < 1e-6, "{name} differs by {d:e}");
    }
    // A name filter keeps its names through the split too.
    let name = "unembed.hook_in";
    let (_, one) = m
        .run_with_cache(tokens.view(), CacheFilter::Names(vec![name.into()]))
        .unwrap();
    assert_eq!(one.map.keys().collect::<Vec<_>>(), [name]);
    assert_eq!(one.get(name).unwrap(), cache.get(name).unwrap());
}

#[test]
fn cache_passes_split_at_repeated_prefixes_equal_the_full_path() {
    // 30 inputs: 3 distinct first tokens, 6 distinct first pairs, then all different.
    let tokens = Array2::from_shape_fn((30, 5), |(i, j)| match j {
        0 => (i % 3) as u32,
        1 => (i % 6 / 3 + 4) as u32,
        _ => ((i * 7 + j * 5) % 11) as u32,
    });
    // Every parameter moved off its initial value, so that the biases (initialised to 0) and the
    // LayerNorms' gains count in the comparison.
    let nudged = |mut m: Transformer| {
        for (i, x) in m.params.iter_mut().enumerate() {
            *x += 0.1 * ((i * 37 % 101) as f32 / 101.0 - 0.5);
        }
        m
    };
    check_split_cache(&nudged(model()), &tokens);
    // One layer without LayerNorm (the grokking model's shape: layer 0's W_O and W_in folds), and
    // every pair of its inputs (position 0 repeats).
    let m = Transformer::new(TransformerConfig {
        d_model: 16,
        n_heads: 2,
        d_head: 8,
        d_mlp: Some(24),
        seed: Some(3),
        ..TransformerConfig::nanda(7)
    })
    .unwrap();
    let pairs = Array2::from_shape_fn((49, 3), |(i, j)| [i / 7, i % 7, 7][j] as u32);
    check_split_cache(&nudged(m), &pairs);
}

#[test]
fn activations_said_to_be_the_same_are_equal_bit_for_bit() {
    let one_block = Transformer::new(TransformerConfig {
        d_mlp: Some(24),
        ..TransformerConfig::nanda(7)
    })
    .unwrap();
    let pairs = Array2::from_shape_fn((49, 3), |(i, j)| [i / 7, i % 7, 7][j] as u32);
    for (m, tokens) in [(model(), tokens()), (one_block, pairs)] {
        let (logits, cache) = m.run_with_cache(tokens.view(), CacheFilter::All).unwrap();
        let same = Model::same_activations(&m);
        assert!(!same.is_empty());
        for (name, other) in same {
            let want = match other {
                Some(o) => cache.get(&o).unwrap().clone(),
                None => logits.clone().into_dyn(),
            };
            assert_eq!(cache.get(&name).unwrap(), &want, "{name}");
        }
    }
}

#[test]
fn unknown_hook_names_suggest_close_ones() {
    let m = model();
    let e = m
        .run_with_hooks(
            tokens().view(),
            Hooks::new().add("blocks.0.attn.hook_patern", |_| {}),
        )
        .unwrap_err();
    match &e {
        Error::UnknownHook { name, suggestions } => {
            assert_eq!(name, "blocks.0.attn.hook_patern");
            assert_eq!(suggestions[0], "blocks.0.attn.hook_pattern");
        }
        other => panic!("{other}"),
    }
    assert!(e
        .to_string()
        .contains("did you mean blocks.0.attn.hook_pattern"));
    let e = m
        .run_with_cache(
            tokens().view(),
            CacheFilter::Names(vec!["blocks.7.hook_resid_pre".into()]),
        )
        .unwrap_err();
    assert!(matches!(e, Error::UnknownHook { .. }), "{e}");
}

#[test]
fn replacing_an_activation_changes_what_follows() {
    let m = model();
    // Zeroing the MLP's output of block 1: resid_post = resid_mid.
    let (_, c) = m
        .run(
            tokens().view(),
            Hooks::new().add("blocks.1.hook_mlp_out", hooks::zero_ablate()),
            Some(CacheFilter::Names(vec![
                "blocks.1.hook_resid_mid".into(),
                "blocks.1.hook_resid_post".into(),
                "blocks.1.hook_mlp_out".into(),
            ])),
        )
        .unwrap();
    assert!(
        c.get("blocks.1.hook_mlp_out")
            .unwrap()
            .iter()
            .all(|&x| x == 0.0),
        "the cache sees the hooked value"
    );
    assert_eq!(
        c.get("blocks.1.hook_resid_mid").unwrap(),
        c.get("blocks.1.hook_resid_post").unwrap()
    );
    // Zero-ablating attention changes the logits.
    let plain = m.forward(tokens().view()).unwrap();
    let ablated = m
        .run_with_hooks(
            tokens().view(),
            Hooks::new().add("blocks.0.attn.hook_z", hooks::zero_ablate()),
        )
        .unwrap();
    assert_ne!(plain, ablated);
    // A uniform pattern replaces attention.
    let seen = RefCell::new(None);
    let uniform = m
        .run_with_hooks(
            tokens().view(),
            Hooks::new()
                .add("blocks.0.attn.hook_pattern", |a| {
                    a.indexed_iter_mut().for_each(|(i, v)| {
                        *v = if i[3] <= i[2] {
                            1.0 / (i[2] + 1) as f32
                        } else {
                            0.0
                        }
                    });
                })
                .add("blocks.0.attn.hook_pattern", |a| {
                    *seen.borrow_mut() = Some(a.to_owned())
                }),
        )
        .unwrap();
    assert_ne!(uniform, plain);
    let s = seen.borrow().clone().unwrap();
    assert_eq!(
        s[[0, 1, 3, 0]],
        0.25,
        "hooks run in order: the second saw the first's change"
    );
}

#[test]
fn replacing_with_zeros_is_zero_ablation() {
    let m = model();
    let zero = m
        .run_with_hooks(
            tokens().view(),
            Hooks::new().add("blocks.0.hook_attn_out", hooks::zero_ablate()),
        )
        .unwrap();
    let replaced = m
        .run_with_hooks(
            tokens().view(),
            Hooks::new().try_add(
                "blocks.0.hook_attn_out",
                hooks::replace_with(ArrayD::zeros(ndarray::IxDyn(&[1, 1, 16]))),
            ),
        )
        .unwrap();
    assert_eq!(
        zero, replaced,
        "a broadcast [1, 1, d] replacement fills every batch element and position"
    );
    assert_ne!(zero, m.forward(tokens().view()).unwrap());
}

#[test]
fn mean_ablation_of_identical_inputs_changes_nothing() {
    let m = model();
    let t = Array2::from_shape_fn((3, 5), |(_, j)| j as u32);
    let plain = m.forward(t.view()).unwrap();
    let out = m
        .run_with_hooks(
            t.view(),
            Hooks::new().add("blocks.0.mlp.hook_post", hooks::mean_ablate()),
        )
        .unwrap();
    let d = (&plain - &out).iter().fold(0.0f32, |a, &b| a.max(b.abs()));
    assert!(d < 1e-5, "{d}");
}

#[test]
fn patching_a_run_into_itself_changes_nothing_and_into_another_changes_the_target() {
    let m = model();
    let t = tokens();
    // The source from a hooked pass too (a cache alone takes the shortcuts, which round
    // differently): then patching into itself is exact.
    let (plain, cache) = m
        .run(
            t.view(),
            Hooks::new().add("hook_embed", |_| {}),
            Some(CacheFilter::All),
        )
        .unwrap();
    for s in Site::all(&m.cfg) {
        let (pos_axis, head_axis) = patch_axes(s);
        let src: ArrayD<f32> = cache.get(&s.name()).unwrap().clone();
        let spec = PatchSpec {
            position: Some(2),
            head: head_axis.map(|_| 1),
        };
        let out = m
            .run_with_hooks(
                t.view(),
                Hooks::new().try_add(s.name(), hooks::patch_from(src, spec, pos_axis, head_axis)),
            )
            .unwrap();
        assert_eq!(
            out,
            plain,
            "patching {} into itself changed the output",
            s.name()
        );
    }
    // Patch the last position's residual stream from a different input: the target's last logits
    // become the source's.
    let other = Array2::from_shape_fn((4, 5), |(i, j)| ((i * 5 + j * 2 + 1) % 11) as u32);
    let (src_logits, src_cache) = m.run_with_cache(other.view(), CacheFilter::All).unwrap();
    let name = "blocks.1.hook_resid_post";
    let patched = m
        .run_with_hooks(
            t.view(),
            Hooks::new().try_add(
                name,
                hooks::patch_from(
                    src_cache.get(name).unwrap().clone(),
                    PatchSpec {
                        position: Some(4),
                        head: None,
                    },
                    1,
                    None,
                ),
            ),
        )
        .unwrap();
    let d = (&patched.index_axis(Axis(1), 4) - &src_logits.index_axis(Axis(1), 4))
        .iter()
        .fold(0.0f32, |a, &b| a.max(b.abs()));
    assert!(d < 1e-5, "{d}");
    assert_eq!(
        patched.index_axis(Axis(1), 0),
        plain.index_axis(Axis(1), 0),
        "other positions untouched"
    );
}
