#!/usr/bin/env python3
"""λ̂ over an induction run with its phase change shaded, beside the loss on repeats:

    toylens train induction train.checkpoint_every=100 --out runs/induction
    toylens analyze runs/induction            # the phase change -> analysis/induction.json
    toylens llc runs/induction --batch-size 64 --draws 100 --burnin 50   # -> analysis/llc.csv
    python examples/induction/llc.py runs/induction llc.png
"""
import csv, json, sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

run, out = sys.argv[1:3]
llc = list(csv.DictReader(open(f"{run}/analysis/llc.csv")))
rows = list(csv.DictReader(open(f"{run}/metrics.csv")))
phase = json.load(open(f"{run}/analysis/induction.json"))["phase_change"]
fig, ax = plt.subplots(figsize=(8, 4.2))
x = [float(r["step"]) for r in llc]
y = [float(r[list(r)[1]]) for r in llc]
e = [float(r[list(r)[2]]) for r in llc]
ax.errorbar(x, y, yerr=e, fmt="o-", ms=3, color="tab:blue", label="λ̂ (mean ± std over 4 chains)")
ax.set(xlabel="step", ylabel="λ̂")
twin = ax.twinx()
twin.plot([float(r["step"]) for r in rows], [float(r["test_loss_repeat"]) for r in rows],
          color="tab:orange", lw=1, label="loss on repeats")
twin.set_ylabel("loss on repeats (nats)")
if phase:
    ax.axvspan(phase["onset"], phase["end"], color="orange", alpha=0.15, lw=0, label="phase change")
lines = ax.get_legend_handles_labels()
more = twin.get_legend_handles_labels()
ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")
ax.set_title("Local learning coefficient over the two-layer induction run")
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
