"""The bindings' overhead: `model.run_with_cache` over all 12,769 pairs of the grokked model
(every hook cached), called from Python, against the same call timed inside Rust (no Python in
the loop) and against TransformerLens's `run_with_cache` on the same weights, input and threads.

    target/python/venv/bin/python bench/python_cache.py [--threads 2] [--repeats 15] [--rounds 3] [--pause 0.2]

Needs the package installed in that environment (scripts/python-tests makes it) and the original
grokked checkpoint in ../shared/fixtures. Each round times all three once per repeat, interleaved;
prints each round's medians and ratios, and writes bench/out/python_cache.json.
"""

import argparse
import json
import pathlib
import statistics
import time

import numpy as np
import torch

import toylens

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT.parent / "shared" / "fixtures" / "progress-measures" / "wd_10-1_mod_addition_loss_curve.pth"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--pause",
        type=float,
        default=0.2,
        help="seconds of idle before each timed call: the previous engine's worker threads (torch's "
        "OpenMP team, toylens's rayon pool) spin for a while after a call, taking a core from the next",
    )
    args = ap.parse_args()
    toylens.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    model = toylens.load(FIXTURE)
    tl = model.to_transformer_lens()
    p = 113
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    tokens = np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1)
    tokens_t = torch.from_numpy(tokens)
    # Same answer first: toylens's logits against TransformerLens's.
    ours, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        theirs, tl_cache = tl.run_with_cache(tokens_t)
    err = np.abs(ours - theirs.numpy()).max() / np.abs(theirs.numpy()).max()
    print(f"{len(cache)} cached activations; logits agree to {err:.1e} (relative to max |logit|)")
    rounds = []
    for r in range(args.rounds):
        py, rust, tlt = [], [], []
        for _ in range(args.repeats):
            time.sleep(args.pause)
            t0 = time.perf_counter()
            out = model.run_with_cache(tokens)
            py.append(time.perf_counter() - t0)
            del out
            time.sleep(args.pause)
            rust.extend(toylens._toylens._rust_run_with_cache_seconds(model, tokens, 1))
            time.sleep(args.pause)
            with torch.no_grad():
                t0 = time.perf_counter()
                out = tl.run_with_cache(tokens_t)
                tlt.append(time.perf_counter() - t0)
            del out
        row = {k: statistics.median(v) * 1e3 for k, v in (("python", py), ("rust", rust), ("transformer_lens", tlt))}
        row["python_over_rust"] = row["python"] / row["rust"]
        row["tl_over_python"] = row["transformer_lens"] / row["python"]
        rounds.append(row)
        print(
            f"round {r}: from Python {row['python']:.1f} ms, inside Rust {row['rust']:.1f} ms "
            f"({(row['python_over_rust'] - 1) * 100:+.1f}%), TransformerLens {row['transformer_lens']:.1f} ms "
            f"({row['tl_over_python']:.2f}x slower than toylens from Python)"
        )
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "python_cache.json").write_text(json.dumps({"threads": args.threads, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
