"""The in-context regression run beside Hoogland et al. 2024's published curves: λ̂ over training
(toylens's at the run's chosen checkpoints, the paper's five seeds from timaeus-research/icl's
analysis/L2H4Minf/llcs.pt via bench/icl_paper_curves.py), the test loss at the last and first
context positions, the ridge gap, the paper's stage boundaries and the run's essential-dynamics
turns. Needs matplotlib.

    python bench/icl_llc_figure.py RUN docs/analysis/icl_regression/paper_llc.csv OUT.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

run, paper_csv, out = sys.argv[1], sys.argv[2], sys.argv[3]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


paper = rows(paper_csv)
ours = rows(f"{run}/analysis/llc.csv")
metrics = rows(f"{run}/metrics.csv")
turns = [int(r["step"]) for r in rows(f"{run}/analysis/dynamics.csv") if r["turn"] == "1"]
last = max(int(r["step"]) for r in metrics)

fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
for seed in sorted({r["seed"] for r in paper}):
    pts = [(int(r["step"]), float(r["llc_mean"])) for r in paper if r["seed"] == seed and int(r["step"]) > 0]
    ax.plot(*zip(*pts), color="0.6", lw=1, label="Hoogland et al. (5 seeds)" if seed == "0" else None)
steps = [max(int(r["step"]), 1) for r in ours]
ax.errorbar(steps, [float(r["llc_mean"]) for r in ours], yerr=[float(r["llc_std"]) for r in ours],
            fmt="o-", color="C3", capsize=3, label="toylens (this run)")
bx.plot([max(int(r["step"]), 1) for r in metrics], [float(r["test_loss_last"]) for r in metrics],
        label="test loss, 16th prediction (15 pairs in context)")
bx.plot([max(int(r["step"]), 1) for r in metrics], [float(r["test_loss_first"]) for r in metrics],
        label="test loss, 1st prediction (no context)")
bx.plot([max(int(r["step"]), 1) for r in metrics], [float(r["ridge_gap"]) for r in metrics],
        label="mean test loss − ridge (Bayes)")
for a in (ax, bx):
    for b, name in ((1500, "LR1|LR2"), (40000, "LR2|LR3")):
        a.axvline(b, color="k", ls=":", lw=1)
    for t in turns:
        a.axvline(t, color="C2", ls="--", lw=1)
    a.set_xscale("log")
ax.text(1500, ax.get_ylim()[1] * 0.95, " LR1|LR2 (paper)", fontsize=8, va="top")
ax.text(40000, ax.get_ylim()[1] * 0.95, " LR2|LR3", fontsize=8, va="top")
ax.plot([], [], color="C2", ls="--", lw=1, label="essential-dynamics turns (this run)")
ax.set_ylabel("λ̂")
ax.set_xlim(1, 500000)
ax.legend(loc="upper left", fontsize=8)
ax.set_title(f"In-context linear regression (L2H4Minf): λ̂, this run to step {last} vs the paper's 500k")
bx.set_yscale("log")
bx.set_ylabel("loss")
bx.set_xlabel("step")
bx.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
