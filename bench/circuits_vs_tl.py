#!/usr/bin/env python3
"""toylens's circuit tools against TransformerLens 3.9 on the same checkpoint, inputs and threads,
interleaved round by round: patching every head's output at every position
(`get_act_patch_attn_head_out_by_pos`), the same for output, q, k, v and pattern
(`get_act_patch_attn_head_by_pos_every`), and the full residual decomposition (`get_full_resid_decomposition`, every head and
every neuron, with the biases and embeddings). Prints each round's seconds and the ratio
TransformerLens / toylens, then the median and range of the ratios.

    target/python/venv/bin/python bench/circuits_vs_tl.py [--rounds 7] [--threads 2] [--examples 64]

Models: the grokked model (Nanda et al., 1 layer, p = 113, the fixture) and a 2-layer
LayerNorm model of the same widths with random weights (init only: the timing does not depend on
training). The metric is the logit difference at the last position, toylens's built-in one on
toylens's side, the same object (a plain function of torch logits) on TransformerLens's side.
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--examples", type=int, default=64)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import toylens
    from toylens import patching as tp
    from transformer_lens import patching as tlp

    toylens.set_num_threads(args.threads)
    root = pathlib.Path(__file__).resolve().parents[1]
    grokked = root.parent / "shared" / "fixtures" / "progress-measures" / "wd_10-1_mod_addition_loss_curve.pth"
    models = [("grokked (1 layer, p=113)", toylens.load(grokked), 113)]
    with tempfile.TemporaryDirectory() as tmp:
        run = toylens.train(
            "grokking",
            {"train.steps": 1, "model.n_layers": 2, "model.normalization_type": "LN"},
            out=pathlib.Path(tmp) / "two",
            progress=False,
        )
        models.append(("2 layers, LayerNorm (p=113)", run.load(), 113))
        rng = np.random.default_rng(0)
        for label, model, p in models:
            tl = model.to_transformer_lens()
            n = args.examples
            a, b = rng.integers(0, p, n), rng.integers(0, p, n)
            clean = np.stack([a, b, np.full(n, p)], 1)
            corrupted = clean.copy()
            corrupted[:, 0] = (a + 1 + rng.integers(0, p - 1, n)) % p
            metric = tp.logit_diff((a + b) % p, (corrupted[:, 0] + b) % p)
            _, cache = model.run_with_cache(clean)
            with torch.no_grad():
                _, tl_cache = tl.run_with_cache(torch.from_numpy(clean))
            tl_corrupted = torch.from_numpy(corrupted)

            def ours_heads():
                return tp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric)

            def theirs_heads():
                with torch.no_grad():
                    return tlp.get_act_patch_attn_head_out_by_pos(tl, tl_corrupted, tl_cache, metric)

            def ours_sweep():
                return tp.get_act_patch_attn_head_by_pos_every(model, corrupted, cache, metric)

            def theirs_sweep():
                with torch.no_grad():
                    return tlp.get_act_patch_attn_head_by_pos_every(tl, tl_corrupted, tl_cache, metric)

            def ours_decomp():
                return model.run_with_cache(clean)[1].get_full_resid_decomposition(expand_neurons=True)

            def theirs_decomp():
                with torch.no_grad():
                    return tl.run_with_cache(torch.from_numpy(clean))[1].get_full_resid_decomposition(expand_neurons=True)

            for name, ours, theirs in [
                ("patching every head's output by position (get_act_patch_attn_head_out_by_pos)", ours_heads, theirs_heads),
                ("patching every head's output, q, k, v and pattern by position (..._by_pos_every)", ours_sweep, theirs_sweep),
                ("full residual decomposition (with its run_with_cache)", ours_decomp, theirs_decomp),
            ]:
                np.testing.assert_allclose(
                    np.asarray(ours(), dtype=np.float64),
                    np.asarray(theirs(), dtype=np.float64),
                    rtol=1e-3,
                    atol=1e-3 * float(np.abs(np.asarray(theirs())).max()),
                )
                ratios = []
                print(f"{label}: {name}, {n} examples, {args.threads} threads", flush=True)
                for r in range(args.rounds):
                    t0 = time.perf_counter()
                    ours()
                    t1 = time.perf_counter()
                    theirs()
                    t2 = time.perf_counter()
                    ratios.append((t2 - t1) / (t1 - t0))
                    print(f"  round {r}: toylens {t1 - t0:.4f} s, TransformerLens {t2 - t1:.4f} s, ratio {ratios[-1]:.1f}", flush=True)
                print(
                    f"  TransformerLens / toylens: median {statistics.median(ratios):.1f} "
                    f"(range {min(ratios):.1f}-{max(ratios):.1f})",
                    flush=True,
                )


if __name__ == "__main__":
    sys.exit(main())
