//! The Python package: `scripts/python-tests` builds and installs it (the README's command) in a
//! virtual environment under target/python and runs its pytest suite against TransformerLens 3.9
//! and 4.x. Needs python3 with venv and PyPI; without them this fails, here as in CI.

use std::process::Command;

#[test]
fn python_package_passes_its_tests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(format!("{root}/scripts/python-tests"))
        .env("TOYLENS_CLI", env!("CARGO_BIN_EXE_toylens"))
        .status()
        .expect("run scripts/python-tests");
    assert!(
        status.success(),
        "the Python tests failed ({status}); rerun scripts/python-tests to see them"
    );
}
