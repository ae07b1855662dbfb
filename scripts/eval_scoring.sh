#!/usr/bin/env bash
# Held-out perplexity and corruption repair of the shipped base models on the Debian test split
# (descriptions), as reported in docs/eval.md. Results go to benchmarks/results/eval/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/eval}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ev() { .venv/bin/dlm eval --data data/debian -t field=description --out "$OUT" --no-progress "$@"; }
for m in tiny-a2d tiny-mdm; do ev --model $m --task perplexity --nfe 8,32 --limit 100; done
ev --model tiny-ar --task perplexity --limit 100
for m in tiny-a2d tiny-mdm tiny-ar; do ev --model $m --task repair -t max_tokens=128 --limit 200; done
