#!/usr/bin/env python3
"""Same results before and after a change: train four presets for a few steps and hash the final
weights (every tensor's name, shape and bytes; the metadata, which holds the config, is left out).

    python3 bench/same_results.py [--toylens target/release/toylens] [--write]

Compares against bench/same_results.txt, one record for every CPU and SIMD level with FMA (AVX2,
AVX-512; `TOYLENS_SIMD=avx2` forces a level): the hashes the commit before the model-interface
change gave, grokking's re-recorded when its training took layer 0's W_in fold by default (exact
maths, other rounding) and again when the fold's one-row product stopped depending on the vector
width. --write records the current hashes instead. Exit code 1 on any difference.
`cargo test` runs it (tests/same_results.rs).
"""
import argparse, hashlib, json, os, struct, subprocess, sys, tempfile

RUNS = [
    ("grokking", 400),
    ("digits5", 300),
    ("toy-mlp", 2000),
    ("superposition", 1000),
]
HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "same_results.txt")


def weights_hash(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    h = hashlib.sha256()
    for name in sorted(k for k in header if k != "__metadata__"):
        t = header[name]
        a, b = t["data_offsets"]
        h.update(f"{name} {t['dtype']} {t['shape']}\n".encode())
        h.update(data[a:b])
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--toylens", default=os.path.join(HERE, "..", "target", "release", "toylens"))
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset, steps in RUNS:
            out = os.path.join(tmp, preset)
            subprocess.run([args.toylens, "train", preset, f"train.steps={steps}", "--quiet", "--out", out],
                           check=True, stdout=subprocess.DEVNULL)
            got[preset] = weights_hash(os.path.join(out, "final.safetensors"))
            print(f"{preset:14} {steps:5} steps  {got[preset]}")
    if args.write:
        with open(RECORD, "w") as f:
            for preset, steps in RUNS:
                f.write(f"{preset} {steps} {got[preset]}\n")
        print(f"wrote {RECORD}")
        return 0
    want = {}
    for line in open(RECORD):
        preset, steps, h = line.split()
        want[preset] = h
    bad = [p for p in got if got[p] != want.get(p)]
    for p in bad:
        print(f"DIFFERENT: {p}: recorded {want.get(p)}, now {got[p]}")
    print("same weights, bit for bit" if not bad else f"{len(bad)} of {len(got)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
