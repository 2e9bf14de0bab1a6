"""Loading, running, caches and hooks."""

import numpy as np
import pytest

import toylens


def all_pairs(p):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    return np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1)


def test_load_the_original_checkpoint(grokked):
    m = toylens.load(grokked)
    assert m.arch == "transformer"
    assert m.cfg["d_model"] == 128 and m.cfg["n_ctx"] == 3 and m.cfg["d_vocab"] == 114
    assert m.task["name"] == "modular" and m.task["p"] == 113
    sd = m.state_dict()
    assert sd["embed.W_E"].shape == (114, 128)
    assert sd["blocks.0.attn.W_Q"].shape == (4, 128, 32)
    assert sd["blocks.0.attn.mask"].dtype == np.bool_
    assert sum(v.size for k, v in sd.items() if not k.endswith(("mask", "IGNORE"))) == m.n_params


def test_the_grokked_model_is_right_on_every_pair(grokked):
    m = toylens.load(grokked)
    tokens = all_pairs(113)
    logits = m(tokens)
    assert logits.shape == (113 * 113, 3, m.cfg["d_vocab_out"]) and logits.dtype == np.float32
    pred = logits[:, -1].argmax(-1)
    assert (pred == (tokens[:, 0] + tokens[:, 1]) % 113).all()


def test_one_dimensional_tokens_are_one_example(grokked):
    m = toylens.load(grokked)
    np.testing.assert_array_equal(m([3, 5, 113]), m(np.array([[3, 5, 113]])))


def test_cache_has_every_hook_in_transformer_lens_shapes(tiny_run):
    m = tiny_run.load()
    tokens = all_pairs(23)[:50]
    logits, cache = m.run_with_cache(tokens)
    assert set(cache) == set(m.hook_names)
    cfg = m.cfg
    assert cache["hook_embed"].shape == (50, 3, cfg["d_model"])
    assert cache["blocks.0.attn.hook_pattern"].shape == (50, cfg["n_heads"], 3, 3)
    assert cache["blocks.0.mlp.hook_post"].shape == (50, 3, cfg["d_mlp"])
    np.testing.assert_allclose(cache["blocks.0.attn.hook_pattern"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(logits, m(tokens))


def test_entries_equal_to_another_share_its_memory(tiny_run):
    m = tiny_run.load()
    tokens = all_pairs(23)[:50]
    logits, cache = m.run_with_cache(tokens)
    assert np.shares_memory(cache["unembed.hook_out"], logits)
    resid = cache["blocks.0.hook_resid_post"]
    assert np.shares_memory(cache["unembed.hook_in"], resid)
    # Asked for alone, the entry is still there and right, and its source is not.
    _, only = m.run_with_cache(tokens, names_filter="unembed.hook_in")
    assert list(only) == ["unembed.hook_in"]
    np.testing.assert_array_equal(only["unembed.hook_in"], resid)
    _, out_only = m.run_with_cache(tokens, names_filter=["unembed.hook_out"])
    np.testing.assert_array_equal(out_only["unembed.hook_out"], logits)


def test_names_filter_forms(tiny_run):
    m = tiny_run.load()
    tokens = all_pairs(23)[:4]
    _, one = m.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    assert list(one) == ["blocks.0.hook_resid_post"]
    _, two = m.run_with_cache(tokens, names_filter=["hook_embed", "hook_pos_embed"])
    assert set(two) == {"hook_embed", "hook_pos_embed"}
    _, fn = m.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert list(fn) == ["blocks.0.attn.hook_pattern"]


def test_python_zeroing_hook_equals_rust_zero_ablation(tiny_run):
    m = tiny_run.load()
    tokens = all_pairs(23)
    name = "blocks.0.mlp.hook_post"
    seen = []

    def zero(act, hook):
        seen.append((hook, hook.name, act.shape))
        return np.zeros_like(act)

    def zero_in_place(act, hook_name):
        act[:] = 0.0

    by_python = m.run_with_hooks(tokens, fwd_hooks=[(name, zero)])
    in_place = m.run_with_hooks(tokens, fwd_hooks=[(name, zero_in_place)])
    by_rust = m.run_with_hooks(tokens, fwd_hooks=[(name, toylens.hooks.zero)])
    np.testing.assert_array_equal(by_python, by_rust)
    np.testing.assert_array_equal(in_place, by_rust)
    assert seen == [(name, name, (23 * 23, 3, m.cfg["d_mlp"]))]
    # And it did something: the model without the MLP is another model.
    assert np.abs(by_rust - m(tokens)).max() > 1e-3


def test_hook_that_only_reads_changes_nothing(tiny_run):
    m = tiny_run.load()
    tokens = all_pairs(23)[:10]
    got = {}
    out = m.run_with_hooks(
        tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, h: got.setdefault(h, a.copy()))]
    )
    # Hooked passes take the full path: the same bits wherever a hook only looks.
    np.testing.assert_array_equal(out, m.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda a, h: None)]))
    # Passes without hooks (plain, cache only) take exact shortcuts that round differently.
    np.testing.assert_allclose(out, m(tokens), rtol=0, atol=1e-6 * np.abs(out).max())
    _, cache = m.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    np.testing.assert_allclose(got["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_pattern"], atol=1e-6)


def test_rust_mean_and_replace_hooks(tiny_run):
    m = tiny_run.load()
    tokens = all_pairs(23)[:40]
    name = "blocks.0.hook_resid_mid"
    _, cache = m.run_with_cache(tokens, names_filter=name)
    mean = cache[name].mean(0)
    by_mean = m.run_with_hooks(tokens, fwd_hooks=[(name, toylens.hooks.mean)])
    by_replace = m.run_with_hooks(tokens, fwd_hooks=[(name, toylens.hooks.replace(mean))])
    by_python = m.run_with_hooks(tokens, fwd_hooks=[(name, lambda a, h: np.broadcast_to(mean, a.shape))])
    np.testing.assert_allclose(by_mean, by_replace, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(by_replace, by_python)


def test_freed_caches_are_reused_and_give_the_same_values(grokked):
    m = toylens.load(grokked)
    tokens = all_pairs(113)
    _, first = m.run_with_cache(tokens)
    kept = {k: v.copy() for k, v in first.items()}
    del first
    before = toylens._toylens._reused_blocks()
    _, again = m.run_with_cache(tokens)
    assert toylens._toylens._reused_blocks() > before
    for k, v in kept.items():
        np.testing.assert_array_equal(again[k], v, err_msg=k)
    del again
    assert toylens.empty_cache() > 0
    assert toylens.empty_cache() == 0


def test_dense_models_take_float_inputs(tmp_path):
    run = toylens.train("superposition", {"train.steps": 200}, out=tmp_path / "sp", progress=False)
    m = run.load()
    assert m.arch == "superposition"
    n = m.cfg["n_instances"] * m.cfg["n_features"]
    x = np.random.default_rng(0).random((7, n), dtype=np.float32)
    out, cache = m.run_with_cache(x)
    assert out.shape[0] == 7 and out.size == 7 * n
    assert set(cache) == set(m.hook_names)
    np.testing.assert_array_equal(m(x), out)
    analysis = toylens.analyze(run.dir / "final.safetensors")
    assert analysis["kind"] == "superposition" and len(analysis["instances"]) == m.cfg["n_instances"]


def test_in_context_regression_takes_vector_tokens(tmp_path):
    # The icl-regression preset, briefly: its model reads [batch, pos, D + 1] floats, the loss
    # is the mean squared error of its predictions at the x tokens, and its named set hands the
    # same sequences to numpy.
    run = toylens.train(
        "icl-regression",
        {"train.steps": 20, "train.eval_every": 10, "train.checkpoint_every": 10,
         "train.log_checkpoints": 0, "data.n_eval": 32, "train.batch_size": 16},
        out=tmp_path / "icl",
        progress=False,
    )
    final = run.dir / "final.safetensors"
    test = toylens.named_set(final, "test")
    x, y, pos = test["x"], test["y"], test["loss_pos"]
    assert x.shape == (32, 32, 5) and y.shape == (32, 16, 1) and pos == list(range(0, 32, 2))
    model = run.load()
    out = model(x)
    assert out.shape == (32, 32, 1)
    mse = float(np.mean((out[:, pos] - y) ** 2))
    assert mse == pytest.approx(run.metrics["test_loss"][-1], rel=1e-4)
    logits, cache = model.run_with_cache(x)
    assert cache["hook_embed"].shape == (32, 32, 64)
    with pytest.raises(ValueError, match="reads vectors"):
        model(np.zeros((2, 32), dtype=np.int64))
    with pytest.raises(ValueError, match="reads vectors"):
        model.to_transformer_lens()
    r = toylens.llc(run.dir, chains=2, draws=5, burnin=2, batch_size=16, at_steps=[0, 20])
    assert list(r["steps"]) == [0, 20]
