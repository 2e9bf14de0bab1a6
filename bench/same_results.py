#!/usr/bin/env python3
"""Same results before and after a change: train every preset for a few steps and hash the final
weights (every tensor's name, shape and bytes; the metadata, which holds the config, is left out)
and the metrics (metrics.csv without its wall_time column); then hash what `analyze`, `ablate` and
`llc` print (--json, timings left out) for the checkpoints those runs wrote.

    python3 bench/same_results.py [--toylens target/release/toylens] [--write]

Compares against bench/same_results.txt, one record for every CPU and SIMD level with FMA (AVX2,
AVX-512; `TOYLENS_SIMD=avx2` forces a level): the hashes the commit before the model-interface
change gave (the metrics, the other presets and the commands' outputs recorded at the commit before
the catalogue change; `circuits` added by the circuits change, `induction` by the induction task), grokking's re-recorded when its training took layer 0's W_in fold by default (exact
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
    ("grokking-tiny", 5000),
    ("digits3", 300),
    ("linear", 400),
    ("induction", 300), ("induction-smeared", 300),
    ("icl-regression", 200),
]
# (name, command and arguments; RUN stands for a run's directory). Each prints JSON.
COMMANDS = [
    ("analyze grokking-tiny", ["analyze", "RUN:grokking-tiny/final.safetensors", "--json"]),
    ("analyze grokking-tiny run", ["analyze", "RUN:grokking-tiny", "--json", "--out", "TMP:an-gt"]),
    ("analyze digits5", ["analyze", "RUN:digits5/final.safetensors", "--json"]),
    ("analyze superposition", ["analyze", "RUN:superposition/final.safetensors", "--json"]),
    ("ablate grokking-tiny", ["ablate", "RUN:grokking-tiny/final.safetensors", "--json"]),
    ("ablate toy-mlp", ["ablate", "RUN:toy-mlp/final.safetensors", "--json"]),
    ("llc grokking-tiny", ["llc", "RUN:grokking-tiny/final.safetensors", "--json", "--chains", "2",
                           "--draws", "40", "--burnin", "20"]),
    ("llc linear", ["llc", "RUN:linear/final.safetensors", "--json", "--chains", "2", "--draws", "40",
                    "--burnin", "20", "--batch-size", "64"]),
    ("llc linear rmsprop-sgld", ["llc", "RUN:linear/final.safetensors", "--json", "--chains", "2",
                                 "--draws", "40", "--burnin", "20", "--batch-size", "64",
                                 "--sampler", "rmsprop-sgld"]),
    ("llc linear sgnht", ["llc", "RUN:linear/final.safetensors", "--json", "--chains", "2",
                          "--draws", "40", "--burnin", "20", "--batch-size", "64",
                          "--sampler", "sgnht", "--localization", "0", "--lr", "1e-5"]),
    ("llc induction observed", ["llc", "RUN:induction/final.safetensors", "--json", "--chains", "2",
                                "--draws", "10", "--burnin", "5", "--batch-size", "64",
                                "--observe", "test_first,test_repeat", "--observe-examples", "32"]),
    ("dynamics induction", ["dynamics", "RUN:induction", "--json", "--examples", "16",
                            "--out", "TMP:dyn-ind"]),
    ("llc induction restricted", ["llc", "RUN:induction/final.safetensors", "--json", "--chains", "2",
                                  "--draws", "10", "--burnin", "5", "--batch-size", "64",
                                  "--restrict", "blocks.1.attn.head.0"]),
    ("llc icl-regression", ["llc", "RUN:icl-regression/final.safetensors", "--json", "--chains", "2",
                            "--draws", "10", "--burnin", "5", "--batch-size", "64"]),
    ("dynamics icl-regression", ["dynamics", "RUN:icl-regression", "--json", "--examples", "16",
                                 "--out", "TMP:dyn-icl"]),
    ("circuits grokking-tiny", ["circuits", "RUN:grokking-tiny/final.safetensors", "--json",
                                "--examples", "16"]),
    ("circuits digits3", ["circuits", "RUN:digits3/final.safetensors", "--json", "--examples", "16"]),
]
TIMINGS = {"seconds", "wall_time", "wall_seconds"}
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


def metrics_hash(path):
    rows = [line.rstrip("\n").split(",") for line in open(path)]
    drop = rows[0].index("wall_time") if "wall_time" in rows[0] else None
    h = hashlib.sha256()
    for r in rows:
        h.update((",".join(v for i, v in enumerate(r) if i != drop) + "\n").encode())
    return h.hexdigest()


def without_timings(v):
    if isinstance(v, dict):
        return {k: without_timings(x) for k, x in v.items() if k not in TIMINGS}
    if isinstance(v, list):
        return [without_timings(x) for x in v]
    return v


def output_hash(toylens, args, tmp):
    def path(a):
        for tag in ("RUN:", "TMP:"):
            if a.startswith(tag):
                return os.path.join(tmp, a[len(tag):])
        return a
    out = subprocess.run([toylens] + [path(a) for a in args], check=True, capture_output=True, text=True).stdout
    canon = json.dumps(without_timings(json.loads(out)), sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


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
            got[f"{preset} metrics"] = metrics_hash(os.path.join(out, "metrics.csv"))
        for name, cmd in COMMANDS:
            got[name] = output_hash(args.toylens, cmd, tmp)
            print(f"{name:30} {got[name]}")
    if args.write:
        with open(RECORD, "w") as f:
            for preset, steps in RUNS:
                f.write(f"{preset} {steps} {got[preset]}\n")
            for preset, steps in RUNS:
                f.write(f"{preset} metrics {got[preset + ' metrics']}\n")
            for name, _ in COMMANDS:
                f.write(f"{name.replace(' ', '/')} - {got[name]}\n")
        print(f"wrote {RECORD}")
        return 0
    want = {}
    for line in open(RECORD):
        preset, steps, h = line.split()
        key = preset.replace("/", " ") if steps == "-" else preset if steps != "metrics" else preset + " metrics"
        want[key] = h
    bad = [p for p in got if got[p] != want.get(p)]
    for p in bad:
        print(f"DIFFERENT: {p}: recorded {want.get(p)}, now {got[p]}")
    print("same weights, metrics and outputs, bit for bit" if not bad else f"{len(bad)} of {len(got)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
