"""W3 side by side: one training step of the `digits5` preset (5-digit addition, batch 64, 18 tokens,
loss at the 6 answer positions; 1 layer, d_model 512, 4 heads x 128, d_mlp 2048, ReLU, no LayerNorm;
AdamW lr 1e-4, wd 0.1, betas 0.9/0.98) in toylens and PyTorch eager, from the same initial weights,
on the same batch, with the same thread count.

    python bench/compare_w3.py [--steps 30] [--threads 2] [--toylens target/release/toylens]

toylens writes the initial weights (bench/out/init_w3.safetensors) and prints its batch; the plain
PyTorch model (TransformerLens weight layout) trains on the same batch. Prints ms/step (median), the
ratio and the largest relative difference between the two loss curves.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import time

import torch
from safetensors.torch import load_file

from compare import Nanda  # bench/compare.py, beside this script

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
LR, WD, BETAS = 1e-4, 0.1, (0.9, 0.98)


# The same one-layer, no-LayerNorm transformer as W1's (its forward takes any sequence length).
Digits = Nanda


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--toylens", default=str(ROOT / "target" / "release" / "toylens"))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    res = subprocess.run([args.toylens, "--threads", str(args.threads), "bench", "--workload", "w3",
                          "--steps", str(args.steps), "--out", str(OUT), "--json"],
                         check=True, capture_output=True, text=True)
    ty = json.loads(res.stdout)
    sd = load_file(str(OUT / "init_w3.safetensors"))
    tokens = torch.tensor(ty["tokens"])
    targets = torch.tensor(ty["targets"])
    pos = torch.tensor(ty["loss_pos"])

    model = Digits(sd)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, betas=BETAS)
    losses, times = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        logits = model(tokens)[:, pos]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append((time.perf_counter() - t0) * 1e3)
        losses.append(loss.item())

    ms_ty, ms_pt = ty["ms_per_step_median"], statistics.median(times[1:])
    diff = max(abs(a - b) / abs(b) for a, b in zip(ty["losses"], losses))
    print(f"W3: digits5 step, batch {len(tokens)}, {args.threads} threads, {args.steps} steps, torch {torch.__version__}")
    print(f"toylens {ms_ty:.2f} ms/step, PyTorch eager {ms_pt:.2f} ms/step: {ms_pt / ms_ty:.2f}x; "
          f"loss {ty['losses'][0]:.6f} -> {ty['losses'][-1]:.6f} (PyTorch {losses[0]:.6f} -> {losses[-1]:.6f}), "
          f"largest relative difference {diff:.1e}")
    (OUT / "w3.json").write_text(json.dumps({"toylens_ms": ms_ty, "pytorch_ms": ms_pt, "speedup": ms_pt / ms_ty,
                                             "max_rel_loss_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
