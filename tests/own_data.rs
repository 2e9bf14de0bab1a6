//! Your own data (the `files` task): the preset's examples written to files train to the preset's
//! weights bit for bit; per-position targets, a held-out fraction, resume and every command work
//! on such a run; bad data is an error naming the file and the first bad index, with nothing
//! written; a size too large for memory is refused naming the key.

use std::path::{Path, PathBuf};
use std::process::Command;
use toylens::io::checkpoint;
use toylens::tasks::modular::ModularTask;
use toylens::train::{train, Progress, RunMode};

fn toylens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toylens"))
}

/// A `.npy` file (format 1.0) of `descr` (`<i8`, `<f4`, ...) and `shape` holding `bytes`.
fn npy(path: &Path, descr: &str, shape: &[usize], bytes: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(bytes);
    std::fs::write(path, out).unwrap();
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A set as a directory of `inputs.npy` and `targets.npy` (int64).
fn token_set(dir: &Path, inputs: &[i64], in_shape: &[usize], targets: &[i64], t_shape: &[usize]) {
    std::fs::create_dir_all(dir).unwrap();
    npy(&dir.join("inputs.npy"), "<i8", in_shape, &i64s(inputs));
    npy(&dir.join("targets.npy"), "<i8", t_shape, &i64s(targets));
}

/// grokking-tiny's config with its data section replaced by `data` (YAML lines, indented).
fn tiny_with_data(data: &str, extra: &[&str]) -> toylens::config::ExperimentConfig {
    let base = toylens::config::resolve("grokking-tiny", &[]).unwrap();
    let mut yaml = toylens::config::to_yaml(&base);
    let start = yaml.find("data:\n").unwrap();
    let end = yaml.find("model:\n").unwrap();
    yaml.replace_range(start..end, &format!("data:\n{data}"));
    let cfg = toylens::config::from_yaml(&yaml, "test").unwrap();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    toylens::config::apply_overrides(&cfg, &extra).unwrap()
}

fn weights(path: &Path) -> Vec<u32> {
    let ck = checkpoint::load(path).unwrap();
    ck.model.params().iter().map(|x| x.to_bits()).collect()
}

fn metrics_without_wall_time(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_presets_examples_from_files_train_to_the_presets_weights_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let steps = ["train.steps=600"];
    let preset = toylens::config::resolve("grokking-tiny", &["train.steps=600".into()]).unwrap();
    let exp = preset.resolve().unwrap();
    let task: &ModularTask = exp.task.downcast().unwrap();
    let (train_pairs, test_pairs) = task.split_pairs();
    for (name, pairs) in [("train", &train_pairs), ("test", &test_pairs)] {
        let b = task.batch(pairs);
        let x: Vec<i64> = b.tokens.iter().map(|&t| t as i64).collect();
        let y: Vec<i64> = b.targets.iter().map(|&t| t as i64).collect();
        token_set(
            &d.path().join(name),
            &x,
            &[pairs.len(), 3],
            &y,
            &[pairs.len()],
        );
    }
    let files = tiny_with_data(
        &format!(
            "  task: files\n  train: {}\n  test: {}\n  d_vocab_out: {}\n",
            d.path().join("train").display(),
            d.path().join("test").display(),
            task.p + 1
        ),
        &steps,
    );
    let (a, b) = (d.path().join("preset"), d.path().join("files"));
    train(&preset, &a, RunMode::New, Progress::Quiet).unwrap();
    train(&files, &b, RunMode::New, Progress::Quiet).unwrap();
    let w = weights(&a.join("final.safetensors"));
    assert!(!w.is_empty());
    assert_eq!(
        w,
        weights(&b.join("final.safetensors")),
        "the weights differ"
    );
    assert_eq!(metrics_without_wall_time(&a), metrics_without_wall_time(&b));
}

/// Reversal of 4 digits, targets per position (-1 before the separator), in one .npz-less file
/// set: a directory. Returns the directory.
fn reversal(dir: &Path, n: usize) -> PathBuf {
    let (len, sep) = (4usize, 10i64);
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut s = 12345u64;
    for _ in 0..n {
        let digits: Vec<i64> = (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 10) as i64
            })
            .collect();
        let rev: Vec<i64> = digits.iter().rev().copied().collect();
        x.extend(&digits);
        x.push(sep);
        x.extend(&rev[..len - 1]);
        y.extend(std::iter::repeat_n(-1, len));
        y.extend(&rev);
    }
    let set = dir.join("reversal");
    token_set(&set, &x, &[n, 2 * len], &y, &[n, 2 * len]);
    set
}

#[test]
fn a_run_on_files_resumes_to_the_same_bits_and_every_command_works_on_it() {
    let d = tempfile::tempdir().unwrap();
    let set = reversal(d.path(), 400);
    let yaml = d.path().join("reversal.yaml");
    let cfg = tiny_with_data(
        &format!(
            "  task: files\n  train: {}\n  test_fraction: 0.25\n",
            set.display()
        ),
        &[
            "train.steps=200",
            "train.batch_size=64",
            "train.checkpoint_every=100",
        ],
    );
    std::fs::write(&yaml, toylens::config::to_yaml(&cfg)).unwrap();
    let whole = d.path().join("whole");
    let half = d.path().join("half");
    let run = |args: &[&str]| {
        let o = toylens().args(args).output().unwrap();
        assert!(
            o.status.success(),
            "toylens {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let y = yaml.to_str().unwrap();
    run(&["train", y, "--quiet", "--out", whole.to_str().unwrap()]);
    run(&[
        "train",
        y,
        "train.steps=100",
        "--quiet",
        "--out",
        half.to_str().unwrap(),
    ]);
    run(&[
        "train",
        "--resume",
        half.to_str().unwrap(),
        "train.steps=200",
        "--quiet",
    ]);
    assert_eq!(
        weights(&whole.join("final.safetensors")),
        weights(&half.join("final.safetensors"))
    );
    // The held-out quarter: 300 train, 100 test; loss at the 4 positions from the separator on.
    let ck = whole.join("final.safetensors");
    let c = ck.to_str().unwrap();
    let analysis: serde_json::Value =
        serde_json::from_str(&run(&["analyze", c, "--json"])).unwrap();
    assert_eq!(analysis["train"]["examples"], 300);
    assert_eq!(analysis["test"]["examples"], 100);
    assert_eq!(
        analysis["test"]["per_position_loss"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(analysis["attention"].as_array().unwrap().len(), 2);
    let ablation: serde_json::Value = serde_json::from_str(&run(&["ablate", c, "--json"])).unwrap();
    assert_eq!(ablation["ablations"].as_array().unwrap().len(), 2 + 64);
    let llc: serde_json::Value = serde_json::from_str(&run(&[
        "llc", c, "--json", "--chains", "2", "--draws", "10", "--burnin", "5",
    ]))
    .unwrap();
    assert_eq!(llc["n_train"], 300);
    assert!(llc["llc_mean"].as_f64().unwrap().is_finite());
    let eval = run(&["eval", c]);
    assert!(eval.contains("train") && eval.contains("test"), "{eval}");
    let o = toylens()
        .args([
            "patch",
            c,
            "--hook",
            "blocks.0.attn.hook_z",
            "--source",
            "1,2",
            "--target",
            "3,4",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("the `files` task"));
    run(&["report", whole.to_str().unwrap()]);
    assert!(whole.join("report.html").exists());
    run(&["analyze", whole.to_str().unwrap()]);
    assert!(whole.join("analysis").join("attention_L0.png").exists());
    // The data changed since the run started: its checkpoints do not resume on it.
    let targets = set.join("targets.npy");
    let mut bytes = std::fs::read(&targets).unwrap();
    let last = bytes.len() - 8;
    bytes[last] = (bytes[last] + 1) % 10;
    std::fs::write(&targets, bytes).unwrap();
    let o = toylens()
        .args([
            "train",
            "--resume",
            whole.to_str().unwrap(),
            "train.steps=300",
            "--quiet",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("changed since the run started"), "{err}");
}

/// Train `config` (files task) into a fresh directory through the CLI: the error, which must be
/// a failure that leaves the directory unmade.
fn refused(d: &Path, data: &str) -> String {
    let cfg = tiny_with_data(data, &["train.steps=5"]);
    let yaml = d.join("bad.yaml");
    std::fs::write(&yaml, toylens::config::to_yaml(&cfg)).unwrap();
    let out = d.join("run");
    let o = toylens()
        .args(["train", yaml.to_str().unwrap(), "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success(), "trained on bad data: {data}");
    assert!(!out.exists(), "wrote {} for bad data", out.display());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_data_is_an_error_naming_the_file_and_the_first_bad_index_and_nothing_is_written() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let good_x: Vec<i64> = (0..30).map(|i| i % 7).collect(); // [10, 3]
    let good_y: Vec<i64> = (0..10).map(|i| i % 5).collect();
    let set = |name: &str| p.join(name);
    let section = |train: &Path, extra: &str| {
        format!(
            "  task: files\n  train: {}\n  test_fraction: 0.3\n{extra}",
            train.display()
        )
    };
    // (what, the set, extra section lines, words the error must hold)
    let mut cases: Vec<(&str, PathBuf, String, Vec<String>)> = Vec::new();

    let s = set("float_tokens");
    std::fs::create_dir_all(&s).unwrap();
    npy(&s.join("inputs.npy"), "<f4", &[10, 3], &f32s(&[0.5; 30]));
    npy(&s.join("targets.npy"), "<i8", &[10], &i64s(&good_y));
    cases.push((
        "a wrong dtype",
        s.clone(),
        String::new(),
        vec!["inputs.npy".into(), "integer".into()],
    ));

    let s = set("object");
    std::fs::create_dir_all(&s).unwrap();
    npy(&s.join("inputs.npy"), "|O", &[10], &[0; 80]);
    npy(&s.join("targets.npy"), "<i8", &[10], &i64s(&good_y));
    cases.push((
        "a ragged (object) array",
        s.clone(),
        String::new(),
        vec!["inputs.npy".into(), "dtype O".into()],
    ));

    let mut x = good_x.clone();
    x[2 * 3 + 1] = 9;
    let s = set("out_of_vocab");
    token_set(&s, &x, &[10, 3], &good_y, &[10]);
    cases.push((
        "a token outside the vocabulary",
        s.clone(),
        "  d_vocab: 7\n".into(),
        vec![
            "out_of_vocab".into(),
            "inputs[2, 1] = 9".into(),
            "data.d_vocab=7".into(),
        ],
    ));

    let s = set("negative_token");
    let mut x = good_x.clone();
    x[4] = -3;
    token_set(&s, &x, &[10, 3], &good_y, &[10]);
    cases.push((
        "a negative token",
        s.clone(),
        String::new(),
        vec!["negative_token".into(), "[1, 1] = -3".into()],
    ));

    let s = set("rows");
    token_set(&s, &good_x, &[10, 3], &good_y[..9], &[9]);
    cases.push((
        "mismatched rows",
        s.clone(),
        String::new(),
        vec!["targets.npy".into(), "[9]".into(), "[10]".into()],
    ));

    let s = set("flat");
    token_set(&s, &good_x, &[30], &good_y, &[10]);
    cases.push((
        "inputs that are not 2-D",
        s.clone(),
        String::new(),
        vec!["inputs.npy".into(), "2-D".into()],
    ));

    let s = set("positions");
    token_set(&s, &good_x, &[10, 3], &good_x[..20], &[10, 2]);
    cases.push((
        "per-position targets of another width",
        s.clone(),
        String::new(),
        vec!["targets.npy".into(), "2 positions".into()],
    ));

    let s = set("class");
    let mut y = good_y.clone();
    y[6] = 8;
    token_set(&s, &good_x, &[10, 3], &y, &[10]);
    cases.push((
        "a target out of range",
        s.clone(),
        "  d_vocab_out: 5\n".into(),
        vec!["targets[6, 0] = 8".into(), "data.d_vocab_out=5".into()],
    ));

    let s = set("minus_two");
    let mut y = good_y.clone();
    y[3] = -2;
    token_set(&s, &good_x, &[10, 3], &y, &[10]);
    cases.push((
        "a target below -1",
        s.clone(),
        String::new(),
        vec!["targets.npy[3] = -2".into()],
    ));

    let s = set("ignored_apart");
    let mut y: Vec<i64> = good_x.clone();
    y[0] = -1; // example 0 takes no loss at position 0; the others do
    token_set(&s, &good_x, &[10, 3], &y, &[10, 3]);
    cases.push((
        "-1 at different positions",
        s.clone(),
        String::new(),
        vec!["targets.npy[1, 0]".into(), "same positions".into()],
    ));

    let s = set("nan");
    std::fs::create_dir_all(&s).unwrap();
    let mut xs = vec![0.25f32; 20];
    xs[13] = f32::NAN;
    npy(&s.join("inputs.npy"), "<f4", &[10, 2], &f32s(&xs));
    npy(&s.join("targets.npy"), "<f4", &[10], &f32s(&[1.0; 10]));
    cases.push((
        "NaN in real data",
        s.clone(),
        String::new(),
        vec!["inputs.npy[6, 1] = NaN".into(), "finite".into()],
    ));

    let s = set("empty");
    token_set(&s, &[], &[0, 3], &[], &[0]);
    cases.push((
        "an empty set",
        s.clone(),
        String::new(),
        vec!["inputs.npy".into(), "empty".into()],
    ));

    cases.push((
        "a missing file",
        p.join("nowhere.npz"),
        String::new(),
        vec!["nowhere.npz".into()],
    ));

    for (what, train_set, extra, words) in cases {
        let err = refused(p, &section(&train_set, &extra));
        for w in &words {
            assert!(
                err.contains(w.as_str()),
                "{what}: the error does not say `{w}`:\n{err}"
            );
        }
    }
}

#[test]
fn a_files_task_too_large_for_memory_is_refused_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let set = reversal(d.path(), 40);
    let base = tiny_with_data(&format!("  task: files\n  train: {}\n", set.display()), &[]);
    for key in [
        "data.d_vocab",
        "data.d_vocab_out",
        "model.d_model",
        "model.d_mlp",
        "model.n_layers",
        "model.n_heads",
        "model.d_head",
    ] {
        let start = std::time::Instant::now();
        let err = toylens::config::apply_overrides(&base, &[format!("{key}=100000000")])
            .and_then(|c| c.resolve())
            .and_then(|e| e.check_memory_within(8_000_000_000))
            .expect_err(key)
            .to_string();
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        assert!(start.elapsed().as_secs_f64() < 1.0, "{key}: slow");
    }
}
