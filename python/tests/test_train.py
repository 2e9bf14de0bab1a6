"""Training from Python: the CLI's bits, the run's record, Ctrl-C and resume."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import toylens

OVERRIDES = ["train.steps=300", "optim.weight_decay=0.5"]


def weights(path):
    return toylens.load(path).state_dict()


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_python_training_gives_the_cli_bits(tmp_path, cli):
    subprocess.run(
        [cli, "train", "grokking-tiny", *OVERRIDES, "--out", tmp_path / "cli", "--quiet"],
        check=True, capture_output=True,
    )
    run = toylens.train("grokking-tiny", OVERRIDES, out=tmp_path / "py", progress=False)
    assert_same_weights(tmp_path / "cli" / "final.safetensors", run.dir / "final.safetensors")
    cli_run = toylens.Run(tmp_path / "cli")
    for k, v in cli_run.metrics.items():
        if k != "wall_time":
            np.testing.assert_array_equal(v, run.metrics[k], err_msg=k)


def test_run_record(tiny_run):
    s = tiny_run.summary
    assert s["steps"] == 300
    assert tiny_run.steps[0] == 0 and tiny_run.steps[-1] == 300
    assert all(p.exists() for p in tiny_run.checkpoints)
    m = tiny_run.metrics
    assert m["step"][0] == 0 and m["step"][-1] == 300 and m["step"].dtype == np.int64
    assert m["train_loss"][-1] == pytest.approx(s["final_train_loss"])
    assert m["train_loss"][-1] < m["train_loss"][0]
    assert tiny_run.config["train"]["steps"] == 300
    assert (tiny_run.dir / "loss.png").exists()
    assert tiny_run.load(step=0).state_dict().keys() == tiny_run.load().state_dict().keys()
    with pytest.raises(KeyError, match="no checkpoint of step 7"):
        tiny_run.load(step=7)


def test_overrides_as_a_dict_are_the_strings(tmp_path):
    a = toylens.config("grokking-tiny", {"optim.weight_decay": 0.5, "model.attn_only": True})
    b = toylens.config("grokking-tiny", ["optim.weight_decay=0.5", "model.attn_only=true"])
    assert a == b and a["optim"]["weight_decay"] == 0.5


def test_ctrl_c_stops_at_a_checkpoint_and_resume_finishes_the_same(tmp_path):
    """SIGINT in the middle of training: a checkpoint of the last finished step and
    KeyboardInterrupt; resuming ends exactly where an uninterrupted run does."""
    steps = ["train.steps=4000", "train.eval_every=4000", "train.checkpoint_every=4000"]
    script = textwrap.dedent(
        f"""
        import sys, toylens
        try:
            toylens.train("grokking-tiny", {steps!r}, out=sys.argv[1], progress=False)
        except KeyboardInterrupt as e:
            print("interrupted:", e, flush=True)
            sys.exit(42)
        print("finished", flush=True)
        """
    )
    out = tmp_path / "stopped"
    p = subprocess.Popen([sys.executable, "-c", script, out], stdout=subprocess.PIPE, text=True)
    # Wait until it trains (the step-0 checkpoint is written before the first step).
    deadline = time.time() + 60
    while not (out / "checkpoints" / "step_000000.optim.safetensors").exists():
        assert time.time() < deadline and p.poll() is None, "training never started"
        time.sleep(0.01)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    stdout, _ = p.communicate(timeout=60)
    assert p.returncode == 42, stdout
    assert "interrupted: stopped at step" in stdout
    stopped = toylens.Run(out)
    assert stopped.summary is None
    assert 0 < stopped.steps[-1] < 4000, stopped.steps
    resumed = toylens.train(None, resume=out, progress=False)
    assert resumed.summary["steps"] == 4000
    whole = toylens.train("grokking-tiny", steps, out=tmp_path / "whole", progress=False)
    assert_same_weights(out / "final.safetensors", whole.dir / "final.safetensors")


def test_training_releases_the_gil(tmp_path):
    """Another Python thread runs while a run trains."""
    import threading

    ticks = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(time.time())
            time.sleep(0.005)

    t = threading.Thread(target=tick)
    t.start()
    try:
        t0 = time.time()
        toylens.train("grokking-tiny", ["train.steps=2000"], out=tmp_path / "r", progress=False)
        t1 = time.time()
    finally:
        done.set()
        t.join()
    during = [x for x in ticks if t0 < x < t1]
    # Held, the GIL would stop the other thread for the whole call.
    assert len(during) > 0.3 * (t1 - t0) / 0.005, (len(during), t1 - t0)


def test_the_trace_and_monitors_read_back_as_arrays(tmp_path):
    run = toylens.train(
        "grokking-tiny",
        {"train.steps": 200, "train.monitors": ["progress", "attention"], "train.trace_every": 2},
        out=tmp_path / "watched",
        progress=False,
    )
    t = run.trace
    assert t["every"] == 2 and t["tensors"][0] == "embed.W_E"
    np.testing.assert_array_equal(t["step"], np.arange(2, 201, 2))
    n = len(t["tensors"])
    for k in ["grad_norm", "update_norm", "weight_norm", "eps_share", "max_update_ratio"]:
        assert t[k].shape == (100, n) and t[k].dtype == np.float32, k
    # The trace's weight norm at the last step is the final weights'.
    w = run.load().state_dict()
    for i, name in enumerate(t["tensors"]):
        assert t["weight_norm"][-1, i] == pytest.approx(np.linalg.norm(w[name]), rel=1e-5), name
    # Monitors are metric columns, measured at every evaluation.
    m = run.metrics
    assert len(m["progress_restricted_loss"]) == len(m["step"])
    assert np.all(np.isfinite(m["attention_L0H0_entropy"]))
    # Spikes, by the run's rule or another.
    s = run.spikes()
    assert s["rule"]["column"] == "train_loss" and s["rule"]["ratio"] == 2.0
    assert isinstance(s["spikes"], list)
    with pytest.raises(ValueError, match="`ratio`: must be a number above 1"):
        run.spikes(ratio=0.5)
    with pytest.raises(ValueError, match="did you mean `test_loss`"):
        run.spikes(column="test_los")
    with pytest.raises(ValueError, match="did you mean `progress`"):
        toylens.train("grokking-tiny", {"train.monitors": ["progres"]}, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
