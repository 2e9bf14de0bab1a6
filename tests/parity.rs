//! Parity with TransformerLens 3.9: logits and every cached activation of the committed golden files
//! (tests/golden/generate.py) must match to 1e-5, relative to each tensor's scale.

use ndarray::{Array2, ArrayD};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toylens::hooks::CacheFilter;
use toylens::io::checkpoint;
use toylens::{Transformer, TransformerConfig};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Largest |a − b| over the tensor, divided by the largest |b|. Equal infinities (masked attention
/// scores) count as equal.
fn rel_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let scale = b
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-30);
    let mut worst = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        if x == y {
            continue;
        }
        assert!(x.is_finite() && y.is_finite(), "{x} vs {y}");
        worst = worst.max(((x - y) as f64).abs() / scale);
    }
    worst
}

fn tokens_of(a: &ArrayD<f32>) -> Array2<u32> {
    let s = a.shape();
    Array2::from_shape_fn((s[0], s[1]), |(i, j)| a[[i, j]] as u32)
}

fn check_golden(file: &str) {
    let (arrays, meta): (HashMap<String, ArrayD<f32>>, _) =
        checkpoint::read_arrays(&golden(file)).unwrap();
    let cfg: TransformerConfig = serde_json::from_str(&meta["toylens.model"]).unwrap();
    let mut model = Transformer::new(cfg).unwrap();
    // Every TransformerLens parameter has a place in our layout, and every one of ours is there.
    let tl_params: Vec<&String> = arrays.keys().filter(|k| k.starts_with("param.")).collect();
    assert_eq!(
        tl_params.len(),
        model.layout.specs.len(),
        "{file}: parameter count differs from TransformerLens"
    );
    for s in model.layout.specs.clone() {
        let a = arrays
            .get(&format!("param.{}", s.name))
            .unwrap_or_else(|| panic!("{file}: TransformerLens has no {}", s.name));
        assert_eq!(a.shape(), s.shape.as_slice(), "{file}: shape of {}", s.name);
        model.params[s.range()].copy_from_slice(a.as_standard_layout().as_slice().unwrap());
    }
    let tokens = tokens_of(&arrays["tokens"]);
    let (logits, cache) = model
        .run_with_cache(tokens.view(), CacheFilter::All)
        .unwrap();
    let d = rel_diff(&logits.into_dyn(), &arrays["logits"]);
    assert!(d < 1e-5, "{file}: logits differ by {d:.2e}");
    let tl_hooks: Vec<String> = arrays
        .keys()
        .filter_map(|k| k.strip_prefix("cache.").map(str::to_string))
        .collect();
    assert_eq!(
        tl_hooks.len(),
        cache.len(),
        "{file}: TransformerLens caches {tl_hooks:?}, we cache {:?}",
        cache.map.keys()
    );
    let mut worst = (0.0, String::new());
    for name in tl_hooks {
        let ours = cache.get(&name).unwrap_or_else(|e| panic!("{file}: {e}"));
        let d = rel_diff(ours, &arrays[&format!("cache.{name}")]);
        assert!(d < 1e-5, "{file}: {name} differs by {d:.2e}");
        if d > worst.0 {
            worst = (d, name);
        }
    }
    eprintln!(
        "{file}: logits {d:.1e}, worst activation {} {:.1e}",
        worst.1, worst.0
    );
}

#[test]
fn two_layer_ln_gelu_matches_transformer_lens() {
    check_golden("tl_ln_gelu_2l.safetensors");
}

#[test]
fn nanda_style_model_matches_transformer_lens() {
    check_golden("tl_nanda_small.safetensors");
}

#[test]
fn attn_only_three_layers_matches_transformer_lens() {
    check_golden("tl_attn_only_3l.safetensors");
}

#[test]
fn gelu_new_ln_matches_transformer_lens() {
    check_golden("tl_gelu_new_ln.safetensors");
}

/// generate.py converted the original grokked checkpoint with `toylens convert`, loaded it into
/// TransformerLens with strict=True and saved TransformerLens' logits; we must give the same.
#[test]
fn transformer_lens_logits_on_a_toylens_checkpoint_match_ours() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/progress-measures/wd_10-1_mod_addition_loss_curve.pth");
    let imp = toylens::io::pth::import_grokking(&fixture)
        .expect("the progress-measures fixtures must be in ../shared");
    let dir = tempfile_dir();
    let path = dir.join("grokked.safetensors");
    checkpoint::save(&path, &imp.model, None, &Default::default()).unwrap();
    let model = checkpoint::load_transformer(&path).unwrap();
    let (arrays, _) = checkpoint::read_arrays(&golden("tl_loads_toylens.safetensors")).unwrap();
    let logits = model.forward(tokens_of(&arrays["tokens"]).view()).unwrap();
    let d = rel_diff(&logits.into_dyn(), &arrays["logits"]);
    assert!(d < 1e-5, "logits differ from TransformerLens' by {d:.2e}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("toylens-parity-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
