"""The published LLC curves of Hoogland et al. 2024 (timaeus-research/icl,
analysis/L2H4Minf/llcs.pt: a pandas DataFrame pickled by torch, five model seeds) as a CSV:
step, seed, llc_mean, llc_std (over chains). Needs torch and pandas.

    python bench/icl_paper_curves.py ICL_REPO/analysis/L2H4Minf/llcs.pt OUT.csv
"""
import sys
import types

import pandas as pd
import torch

# Written by pandas 1.x: its numeric index classes are plain Index now.
shim = types.ModuleType("pandas.core.indexes.numeric")
for name in ("Int64Index", "UInt64Index", "Float64Index", "NumericIndex"):
    setattr(shim, name, pd.Index)
sys.modules["pandas.core.indexes.numeric"] = shim

frame = torch.load(sys.argv[1], weights_only=False)
out = frame[["step", "model_seed", "llc/mean/mean", "llc/std/mean"]].copy()
out.columns = ["step", "seed", "llc_mean", "llc_std"]
out = out.sort_values(["seed", "step"])
out.to_csv(sys.argv[2], index=False, float_format="%.4f")
print(f"{len(out)} rows, seeds {sorted(out.seed.unique())}")
