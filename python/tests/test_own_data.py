"""Your own data from Python: numpy arrays train as the files task does, into a run the CLI reads;
the preset's examples give the preset's weights; bad arrays are a ValueError with nothing written;
the same request through the CLI and Python gives the same report."""

import json
import os
import random
import re
import subprocess

import numpy as np
import pytest
import torch

import toylens


def own_config(tmp_path, steps=300):
    """grokking-tiny's config with `data.task: files` (JSON is YAML)."""
    cfg = toylens.config("grokking-tiny", {"train.steps": steps})
    cfg["data"] = {"task": "files", "train": "unused.npz", "d_vocab_out": 24}
    path = tmp_path / "own.yaml"
    path.write_text(json.dumps(cfg))
    return path


def reference_split(p=23, frac=0.7, seed=0):
    """The original code's split, as `data.split: reference` makes it (CPython's shuffle)."""
    pairs = [(i, j) for i in range(p) for j in range(p)]
    random.seed(seed)
    random.shuffle(pairs)
    n = int(frac * p * p)

    def arrays(ps):
        x = np.array([[a, b, p] for a, b in ps], dtype=np.int64)
        return x, (x[:, 0] + x[:, 1]) % p

    return arrays(pairs[:n]), arrays(pairs[n:])


def state(path):
    return toylens.load(path).state_dict()


def test_the_presets_examples_as_arrays_give_the_presets_weights(tmp_path):
    preset = toylens.train(
        "grokking-tiny", {"train.steps": 300, "data.split": "reference"},
        out=tmp_path / "preset", progress=False,
    )
    train, test = reference_split()
    run = toylens.train(os.fspath(own_config(tmp_path)), data=train, test=test,
                        out=tmp_path / "own", progress=False)
    a, b = state(preset.dir / "final.safetensors"), state(run.dir / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (run.dir / "data" / "train.npz").exists()
    assert run.config["data"]["train"] == str(run.dir / "data" / "train.npz")


def test_a_run_on_arrays_is_a_run_the_cli_reads_and_transformer_lens_loads(tmp_path, cli):
    train, test = reference_split()
    run = toylens.train(os.fspath(own_config(tmp_path, steps=200)), data=train, test=test,
                        out=tmp_path / "own", progress=False)
    ck = run.dir / "final.safetensors"
    # The same request through the CLI and Python: the same report.
    for args, ours in [
        (["analyze", ck, "--json"], toylens.analyze(ck)["report"]),
        (["ablate", ck, "--json"], toylens.ablate(ck)),
    ]:
        theirs = json.loads(subprocess.run([cli, *args], check=True, capture_output=True,
                                           text=True).stdout)
        assert json.dumps(theirs, sort_keys=True) == json.dumps(
            json.loads(json.dumps(ours, default=lambda a: a.tolist())), sort_keys=True
        ), args[0]
    subprocess.run([cli, "train", "--resume", run.dir, "train.steps=250", "--quiet"],
                   check=True, capture_output=True)
    assert toylens.Run(run.dir).summary["steps"] == 250
    model = toylens.load(ck)
    tl = model.to_transformer_lens()  # load_state_dict(strict=True) inside
    with torch.no_grad():
        theirs = tl(torch.from_numpy(test[0])).numpy()
    np.testing.assert_allclose(model(test[0]), theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "what, inputs, targets, says",
    [
        ("float tokens", np.zeros((10, 3), np.float32), np.zeros(10, np.int64), "integer"),
        ("a token outside the vocabulary", np.full((10, 3), 30), np.zeros(10, np.int64),
         "inputs[0, 0] = 30"),
        ("mismatched rows", np.zeros((10, 3), np.int64), np.zeros(9, np.int64), "[9]"),
        ("a target out of range", np.zeros((10, 3), np.int64), np.arange(10) * 5,
         "targets[5, 0] = 25"),
        ("NaN in real data", np.array([[0.5, np.nan]] * 10), np.zeros(10), "[0, 1] = NaN"),
        ("an empty set", np.zeros((0, 3), np.int64), np.zeros(0, np.int64), "empty"),
    ],
)
def test_bad_arrays_raise_and_nothing_is_written(tmp_path, what, inputs, targets, says):
    cfg = own_config(tmp_path)
    text = json.loads(cfg.read_text())
    text["data"]["d_vocab"] = 24
    cfg.write_text(json.dumps(text))
    test = (np.zeros((4, 3), np.int64), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=re.escape(says)):
        toylens.train(os.fspath(cfg), data=(inputs, targets), test=test,
                      out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists(), what
    assert [p.name for p in tmp_path.iterdir()] == ["own.yaml"], what
