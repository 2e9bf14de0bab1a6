//! Training runs end to end, through the CLI: determinism, thread-count independence, exact resume
//! after SIGKILL, TensorBoard output, and the errors a researcher can run into.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toylens::train::tensorboard::read_scalars;
use toylens::train::MetricRow;

fn toylens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toylens"))
}

/// A few-hundred-step tiny run.
const SHORT: &[&str] = &[
    "train",
    "grokking-tiny",
    "train.steps=300",
    "train.eval_every=20",
    "train.checkpoint_every=50",
    "--quiet",
];

fn run(args: &[&str], dir: &Path) -> (i32, String) {
    let out = toylens().args(args).arg("--out").arg(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str], dir: &Path) {
    let (code, err) = run(args, dir);
    assert_eq!(code, 0, "{args:?} failed: {err}");
}

/// Metric rows without wall time (which differs between runs).
fn rows(dir: &Path) -> Vec<MetricRow> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut r = MetricRow::parse(l).unwrap();
            r.values.retain(|(k, _)| k != "wall_time");
            r
        })
        .collect()
}

/// File contents (compared by hash in messages, so a mismatch does not print megabytes).
fn bytes(p: PathBuf) -> Digest {
    Digest(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

#[derive(PartialEq)]
struct Digest(Vec<u8>);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} bytes, crc32c {:08x}",
            self.0.len(),
            crc32c::crc32c(&self.0)
        )
    }
}

#[test]
fn a_run_writes_everything_and_repeats_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(SHORT, &a);
    ok(SHORT, &b);
    for f in [
        "config.yaml",
        "metrics.csv",
        "metrics.jsonl",
        "final.safetensors",
        "loss.png",
        "summary.json",
        "checkpoints/step_000000.safetensors",
        "checkpoints/step_000050.optim.safetensors",
        "checkpoints/step_000300.safetensors",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    // Log-spaced early checkpoints exist too.
    assert!(a.join("checkpoints/step_000002.safetensors").exists());
    assert_eq!(
        bytes(a.join("final.safetensors")),
        bytes(b.join("final.safetensors"))
    );
    assert_eq!(rows(&a), rows(&b));
    let summary: serde_json::Value =
        serde_json::from_slice(&bytes(a.join("summary.json")).0).unwrap();
    for k in [
        "final_train_loss",
        "final_test_loss",
        "final_test_acc",
        "steps",
        "wall_seconds",
        "steps_per_second",
    ] {
        assert!(summary[k].is_number(), "summary lacks {k}");
    }
    assert!(summary.get("grok_step").is_some());
    assert_eq!(summary["steps"], 300);
    let r = rows(&a);
    assert_eq!(r.first().unwrap().step, 0);
    assert!(
        r.last().unwrap().get("train_loss").unwrap()
            < r.first().unwrap().get("train_loss").unwrap() / 10.0,
        "training must reduce the loss"
    );
    // The final checkpoint is a valid model that evaluates to the logged figures.
    let out = toylens()
        .args(["eval", "--json"])
        .arg(a.join("final.safetensors"))
        .output()
        .unwrap();
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = r.last().unwrap();
    assert!(
        (ev["loss_test"].as_f64().unwrap() - last.get("test_loss").unwrap()).abs()
            <= 1e-9 * last.get("test_loss").unwrap().abs().max(1.0)
    );
}

#[test]
fn one_and_two_threads_train_identically() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let full: Vec<&str> = SHORT
        .iter()
        .copied()
        .chain(["train.batch_size=64"])
        .collect();
    let mut one = vec!["--threads", "1"];
    one.extend(&full);
    let mut two = vec!["--threads", "2"];
    two.extend(&full);
    ok(&one, &a);
    ok(&two, &b);
    assert_eq!(
        bytes(a.join("final.safetensors")),
        bytes(b.join("final.safetensors"))
    );
    assert_eq!(rows(&a), rows(&b));
}

#[test]
fn a_run_killed_mid_training_resumes_to_identical_weights() {
    let d = tempfile::tempdir().unwrap();
    let (whole, killed) = (d.path().join("whole"), d.path().join("killed"));
    let args = [
        "train",
        "grokking-tiny",
        "train.steps=1500",
        "train.eval_every=10",
        "train.checkpoint_every=100",
        "--quiet",
    ];
    ok(&args, &whole);
    let mut child = toylens()
        .args(args)
        .arg("--out")
        .arg(&killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it is past a few checkpoints (polling its directory), mid-run.
    let t = Instant::now();
    while !killed
        .join("checkpoints/step_000300.optim.safetensors")
        .exists()
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the run did not reach step 300"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("final.safetensors").exists(),
        "killed too late to test anything"
    );
    // Every checkpoint left behind is whole.
    for e in std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .flatten()
    {
        let p = e.path();
        if p.to_string_lossy().ends_with(".optim.safetensors") {
            toylens::io::checkpoint::read_arrays(&p).unwrap();
        } else if p.extension().is_some_and(|x| x == "safetensors") {
            toylens::io::checkpoint::load(&p)
                .unwrap_or_else(|e| panic!("half-written checkpoint: {e}"));
        }
    }
    let out = toylens()
        .args(["train", "--quiet", "--resume"])
        .arg(&killed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        bytes(whole.join("final.safetensors")),
        bytes(killed.join("final.safetensors")),
        "resumed weights differ"
    );
    assert_eq!(rows(&whole), rows(&killed), "resumed metrics differ");
}

#[test]
fn tensorboard_file_parses_back_to_the_logged_scalars() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a");
    ok(SHORT, &a);
    let ev = std::fs::read_dir(&a)
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .unwrap();
    let scalars = read_scalars(&ev.path()).unwrap();
    let r = rows(&a);
    let test: Vec<(u64, f32)> = scalars
        .iter()
        .filter(|s| s.1 == "loss/test")
        .map(|s| (s.0, s.2))
        .collect();
    assert_eq!(
        test,
        r.iter()
            .map(|r| (r.step, r.get("test_loss").unwrap() as f32))
            .collect::<Vec<_>>()
    );
    assert!(scalars.iter().any(|s| s.1 == "accuracy/train"));
    // Wall times are Unix seconds (TensorBoard's axis would otherwise start in 1970): within the
    // last hour, never decreasing.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let walls = toylens::train::tensorboard::read_wall_times(&ev.path()).unwrap();
    assert!(walls.len() > 10);
    assert!(
        walls.iter().all(|&w| w > now - 3600.0 && w <= now + 1.0),
        "{walls:?}"
    );
    assert!(walls[1..].windows(2).all(|w| w[0] <= w[1]), "{walls:?}");
    // A flipped byte is caught by the CRC.
    let mut b = bytes(ev.path()).0;
    let n = b.len();
    b[n - 10] ^= 0xff;
    let p = d.path().join("corrupt.tfevents");
    std::fs::write(&p, b).unwrap();
    assert!(read_scalars(&p).unwrap_err().to_string().contains("CRC"));
}

fn fails(args: &[&str], dir: &Path, needles: &[&str]) {
    let (code, err) = run(args, dir);
    assert_ne!(code, 0, "{args:?} should fail");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(
            err.contains(n),
            "{args:?}: error should mention `{n}`: {err}"
        );
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("r");
    fails(
        &["train", "grokking-tiny", "optim.weight_decy=1"],
        &dir,
        &["optim.weight_decy", "optim.weight_decay"],
    );
    fails(
        &["train", "grokking-tiny", "model.d_model=big"],
        &dir,
        &["model.d_model", "usize"],
    );
    fails(&["train", "grokking-tiny", "data.p=1"], &dir, &["data.p"]);
    fails(
        &["train", "grokking-tiny", "data.frac_train=1"],
        &dir,
        &["data.frac_train"],
    );
    fails(
        &["train", "grokking-tiny", "optim.lr=-1"],
        &dir,
        &["optim.lr"],
    );
    assert!(!dir.exists(), "nothing is written for a bad config");
    // An existing run is never overwritten without --force or --resume.
    ok(
        &["train", "grokking-tiny", "train.steps=5", "--quiet"],
        &dir,
    );
    let before = bytes(dir.join("final.safetensors"));
    fails(
        &[
            "train",
            "grokking-tiny",
            "train.steps=5",
            "seed=3",
            "--quiet",
        ],
        &dir,
        &["--resume", "--force"],
    );
    assert_eq!(before, bytes(dir.join("final.safetensors")));
    ok(
        &[
            "train",
            "grokking-tiny",
            "train.steps=5",
            "seed=3",
            "--quiet",
            "--force",
        ],
        &dir,
    );
    assert_ne!(before, bytes(dir.join("final.safetensors")));
    // Resume: a directory that is not a run, and one that does not exist.
    let out = toylens()
        .args(["train", "--resume"])
        .arg(d.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nowhere"));
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = toylens()
        .args(["train", "--resume"])
        .arg(&empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("config.yaml"),
        "{err}"
    );
    // A loss that blows up stops the run with a clear message and keeps the last good checkpoint.
    let nan = d.path().join("nan");
    let (code, err) = run(
        &[
            "train",
            "grokking-tiny",
            "optim.lr=1e30",
            "optim.warmup_steps=0",
            "--quiet",
        ],
        &nan,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("diverged") && err.contains("last good checkpoint is"),
        "{err}"
    );
    let named = err
        .split("last good checkpoint is ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let good =
        toylens::io::checkpoint::load(Path::new(named)).unwrap_or_else(|e| panic!("{named}: {e}"));
    assert!(good.model.params().iter().all(|x| x.is_finite()));
    assert!(!nan.join("final.safetensors").exists());
}
