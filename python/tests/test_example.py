"""The notebook-style example runs and shows what it says."""

import pathlib
import re
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "grokking_tiny.py"


def test_example_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, EXAMPLE, tmp_path], check=True, capture_output=True, text=True
    ).stdout
    assert (tmp_path / "example.png").stat().st_size > 10_000
    acc = float(re.search(r"accuracy (\S+)", out).group(1))
    assert acc > 0.99, out
    before, after = map(float, re.search(r"zeroed: loss (\S+) -> (\S+)", out).groups())
    assert after > before, out
    diff = float(re.search(r"largest logit difference (\S+)", out).group(1))
    assert diff < 1e-5, out
