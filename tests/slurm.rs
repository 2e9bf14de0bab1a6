//! A sweep as a Slurm job array on a real one-node cluster (`scripts/slurm-localhost` starts it;
//! `.ci/run` calls that script): every array task finishes its run, with the same final weights as
//! the same sweep run locally. Without a cluster the test is skipped with a printed reason, except
//! in CI (`CI` set), where a Slurm that is not up is a failure.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn slurm_up() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            o.status.success()
                && s.lines()
                    .any(|l| ["idle", "mixed", "allocated"].contains(&l.trim()))
        })
        .unwrap_or(false)
}

fn toylens(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_toylens"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const AXES: &[&str] = &[
    "grokking-tiny",
    "optim.weight_decay=0.5,1",
    "seed=0,1,2",
    "train.steps=400",
];

#[test]
fn a_sweep_as_a_job_array_matches_the_local_sweep() {
    if !slurm_up() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no Slurm cluster answers sinfo in CI (.ci/run starts one with scripts/slurm-localhost)"
        );
        eprintln!("skipped: no Slurm cluster here (start one with scripts/slurm-localhost)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, here) = (tmp.path().join("cluster"), tmp.path().join("here"));
    let c = cluster.to_str().unwrap();

    let mut args = vec!["sweep"];
    args.extend(AXES);
    args.extend(["--out", c, "--slurm", "--dry-run", "--max-parallel", "2"]);
    let dry = toylens(&args);
    assert!(dry.contains("#SBATCH --array=0-5%2"), "{dry}");
    // Started here, finished on the cluster: run 0 trained locally, the array holds the other five.
    toylens(&["sweep", "--task", c, "0"]);
    let dry = toylens(&args);
    assert!(dry.contains("#SBATCH --array=1-5%2"), "{dry}");
    assert!(dry.contains("not submitted"), "{dry}");

    args.retain(|a| *a != "--dry-run");
    let out = toylens(&args);
    assert!(out.contains("submitted job array"), "{out}");
    let t0 = Instant::now();
    loop {
        let status = toylens(&["sweep", "--status", c]);
        if status.contains("6 runs: 6 done") {
            break;
        }
        assert!(!status.contains("failed  "), "a run failed:\n{status}");
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the array did not finish in 10 minutes:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for n in 1..6 {
        let logs: Vec<_> = std::fs::read_dir(cluster.join(n.to_string()))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("slurm-"))
            .collect();
        assert_eq!(logs.len(), 1, "run {n}: Slurm's log slurm-%A_%a.out");
    }
    // Submitting again has nothing left to do.
    let again = toylens(&args);
    assert!(again.contains("nothing to submit"), "{again}");

    let mut local = vec!["sweep"];
    local.extend(AXES);
    local.extend(["--out", here.to_str().unwrap()]);
    toylens(&local);
    for n in 0..6 {
        let f = |d: &Path| std::fs::read(d.join(n.to_string()).join("final.safetensors")).unwrap();
        assert!(
            f(&cluster) == f(&here),
            "run {n}: the cluster's weights differ"
        );
    }
}
