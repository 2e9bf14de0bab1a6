"""Shared fixtures: the CLI binary (for comparisons), the original grokked checkpoint, and one
short grokking-tiny run trained from Python."""

import os
import pathlib

import pytest

import toylens

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "progress-measures"


def pytest_configure(config):
    config.addinivalue_line("markers", "transformer_lens: compares with TransformerLens")


@pytest.fixture(scope="session")
def cli() -> pathlib.Path:
    """The toylens binary (scripts/python-tests passes cargo's; a debug build otherwise)."""
    exe = pathlib.Path(os.environ.get("TOYLENS_CLI", ROOT / "target" / "debug" / "toylens"))
    if not exe.exists():
        pytest.fail(f"no toylens binary at {exe} (build it, or set TOYLENS_CLI)")
    return exe


@pytest.fixture(scope="session")
def grokked() -> pathlib.Path:
    """Nanda et al.'s grokked model (p = 113), as the original code saved it."""
    path = FIXTURES / "wd_10-1_mod_addition_loss_curve.pth"
    if not path.exists():
        pytest.fail(f"fixture missing: {path} (../shared/fixtures beside the repository)")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> toylens.Run:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return toylens.train("grokking-tiny", {"train.steps": 300}, out=out, progress=False)
