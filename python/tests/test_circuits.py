"""Circuit analysis against TransformerLens on the same checkpoints: the grokked model (1 layer, no
LayerNorm) and a 2-layer model with LayerNorm and GELU MLPs trained by toylens. Decompositions,
logit attributions, factored circuits and composition scores, head detectors, every patching
sweep, weight processing, and attribution and path patching (against TransformerLens's own
hooks and autograd) agree to float rounding."""

import json

import numpy as np
import pytest
import torch
import transformer_lens

import toylens
from toylens import patching as tp
from toylens.transformer_lens import has_hooked_transformer

TL3 = has_hooked_transformer(transformer_lens)

pytestmark = pytest.mark.transformer_lens


def close(ours, theirs, what, tol=1e-4):
    """Equal to `tol` of the largest magnitude."""
    if hasattr(theirs, "detach"):
        theirs = theirs.detach().numpy()
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    scale = max(np.abs(theirs).max(), 1e-6)
    err = np.abs(ours - theirs).max() / scale
    assert err <= tol, f"{what}: relative difference {err:.2e}"


def induction_data(n, half, vocab, seed):
    rng = np.random.default_rng(seed)
    first = rng.integers(0, vocab, size=(n, half))
    x = np.concatenate([first, first], axis=1)
    y = np.full_like(x, -1)
    y[:, half - 1 : -1] = x[:, half:]
    return x.astype(np.int64), y.astype(np.int64)


@pytest.fixture(scope="module")
def two_layer(tmp_path_factory):
    """A 2-layer transformer with LayerNorm and GELU MLPs, every bias trained, on repeated random
    tokens (n_ctx 10), trained briefly by toylens."""
    tmp = tmp_path_factory.mktemp("two_layer")
    cfg = toylens.config("grokking-tiny", {"train.steps": 150})
    cfg["data"] = {"task": "files", "train": "unused.npz"}
    cfg["model"].update(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, act_fn="gelu",
        normalization_type="LN", init="transformer_lens", initializer_range=0.1,
        attn_bias=True, unembed_bias=True,
    )
    cfg["train"]["batch_size"] = 64
    cfg["optim"]["weight_decay"] = 0.1
    path = tmp / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    run = toylens.train(str(path), data=induction_data(512, 5, 12, 0), out=tmp / "run", progress=False)
    return run.load()


@pytest.fixture(scope="module")
def grokked_model(grokked):
    return toylens.load(grokked)


def tl_of(model):
    return model.to_transformer_lens()


def grokked_inputs(n=64, p=113, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, p, n), rng.integers(0, p, n)
    x = np.stack([a, b, np.full(n, p)], axis=1)
    return x, (a + b) % p


def both_models(grokked_model, two_layer):
    x, y = grokked_inputs()
    tokens, _ = induction_data(16, 4, 12, 1)
    return [
        ("grokked", grokked_model, x, y, (y + 1) % 113),
        ("two_layer", two_layer, tokens, tokens[:, 1] % 12, (tokens[:, 1] + 3) % 12),
    ]


# TransformerLens 4.x's TransformerBridge has no `process_weights_`, and its backward hooks sit
# under other names; 3.9 (the same test session's first pass) compares those two.
needs_hooked = pytest.mark.skipif(
    not TL3, reason="HookedTransformer only (TransformerLens 3.9 runs it in the first pass)"
)


def test_decompositions_and_logit_attributions_match(grokked_model, two_layer):
    for label, model, x, ans, wrong in both_models(grokked_model, two_layer):
        tl = tl_of(model)
        _, cache = model.run_with_cache(x)
        with torch.no_grad():
            _, tc = tl.run_with_cache(torch.from_numpy(x))
        n = model.cfg["n_layers"]
        ln = model.cfg["normalization_type"] is not None
        cases = [
            ("accumulated_resid", dict()),
            ("accumulated_resid", dict(incl_mid=True, apply_ln=True, pos_slice=-1)),
            ("accumulated_resid", dict(layer=n - 1, apply_ln=True, mlp_input=True)),
            ("decompose_resid", dict()),
            ("decompose_resid", dict(mode="attn", apply_ln=True, pos_slice=-1)),
            ("decompose_resid", dict(layer=n - 1, mlp_input=True, apply_ln=ln)),
            ("stack_head_results", dict(incl_remainder=True, apply_ln=True)),
            ("stack_head_results", dict(layer=1, pos_slice=(1, 3))),
            ("stack_neuron_results", dict(layer=n, apply_ln=True, pos_slice=-1)),
            ("stack_neuron_results", dict(layer=n, neuron_slice=(3, 9), incl_remainder=True)),
            ("get_full_resid_decomposition", dict()),
            ("get_full_resid_decomposition", dict(expand_neurons=False, apply_ln=True, pos_slice=-1)),
            ("get_full_resid_decomposition", dict(layer=n - 1, mlp_input=True, apply_ln=ln)),
        ]
        for name, kw in cases:
            ours, ol = getattr(cache, name)(return_labels=True, **kw)
            theirs, tlab = getattr(tc, name)(return_labels=True, **kw)
            assert ol == list(tlab), (label, name, kw, ol[:5], tlab[:5])
            close(ours, theirs, f"{label} {name} {kw}")
        stack = cache.get_full_resid_decomposition(pos_slice=-1)
        tstack = tc.get_full_resid_decomposition(pos_slice=-1)
        for kw in (dict(tokens=ans), dict(tokens=ans, incorrect_tokens=wrong)):
            ours = cache.logit_attrs(stack, pos_slice=-1, **kw)
            theirs = tc.logit_attrs(tstack, pos_slice=-1, **{k: torch.from_numpy(v) for k, v in kw.items()})
            close(ours, theirs, f"{label} logit_attrs {list(kw)}")
        # (Without LayerNorm, 3.9 returns the stack before taking batch_slice, 4.x after, as
        # toylens does.)
        batch_slice = (0, 5) if ln else None
        close(
            cache.apply_ln_to_stack(stack, -1, pos_slice=-1, batch_slice=batch_slice),
            tc.apply_ln_to_stack(tstack, -1, pos_slice=-1, batch_slice=batch_slice),
            f"{label} apply_ln_to_stack",
        )


def test_factored_circuits_and_composition_scores_match(grokked_model, two_layer):
    for model in (grokked_model, two_layer):
        tl = tl_of(model)
        for name in ["W_E", "W_pos", "W_U", "b_U", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_O", "W_in", "W_out"]:
            close(getattr(model, name), getattr(tl, name), name, tol=0)
        for circuit in ("QK", "OV"):
            ours, theirs = getattr(model, circuit), getattr(tl, circuit)
            assert ours.shape == tuple(theirs.shape)
            close(ours.AB, theirs.AB, f"{circuit}.AB")
            close(ours.S, theirs.S, f"{circuit}.S")
            close(ours.norm(), theirs.norm(), f"{circuit}.norm")
            close(ours.get_corner(4), theirs.get_corner(4), f"{circuit} corner")
            # Singular vectors are not unique (the grokked model's come in equal pairs): they
            # rebuild the product.
            rebuilt = (ours.U * ours.S[..., None, :]) @ np.swapaxes(ours.V, -1, -2)
            close(rebuilt, theirs.AB, f"{circuit} U S Vᵀ")
            ev = np.sort_complex(ours.eigenvalues.reshape(-1, ours.mdim))
            tev = np.sort_complex(theirs.eigenvalues.detach().numpy().reshape(-1, ours.mdim))
            close(np.abs(ev), np.abs(tev), f"{circuit} eigenvalues", tol=1e-3)
            close(ours[0, 1].AB, theirs[0, 1].AB, f"{circuit}[0, 1]")
    for mode in "QKV":
        close(
            two_layer.all_composition_scores(mode),
            tl_of(two_layer).all_composition_scores(mode),
            f"{mode}-composition",
        )
    with pytest.raises(ValueError, match="two layers"):
        grokked_model.all_composition_scores("Q")
    # Copying: TransformerLens's demo's OV_copying_score and the full OV circuit's top-1 check.
    from toylens.circuits import copying_scores

    for model in (grokked_model, two_layer):
        tl = tl_of(model)
        ev = tl.OV.eigenvalues.detach()
        theirs = (ev.sum(-1).real / ev.abs().sum(-1)).numpy()
        ours = copying_scores(model)
        n_h = model.cfg["n_heads"]
        close([[s["ov_score"] for s in ours if s["layer"] == l] for l in range(model.cfg["n_layers"])], theirs, "OV_copying_score", tol=1e-3)
        n = min(model.cfg["d_vocab"], model.W_U.shape[1])
        full = (tl.W_E[:n] @ tl.OV @ tl.W_U[:, :n]).AB.detach()
        top1 = (full.argmax(-1) == torch.arange(n)).float().mean(-1).numpy()
        close([[s["top1"] for s in ours[l * n_h:(l + 1) * n_h]] for l in range(model.cfg["n_layers"])], top1, "top-1 copying", tol=1e-6)


def test_head_detectors_match(two_layer):
    from transformer_lens.head_detector import detect_head as tl_detect

    from toylens.head_detector import detect_head

    tl = tl_of(two_layer)
    # TransformerLens's detect_head tokenizes even a tensor; these models have no tokenizer.
    tl.to_tokens = lambda seq, **kw: seq
    seqs, _ = induction_data(3, 4, 12, 7)
    for kind in ("previous_token_head", "duplicate_token_head", "induction_head"):
        for measure in ("mul", "abs"):
            for flags in (dict(), dict(exclude_bos=True, exclude_current_token=True)):
                ours = detect_head(two_layer, seqs[0], kind, error_measure=measure, **flags)
                theirs = tl_detect(tl, torch.from_numpy(seqs[0])[None], kind, error_measure=measure, **flags)
                close(ours, theirs, f"{kind} {measure} {flags}", tol=1e-5 if measure == "mul" else 1e-3)
        _, cache = two_layer.run_with_cache(seqs[:1])
        close(detect_head(two_layer, seqs[0], kind, cache=cache), detect_head(two_layer, seqs[0], kind), "from a cache", tol=1e-6)
        many = detect_head(two_layer, list(seqs), kind)
        each = np.mean([detect_head(two_layer, s, kind) for s in seqs], axis=0)
        close(many, each, "list of sequences: the mean", tol=1e-6)
    custom = np.tril(np.ones((8, 8), dtype=np.float32))
    close(
        detect_head(two_layer, seqs[0], custom, heads=[(1, 2)], error_measure="abs"),
        tl_detect(tl, torch.from_numpy(seqs[0])[None], torch.from_numpy(custom), heads=[(1, 2)], error_measure="abs"),
        "custom pattern, one head",
        tol=1e-3,
    )


SWEEPS = [
    "resid_pre", "resid_mid", "attn_out", "mlp_out",
    "attn_head_out_by_pos", "attn_head_q_by_pos", "attn_head_k_by_pos", "attn_head_v_by_pos",
    "attn_head_pattern_by_pos", "attn_head_pattern_dest_src_pos",
    "attn_head_out_all_pos", "attn_head_q_all_pos", "attn_head_k_all_pos", "attn_head_v_all_pos",
    "attn_head_pattern_all_pos",
]


def test_every_patching_sweep_matches(grokked_model, two_layer):
    from transformer_lens import patching as tlp

    for label, model, x, ans, wrong in both_models(grokked_model, two_layer):
        x, ans, wrong = x[:4], ans[:4], wrong[:4]
        corrupted = x.copy()
        corrupted[:, 0] = (corrupted[:, 0] + 5) % (113 if label == "grokked" else 12)
        tl = tl_of(model)
        _, clean_cache = model.run_with_cache(x)
        with torch.no_grad():
            _, tl_clean = tl.run_with_cache(torch.from_numpy(x))
        metric = tp.logit_diff(ans, wrong)
        for name in SWEEPS:
            ours = getattr(tp, f"get_act_patch_{name}")(model, corrupted, clean_cache, metric)
            with torch.no_grad():
                theirs = getattr(tlp, f"get_act_patch_{name}")(tl, torch.from_numpy(corrupted), tl_clean, metric)
            close(ours, theirs, f"{label} {name}")
        # A Python metric takes the slow path: the same numbers.
        slow = tp.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, lambda l: metric(l))
        close(slow, tp.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric), "callable")
        for every in ("block_every", "attn_head_all_pos_every", "attn_head_by_pos_every"):
            ours = getattr(tp, f"get_act_patch_{every}")(model, corrupted, clean_cache, metric)
            with torch.no_grad():
                theirs = getattr(tlp, f"get_act_patch_{every}")(tl, torch.from_numpy(corrupted), tl_clean, metric)
            close(ours, theirs, f"{label} {every}")


def tl_grads(tl, tokens, metric, names):
    """d metric / d activation on TransformerLens's own autograd (backward hooks)."""
    grads = {}

    def keep(g, hook):
        grads[hook.name] = g.detach().clone()

    for n in names:
        tl.add_hook(n, keep, "bwd")
    try:
        logits = tl(torch.from_numpy(tokens))
        metric(logits).backward()
    finally:
        tl.reset_hooks()
    return grads


@needs_hooked
def test_attribution_patching_matches_autograd(grokked_model, two_layer):
    for label, model, x, ans, wrong in both_models(grokked_model, two_layer):
        x, ans, wrong = x[:6], ans[:6], wrong[:6]
        corrupted = x.copy()
        corrupted[:, 0] = (corrupted[:, 0] + 5) % (113 if label == "grokked" else 12)
        tl = tl_of(model)
        metric = tp.logit_diff(ans, wrong)
        attr = tp.attribution_patch(model, x, corrupted, metric)
        _, clean = model.run_with_cache(x)
        _, corr = model.run_with_cache(corrupted)
        names = [n for n in clean if any(k in n for k in ("resid_pre", "hook_z", "hook_q", "hook_pattern", "mlp_out"))]

        def torch_metric(logits):
            rows = torch.arange(len(ans))
            last = logits[:, -1, :]
            return (last[rows, torch.from_numpy(ans)] - last[rows, torch.from_numpy(wrong)]).mean()

        g = tl_grads(tl, corrupted, torch_metric, names)
        n = model.cfg["n_layers"]
        want_resid = np.stack([
            ((clean[f"blocks.{l}.hook_resid_pre"] - corr[f"blocks.{l}.hook_resid_pre"])
             * g[f"blocks.{l}.hook_resid_pre"].numpy()).sum((0, 2))
            for l in range(n)
        ])
        close(attr["resid_pre"], want_resid, f"{label} resid_pre attribution")
        want_z = np.stack([
            ((clean[f"blocks.{l}.attn.hook_z"] - corr[f"blocks.{l}.attn.hook_z"])
             * g[f"blocks.{l}.attn.hook_z"].numpy()).sum((0, 3))
            for l in range(n)
        ])
        close(attr["attn_head_out_by_pos"], want_z, f"{label} z attribution")
        want_q = np.stack([
            ((clean[f"blocks.{l}.attn.hook_q"] - corr[f"blocks.{l}.attn.hook_q"])
             * g[f"blocks.{l}.attn.hook_q"].numpy()).sum((0, 1, 3))
            for l in range(n)
        ])
        close(attr["attn_head_q_all_pos"], want_q, f"{label} q attribution")
        want_pat = np.stack([
            ((clean[f"blocks.{l}.attn.hook_pattern"] - corr[f"blocks.{l}.attn.hook_pattern"])
             * g[f"blocks.{l}.attn.hook_pattern"].numpy()).sum((0, 3))
            for l in range(n)
        ])
        close(attr["attn_head_pattern_by_pos"], want_pat, f"{label} pattern attribution")
    with pytest.raises(TypeError, match="toylens.patching's metrics"):
        tp.attribution_patch(two_layer, x, corrupted, lambda l: l.sum())


def tl_path_patch(tl, clean, corrupted, sender, receiver, which, metric):
    """Path patching written on TransformerLens's hooks: the sender's z from the clean run, every
    other head's from the corrupted run, the receiver's input kept; then only that input patched."""
    (ls, hs), (lr, hr) = sender, receiver
    with torch.no_grad():
        _, c = tl.run_with_cache(torch.from_numpy(clean))
        _, k = tl.run_with_cache(torch.from_numpy(corrupted))
        kept = {}

        def freeze(z, hook):
            layer = int(hook.name.split(".")[1])
            z[:] = k[hook.name]
            if layer == ls:
                z[:, :, hs] = c[hook.name][:, :, hs]
            return z

        def grab(a, hook):
            kept["x"] = a.clone()

        hooks = [(f"blocks.{l}.attn.hook_z", freeze) for l in range(ls, lr)]
        hooks.append((f"blocks.{lr}.attn.hook_{which}", grab))
        tl.run_with_hooks(torch.from_numpy(corrupted), fwd_hooks=hooks)

        def put(a, hook):
            a[:, :, hr] = kept["x"][:, :, hr]
            return a

        logits = tl.run_with_hooks(torch.from_numpy(corrupted), fwd_hooks=[(f"blocks.{lr}.attn.hook_{which}", put)])
    return float(metric(logits))


def test_path_patching_matches_a_transformer_lens_implementation(two_layer):
    tl = tl_of(two_layer)
    x, _ = induction_data(4, 4, 12, 3)
    corrupted, _ = induction_data(4, 4, 12, 4)
    metric = tp.logit_diff(x[:, 1] % 12, (x[:, 1] + 3) % 12)
    for which in "qkv":
        every = tp.path_patch(two_layer, x, corrupted, metric, which)
        for sender, receiver in [((0, 0), (1, 2)), ((0, 3), (1, 1))]:
            want = tl_path_patch(tl, x, corrupted, sender, receiver, which, metric)
            got = tp.path_patch(two_layer, x, corrupted, metric, which, sender, receiver)
            assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (which, sender, receiver, got, want)
            assert every[sender + receiver] == got
        assert np.isnan(every[1, 0, 0, 0])


@needs_hooked
def test_weight_processing_matches(grokked_model, two_layer):
    x, _ = induction_data(8, 4, 12, 5)
    for model, tokens in ((two_layer, x), (grokked_model, grokked_inputs(16)[0])):
        tl = tl_of(model)
        tl.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
        ours = model.process_weights()
        theirs = tl.state_dict()
        for name, value in ours.state_dict().items():
            if name in theirs and value.dtype == np.float32 and not name.endswith("IGNORE"):
                close(value, theirs[name], f"processed {name}", tol=1e-5)
        with torch.no_grad():
            close(ours(tokens), tl(torch.from_numpy(tokens)), "processed logits")
        # The same function as before processing (logits up to a constant per position).
        before, after = model(tokens), ours(tokens)
        close(after - after.mean(-1, keepdims=True), before - before.mean(-1, keepdims=True), "function kept")


def test_bad_input_is_a_clear_error(two_layer):
    x, _ = induction_data(2, 4, 12, 1)
    _, cache = two_layer.run_with_cache(x)
    metric = tp.logit_diff([1, 2], [3, 4])
    with pytest.raises(ValueError, match="clean and corrupted inputs differ in shape"):
        tp.get_act_patch_resid_pre(two_layer, x[:, :6], cache, metric)
    with pytest.raises(ValueError, match="outside the output vocabulary"):
        tp.get_act_patch_resid_pre(two_layer, x, cache, tp.logit_diff([1, 2], [3, 99]))
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        cache.decompose_resid(layer=5)
    with pytest.raises(ValueError, match="head 7 is out of range"):
        tp.path_patch(two_layer, x, x, metric, "q", (0, 7), (1, 0))
    with pytest.raises(ValueError, match="after the sender"):
        tp.path_patch(two_layer, x, x, metric, "q", (1, 0), (0, 0))
    bad = dict(cache)
    bad["blocks.0.attn.hook_z"] = bad["blocks.0.attn.hook_z"][:, :3]
    with pytest.raises(ValueError, match="hook_z"):
        toylens.ActivationCache(bad, two_layer).get_full_resid_decomposition()
    bad["blocks.0.attn.hook_z"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="hook_z"):
        tp.get_act_patch_attn_head_out_all_pos(two_layer, x, bad, metric)
    with pytest.raises(ValueError, match="sweep"):
        toylens._toylens._patch_sweep(two_layer, x, cache, "nonsense", metric)
    with pytest.raises(RuntimeError, match="boom"):

        def metric_that_fails(logits):
            raise RuntimeError("boom")

        tp.get_act_patch_resid_pre(two_layer, x, cache, metric_that_fails)
