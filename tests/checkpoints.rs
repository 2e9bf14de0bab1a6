//! Checkpoints and imports: the original grokking checkpoints convert and evaluate; save/load round
//! trips exactly; bad files give errors that name the file and the key, never a panic.

use ndarray::Array2;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use toylens::io::{checkpoint, pth};
use toylens::{Error, Transformer, TransformerConfig};

fn fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/progress-measures")
        .join(name);
    assert!(
        p.exists(),
        "fixture {} missing: ../shared/fixtures/progress-measures must sit beside the repository",
        p.display()
    );
    p
}

fn toylens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toylens"))
}

/// Run the CLI; (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = toylens().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A failing CLI call: non-zero exit, an `error:` line mentioning each of `needles`, no panic.
fn assert_clean_failure(args: &[&str], needles: &[&str]) {
    let (code, _, err) = cli(args);
    assert_ne!(code, 0, "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    for n in needles {
        assert!(
            err.contains(n),
            "{args:?}: error should mention `{n}`: {err}"
        );
    }
}

#[test]
fn grokked_checkpoint_evaluates_like_the_original_run_recorded() {
    let imp = pth::import_grokking(&fixture("wd_10-1_mod_addition_loss_curve.pth")).unwrap();
    let task = imp
        .task
        .modular_task()
        .expect("the grokked checkpoint has its config, so its split");
    let ev = toylens::tasks::modular::evaluate(&imp.model, task.p, task.op, Some(&task)).unwrap();
    assert_eq!(ev.acc_all, 1.0);
    assert!(
        ev.loss_all < 1e-6,
        "near-zero loss everywhere: {}",
        ev.loss_all
    );
    // The original code recorded train 9.2025e-9 and test 4.9915e-7 for this split: the same pairs
    // must land in train (CPython's shuffle) and the model must compute the same function.
    let (rt, re) = (
        imp.recorded_train_loss.unwrap(),
        imp.recorded_test_loss.unwrap(),
    );
    assert!(
        (ev.loss_train.unwrap() - rt).abs() / rt < 1e-3,
        "train {} vs recorded {rt}",
        ev.loss_train.unwrap()
    );
    assert!(
        (ev.loss_test.unwrap() - re).abs() / re < 1e-2,
        "test {} vs recorded {re}",
        ev.loss_test.unwrap()
    );
}

#[test]
fn no_weight_decay_checkpoint_has_no_split_and_matches_its_records() {
    let imp = pth::import_grokking(&fixture("mod_addition_no_wd.pth")).unwrap();
    assert!(
        imp.task.modular_task().is_none(),
        "no config, so no known split"
    );
    let ev = toylens::tasks::modular::evaluate(&imp.model, 113, Default::default(), None).unwrap();
    assert!(ev.loss_train.is_none() && ev.loss_test.is_none());
    // Whatever the split was, the loss over all pairs lies between the run's train and test loss.
    let (rt, re) = (
        imp.recorded_train_loss.unwrap(),
        imp.recorded_test_loss.unwrap(),
    );
    assert!(
        rt <= ev.loss_all && ev.loss_all <= re,
        "all-pairs loss {} outside [{rt}, {re}]",
        ev.loss_all
    );
}

#[test]
fn cli_converts_and_evaluates_both_originals() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grokked.safetensors");
    let (code, stdout, err) = cli(&[
        "convert",
        fixture("wd_10-1_mod_addition_loss_curve.pth")
            .to_str()
            .unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("wrote"));
    for path in [out.clone(), fixture("wd_10-1_mod_addition_loss_curve.pth")] {
        let (code, stdout, err) = cli(&["eval", path.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for k in [
            "loss_all",
            "acc_all",
            "loss_train",
            "acc_train",
            "loss_test",
            "acc_test",
        ] {
            assert!(v[k].is_number(), "{k} missing in {stdout}");
        }
        assert_eq!(v["acc_test"], 1.0);
        assert!(v["loss_all"].as_f64().unwrap() < 1e-6);
    }
    let (code, stdout, _) = cli(&[
        "eval",
        fixture("mod_addition_no_wd.pth").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v.get("loss_test").is_none(), "no split known: {stdout}");
    assert!(v["loss_all"].is_number());
}

fn small_model() -> Transformer {
    Transformer::new(TransformerConfig {
        d_model: 16,
        n_heads: 2,
        d_head: 8,
        d_mlp: Some(32),
        seed: Some(5),
        ..TransformerConfig::nanda(7)
    })
    .unwrap()
}

#[test]
fn save_load_round_trip_is_exact_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let model = small_model();
    let task: toylens::tasks::TaskInfo =
        serde_json::from_value(serde_json::json!({"name": "modular", "p": 7, "op": "add"}))
            .unwrap();
    checkpoint::save(&path, &model, Some(&task), &HashMap::new()).unwrap();
    let ck = checkpoint::load(&path).unwrap();
    let back: &Transformer = ck.model.downcast("a transformer").unwrap();
    assert_eq!(back.cfg, model.cfg);
    assert_eq!(back.params, model.params);
    assert_eq!(ck.task, Some(task));
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // The TransformerLens buffers are there.
    let (arrays, _) = checkpoint::read_arrays(&path).unwrap();
    assert_eq!(arrays["blocks.0.attn.mask"].shape(), &[3, 3]);
    assert_eq!(arrays["blocks.0.attn.mask"].iter().sum::<f32>(), 6.0);
    assert_eq!(
        arrays["blocks.0.attn.IGNORE"].iter().next(),
        Some(&f32::NEG_INFINITY)
    );
}

#[test]
fn a_failed_save_keeps_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let model = small_model();
    checkpoint::save(&path, &model, None, &HashMap::new()).unwrap();
    let before = std::fs::read(&path).unwrap();
    // A directory where the temporary file would go makes the write fail (even for root).
    std::fs::create_dir(
        dir.path()
            .join(format!(".m.safetensors.tmp-{}", std::process::id())),
    )
    .unwrap();
    let mut other = small_model();
    other.params[0] += 1.0;
    let e = checkpoint::save(&path, &other, None, &HashMap::new()).unwrap_err();
    assert!(e.to_string().contains("m.safetensors"), "{e}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the previous checkpoint must survive"
    );
}

fn write_raw(
    path: &Path,
    tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>,
    meta: HashMap<String, String>,
) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, d, s, b)| (k.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// A checkpoint of `small_model` with one tensor replaced.
fn tampered(path: &Path, name: &str, dtype: Dtype, shape: Vec<usize>) {
    let model = small_model();
    let mut tensors = Vec::new();
    for s in &model.layout.specs {
        if s.name == name {
            let n: usize = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            tensors.push((s.name.as_str(), dtype, shape.clone(), vec![0u8; n]));
        } else {
            let b: Vec<u8> = model.params[s.range()]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            tensors.push((s.name.as_str(), Dtype::F32, s.shape.clone(), b));
        }
    }
    let mut meta = HashMap::new();
    meta.insert(
        checkpoint::META_MODEL.to_string(),
        serde_json::to_string(&model.cfg).unwrap(),
    );
    write_raw(path, tensors, meta);
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good.safetensors");
    checkpoint::save(&good, &small_model(), None, &HashMap::new()).unwrap();

    // Truncated.
    let bytes = std::fs::read(&good).unwrap();
    let trunc = d.join("truncated.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load(&trunc).err().unwrap();
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("truncated.safetensors"),
        "{e}"
    );
    assert_clean_failure(
        &["eval", trunc.to_str().unwrap()],
        &["truncated.safetensors", "truncated"],
    );

    // Wrong shape.
    let p = d.join("shape.safetensors");
    tampered(&p, "blocks.0.mlp.W_in", Dtype::F32, vec![16, 31]);
    let e = checkpoint::load(&p).err().unwrap().to_string();
    assert!(
        e.contains("blocks.0.mlp.W_in") && e.contains("[16, 31]") && e.contains("[16, 32]"),
        "{e}"
    );
    assert_clean_failure(
        &["eval", p.to_str().unwrap()],
        &["blocks.0.mlp.W_in", "shape"],
    );

    // Wrong dtype.
    let p = d.join("dtype.safetensors");
    tampered(&p, "unembed.W_U", Dtype::F64, vec![16, 8]);
    let e = checkpoint::load(&p).err().unwrap().to_string();
    assert!(e.contains("unembed.W_U") && e.contains("F64"), "{e}");
    assert_clean_failure(&["eval", p.to_str().unwrap()], &["unembed.W_U", "dtype"]);

    // A safetensors file without our config.
    let p = d.join("noconfig.safetensors");
    write_raw(
        &p,
        vec![("x", Dtype::F32, vec![1], vec![0; 4])],
        HashMap::new(),
    );
    assert_clean_failure(
        &["eval", p.to_str().unwrap()],
        &["noconfig.safetensors", "toylens.model"],
    );

    // Not there at all; garbage.
    assert_clean_failure(
        &["eval", d.join("missing.safetensors").to_str().unwrap()],
        &["missing.safetensors"],
    );
    let p = d.join("garbage.safetensors");
    std::fs::write(&p, b"hello, not a checkpoint").unwrap();
    assert_clean_failure(&["eval", p.to_str().unwrap()], &["garbage.safetensors"]);
}

#[test]
fn bad_pth_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Truncated .pth (a zip cut in half).
    let bytes = std::fs::read(fixture("wd_10-1_mod_addition_loss_curve.pth")).unwrap();
    let p = d.join("cut.pth");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(toylens::io::load_any(&p).is_err());
    assert_clean_failure(
        &[
            "convert",
            p.to_str().unwrap(),
            d.join("o.safetensors").to_str().unwrap(),
        ],
        &["cut.pth"],
    );
    assert!(
        !d.join("o.safetensors").exists(),
        "nothing is written on failure"
    );

    // A pickle that asks to run code is refused, never executed.
    let p = d.join("evil.pth");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    z.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default())
        .unwrap();
    z.write_all(b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.")
        .unwrap();
    z.finish().unwrap();
    assert_clean_failure(
        &["eval", p.to_str().unwrap()],
        &["evil.pth", "posix.system", "refusing"],
    );
}

#[test]
fn bad_model_inputs_are_clear_errors() {
    let model = small_model();
    let tokens = Array2::from_shape_vec((1, 3), vec![1u32, 9, 7]).unwrap();
    let e = model.forward(tokens.view()).unwrap_err().to_string();
    assert!(e.contains("token 9") && e.contains("d_vocab = 8"), "{e}");
    let tokens = Array2::<u32>::zeros((2, 4));
    let e = model.forward(tokens.view()).unwrap_err().to_string();
    assert!(e.contains("4 positions") && e.contains("n_ctx is 3"), "{e}");
    let bad = TransformerConfig {
        d_model: 0,
        ..TransformerConfig::nanda(7)
    };
    let e = Transformer::new(bad).unwrap_err().to_string();
    assert!(e.contains("model.d_model"), "{e}");
}
