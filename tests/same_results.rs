//! The short runs of `bench/same_results.py` (every preset, a few hundred steps each) give the
//! weights and metrics recorded in `bench/same_results.txt`, bit for bit, and `analyze`, `ablate`
//! and `llc` print the recorded numbers for their checkpoints. The record is one for every CPU, so
//! a CI machine of another kind, or a dependency upgrade that changes a kernel, fails here.

use std::process::Command;
use toylens::engine::simd;

#[test]
fn the_short_runs_give_the_recorded_weights() {
    let out = Command::new("python3")
        .arg("bench/same_results.py")
        .arg("--toylens")
        .arg(env!("CARGO_BIN_EXE_toylens"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs bench/same_results.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("SIMD level: {}\n{stdout}", simd::level().name());
    assert!(
        out.status.success(),
        "the weights differ from bench/same_results.txt:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("same weights, metrics and outputs, bit for bit"),
        "{stdout}"
    );
}
