"""Induction-head runs (issue 35) inside TransformerLens: checkpoints with standard, shortformer
and rotary positions load there under strict=True and give the same logits and cache entries,
and TransformerLens's own detect_head gives the induction scores the run's `heads` monitor
recorded. Smeared keys are toylens's own: their export is refused with a clear error."""

import numpy as np
import pytest
import torch
import transformer_lens

import toylens
from toylens.head_detector import detector_tokens
from toylens.transformer_lens import has_hooked_transformer

TL3 = has_hooked_transformer(transformer_lens)

pytestmark = pytest.mark.transformer_lens

SHORT = {"train.steps": 120, "train.eval_every": 60, "train.checkpoint_every": 60, "data.n_eval": 64}


def close(ours, theirs, what, tol=1e-5):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    finite = np.isfinite(theirs)
    np.testing.assert_array_equal(ours[~finite], theirs[~finite], err_msg=what)
    err = np.abs(ours[finite] - theirs[finite]).max() / max(np.abs(theirs[finite]).max(), 1e-30)
    assert err <= tol, f"{what}: relative difference {err:.2e}"


def tl_of(model):
    """The model in TransformerLens. 4.3's bridge boots no shortformer model (its own error) and
    rotates adjacent pairs only (toylens's error for halves)."""
    kind = model.cfg.get("positional_embedding_type")
    if not TL3 and kind == "shortformer":
        with pytest.raises(ValueError, match="shortformer"):
            model.to_transformer_lens()
        pytest.skip("TransformerLens 4.3 has no shortformer native model (compared on 3.9)")
    if not TL3 and kind == "rotary" and not model.cfg.get("rotary_adjacent_pairs"):
        with pytest.raises(ValueError, match="adjacent pairs"):
            model.to_transformer_lens()
        pytest.skip("TransformerLens 4.3 rotates adjacent pairs only (halves compared on 3.9)")
    return model.to_transformer_lens()


@pytest.fixture(scope="module", params=["standard", "shortformer", "rotary", "rotary-adjacent"])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("induction") / request.param
    kind = request.param.split("-")[0]
    overrides = dict(SHORT, **{"model.positional_embedding_type": kind})
    if request.param == "rotary-adjacent":
        overrides["model.rotary_adjacent_pairs"] = True
    return toylens.train("induction", overrides, out=out, progress=False)


def test_checkpoints_give_the_same_logits_and_cache_in_transformer_lens(run):
    model = run.load()
    tl = tl_of(model)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.cfg["d_vocab"], size=(8, model.cfg["n_ctx"]))
    logits, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(torch.from_numpy(tokens))
    close(logits, tl_logits.numpy(), "logits")
    for name, ours in cache.items():
        if name.endswith("hook_attn_scores") and not TL3:
            continue  # 4.3's bridge caches the pattern there (test_transformer_lens.py)
        if name.endswith(("hook_rot_q", "hook_rot_k")) and not TL3:
            continue  # 4.3's native rotary model has no hooks after its rotation
        assert name in tl_cache, f"TransformerLens has no {name}"
        close(ours, tl_cache[name].numpy(), name)
    if model.cfg.get("positional_embedding_type") == "rotary":
        assert "hook_pos_embed" not in cache and "blocks.0.attn.hook_rot_k" in cache


def test_transformer_lens_detect_head_gives_the_monitor_scores(run):
    from transformer_lens.head_detector import detect_head as tl_detect

    model = run.load()
    tl = tl_of(model)
    tl.to_tokens = lambda seq, **kw: seq  # no tokenizer: detect_head gets token ids
    seqs = detector_tokens(model.cfg["n_ctx"], model.cfg["d_vocab"])
    theirs = np.mean([tl_detect(tl, torch.from_numpy(s)[None], "induction_head").numpy() for s in seqs], axis=0)
    n_layers, n_heads = model.cfg["n_layers"], model.cfg["n_heads"]
    # The monitor's row at the last step, the step of the checkpoint loaded.
    recorded = np.array(
        [[run.metrics[f"heads_L{l}H{h}_induction"][-1] for h in range(n_heads)] for l in range(n_layers)]
    )
    close(recorded, theirs, "induction scores", tol=1e-4)


def test_smeared_keys_refuse_export_and_hook_their_keys(tmp_path):
    run = toylens.train("induction-smeared", SHORT, out=tmp_path / "smeared", progress=False)
    model = run.load()
    with pytest.raises(ValueError, match="smear_keys"):
        model.to_transformer_lens()
    tokens = np.arange(16)[None] % model.cfg["d_vocab"]
    _, cache = model.run_with_cache(tokens)
    k, smeared = cache["blocks.0.attn.hook_k"], cache["blocks.0.attn.hook_smeared_k"]
    s = 1 / (1 + np.exp(-model.state_dict()["blocks.0.attn.smear_alpha"].astype(np.float64)))
    expect = k.astype(np.float64).copy()
    expect[:, 1:] = s[None, None, :, None] * k[:, 1:] + (1 - s[None, None, :, None]) * k[:, :-1]
    close(smeared, expect, "smeared keys", tol=1e-6)
