#!/usr/bin/env python3
"""Refined learning coefficients of one checkpoint by devinterp 2.x and by toylens, side by side:
each head's weight-restricted λ̂ (SGLD), and SGNHT's λ̂ of the whole model.

Same checkpoint (a toylens safetensors file of any transformer, loaded into TransformerLens with
strict=True), the same examples (toylens's own training set, `toylens.named_set(CKPT, "train")`),
the same ε, γ, nβ, minibatch size, chains and draws. devinterp 2.x averages the loss over every
step (its `compute_llc`), so both sides run without burn-in; its L(w*) is the mean over
`num_init_loss_batches` minibatches, set here to cover the whole training set (what toylens's
`--init-loss full` measures). devinterp's default `match_sampling_input_ids_across_chains=True`
gives every chain the same minibatches in the same order, which correlates the chains (their
spread then understates the estimate's error); this script turns it off, so that each chain draws
its own order, as toylens's do. Each side's λ̂ is the mean over chains with the standard deviation
over chains (n − 1); they agree when the difference is within two standard errors
(√(std₁²/k + std₂²/k), k chains). Wall times are whole estimates (toylens: the whole command,
loading included; devinterp: `llc()` or the chains' loop).

devinterp 2.0.1's `sample()` offers only `sgmcmc_sgld` and `rmsprop_sgld`, and its `SGMCMC.sgnht`
never applies its thermostat; SGNHT here is its `devinterp.optim.SGNHT` class (Ding et al.) driven
by its own `sample_single_chain`, with γ = 0 on the toylens side (the class has no localization).

    python bench/llc_devinterp2.py CHECKPOINT [--heads all|blocks.0.attn.head.1,...] [--sgnht]
        [--lr 1e-4] [--localization 100] [--chains 4] [--draws 200] [--batch-size 64]
        [--sgnht-lr 1e-6] [--diffusion 0.01] [--threads 2] [--json OUT]

Needs torch, transformer-lens==3.9.0, devinterp==2.0.1 and the toylens Python package
(bench/README.md).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
TOYLENS = os.path.join(HERE, "..", "target", "release", "toylens")
sys.path.insert(0, HERE)
from llc_devinterp import load_tl  # noqa: E402  (the same TransformerLens loading)


def dataset_and_loss(ckpt):
    """devinterp's dataset (input_ids: the tokens, then the targets) and a loss function giving
    each example's mean loss over its loss positions, spread over devinterp's (batch, seq − 1)."""
    import numpy as np
    import torch
    import toylens
    from datasets import Dataset

    s = toylens.named_set(ckpt, "train")
    tokens, targets, loss_pos = s["tokens"], s["targets"], s["loss_pos"]
    ctx = tokens.shape[1]
    ids = np.concatenate([tokens, targets], axis=1)
    ds = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    pos = torch.tensor(loss_pos)

    def loss_fn(model, input_ids):
        logits = model(input_ids[:, :ctx], return_type="logits")[:, pos, :]
        logp = torch.log_softmax(logits.float(), dim=-1)
        per = -logp.gather(-1, input_ids[:, ctx:, None])[..., 0]  # [batch, loss positions]
        return per.mean(dim=1, keepdim=True).expand(-1, input_ids.shape[1] - 1)

    return ds, loss_fn, len(tokens)


def head_masks(model, head):
    """devinterp's param_masks for `blocks.L.attn.head.H`: that head's slices of W_Q, W_K, W_V,
    W_O, b_Q, b_K, b_V (toylens's selector)."""
    import torch

    layer, h = int(head.split(".")[1]), int(head.split(".")[-1])
    masks = {}
    for name, p in model.named_parameters():
        pre = f"blocks.{layer}.attn."
        if name.startswith(pre) and name[len(pre):] in {"W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"}:
            m = torch.zeros_like(p)
            m[h] = 1.0
            masks[name] = m
    return masks


def se_of(std1, std2, k):
    return math.sqrt(std1 ** 2 / k + std2 ** 2 / k)


def mean_std(xs):
    k = len(xs)
    m = sum(xs) / k
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (k - 1))


def toylens_llc(ckpt, args, extra, lr=None, localization=None):
    lr = args.lr if lr is None else lr
    localization = args.localization if localization is None else localization
    cmd = [TOYLENS, "llc", ckpt, "--json", "--lr", str(lr), "--localization", str(localization),
           "--nbeta", str(args.nbeta), "--chains", str(args.chains), "--draws", str(args.draws),
           "--burnin", "0", "--batch-size", str(args.batch_size), "--seed", str(args.seed)] + extra
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, "RAYON_NUM_THREADS": str(args.threads)})
    secs = time.perf_counter() - t0
    v = json.loads(out.stdout)
    return v, secs


def devinterp_restricted(model, ds, loss_fn, n, masks, args):
    from devinterp.slt.llc import llc as di_llc

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        r = di_llc(model, ds, {}, lr=args.lr, n_beta=args.nbeta, param_masks=masks,
                   match_sampling_input_ids_across_chains=False,
                   localization=args.localization, num_chains=args.chains, num_draws=args.draws,
                   batch_size=args.batch_size, num_burnin_steps=0,
                   num_init_loss_batches=n // args.batch_size, init_seed=args.seed,
                   loss_fn=loss_fn, device="cpu", output_path=os.path.join(tmp, "s.zarr"))
        secs = time.perf_counter() - t0
    per = [float(x) for x in r["llc_per_chain"].values]
    return per, float(r["init_loss"]), secs


def devinterp_sgnht(model, ds, loss_fn, n, args):
    """devinterp's SGNHT class through its own chain loop, recording every step's loss."""
    import torch
    from devinterp.optim.sgnht import SGNHT
    from devinterp.slt.lm_loss import make_evaluate_fn
    from devinterp.slt.sampler import sample_single_chain

    with torch.no_grad():
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size)
        init = sum(float(loss_fn(model, b["input_ids"]).mean()) * len(b["input_ids"])
                   for b in loader) / n
    per = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in range(args.chains):
            losses = []
            sample_single_chain(
                ref_model=model, dataset=ds, evaluate=make_evaluate_fn(loss_fn),
                param_masks={name: None for name, _ in model.named_parameters()},
                num_draws=args.draws, num_burnin_steps=0, sampling_method=SGNHT,
                sampling_method_kwargs={"lr": args.sgnht_lr, "diffusion_factor": args.diffusion,
                                        "nbeta": args.nbeta},
                chain=c, seed=args.seed + c, dataloader_seed=args.seed + c, device="cpu",
                callbacks=[lambda loss, **_: losses.append(float(loss.mean()))],
                batch_size=args.batch_size)
            per.append(args.nbeta * (sum(losses) / len(losses) - init))
    return per, init, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--heads", default="all", help="all, none, or blocks.L.attn.head.H,...")
    ap.add_argument("--sgnht", action="store_true")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--localization", type=float, default=100.0)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sgnht-lr", type=float, default=1e-6)
    ap.add_argument("--diffusion", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.nbeta = args.batch_size / math.log(args.batch_size)
    model, _ = load_tl(args.checkpoint)
    ds, loss_fn, n = dataset_and_loss(args.checkpoint)
    if n % args.batch_size:
        sys.exit(f"--batch-size {args.batch_size} must divide the training set ({n}) for L(w*) to match")
    heads = ([f"blocks.{l}.attn.head.{h}" for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
             if args.heads == "all" else [] if args.heads == "none" else args.heads.split(","))
    rows = []
    print(f"{args.checkpoint}: {n} training examples, ε {args.lr}, γ {args.localization}, "
          f"nβ {args.nbeta:.3f}, {args.chains} chains × {args.draws} draws, m {args.batch_size}, "
          f"{args.threads} threads")
    print(f"{'estimate':<24} {'toylens λ̂':>16} {'devinterp λ̂':>16} {'diff/SE':>8} {'toylens s':>10} "
          f"{'devinterp s':>12} {'speed-up':>9}")

    def report(name, tl, tl_secs, di, di_secs):
        (m1, s1), (m2, s2) = mean_std(tl), mean_std(di)
        z = (m1 - m2) / max(se_of(s1, s2, args.chains), 1e-12)
        rows.append({"estimate": name, "toylens": [m1, s1], "devinterp": [m2, s2], "z": z,
                     "toylens_s": tl_secs, "devinterp_s": di_secs, "speedup": di_secs / tl_secs})
        print(f"{name:<24} {m1:>9.3f} ± {s1:<5.3f} {m2:>9.3f} ± {s2:<5.3f} {z:>8.2f} {tl_secs:>10.1f} "
              f"{di_secs:>12.1f} {di_secs / tl_secs:>8.1f}×", flush=True)

    for head in heads:
        v, tl_secs = toylens_llc(args.checkpoint, args, ["--restrict", head])
        di, di_init, di_secs = devinterp_restricted(model, ds, loss_fn, n, head_masks(model, head), args)
        if abs(di_init - v["init_loss"]) > 1e-4 * max(1.0, abs(v["init_loss"])):
            print(f"  note: L(w*) differs: toylens {v['init_loss']:.6g}, devinterp {di_init:.6g}")
        report(head, v["llc_per_chain"], tl_secs, di, di_secs)
    if args.sgnht:
        v, tl_secs = toylens_llc(args.checkpoint, args, ["--sampler", "sgnht", "--diffusion",
                                 str(args.diffusion)], lr=args.sgnht_lr, localization=0.0)
        di, _, di_secs = devinterp_sgnht(model, ds, loss_fn, n, args)
        report("SGNHT (whole model)", v["llc_per_chain"], tl_secs, di, di_secs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
