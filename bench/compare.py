"""W1 side by side: one full-batch AdamW step of Nanda et al.'s grokking model in toylens, PyTorch
eager and TransformerLens, from the same initial weights, on the same data, with the same thread count.

    python bench/compare.py [--steps 100] [--threads 2] [--rounds 1] [--no-tl] [--toylens target/release/toylens]

toylens writes the initial weights (bench/out/init.safetensors); the PyTorch reference and
TransformerLens load them. The data are the 3830 training pairs of the original split
(`random.seed(1); random.shuffle(pairs)`, computed here independently). Prints ms/step (median),
the ratios, and how far each loss curve is from PyTorch's and from a float64 run of the same model
and optimizer (the ground truth: f32 engines drift apart as training amplifies rounding).
With --rounds N, toylens and then PyTorch eager are timed N - 1 more times in the same run, and
the ratio of each round is printed with their range and median (this machine is shared and noisy).
"""

import argparse
import json
import math
import pathlib
import random
import statistics
import subprocess
import time

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

P = 113
LR, WD, BETAS = 1e-3, 1.0, (0.9, 0.98)
# toylens' Nanda model has no attention or unembedding biases: they stay zero and untrained.
FROZEN = ("b_Q", "b_K", "b_V", "b_O", "b_U")


def original_split():
    pairs = [(i, j) for i in range(P) for j in range(P)]
    random.seed(1)
    random.shuffle(pairs)
    train = pairs[: int(0.3 * P * P)]
    tokens = torch.tensor([[a, b, P] for a, b in train])
    labels = torch.tensor([(a + b) % P for a, b in train])
    return tokens, labels


def cross_entropy_high_precision(logits, labels):
    # As the original grokking code: log-softmax in float64.
    logprobs = torch.nn.functional.log_softmax(logits.to(torch.float64), dim=-1)
    return -torch.gather(logprobs, index=labels[:, None], dim=-1).mean()


class Nanda(torch.nn.Module):
    """The original grokking model, written in plain PyTorch with TransformerLens-layout weights."""

    def __init__(self, sd):
        super().__init__()
        names = ["embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V",
                 "blocks.0.attn.W_O", "blocks.0.mlp.W_in", "blocks.0.mlp.b_in", "blocks.0.mlp.W_out",
                 "blocks.0.mlp.b_out", "unembed.W_U"]
        self.p = torch.nn.ParameterDict({n.replace(".", "_"): torch.nn.Parameter(sd[n].clone()) for n in names})
        self.d_head = sd["blocks.0.attn.W_Q"].shape[-1]

    def forward(self, x):
        p = self.p
        n = x.shape[1]
        r = p["embed_W_E"][x] + p["pos_embed_W_pos"][:n]
        q = torch.einsum("bpd,hde->bhpe", r, p["blocks_0_attn_W_Q"])
        k = torch.einsum("bpd,hde->bhpe", r, p["blocks_0_attn_W_K"])
        v = torch.einsum("bpd,hde->bhpe", r, p["blocks_0_attn_W_V"])
        scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(self.d_head)
        mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
        pattern = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        z = torch.einsum("bhqk,bhke->bhqe", pattern, v)
        r = r + torch.einsum("bhqe,hed->bqd", z, p["blocks_0_attn_W_O"])
        post = torch.relu(r @ p["blocks_0_mlp_W_in"] + p["blocks_0_mlp_b_in"])
        r = r + post @ p["blocks_0_mlp_W_out"] + p["blocks_0_mlp_b_out"]
        return r @ p["unembed_W_U"]


def train(model, params, tokens, labels, steps):
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, betas=BETAS)
    losses, times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = model(tokens)[:, -1]
        loss = cross_entropy_high_precision(logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append((time.perf_counter() - t0) * 1e3)
        losses.append(loss.item())
    return losses, times


def max_rel_diff(a, b, n=None):
    pairs = list(zip(a, b))[:n]
    return max(abs(x - y) / abs(y) for x, y in pairs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--toylens", default=str(ROOT / "target" / "release" / "toylens"))
    ap.add_argument("--no-tl", action="store_true", help="skip TransformerLens")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time toylens then PyTorch eager this many times in all, each from the same initial weights")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    def toylens_bench(*extra):
        res = subprocess.run([args.toylens, "--threads", str(args.threads), "bench", "--steps", str(args.steps),
                              "--out", str(OUT), "--json", *extra], check=True, capture_output=True, text=True)
        return json.loads(res.stdout)

    ty = toylens_bench("--peak")
    sd = load_file(str(OUT / "init.safetensors"))
    tokens, labels = original_split()
    rows = [("toylens", ty["ms_per_step_median"], ty["losses"])]

    model = Nanda(sd)
    losses, times = train(model, list(model.parameters()), tokens, labels, args.steps)
    rows.append(("PyTorch eager", statistics.median(times[1:]), losses))

    if not args.no_tl:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        with safe_open(str(OUT / "init.safetensors"), "pt") as f:
            cfg = json.loads(f.metadata()["toylens.model"])
        cfg = {k: v for k, v in cfg.items() if k not in ("init", "attn_bias", "unembed_bias")}
        tl = HookedTransformer(HookedTransformerConfig(**cfg))
        tl.load_state_dict(sd, strict=True)
        params = [p for n, p in tl.named_parameters() if not n.endswith(FROZEN)]
        losses, times = train(tl, params, tokens, labels, args.steps)
        rows.append(("TransformerLens", statistics.median(times[1:]), losses))

    # Ground truth: the same model and optimizer in float64.
    m64 = Nanda({k: v.double() for k, v in sd.items()})
    f64_losses, f64_times = train(m64, list(m64.parameters()), tokens, labels, args.steps)

    ref_ms, ref = rows[1][1], rows[1][2]
    half = args.steps // 2
    print(f"W1: Nanda grokking step, batch {len(tokens)}, {args.threads} threads, {args.steps} steps, "
          f"torch {torch.__version__}")
    print(f"{'engine':16} {'ms/step':>8} {'vs PyTorch':>10} {'loss@1':>9} {'loss@last':>9} "
          f"{'rel diff vs PyTorch f32':>24} {'rel diff vs float64':>24}")
    print(f"{'':16} {'':>8} {'':>10} {'':>9} {'':>9} {f'steps 1-{half}':>12}{f'1-{args.steps}':>12} "
          f"{f'steps 1-{half}':>12}{f'1-{args.steps}':>12}")
    summary = {}
    for name, ms, losses in rows + [("PyTorch float64", statistics.median(f64_times[1:]), f64_losses)]:
        d = [max_rel_diff(losses, ref, half), max_rel_diff(losses, ref),
             max_rel_diff(losses, f64_losses, half), max_rel_diff(losses, f64_losses)]
        print(f"{name:16} {ms:8.2f} {ref_ms / ms:9.2f}x {losses[0]:9.5f} {losses[-1]:9.5f} "
              f"{d[0]:12.1e}{d[1]:12.1e} {d[2]:12.1e}{d[3]:12.1e}")
        summary[name] = {"ms_per_step": ms, "speedup_vs_pytorch": ref_ms / ms,
                         "rel_diff_vs_pytorch": {f"1-{half}": d[0], f"1-{args.steps}": d[1]},
                         "rel_diff_vs_float64": {f"1-{half}": d[2], f"1-{args.steps}": d[3]}}
    summary["toylens"]["gemm"] = {k: ty[k] for k in ("step_matmul_gflop", "step_gflops", "gemm_peak_gflops")}
    (OUT / "w1.json").write_text(json.dumps(summary, indent=2))
    if ty.get("gemm_peak_gflops"):
        print(f"toylens: {ty['step_matmul_gflop']:.2f} GFLOP of matmuls per step at {ty['step_gflops']:.0f} GFLOP/s; "
              f"GEMM peak {ty['gemm_peak_gflops']:.0f} GFLOP/s ({100 * ty['step_gflops'] / ty['gemm_peak_gflops']:.0f}%)")

    ratios = [ref_ms / rows[0][1]]
    for r in range(1, args.rounds):
        ours = toylens_bench()
        model = Nanda(sd)
        torch_losses, times = train(model, list(model.parameters()), tokens, labels, args.steps)
        torch_ms = statistics.median(times[1:])
        ratios.append(torch_ms / ours["ms_per_step_median"])
        print(f"round {r + 1}: toylens {ours['ms_per_step_median']:.2f} ms/step, PyTorch eager {torch_ms:.2f} "
              f"({ratios[-1]:.2f}x); loss diff vs PyTorch, steps 1-{args.steps}: "
              f"{max_rel_diff(ours['losses'], torch_losses):.1e}")
    if args.rounds > 1:
        summary["ratio_per_round"] = ratios
        (OUT / "w1.json").write_text(json.dumps(summary, indent=2))
        print(f"ratio per round (the first is the table's): {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"{min(ratios):.2f}-{max(ratios):.2f}x, median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
