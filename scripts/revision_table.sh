#!/usr/bin/env bash
# Revision samplers with and without SCOPE post-training (issue 19), one command per part:
#
#   bash scripts/revision_table.sh train   # 1. smol-arith: BASE + masked-diffusion SFT on the generated arithmetic
#                                          #    problems (dlm train --task arith); then, side by side, from the
#                                          #    model each task starts at (arith: smol-arith, debian: BASE):
#                                          #    SCOPE post-training (--objective scope) and the same-compute
#                                          #    control (its own masked-diffusion SFT, same data, steps and seed)
#   bash scripts/revision_table.sh table   # every sampler on both tasks for the three models of each task:
#                                          # llada / d3im / remdm at 16, 32 and 64 steps, edit and wino once
#   bash scripts/revision_table.sh report  # dlm report per task, then the revision table and plot
#                                          # (benchmarks/revision_table.py -> $OUT/report.md, revision.png)
#
# Settings by environment: DEVICE (cpu), BASE (smol-a2d-instruct), SFT_STEPS (400), POST_STEPS (200),
# WARMUP (20), BATCH (32), PRECISION (no on cpu, else bf16), LIMIT (200 problems / pairs), EVAL_BATCH (8), PAR (parallel eval jobs, 1), GEN (64),
# RUNS (runs/revision), OUT (benchmarks/results/revision), DLM (dlm), PYTHON (python3), TASKS ("arith debian"),
# SAMPLERS ("llada d3im remdm edit wino": the table part runs these only). The committed table was run on one H200
# with DEVICE=cuda (docs/revision.md); on a CPU lower the steps and LIMIT.
set -euo pipefail
cd "$(dirname "$0")/.."
DLM=${DLM:-dlm}
DEVICE=${DEVICE:-cpu}
BASE=${BASE:-smol-a2d-instruct}
SFT_STEPS=${SFT_STEPS:-400}
POST_STEPS=${POST_STEPS:-200}
WARMUP=${WARMUP:-20}
BATCH=${BATCH:-32}
LIMIT=${LIMIT:-200}
EVAL_BATCH=${EVAL_BATCH:-8}
PAR=${PAR:-1}
GEN=${GEN:-64}
RUNS=${RUNS:-runs/revision}
OUT=${OUT:-benchmarks/results/revision}
DEFAULT_PRECISION=no
[ "$DEVICE" != cpu ] && DEFAULT_PRECISION=bf16
PRECISION=${PRECISION:-$DEFAULT_PRECISION}  # mixed precision of training (bf16 autocast helps on a CPU too)
PYTHON=${PYTHON:-python3}
TASKS=${TASKS:-arith debian}
SAMPLERS=${SAMPLERS:-llada d3im remdm edit wino}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

ARITH=$RUNS/smol-arith
declare -A MODELS=(  # task -> "label=model ..." (before, after SCOPE, control)
  [arith]="sft=$ARITH scope=$RUNS/smol-arith-scope control=$RUNS/smol-arith-control"
  [debian]="sft=$BASE scope=$RUNS/smol-debian-scope control=$RUNS/smol-debian-control"
)

train_one() {  # OUT_DIR INIT OBJECTIVE TASK STEPS NAME
  local extra=()
  [ "$4" = sft ] && extra=(--instruction-dropout 0.3)
  "$DLM" train --out "$1" --init "$2" --objective "$3" --task "$4" --max-steps "$5" --name "$6" --lora 16 \
    --seq-len 256 --answer-length "$GEN" --batch-size "$BATCH" --lr 2e-4 --warmup-steps "$WARMUP" --save-every 100 \
    --eval-every 100 --eval-batches 4 --mixed-precision "$PRECISION" --save-dtype bfloat16 --no-progress "${extra[@]}"
}
train() {  # the runs of the tasks in TASKS
  local jobs=() failed=0
  if [[ " $TASKS " == *" arith "* ]]; then
    train_one "$ARITH" "$BASE" mdm arith "$SFT_STEPS" smol-arith
    train_one "$RUNS/smol-arith-scope" "$ARITH" scope arith "$POST_STEPS" smol-arith-scope & jobs+=($!)
    train_one "$RUNS/smol-arith-control" "$ARITH" mdm arith "$POST_STEPS" smol-arith-control & jobs+=($!)
  fi
  if [[ " $TASKS " == *" debian "* ]]; then
    train_one "$RUNS/smol-debian-scope" "$BASE" scope sft "$POST_STEPS" smol-debian-scope & jobs+=($!)
    train_one "$RUNS/smol-debian-control" "$BASE" mdm sft "$POST_STEPS" smol-debian-control & jobs+=($!)
  fi
  for j in "${jobs[@]}"; do wait "$j" || failed=1; done
  return $failed
}

ev() {  # TASK LABEL MODEL SAMPLER [OPTIONS...]
  local task=$1 label=$2 model=$3 sampler=$4
  shift 4
  "$DLM" eval --task "$task" --model "$model" --limit "$LIMIT" --batch-size "$EVAL_BATCH" --out "$OUT/$task" \
    --device "$DEVICE" --no-progress --sampler "$sampler" -o gen_length="$GEN" --name "${label}__${sampler}" "$@"
}
evals() {  # one line per eval run: TASK LABEL MODEL SAMPLER OPTIONS...
  declare -A how=([llada]="--nfe 16,32,64" [d3im]="--nfe 16,32,64" [edit]="" [wino]=""
                  [remdm]="-o temperature=0 --nfe 32,64,128")  # remdm: 2 passes a step, so steps 16/32/64
  for task in $TASKS; do
    for pair in ${MODELS[$task]}; do
      for sampler in $SAMPLERS; do
        echo "$task ${pair%%=*} ${pair#*=} $sampler ${how[$sampler]}"
      done
    done
  done
}
table() {
  local failed=0 running=0
  while read -r line; do
    # shellcheck disable=SC2086
    ev $line &
    running=$((running + 1))
    if [ "$running" -ge "$PAR" ]; then wait -n || failed=1; running=$((running - 1)); fi
  done < <(evals)
  while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done
  return $failed
}

report() {
  for task in $TASKS; do "$DLM" report "$OUT/$task"; done
  "$PYTHON" benchmarks/revision_table.py "$OUT"
}

case "${1:-}" in
  train) train ;;
  table) table ;;
  report) report ;;
  *) echo "usage: bash scripts/revision_table.sh train|table|report" >&2; exit 2 ;;
esac
