#!/usr/bin/env bash
# The shipped instruct models on the Debian test split with `dlm eval`, as reported in docs/eval.md.
#   bash scripts/eval_family.sh a2d   # tiny-a2d-instruct: one block, semi-AR blocks of 8, EOS committed last
#   bash scripts/eval_family.sh mdm   # tiny-mdm-instruct (same three settings) and tiny-ar-instruct
# Each run is resumable; results go to benchmarks/results/eval/ (then `dlm report` draws them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/eval}
LIMIT=${LIMIT:-120}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() { .venv/bin/dlm eval --task debian --nfe 8,16,32,64 --limit "$LIMIT" --out "$OUT" --no-progress "$@"; }
three() {
  local m=$1
  run --model "$m"
  run --model "$m" -o block_length=8 --name "${m}__debian__llada-block8"
  run --model "$m" -o confidence_eos_eot_inf=true --name "${m}__debian__llada-eos-last"
}
case "${1:-}" in
  a2d) three tiny-a2d-instruct ;;
  mdm) three tiny-mdm-instruct
       .venv/bin/dlm eval --task debian --limit "$LIMIT" --out "$OUT" --no-progress --model tiny-ar-instruct ;;
  *) echo "usage: $0 a2d|mdm" >&2; exit 2 ;;
esac
