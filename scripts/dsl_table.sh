#!/usr/bin/env bash
# DSL-LLaDA's table at small scale (issue 17), one command per part:
#
#   bash scripts/dsl_table.sh train    # smol-a2d-instruct -> smol-dsl-instruct (DSL, LoRA 16) and the
#                                      # same-compute control (its own masked-diffusion SFT, same steps/data)
#   bash scripts/dsl_table.sh table    # ROUGE + diagnostics on Debian test pairs at NFE 8/16/32/64 for
#                                      # dsl SDE, dsl ODE, LLaDA one block, LLaDA+EOS+32-token blocks, control
#   bash scripts/dsl_table.sh repair   # corruption repair (random 10/30/50 %, semantic) for base, control, DSL
#   bash scripts/dsl_table.sh report   # the Markdown tables and the plot (docs/dsl.md numbers)
#
# Settings by environment: DEVICE (cpu), DTYPE (float32 on cpu, bfloat16 on cuda), STEPS (1000),
# BATCH (32), SAVE_EVERY (250), LIMIT (300 pairs), NFE (8,16,32,64), EVAL_BATCH (8), GEN (64), RUNS (runs/), OUT
# (benchmarks/results/dsl). The shipped smol-dsl-instruct was trained and the table run on one H200
# with DEVICE=cuda (see docs/dsl.md); on a CPU the defaults take days: lower STEPS and LIMIT.
set -euo pipefail
cd "$(dirname "$0")/.."
DLM=${DLM:-dlm}
DEVICE=${DEVICE:-cpu}
STEPS=${STEPS:-1000}
BATCH=${BATCH:-32}
LIMIT=${LIMIT:-300}
NFE=${NFE:-8,16,32,64}
EVAL_BATCH=${EVAL_BATCH:-8}
GEN=${GEN:-64}
SAVE_EVERY=${SAVE_EVERY:-250}
RUNS=${RUNS:-runs}
OUT=${OUT:-benchmarks/results/dsl}
BASE=${BASE:-smol-a2d-instruct}
DSL_MODEL=${DSL_MODEL:-$RUNS/smol-dsl-instruct}
CONTROL=${CONTROL:-$RUNS/smol-mdm-control}
PRECISION=no
[ "$DEVICE" != cpu ] && PRECISION=bf16
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

train_one() {  # OUT_DIR OBJECTIVE NAME
  "$DLM" train --out "$1" --objective "$2" --task sft --init "$BASE" --lora 16 --seq-len 256 --answer-length "$GEN" \
    --instruction-dropout 0.3 --batch-size "$BATCH" --max-steps "$STEPS" --lr 2e-4 --save-every "$SAVE_EVERY" \
    --eval-every "$SAVE_EVERY" --eval-batches 4 --mixed-precision "$PRECISION" --save-dtype bfloat16 --name "$3" --no-progress
}
train() {  # both runs at once: on a GPU neither fills it
  train_one "$DSL_MODEL" dsl smol-dsl-instruct &
  local dsl=$!
  train_one "$CONTROL" mdm smol-mdm-control
  wait "$dsl"
}

ev() {  # MODEL NAME SAMPLER OPTIONS...
  local model=$1 name=$2 sampler=$3
  shift 3
  "$DLM" eval --task debian --model "$model" --limit "$LIMIT" --batch-size "$EVAL_BATCH" --nfe "$NFE" --out "$OUT" \
    --device "$DEVICE" --no-progress --sampler "$sampler" -o gen_length="$GEN" --name "$name" "$@"
}
table() {  # the five methods; in parallel on a GPU
  local jobs=()
  ev "$DSL_MODEL" dsl-sde dsl & jobs+=($!)
  ev "$DSL_MODEL" dsl-ode dsl -o noise_scale=0 & jobs+=($!)
  ev "$BASE" llada-one-block llada & jobs+=($!)
  ev "$BASE" llada-eos-block32 llada -o block_length=32 -o logits_eos_inf=true & jobs+=($!)
  ev "$CONTROL" control-one-block llada & jobs+=($!)
  local failed=0
  for j in "${jobs[@]}"; do wait "$j" || failed=1; done
  return $failed
}

repair() {
  for m in "$BASE" "$CONTROL" "$DSL_MODEL"; do
    for mode in random semantic; do
      "$DLM" eval --task repair --model "$m" --data data/debian -t field=description -t max_tokens=128 \
        -t corruption=$mode --limit 200 --device "$DEVICE" --out "$OUT/repair" --no-progress \
        --name "$(basename "$m")__repair__$mode"
    done
  done
}

report() { "$DLM" report "$OUT"; "$DLM" report "$OUT/repair"; }

case "${1:-}" in
  train) train ;;
  table) table ;;
  repair) repair ;;
  report) report ;;
  *) echo "usage: bash scripts/dsl_table.sh train|table|repair|report" >&2; exit 2 ;;
esac
