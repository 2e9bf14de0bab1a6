#!/usr/bin/env bash
# Sweep timing, side by side on this machine (docs/PERFORMANCE.md, "Sweeps"):
#  1. a sweep of 12 small runs against the same 12 runs one after another with `toylens train`;
#  2. the local runner's rule: two runs at once on one thread each (--jobs 2) against one run at a
#     time on every thread (--jobs 1), for a small, a middle and a large model.
# Usage: bench/sweep.sh [REPEATS]   (default 3; the binary: target/release/toylens, or $BIN)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/toylens}
REPS=${1:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
now() { date +%s.%N; }

echo "# $(date -u +%F) on $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
echo "## 12 runs of grokking-tiny (3000 steps): sweep vs one after another"
for r in $(seq "$REPS"); do
    t0=$(now)
    "$BIN" sweep grokking-tiny 'seed=range(0,12)' train.steps=3000 --out "$tmp/sweep$r" >/dev/null
    t1=$(now)
    for s in $(seq 0 11); do
        "$BIN" train grokking-tiny seed=$s train.steps=3000 --out "$tmp/seq$r/$s" --quiet >/dev/null 2>&1
    done
    t2=$(now)
    awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "sweep %.1f s, sequential %.1f s, ratio %.2f\n", b - a, c - b, (b - a) / (c - b) }'
done

rule() {
    local name=$1; shift
    echo "## $name: 4 runs, --jobs 2 (1 thread each) vs --jobs 1 (2 threads each)"
    for r in $(seq "$REPS"); do
        t0=$(now)
        "$BIN" sweep "$@" 'seed=range(0,4)' --jobs 2 --out "$tmp/$name-j2-$r" >/dev/null
        t1=$(now)
        "$BIN" sweep "$@" 'seed=range(0,4)' --jobs 1 --out "$tmp/$name-j1-$r" >/dev/null
        t2=$(now)
        awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "jobs 2: %.1f s, jobs 1: %.1f s, ratio %.2f\n", b - a, c - b, (b - a) / (c - b) }'
    done
}
rule tiny grokking-tiny train.steps=3000
rule grokking grokking train.steps=150
rule digits5 digits5 train.steps=200
rule big digits5 model.d_model=1024 model.d_mlp=4096 model.d_head=256 train.steps=60 train.eval_every=30
