#!/usr/bin/env python3
"""The induction phase change, drawn from two runs' metric columns (the task's losses and the
`heads` monitor):

    toylens train induction --out runs/induction
    toylens train induction-1l --out runs/induction-1l
    toylens train induction-smeared --out runs/induction-smeared
    toylens analyze runs/induction; toylens analyze runs/induction-smeared   # the phase changes
    python examples/induction/phase_change.py runs/induction runs/induction-1l out.png \
        [runs/induction-smeared]

The phase change `toylens analyze` found (RUN/analysis/induction.json) is shaded.
"""
import csv, json, math, os, sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def columns(run):
    rows = list(csv.DictReader(open(f"{run}/metrics.csv")))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def shade(axis, run, color):
    path = f"{run}/analysis/induction.json"
    if os.path.exists(path):
        p = json.load(open(path))["phase_change"]
        if p:
            axis.axvspan(p["onset"], p["end"], color=color, alpha=0.15, lw=0)


two, one, out = sys.argv[1:4]
smeared = sys.argv[4] if len(sys.argv) > 4 else None
a, b = columns(two), columns(one)
heads = sorted({k.split("_")[1] for k in a if k.startswith("heads_L")} - {"kcomp"})
fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
ax[0].plot(a["step"], a["test_loss_repeat"], label="2 layers: repeated tokens")
ax[0].plot(a["step"], a["test_loss_first"], label="2 layers: first occurrences")
ax[0].plot(b["step"], b["test_loss_repeat"], "--", label="1 layer: repeated tokens")
if smeared:
    c = columns(smeared)
    ax[0].plot(c["step"], c["test_loss_repeat"], ":", label="1 layer, smeared keys: repeated tokens")
    shade(ax[0], smeared, "green")
ax[0].axhline(math.log(64), color="grey", lw=0.8, label="ln 64 (no context)")
for axis in ax:
    shade(axis, two, "orange")
ax[0].set(xlabel="step", ylabel="test loss (nats)", title="loss")
ax[0].legend(fontsize=8)
for h in heads:
    if h.startswith("L0"):
        ax[1].plot(a["step"], a[f"heads_{h}_prev"], label=f"{h} previous-token")
    else:
        ax[1].plot(a["step"], a[f"heads_{h}_induction"], "--", label=f"{h} induction")
ax[1].set(xlabel="step", ylabel="detector score (mul)", title="heads (2 layers)")
ax[1].legend(fontsize=7, ncol=2)
last = {h: a[f"heads_{h}_induction"][-1] for h in heads if h.startswith("L1")}
best = max(last, key=last.get)
for h in heads:
    if h.startswith("L0"):
        ax[2].plot(a["step"], a[f"heads_kcomp_{h}_{best}"], label=f"{h} → {best}")
ax[2].set(xlabel="step", ylabel="K-composition", title=f"K-composition into {best}")
ax[2].legend(fontsize=8)
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
