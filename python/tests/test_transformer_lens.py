"""toylens against TransformerLens on the same checkpoint (3.9: HookedTransformer; 4.x:
TransformerBridge). scripts/python-tests runs this file with each."""

import numpy as np
import pytest
import torch
import transformer_lens

import toylens
from toylens.transformer_lens import has_hooked_transformer

TL3 = has_hooked_transformer(transformer_lens)

pytestmark = pytest.mark.transformer_lens


def all_pairs(p):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    return np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1)


def assert_close(ours, theirs, what):
    """Equal to 1e-5 of the largest magnitude (a relative tolerance that zeros cannot break)."""
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    # Masked attention scores are -inf on both sides.
    inf = np.isinf(theirs)
    np.testing.assert_array_equal(ours[inf], theirs[inf], err_msg=what)
    ours, theirs = ours[~inf], theirs[~inf]
    scale = max(np.abs(theirs).max(), 1e-30)
    err = np.abs(ours - theirs).max() / scale
    assert err <= 1e-5, f"{what}: relative difference {err:.2e}"


def compare_entry(name, ours, tl_cache):
    theirs = tl_cache[name].numpy()
    if name.endswith("hook_attn_scores") and not TL3:
        # TransformerLens 4.3's TransformerBridge caches the softmaxed pattern under
        # hook_attn_scores (equal to its hook_pattern bit for bit); 3.9 caches the pre-softmax
        # scores, as toylens does (compared above on 3.9).
        pattern = tl_cache[name.replace("hook_attn_scores", "hook_pattern")].numpy()
        np.testing.assert_array_equal(theirs, pattern)
        return
    assert_close(ours, theirs, name)


@pytest.fixture(scope="module")
def both(grokked):
    model = toylens.load(grokked)
    return model, model.to_transformer_lens()


def test_strict_load_and_kind(both):
    _, tl = both
    expected = "HookedTransformer" if TL3 else "TransformerBridge"
    assert type(tl).__name__ == expected


def test_logits_and_every_cache_entry_match(both):
    model, tl = both
    tokens = all_pairs(113)
    logits, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(torch.from_numpy(tokens))
    assert_close(logits, tl_logits.numpy(), "logits")
    missing = [n for n in cache if n not in tl_cache]
    assert not missing, f"TransformerLens has no {missing}"
    for name, ours in cache.items():
        compare_entry(name, ours, tl_cache)


def test_a_trained_toylens_model_matches(tiny_run):
    model = tiny_run.load()
    tl = model.to_transformer_lens()
    tokens = all_pairs(23)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n or "post" in n)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(torch.from_numpy(tokens))
    assert_close(logits, tl_logits.numpy(), "logits")
    for name, ours in cache.items():
        compare_entry(name, ours, tl_cache)
