"""A plain ToyMLP training run against W2's step time: is a run what its steps cost?

    python3 bench/train_vs_bench.py [--pairs 8] [--steps 3000] [--threads 2] [--toylens target/release/toylens]

Each pair runs `toylens bench --workload w2 --steps N --json` and then `toylens train toy-mlp
train.steps=N --quiet --out DIR` (evaluation, checkpoints, the plot and process start included; the
run's wall time is the process's). Prints, per pair, the run's time over the bench's median step × N
and over its mean step × N. The median leaves out the slow steps that a run pays for, so on a noisy
machine the first ratio is the higher. Needs only the release binary.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--toylens", default=str(ROOT / "target" / "release" / "toylens"))
    args = ap.parse_args()
    exe, n, t = args.toylens, args.steps, str(args.threads)
    by_median, by_mean = [], []
    print(f"train toy-mlp train.steps={n} against bench --workload w2 --steps {n}, {t} threads")
    print("pair  bench median×N  bench mean×N   train   train/median  train/mean")
    for pair in range(args.pairs):
        out = subprocess.run([exe, "--threads", t, "bench", "--workload", "w2", "--steps", str(n), "--json"],
                             check=True, capture_output=True, text=True).stdout
        bench = json.loads(out)
        median_s = bench["ms_per_step_median"] * n / 1e3
        mean_s = bench["ms_per_step_mean"] * n / 1e3
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            subprocess.run([exe, "--threads", t, "train", "toy-mlp", f"train.steps={n}", "--quiet",
                            "--out", str(pathlib.Path(d) / "run")],
                           check=True, capture_output=True)
            train_s = time.perf_counter() - t0
        by_median.append(train_s / median_s)
        by_mean.append(train_s / mean_s)
        print(f"{pair + 1:4}  {median_s:12.3f} s  {mean_s:10.3f} s  {train_s:6.3f} s  "
              f"{by_median[-1]:12.2f}  {by_mean[-1]:10.2f}")
    for name, r in [("median", by_median), ("mean", by_mean)]:
        within = sum(x <= 1.2 for x in r)
        print(f"train / bench {name} × N: median {statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f}), "
              f"{within} of {len(r)} within 20%")


if __name__ == "__main__":
    main()
