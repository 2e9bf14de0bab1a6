#!/usr/bin/env python3
"""The local learning coefficient of one checkpoint, by devinterp and by toylens, side by side.

Same checkpoint (a toylens safetensors file of a modular-addition transformer, or an original .pth,
converted by `toylens convert`), same training set (the original reference split), same
hyperparameters and nβ, L(w*) the full training-set loss on both sides (devinterp's init_loss passed
explicitly). Each side's λ̂ is the mean over chains; they agree when their difference is within two
standard errors (√(se₁² + se₂²), se = std / √chains). Wall times include everything each side does
for that checkpoint (toylens: the whole command, loading included).

    bench/.venv/bin/python bench/llc_devinterp.py CHECKPOINT [--lr 1e-4] [--localization 100]
        [--chains 4] [--draws 200] [--burnin 100] [--batch-size 512] [--threads 2]

Needs torch, transformer-lens==3.9.0 and devinterp==1.3.2 (bench/README.md).
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOYLENS = os.path.join(HERE, "..", "target", "release", "toylens")
TOYLENS_ONLY = {"init", "attn_bias", "unembed_bias"}


def load_tl(path):
    """The checkpoint in TransformerLens (strict=True) and its task record (None where the
    checkpoint has none)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    cfg = {k: v for k, v in json.loads(meta["toylens.model"]).items() if k not in TOYLENS_ONLY}
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    model.load_state_dict(load_file(path), strict=True)
    task = json.loads(meta["toylens.task"]) if "toylens.task" in meta else None
    return model, task


def train_set(task):
    """The training pairs as toylens rebuilds them: the original code's CPython shuffle."""
    import torch

    p = task["p"]
    assert task.get("split") == "reference", "this script rebuilds the reference split only"
    pairs = [(i, j) for i in range(p) for j in range(p)]
    random.seed(task["seed"])
    random.shuffle(pairs)
    train = pairs[: int(task["frac_train"] * p * p)]
    tokens = torch.tensor([[a, b, p] for a, b in train])
    targets = torch.tensor([(a + b) % p for a, b in train])
    return tokens, targets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--localization", type=float, default=100.0)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--burnin", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from devinterp.optim import SGMCMC
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint
    tmp = tempfile.mkdtemp()
    if ckpt.endswith(".pth"):
        conv = os.path.join(tmp, "converted.safetensors")
        subprocess.run([TOYLENS, "convert", ckpt, conv], check=True, stdout=subprocess.DEVNULL)
        ckpt_st = conv
    else:
        ckpt_st = ckpt
    m = args.batch_size
    nbeta = m / math.log(m)

    # toylens
    t0 = time.perf_counter()
    out = subprocess.run(
        [TOYLENS, "--threads", str(args.threads), "llc", ckpt, "--json", "--lr", str(args.lr),
         "--localization", str(args.localization), "--nbeta", repr(nbeta), "--chains", str(args.chains),
         "--draws", str(args.draws), "--burnin", str(args.burnin), "--batch-size", str(m),
         "--seed", str(args.seed)],
        check=True, capture_output=True, text=True)
    t_toylens = time.perf_counter() - t0
    ty = json.loads(out.stdout)

    # devinterp
    t0 = time.perf_counter()
    model, task = load_tl(ckpt_st)
    tokens, targets = train_set(task)
    with torch.no_grad():
        init_loss = F.cross_entropy(model(tokens)[:, -1], targets).item()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(tokens, targets), batch_size=m, shuffle=True)

    def evaluate(model, data):
        x, y = data
        return F.cross_entropy(model(x)[:, -1], y), {}

    dv = estimate_learning_coeff_with_summary(
        model, loader, evaluate=evaluate, sampling_method=SGMCMC.sgld,
        optimizer_kwargs=dict(lr=args.lr, localization=args.localization, nbeta=nbeta),
        num_chains=args.chains, num_draws=args.draws, num_burnin_steps=args.burnin,
        num_steps_bw_draws=1, init_loss=init_loss, seed=args.seed, device="cpu", verbose=False)
    t_devinterp = time.perf_counter() - t0

    k = args.chains
    se = math.sqrt(ty["llc_std"] ** 2 / k + dv["llc/std"] ** 2 / k)
    diff = ty["llc_mean"] - dv["llc/mean"]
    res = {
        "checkpoint": args.checkpoint,
        "settings": vars(args) | {"nbeta": nbeta},
        "toylens": {"llc_mean": ty["llc_mean"], "llc_std": ty["llc_std"], "init_loss": ty["init_loss"],
                    "seconds": t_toylens},
        "devinterp": {"llc_mean": dv["llc/mean"], "llc_std": dv["llc/std"], "init_loss": init_loss,
                      "seconds": t_devinterp},
        "difference_in_standard_errors": diff / se if se > 0 else float("inf"),
        "speedup": t_devinterp / t_toylens,
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.checkpoint}  (ε {args.lr}, γ {args.localization}, nβ {nbeta:.3f}, m {m}, "
              f"{k} chains × {args.draws} draws after {args.burnin})")
        print(f"  toylens    λ̂ {ty['llc_mean']:9.4f} ± {ty['llc_std']:.4f}  L(w*) {ty['init_loss']:.4e}  {t_toylens:7.1f} s")
        print(f"  devinterp  λ̂ {dv['llc/mean']:9.4f} ± {dv['llc/std']:.4f}  L(w*) {init_loss:.4e}  {t_devinterp:7.1f} s")
        print(f"  difference {diff:+.4f} = {res['difference_in_standard_errors']:+.2f} standard errors; "
              f"toylens {res['speedup']:.1f}× faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
