"""Sequence reversal as your own data: `python make_data.py [DIR]` writes DIR/train.npz and
DIR/test.npz (default: data/), which reversal.yaml trains on.

A sequence is L digits, a separator, then the digits reversed (fed back one at a time, as a
language model sees them): `3 1 4 1 5 9 | 9 5 1 4 1 3`. Targets are per position, as
TransformerLens's are: the next token where the reversed digits are predicted, -1 elsewhere.
"""
import os
import sys

import numpy as np

L, SEP = 6, 10
out = sys.argv[1] if len(sys.argv) > 1 else "data"
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)


def examples(n):
    digits = rng.integers(0, 10, size=(n, L))
    reverse = digits[:, ::-1]
    seq = np.concatenate([digits, np.full((n, 1), SEP), reverse], axis=1)  # [n, 2L + 1]
    inputs = seq[:, :-1]  # the model never sees the last digit
    targets = np.full_like(inputs, -1)
    targets[:, L:] = reverse  # at the separator and after: the next reversed digit
    return inputs.astype(np.int64), targets.astype(np.int64)


for name, n in [("train", 20000), ("test", 2000)]:
    x, y = examples(n)
    np.savez(os.path.join(out, f"{name}.npz"), inputs=x, targets=y)
    print(f"wrote {out}/{name}.npz: inputs {x.shape}, targets {y.shape}")
