"""W4 side by side: one training step of the `induction` preset (batch 64 of 32 tokens, loss at
all 31 next-token positions; 2 attention-only layers with LayerNorm, d_model 64, 4 heads x 16,
every bias; AdamW lr 1e-3, wd 0.01, betas 0.9/0.99) in toylens, in PyTorch eager and in
TransformerLens's HookedTransformer, from the same initial weights, on the same batch, with the
same thread count. Rounds interleave the three (a drift in the machine's speed falls on all).

    python bench/compare_induction.py [--rounds 7] [--steps 40] [--threads 2] \
        [--toylens target/release/toylens] [--no-tl]

toylens writes the initial weights (bench/out/init_w4.safetensors) and prints its batch. Prints
each round's ms/step (median of its steps after the first) and the ratios, then their medians and
ranges, and the largest relative difference between the loss curves.
"""

import argparse
import json
import math
import pathlib
import statistics
import subprocess
import time

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
LR, WD, BETAS = 1e-3, 0.01, (0.9, 0.99)


class AttnOnly(torch.nn.Module):
    """TransformerLens's attention-only transformer with LayerNorm, written in plain PyTorch with its
    weight layout (the operations HookedTransformer runs, without its hooks)."""

    def __init__(self, sd, n_layers):
        super().__init__()
        self.p = torch.nn.ParameterDict({k.replace(".", "_"): torch.nn.Parameter(v.clone())
                                         for k, v in sd.items() if v.is_floating_point()})  # (not the masks)
        self.n_layers = n_layers

    def ln(self, x, name):
        x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
        return x / scale * self.p[f"{name}_w"] + self.p[f"{name}_b"]

    def forward(self, x):
        p = self.p
        n = x.shape[1]
        r = p["embed_W_E"][x] + p["pos_embed_W_pos"][:n]
        mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
        for l in range(self.n_layers):
            a = f"blocks_{l}_attn_"
            h = self.ln(r, f"blocks_{l}_ln1")
            q = torch.einsum("bpd,hde->bphe", h, p[a + "W_Q"]) + p[a + "b_Q"]
            k = torch.einsum("bpd,hde->bphe", h, p[a + "W_K"]) + p[a + "b_K"]
            v = torch.einsum("bpd,hde->bphe", h, p[a + "W_V"]) + p[a + "b_V"]
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(q.shape[-1])
            pattern = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
            r = r + torch.einsum("bqhe,hed->bqd", z, p[a + "W_O"]) + p[a + "b_O"]
        return self.ln(r, "ln_final") @ p["unembed_W_U"] + p["unembed_b_U"]


def hooked_transformer(sd, cfg):
    import warnings

    import transformer_lens as tl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    m.load_state_dict(sd, strict=True)
    return m


def train(model, tokens, targets, pos, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, betas=BETAS)
    losses, times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = model(tokens)[:, pos]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append((time.perf_counter() - t0) * 1e3)
        losses.append(loss.item())
    return losses, statistics.median(times[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--toylens", default=str(ROOT / "target" / "release" / "toylens"))
    ap.add_argument("--no-tl", action="store_true", help="leave TransformerLens out")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    cmd = [args.toylens, "--threads", str(args.threads), "bench", "--workload", "w4",
           "--steps", str(args.steps), "--out", str(OUT), "--json"]
    rows, diff = [], 0.0
    for r in range(args.rounds):
        ty = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        sd = load_file(str(OUT / "init_w4.safetensors"))
        with safe_open(str(OUT / "init_w4.safetensors"), "pt") as f:
            meta_cfg = json.loads(f.metadata()["toylens.model"])
        tokens, targets = torch.tensor(ty["tokens"]), torch.tensor(ty["targets"])
        pos = torch.tensor(ty["loss_pos"])
        pt_losses, pt_ms = train(AttnOnly(sd, meta_cfg["n_layers"]), tokens, targets, pos, args.steps)
        diff = max(diff, max(abs(a - b) / abs(b) for a, b in zip(ty["losses"], pt_losses)))
        row = {"toylens": ty["ms_per_step_median"], "pytorch": pt_ms}
        if not args.no_tl:
            cfg = {k: v for k, v in meta_cfg.items() if k not in ("init", "attn_bias", "unembed_bias", "initializer_range")}
            tl_losses, row["transformer_lens"] = train(hooked_transformer(sd, cfg), tokens, targets, pos, args.steps)
            diff = max(diff, max(abs(a - b) / abs(b) for a, b in zip(ty["losses"], tl_losses)))
        rows.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row.items())
              + f"; PyTorch/toylens {pt_ms / row['toylens']:.2f}x"
              + ("" if args.no_tl else f", TransformerLens/toylens {row['transformer_lens'] / row['toylens']:.2f}x"),
              flush=True)
    print(f"\nW4: induction step, batch 64, {args.threads} threads, {args.steps} steps x {args.rounds} rounds, "
          f"torch {torch.__version__}; largest relative loss difference {diff:.1e}")
    summary = {}
    for other in [k for k in rows[0] if k != "toylens"]:
        ratios = [row[other] / row["toylens"] for row in rows]
        summary[other] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        print(f"{other}/toylens: median {summary[other]['median']:.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}); "
              f"ms/step toylens {statistics.median(r['toylens'] for r in rows):.2f}, "
              f"{other} {statistics.median(r[other] for r in rows):.2f}")
    (OUT / "w4.json").write_text(json.dumps({"rounds": rows, "ratios": summary, "max_rel_loss_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
