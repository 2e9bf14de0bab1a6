#!/usr/bin/env python3
"""Two toylens binaries side by side: `toylens bench` of each workload, A and B in turn, round after
round, so a drift in the machine's speed falls on both. Prints each round's medians and the ratio
B/A (above 1: A is faster), then the median and range of the ratios per workload.

    python3 bench/versus.py --a target/release/toylens --b /tmp/old/target/release/toylens \\
        [--workloads w1,w2,w3] [--rounds 10] [--steps 30] [--a-args '--w-in-fold off'] [--b-args ...]

`--steps` is W1's and W3's step count; W2 (a step of a third of a millisecond) runs 100 times as
many. A and B are any two builds: the commit before a change and after it, or one binary with
other arguments (`--a-args`), or under another `TOYLENS_SIMD` (`--a-env TOYLENS_SIMD=avx2`).
"""
import argparse, json, os, shlex, statistics, subprocess, sys


def bench(binary, workload, steps, extra, env):
    cmd = [binary, "bench", "--workload", workload, "--steps", str(steps), "--json", *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["ms_per_step_median"], r.get("simd", "?")


def environment(assignments):
    env = dict(os.environ)
    for a in assignments:
        key, _, value = a.partition("=")
        env[key] = value
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="binary A (the new one)")
    ap.add_argument("--b", required=True, help="binary B (the baseline)")
    ap.add_argument("--workloads", default="w1,w2,w3")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--a-args", default="")
    ap.add_argument("--b-args", default="")
    ap.add_argument("--a-env", action="append", default=[])
    ap.add_argument("--b-env", action="append", default=[])
    args = ap.parse_args()
    sides = [
        ("A", args.a, shlex.split(args.a_args), environment(args.a_env)),
        ("B", args.b, shlex.split(args.b_args), environment(args.b_env)),
    ]
    ratios = {}
    for workload in args.workloads.split(","):
        steps = args.steps * (100 if workload == "w2" else 1)
        ratios[workload] = []
        for r in range(args.rounds):
            ms = {}
            for name, binary, extra, env in sides if r % 2 == 0 else reversed(sides):
                ms[name] = bench(binary, workload, steps, extra, env)
            ratio = ms["B"][0] / ms["A"][0]
            ratios[workload].append(ratio)
            print(f"{workload} round {r + 1}: A {ms['A'][0]:.4f} ms ({ms['A'][1]}), "
                  f"B {ms['B'][0]:.4f} ms ({ms['B'][1]}), B/A {ratio:.3f}", flush=True)
    print()
    for workload, rs in ratios.items():
        print(f"{workload}: B/A median {statistics.median(rs):.3f} (range {min(rs):.3f}-{max(rs):.3f}) "
              f"over {len(rs)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
