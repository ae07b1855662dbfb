#!/usr/bin/env bash
# The smol family on the Debian test split, as reported in docs/model-family.md: lead-6, the base
# zero-shot (AR greedy), smol-ar-instruct, smol-idlm (isd), smol-a2d-instruct at NFE 8/16/32 (one block,
# blocks of 8, EOS committed last) and tiny-a2d-instruct. Every run is resumable (rerun the same
# command), and --limit may grow between runs (LIMIT=500 after a LIMIT=100 run scores only the 400 new
# pairs: the selection is a seeded shuffle, so the first 100 of 500 are the 100).
#   bash scripts/eval_smol.sh ar          # lead-6, the base, smol-ar-instruct, smol-idlm (isd)
#   bash scripts/eval_smol.sh diffusion   # smol-a2d-instruct (three settings), tiny-a2d-instruct
#   bash scripts/eval_smol.sh techdocs    # all of them on another domain: Python stdlib docstrings
#                                         # (scripts/build_techdocs.py) -> their one-line summaries
#   bash scripts/eval_smol.sh all
# Results go to benchmarks/results/smol/ and smol-techdocs/ (`dlm report DIR` draws them).
set -euo pipefail
cd "$(dirname "$0")/.."
DLM=${DLM:-.venv/bin/dlm}
OUT=${OUT:-benchmarks/results/smol}
LIMIT=${LIMIT:-500}
SMOL_DIFFUSION_LIMIT=${SMOL_DIFFUSION_LIMIT:-$LIMIT}  # smol-a2d-instruct: ~0.4 s per example and pass on one CPU thread
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() { "$DLM" eval --task debian --limit "$LIMIT" --out "$OUT" --no-progress "$@"; }
three() {  # the three block settings of a diffusion model at NFE 8/16/32 (extra args: e.g. --limit N)
  local m=$1
  shift
  run --model "$m" --nfe 8,16,32 "$@"
  run --model "$m" --nfe 8,16,32 -o block_length=8 --name "${m}__debian__llada-block8" "$@"
  run --model "$m" --nfe 8,16,32 -o confidence_eos_eot_inf=true --name "${m}__debian__llada-eos-last" "$@"
}
ar() {
  run --model smollm2-135m-instruct --baseline lead-6
  run --model smollm2-135m-instruct
  run --model smol-ar-instruct
  run --model smol-idlm  # introspective: isd, whose greedy output is the model's own AR output
}
diffusion() {
  three smol-a2d-instruct --limit "$SMOL_DIFFUSION_LIMIT"
  three tiny-a2d-instruct
}
techdocs() {  # the same models and settings on data of another domain (the Debian prompt)
  OUT=$OUT-techdocs
  run() { "$DLM" eval --task debian --data benchmarks/data/techdocs --limit "$LIMIT" --out "$OUT" --no-progress "$@"; }
  ar
  diffusion
}
case "${1:-}" in
  ar) ar ;;
  diffusion) diffusion ;;
  techdocs) techdocs ;;
  all) ar; diffusion; techdocs ;;
  *) echo "usage: $0 ar|diffusion|techdocs|all" >&2; exit 2 ;;
esac
