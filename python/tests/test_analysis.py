"""The analyses as data (no files), equal to what the CLI reports; sweeps and tickets."""

import json
import subprocess

import numpy as np
import pytest

import toylens


def cli_json(cli, *args):
    out = subprocess.run([cli, *map(str, args), "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_analyze_a_checkpoint_matches_the_cli(grokked, cli):
    r = toylens.analyze(grokked)
    assert r["kind"] == "modular" and r["op"] == "add" and r["on_train_set"]
    a = r["analysis"]
    assert isinstance(a["key_frequencies"], np.ndarray)
    assert 3 <= len(a["key_frequencies"]) <= 8
    assert a["loss_all"] < 1e-6 and a["excluded_loss"] > 1e3 * a["restricted_loss"]
    assert a["w_l_frequency_norms"].shape == (57,)
    theirs = cli_json(cli, "analyze", grokked)
    np.testing.assert_array_equal(a["key_frequencies"], theirs["key_frequencies"])
    assert a["excluded_loss"] == theirs["excluded_loss"]


def test_analyze_a_run_writes_nothing(tiny_run):
    r = toylens.analyze(tiny_run)
    assert r["kind"] == "modular_run"
    assert [row["step"] for row in r["rows"]] == tiny_run.steps
    assert not (tiny_run.dir / "analysis").exists()


def all_pairs(p):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    return np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1)


def loss(logits, tokens, p):
    last = logits[:, -1].astype(np.float64)
    last -= last.max(-1, keepdims=True)
    logp = last - np.log(np.exp(last).sum(-1, keepdims=True))
    return -logp[np.arange(len(tokens)), (tokens[:, 0] + tokens[:, 1]) % p].mean()


def test_ablate_ranks_every_unit(grokked):
    r = toylens.ablate(grokked)
    assert r["loss"] < 1e-6 and r["accuracy"] == 1.0
    rows = r["ablations"]
    assert len(rows) == 512 + 4
    losses = [x["zero_loss"] for x in rows]
    assert losses == sorted(losses, reverse=True)
    # The top row is the loss with that neuron zeroed, as a hook gives it.
    top = rows[0]
    assert top["unit"] == "neuron"
    model = toylens.load(grokked)
    tokens = all_pairs(113)

    def zero(act, hook):
        act[:, :, top["index"]] = 0.0

    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", zero)])
    assert loss(logits, tokens, 113) == pytest.approx(top["zero_loss"], rel=1e-4)


def test_llc_is_the_cli_estimate(tiny_run, cli):
    final = tiny_run.dir / "final.safetensors"
    r = toylens.llc(final, chains=2, draws=20, burnin=5, batch_size=64, seed=3)
    assert r["kind"] == "checkpoint"
    e = r["estimate"]
    assert np.isfinite(e["llc_mean"]) and len(e["llc_per_chain"]) == 2
    assert len(e["chains"]) == 2 and len(e["chains"][0]["losses"]) == 20
    theirs = cli_json(
        cli, "llc", final, "--chains", 2, "--draws", 20, "--burnin", 5, "--batch-size", 64, "--seed", 3
    )
    assert e["llc_mean"] == pytest.approx(theirs["llc_mean"], rel=0, abs=0)


def test_a_heads_restricted_llc_is_the_clis(tiny_run, cli):
    final = tiny_run.dir / "final.safetensors"
    args = dict(chains=2, draws=20, burnin=5, batch_size=64, seed=3)
    one = toylens.llc(final, restrict=["blocks.0.attn.head.1"], **args)["estimate"]
    theirs = cli_json(
        cli, "llc", final, "--chains", 2, "--draws", 20, "--burnin", 5, "--batch-size", 64,
        "--seed", 3, "--restrict", "blocks.0.attn.head.1",
    )
    assert one["llc_mean"] == pytest.approx(theirs["llc_mean"], rel=0, abs=0)
    every = toylens.llc(final, per_head=True, **args)
    assert every["kind"] == "heads"
    assert every["heads"] == [f"blocks.0.attn.head.{h}" for h in range(len(every["heads"]))]
    assert every["estimates"][0][1]["llc_mean"] == one["llc_mean"]
    whole = toylens.llc(final, **args)["estimate"]["llc_mean"]
    assert one["llc_mean"] != whole
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        toylens.llc(final, restrict=["blocks.9.*"], **args)


def test_samplers_and_observed_sets_are_the_clis(tiny_run, cli):
    final = tiny_run.dir / "final.safetensors"
    names = [name for name, _ in toylens.llc_sets(final)]
    assert names[:2] == ["train", "test"]
    args = dict(chains=2, draws=20, burnin=5, batch_size=64, seed=3)
    e = toylens.llc(
        final, sampler="sgnht", localization=0.0, lr=1e-5, observe=["test"], **args
    )["estimate"]
    assert e["sampler"] == "sgnht" and e["mean_acceptance"] is None
    assert [o["set"] for o in e["observed"]] == ["test"]
    assert len(e["chains"][0]["norms"]) == 25
    theirs = cli_json(
        cli, "llc", final, "--chains", 2, "--draws", 20, "--burnin", 5, "--batch-size", 64,
        "--seed", 3, "--sampler", "sgnht", "--localization", 0, "--lr", 1e-5, "--observe", "test",
    )
    assert e["llc_mean"] == theirs["llc_mean"]
    assert e["observed"][0]["llc_mean"] == theirs["observed"][0]["llc_mean"]
    with pytest.raises(ValueError, match="sampler: `hmc` is one of sgld, rmsprop-sgld, sgnht"):
        toylens.llc(final, sampler="hmc", **args)
    with pytest.raises(ValueError, match="has no set `repeats`"):
        toylens.llc(final, observe="repeats", **args)
    test = toylens.named_set(final, "test")
    assert test["tokens"].dtype == np.int64 and test["positions"] is None
    assert test["targets"].shape == (test["tokens"].shape[0], len(test["loss_pos"]))
    with pytest.raises(ValueError, match="no set `nope`"):
        toylens.named_set(final, "nope")


def test_prune_gives_the_mask(tiny_run):
    r = toylens.prune(tiny_run.load(), 0.75)
    mask = r["mask"]
    assert mask["embed.W_E"].dtype == np.bool_
    assert mask["embed.W_E"].shape == tiny_run.load().state_dict()["embed.W_E"].shape
    live = sum(c["live"] for c in r["counts"])
    total = sum(c["total"] for c in r["counts"])
    assert live == sum(int(m.sum()) for m in mask.values())
    pruned_total = sum(c["total"] for c in r["counts"] if c["live"] < c["total"])
    assert 0 < live < total and pruned_total > 0


def test_ticket_trains_into_its_directory(tiny_run, tmp_path):
    t = toylens.ticket(tiny_run, tmp_path / "ticket", sparsity=0.5, rewind=0, progress=False)
    assert t.summary["steps"] == 300
    assert (t.dir / "mask.safetensors").exists() and (t.dir / "ticket.json").exists()


def test_sweep_from_python_runs_every_combination(tmp_path):
    s = toylens.sweep(
        "grokking-tiny", {"train.steps": 60, "seed": [0, 1]}, out=tmp_path / "sw", jobs=2,
        progress=False,
    )
    t = s.table
    assert list(t["id"]) == [0, 1] and t["state"] == ["done", "done"] and t["seed"] == ["0", "1"]
    assert not s.failed
    # A run of the sweep is the run trained alone.
    alone = toylens.train("grokking-tiny", ["train.steps=60", "seed=1"], out=tmp_path / "alone", progress=False)
    np.testing.assert_array_equal(
        s.run(1).load().state_dict()["embed.W_E"], alone.load().state_dict()["embed.W_E"]
    )
    assert t["final_train_loss"][1] == alone.summary["final_train_loss"]


def test_evaluate_gives_every_set(grokked, cli):
    r = toylens.evaluate(grokked)
    assert set(r["sets"]) == {"all", "train", "test"}
    assert r["sets"]["test"]["accuracy"] == 1.0
    theirs = cli_json(cli, "eval", grokked)
    assert r["sets"]["test"]["loss"] == theirs["loss_test"]
