#!/usr/bin/env python3
"""Grokking tickets on modular addition (issue 12's experiment), end to end with the toylens CLI.

Setting (faster than the `grokking` preset, documented in the README): (a + b) mod 53, 40% of the
pairs in train (toylens' seeded split), the `grokking` preset's model and optimizer, 10,000 steps,
checkpoints every 250. For each seed: the dense run; tickets at each sparsity from its final
checkpoint, from the end of memorisation and from mid circuit formation (the phases `toylens
analyze` finds; the checkpoint nearest each point), a random mask of the same per-tensor counts,
and the norm control (the dense model rescaled at initialisation to the ticket's weight norm).
Every ticket is rewound to initialisation and trained 4000 steps with the dense run's config.
Reported: the first evaluated step with test accuracy ≥ 0.99 ("none, a": not within the 4000
steps, a the final test accuracy).

    python3 bench/tickets.py [--out bench/out/tickets] [--seeds 0 1] [--sparsities 0.5 0.8]

Runs that finished are kept (run again, it continues). Writes docs/tickets/tickets.md (the table)
and docs/tickets/tickets.png (test accuracy over steps) with the venv's matplotlib.
"""
import argparse, json, os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
TOYLENS = os.path.join(ROOT, "target", "release", "toylens")
BASE = ["data.p=53", "data.frac_train=0.4", "data.split=random", "train.steps=10000",
        "train.checkpoint_every=250", "train.log_checkpoints=4", "train.early_stop_test_loss=null"]
TICKET_STEPS = "train.steps=4000"


def run(args):
    subprocess.run([TOYLENS, "--threads", "1"] + args, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summary(d):
    p = os.path.join(d, "summary.json")
    return json.load(open(p)) if os.path.exists(p) else None


def curve(d):
    rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    return [r["step"] for r in rows], [r["test_acc"] for r in rows]


def phases(base):
    out = subprocess.run([TOYLENS, "analyze", base, "--json", "--out", os.path.join(base, "analysis")],
                         check=True, capture_output=True, text=True).stdout
    ph = json.loads(out)["phases"]
    steps = sorted(int(f[5:11]) for f in os.listdir(os.path.join(base, "checkpoints"))
                   if f.endswith(".optim.safetensors"))
    near = lambda x: min(steps, key=lambda s: (abs(s - x), s))
    mem = ph["memorisation_end"]
    mid = near((mem + ph["cleanup_start"]) / 2)
    return mem, mid, ph


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "out", "tickets"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    bases = {s: os.path.join(args.out, f"base_s{s}") for s in args.seeds}
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda s: summary(bases[s]) or run(["train", "grokking", f"seed={s}"] + BASE
                                                         + ["--quiet", "--out", bases[s]]), args.seeds))
    jobs, table = [], {}
    for s in args.seeds:
        mem, mid, ph = phases(bases[s])
        table[s] = {"dense": summary(bases[s])["grok_step"], "mem": mem, "mid": mid, "phases": ph}
        for S in args.sparsities:
            for name, extra in [("final", ["--from", "final"]), (str(mem), ["--from", str(mem)]),
                                (str(mid), ["--from", str(mid)]),
                                ("random", ["--from", "final", "--method", "random", "--seed", str(s)]),
                                ("norm", ["--from", "final", "--control", "norm"])]:
                d = os.path.join(args.out, f"{name}_s{s}_{S}")
                jobs.append((s, S, name, d, ["ticket", bases[s], "--sparsity", str(S), "--quiet",
                                              "--out", d] + extra + [TICKET_STEPS]))
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda j: summary(j[3]) or run(j[4]), jobs))

    def cell(d):
        sm = summary(d)
        return str(sm["grok_step"]) if sm["grok_step"] is not None else f"none, {sm['final_test_acc']:.3f}"

    lines = ["| seed | sparsity | dense | ticket from final | from end of memorisation | from mid circuit formation | random mask | norm control |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in args.seeds:
        t = table[s]
        for S in args.sparsities:
            c = lambda n: cell(os.path.join(args.out, f"{n}_s{s}_{S}"))
            lines.append(f"| {s} | {S} | {t['dense']} | {c('final')} | {c(t['mem'])} (from step {t['mem']}) | "
                         f"{c(t['mid'])} (from step {t['mid']}) | {c('random')} | {c('norm')} |")
    docs = os.path.join(ROOT, "docs", "tickets")
    os.makedirs(docs, exist_ok=True)
    open(os.path.join(docs, "tickets.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(args.seeds), len(args.sparsities), figsize=(6 * len(args.sparsities), 3.6 * len(args.seeds)),
                             squeeze=False, sharey=True)
    for i, s in enumerate(args.seeds):
        t = table[s]
        for j, S in enumerate(args.sparsities):
            ax = axes[i][j]
            x, y = curve(bases[s])
            k = [n for n, st in enumerate(x) if st <= 4000]
            ax.plot([x[n] for n in k], [y[n] for n in k], label="dense", color="black", lw=2)
            for name, label in [("final", "ticket from final"), (str(t["mem"]), "from end of memorisation"),
                                (str(t["mid"]), "from mid circuit formation"),
                                ("random", "random mask"), ("norm", "norm control")]:
                x, y = curve(os.path.join(args.out, f"{name}_s{s}_{S}"))
                ax.plot(x, y, label=label, lw=1.5)
            ax.axhline(0.99, color="grey", lw=0.5, ls="--")
            ax.set_title(f"seed {s}, sparsity {S}")
            ax.set_xlabel("step")
            ax.set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Grokking tickets: (a + b) mod 53, rewound to initialisation, weight decay 1")
    fig.tight_layout()
    fig.savefig(os.path.join(docs, "tickets.png"), dpi=90)
    return 0


if __name__ == "__main__":
    sys.exit(main())
