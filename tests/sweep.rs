//! Sweeps run locally: the product of the axes, one run directory each; killed and started again,
//! a sweep ends with the same weights and summary as an uninterrupted one; a run that fails is
//! recorded and does not stop the others; bad input is refused before anything is written.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn toylens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toylens"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = toylens(args);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// summary.csv without the timing columns (they differ between identical runs).
fn summary_without_timing(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    let keep: Vec<usize> = (0..rows[0].len())
        .filter(|&i| !["wall_seconds", "steps_per_second"].contains(&rows[0][i].as_str()))
        .collect();
    rows.iter()
        .map(|r| keep.iter().map(|&i| r[i].clone()).collect())
        .collect()
}

fn same_final_weights(a: &Path, b: &Path, runs: usize) {
    for n in 0..runs {
        let fa = std::fs::read(a.join(n.to_string()).join("final.safetensors")).unwrap();
        let fb = std::fs::read(b.join(n.to_string()).join("final.safetensors")).unwrap();
        assert!(fa == fb, "run {n}: final weights differ");
    }
}

const SWEEP: &[&str] = &[
    "sweep",
    "grokking-tiny",
    "optim.weight_decay=0.5,1",
    "seed=range(0,3)",
    "train.steps=1500",
    "train.checkpoint_every=100",
    "--out",
];

#[test]
fn a_killed_sweep_resumes_to_the_bytes_of_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));

    let mut args: Vec<&str> = SWEEP.to_vec();
    args.push(killed.to_str().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_toylens"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a run has finished and another has a checkpoint past step 0.
    let t0 = Instant::now();
    loop {
        let done = (0..6).any(|n| killed.join(format!("{n}/summary.json")).exists());
        let mid = (0..6).any(|n| {
            let d = killed.join(n.to_string());
            !d.join("summary.json").exists()
                && d.join("checkpoints/step_000100.safetensors").exists()
        });
        if done && mid {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the sweep made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let status = ok(&["sweep", "--status", killed.to_str().unwrap()]);
    // Run lines pad the state to 11 characters; the totals line has "0 running," etc.
    assert!(
        !status.contains("running  "),
        "workers outlived the sweep:\n{status}"
    );
    assert!(status.contains("interrupted  "), "{status}");
    assert!(!status.contains("6 done"), "{status}");

    // The same command again finishes it.
    let out = ok(&args);
    assert!(out.contains("finished before: skipped"), "{out}");
    let status = ok(&["sweep", "--status", killed.to_str().unwrap()]);
    assert!(status.contains("6 runs: 6 done"), "{status}");

    // Uninterrupted, one run at a time on two threads: the same bytes.
    let mut args2: Vec<&str> = SWEEP.to_vec();
    args2.push(whole.to_str().unwrap());
    args2.extend(["--jobs", "1"]);
    ok(&args2);
    same_final_weights(&killed, &whole, 6);
    assert_eq!(
        summary_without_timing(&killed),
        summary_without_timing(&whole)
    );
    let s = summary_without_timing(&whole);
    assert_eq!(s.len(), 7);
    assert_eq!(
        s[0][..4],
        ["run", "optim.weight_decay", "seed", "state"].map(String::from)
    );
    assert_eq!(s[4][..4], ["3", "1", "0", "done"].map(String::from));
    assert!(whole.join("sweep.png").exists());
}

#[test]
fn a_failing_run_is_recorded_and_the_others_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    // 3 heads do not divide d_model 32: that run fails, the others train.
    let o = toylens(&[
        "sweep",
        "grokking-tiny",
        "model.n_heads=1,3,4",
        "model.d_head=null",
        "train.steps=40",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the exit code says a run failed");
    assert!(stderr.contains("1 run(s) failed: 1"), "{stderr}");
    assert!(stdout.contains("run 1: FAILED"), "{stdout}");
    let err = std::fs::read_to_string(dir.join("1/error.txt")).unwrap();
    assert!(
        err.contains("model.d_head") && err.contains("3 heads"),
        "{err}"
    );
    for n in [0, 2] {
        assert!(dir.join(format!("{n}/final.safetensors")).exists());
    }
    let status = ok(&["sweep", "--status", dir.to_str().unwrap()]);
    assert!(
        status.contains("2 done, 0 running, 0 interrupted, 1 failed, 0 pending"),
        "{status}"
    );
    let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert!(
        csv.lines().nth(2).unwrap().starts_with("1,3,failed,"),
        "{csv}"
    );
    // --summary works on it; --resume tries the failed run again.
    ok(&["sweep", "--summary", dir.to_str().unwrap()]);
    let again = toylens(&["sweep", "--resume", dir.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(!again.status.success(), "it fails again");
    assert!(
        out.contains("2 run(s) finished before") && out.contains("1 run(s) to do"),
        "{out}"
    );
}

#[test]
fn a_diverging_run_is_recorded_with_its_nan() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let o = toylens(&[
        "sweep",
        "grokking-tiny",
        "optim.lr=0.003,1e30",
        "train.steps=30",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = std::fs::read_to_string(dir.join("1/error.txt")).unwrap();
    assert!(
        err.contains("training diverged") && err.contains("NaN"),
        "{err}"
    );
    assert!(dir.join("0/final.safetensors").exists());
}

#[test]
fn bad_sweeps_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("never");
    let d = dir.to_str().unwrap();
    for (args, want) in [
        (
            vec!["optim.weight_decai=0,1"],
            "did you mean `optim.weight_decay`",
        ),
        (vec!["model.d_model=16,big"], "axis value `big`"),
        (vec!["seed=,"], "empty axis value"),
        (vec!["seed=range(0,4,0)"], "the step is 0"),
        (vec!["seed=range(4,0)"], "is empty"),
        (vec!["seed=range(0,1001)"], "pass --yes"),
    ] {
        let mut a = vec!["sweep", "grokking-tiny"];
        a.extend(&args);
        a.extend(["--out", d]);
        let o = toylens(&a);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(want), "{args:?}: {e}");
        assert!(!dir.exists(), "{args:?} wrote {d}");
    }
    let e = toylens(&["sweep", "--status", d]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("not a sweep directory"));
    let e = toylens(&["sweep", "--task", d, "x"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("N is a run number"));
}
