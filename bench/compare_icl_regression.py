"""W5 side by side: one training step of the `icl-regression` preset (batch 128 of 16 (x, y) pairs
as 32 vector tokens of width 5, squared error at the 16 x tokens; 2 pre-LayerNorm layers with
MLPs, d_model 64, 4 heads x 16, d_mlp 64, no Q/K/V/O biases; Adam lr 0.003, betas 0.9/0.999) in
toylens and in PyTorch eager written with timaeus-research/icl's DTransformer's operations (one
packed Q/K/V linear, a causal mask added to the scores, an output linear, ReLU MLP, LayerNorm and
linear unembedding; its blocks' input added once, as toylens's, where the DTransformer adds it
twice), from the same initial weights, on the same batch, with the same thread count. Rounds
interleave the two.

    python bench/compare_icl_regression.py [--rounds 7] [--steps 40] [--threads 2] \
        [--toylens target/release/toylens]

Prints each round's ms/step (median of its steps after the first) and the ratio, then their
median and range, and the largest relative difference between the loss curves.
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
LR, BETAS = 0.003, (0.9, 0.999)


class IclTransformer(torch.nn.Module):
    """The in-context regression transformer as the icl repository's modules compute it, holding
    toylens's weights in PyTorch's layouts."""

    def __init__(self, sd, n_layers, n_heads):
        super().__init__()
        d = sd["embed.W_E"].shape[1]
        self.n_layers, self.n_heads, self.d = n_layers, n_heads, d
        P = torch.nn.Parameter
        self.embed = P(sd["embed.W_E"].T.clone())  # [d, d_in] as nn.Linear's weight
        self.pos = P(sd["pos_embed.W_pos"].clone())
        self.layers = torch.nn.ModuleList()
        for l in range(n_layers):
            b = f"blocks.{l}."
            # nn.Linear(d, 3d)'s weight: per head its q, k, v rows one after another.
            per_head = [torch.cat([sd[b + f"attn.W_{m}"][h].T for m in "QKV"]) for h in range(n_heads)]
            m = torch.nn.Module()
            m.qkv = P(torch.cat(per_head).clone())
            m.out = P(sd[b + "attn.W_O"].reshape(-1, d).T.clone())
            m.ln1 = torch.nn.LayerNorm(d)
            m.ln2 = torch.nn.LayerNorm(d)
            with torch.no_grad():
                for ln, name in ((m.ln1, "ln1"), (m.ln2, "ln2")):
                    ln.weight.copy_(sd[b + name + ".w"])
                    ln.bias.copy_(sd[b + name + ".b"])
            m.w_in, m.b_in = P(sd[b + "mlp.W_in"].T.clone()), P(sd[b + "mlp.b_in"].clone())
            m.w_out, m.b_out = P(sd[b + "mlp.W_out"].T.clone()), P(sd[b + "mlp.b_out"].clone())
            self.layers.append(m)
        self.lnf = torch.nn.LayerNorm(d)
        with torch.no_grad():
            self.lnf.weight.copy_(sd["ln_final.w"])
            self.lnf.bias.copy_(sd["ln_final.b"])
        self.w_u, self.b_u = P(sd["unembed.W_U"].T.clone()), P(sd["unembed.b_U"].clone())
        n_ctx = sd["pos_embed.W_pos"].shape[0]
        self.register_buffer("mask", torch.log(torch.tril(torch.ones(n_ctx, n_ctx))))

    def forward(self, x):
        F = torch.nn.functional
        B, T, _ = x.shape
        H, C = self.n_heads, self.d
        c = C // H
        r = F.linear(x, self.embed) + self.pos[:T]
        for m in self.layers:
            q, k, v = F.linear(m.ln1(r), m.qkv).view(B, T, H, 3 * c).transpose(-2, -3).split(c, dim=-1)
            a = q @ k.transpose(-2, -1) / c**0.5 + self.mask[:T, :T]
            y = (torch.softmax(a, dim=-1) @ v).transpose(-3, -2).contiguous().view(B, T, C)
            r = r + F.linear(y, m.out)
            r = r + F.linear(torch.relu(F.linear(m.ln2(r), m.w_in, m.b_in)), m.w_out, m.b_out)
        return F.linear(self.lnf(r), self.w_u, self.b_u)


def train(model, x, y, pos, steps):
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)
    losses, times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        pred = model(x)[:, pos]
        loss = torch.nn.functional.mse_loss(pred, y)
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
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    cmd = [args.toylens, "--threads", str(args.threads), "bench", "--workload", "w5",
           "--steps", str(args.steps), "--out", str(OUT), "--json"]
    rows, diff = [], 0.0
    for r in range(args.rounds):
        ty = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        sd = load_file(str(OUT / "init_w5.safetensors"))
        x, y = torch.tensor(ty["x"]), torch.tensor(ty["y"])
        pos = torch.tensor(ty["loss_pos"])
        model = IclTransformer(sd, n_layers=2, n_heads=4)
        pt_losses, pt_ms = train(model, x, y, pos, args.steps)
        diff = max(diff, max(abs(a - b) / abs(b) for a, b in zip(ty["losses"], pt_losses)))
        row = {"toylens": ty["ms_per_step_median"], "pytorch": pt_ms}
        rows.append(row)
        print(f"round {r + 1}: toylens {row['toylens']:.2f} ms, PyTorch {pt_ms:.2f} ms; "
              f"PyTorch/toylens {pt_ms / row['toylens']:.2f}x", flush=True)
    ratios = [r["pytorch"] / r["toylens"] for r in rows]
    print(f"\nW5: in-context regression step, batch 128, {args.threads} threads, {args.steps} steps x "
          f"{args.rounds} rounds, torch {torch.__version__}; largest relative loss difference {diff:.1e}")
    print(f"pytorch/toylens: median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}); "
          f"ms/step toylens {statistics.median(r['toylens'] for r in rows):.2f}, "
          f"pytorch {statistics.median(r['pytorch'] for r in rows):.2f}")
    (OUT / "w5.json").write_text(json.dumps({"rounds": rows, "max_rel_loss_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
