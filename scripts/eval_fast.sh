#!/usr/bin/env bash
# Quality of fast decoding (issue 16): ROUGE on Debian test pairs for the cached / threshold
# variants of `fast` against the no-cache `llada` sampler at the same answer length and blocks, on
# the shipped diffusion model smol-a2d-instruct (gen_length 64, blocks of 32, one example per batch
# so that NFE and seconds are per example).
#
#   bash scripts/eval_fast.sh baseline   # llada, steps 64 (one token per pass): the slow reference row
#   bash scripts/eval_fast.sh fast       # fast: threshold 0.9 with cache none / prefix / dual, dual top-k 64
#   bash scripts/eval_fast.sh eos        # stop_after_eos on llada and fast dual 0.9
#   LIMIT=30 bash scripts/eval_fast.sh grow   # llada with eos_policy grow (the docs' run: 30 pairs)
# LIMIT (default 60) pairs of the seeded selection; a later run with a larger LIMIT adds only new pairs.
# Results: benchmarks/results/fast/ (`dlm report benchmarks/results/fast --common`).
set -euo pipefail
cd "$(dirname "$0")/.."
DLM=${DLM:-.venv/bin/dlm}
OUT=${OUT:-benchmarks/results/fast}
LIMIT=${LIMIT:-60}
MODEL=${MODEL:-smol-a2d-instruct}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() {  # NAME SAMPLER OPTIONS...
  local name=$1 sampler=$2
  shift 2
  "$DLM" eval --task debian --model "$MODEL" --limit "$LIMIT" --batch-size 1 --out "$OUT" --no-progress \
    --sampler "$sampler" -o gen_length=64 -o block_length=32 --name "${MODEL}__debian__${name}" "$@"
}
baseline() { run llada-64 llada --nfe 64; }
fast() {
  run fast-dual-t0.9 fast -o cache=dual -o threshold=0.9
  run fast-prefix-t0.9 fast -o cache=prefix -o threshold=0.9
  run fast-none-t0.9 fast -o cache=none -o threshold=0.9
  run fast-dual-64 fast -o cache=dual --nfe 64
}
eos() {
  run fast-dual-t0.9-stop fast -o cache=dual -o threshold=0.9 -o eos_policy=stop_after_eos
  run llada-64-stop llada --nfe 64 -o eos_policy=stop_after_eos
}
grow() { run llada-64-grow llada --nfe 64 -o eos_policy=grow; }
case "${1:-}" in
  baseline) baseline ;;
  fast) fast ;;
  eos) eos ;;
  grow) grow ;;
  *) echo "usage: $0 baseline|fast|eos|grow" >&2; exit 2 ;;
esac
