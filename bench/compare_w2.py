"""W2 side by side: one ToyMLP AdamW step at batch 64 in toylens and in PyTorch eager, from the same
initial weights, on the same batch, with the same thread count.

    python bench/compare_w2.py [--steps 2000] [--threads 2] [--rounds 1] [--toylens target/release/toylens]

toylens writes the initial weights (bench/out/init_w2.safetensors, PyTorch state-dict names); the
PyTorch module below loads them with strict=True. The batch is fixed: pair i is
((17 i + 3) mod 113, (29 i + 5) mod 113), i < 64. Prints ms/step (median), the ratio, and how far
the two loss curves are apart.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import time

import torch
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
P = 113


class ToyMLP(torch.nn.Module):
    def __init__(self, p=P, d_embed=128, d_hidden=256):
        super().__init__()
        self.embed = torch.nn.Embedding(p, d_embed)
        self.hidden = torch.nn.Linear(2 * d_embed, d_hidden)
        self.unembed = torch.nn.Linear(d_hidden, p)

    def forward(self, a, b):
        x = torch.cat([self.embed(a), self.embed(b)], dim=-1)
        return self.unembed(torch.relu(self.hidden(x)))


def torch_steps(steps):
    """`steps` PyTorch eager steps from toylens' initial weights: (median ms/step after the first, losses)."""
    model = ToyMLP()
    model.load_state_dict(load_file(OUT / "init_w2.safetensors"), strict=True)
    i = torch.arange(64)
    a, b = (17 * i + 3) % P, (29 * i + 5) % P
    labels = (a + b) % P
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(a, b), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append((time.perf_counter() - t0) * 1e3)
        losses.append(loss.item())
    return statistics.median(times[1:]), losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat toylens-then-PyTorch this many times in one run, each from the same initial weights")
    ap.add_argument("--toylens", default=str(ROOT / "target" / "release" / "toylens"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"W2 ToyMLP step, batch 64, {args.threads} threads, {args.steps} steps, "
          f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}")
    ratios = []
    for r in range(args.rounds):
        run = subprocess.run(
            [args.toylens, "--threads", str(args.threads), "bench", "--workload", "w2",
             "--steps", str(args.steps), "--out", str(OUT), "--json"],
            check=True, capture_output=True, text=True)
        ours = json.loads(run.stdout)
        torch_ms, losses = torch_steps(args.steps)
        ours_ms = ours["ms_per_step_median"]
        ratios.append(torch_ms / ours_ms)
        n = min(50, len(losses))
        gap = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(ours["losses"][:n], losses[:n]))
        label = f"round {r + 1}: " if args.rounds > 1 else ""
        print(f"  {label}toylens        {ours_ms:8.4f} ms/step")
        print(f"  {label}PyTorch eager  {torch_ms:8.4f} ms/step   ({torch_ms / ours_ms:.2f}x toylens)")
        print(f"  {label}losses, steps 1..{n}: largest relative gap {gap:.2e}; step 1: {ours['losses'][0]:.7f} vs {losses[0]:.7f}")
    if args.rounds > 1:
        print(f"  ratio per round {min(ratios):.2f}-{max(ratios):.2f}x, median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
