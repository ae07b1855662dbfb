#!/usr/bin/env bash
# Train dlm's shipped model family on the Debian corpus (data/debian, data/tokenizer).
#
#   bash scripts/train_family.sh ar    # tiny-ar -> tiny-a2d -> tiny-a2d-instruct
#   bash scripts/train_family.sh mdm   # tiny-mdm -> tiny-mdm-instruct, then tiny-ar-instruct (needs tiny-ar)
#
# The two chains use the same total training tokens (tiny-mdm steps = tiny-ar + tiny-a2d steps)
# and can run side by side (one torch thread each). Every stage resumes from its checkpoint when
# rerun and is skipped once its model exists. Extra arguments go to every `dlm train` call
# (e.g. --threads 4). Settings here are the ones the shipped models were trained with.
set -euo pipefail
cd "$(dirname "$0")/.."
DLM=${DLM:-.venv/bin/dlm}
OUT=${OUT:-src/dlm/pretrained}
CHAIN=${1:?usage: train_family.sh ar|mdm [extra dlm train args]}
shift
EXTRA=("--threads" "1" "$@")
SIZE=(--d-model 256 --n-layers 6 --n-heads 4 --mlp-hidden 768)
PRE=(--task pretrain --seq-len 256 --batch-size 8 --eval-every 100 --eval-batches 16 --save-every 50 --save-dtype bfloat16)
SFT=(--task sft --seq-len 256 --answer-length 32 --batch-size 16 --max-steps 300 --lr 5e-4 --warmup-steps 25
     --instruction-dropout 0.3 --eval-every 50 --eval-batches 8 --save-every 50 --save-dtype bfloat16)
AR_STEPS=1400
A2D_STEPS=700

stage() {  # stage NAME ARGS...: train OUT/NAME unless it is already finished
  local name=$1
  shift
  if [[ -f "$OUT/$name/config.json" && ! -d "$OUT/$name/checkpoint" ]]; then
    echo "== $name: done"
    return
  fi
  echo "== $name: $DLM train --out $OUT/$name $*"
  "$DLM" train --out "$OUT/$name" --name "$name" "$@" "${EXTRA[@]}"
}

case "$CHAIN" in
  ar)
    stage tiny-ar --objective causal --arch llama "${SIZE[@]}" "${PRE[@]}" --max-steps $AR_STEPS --lr 1e-3
    stage tiny-a2d --objective a2d --init "$OUT/tiny-ar" "${PRE[@]}" --max-steps $A2D_STEPS --lr 5e-4 \
      --warmup-steps 50 --anneal-steps 200
    stage tiny-a2d-instruct --objective mdm --init "$OUT/tiny-a2d" "${SFT[@]}"
    ;;
  mdm)
    stage tiny-mdm --objective mdm --arch llada "${SIZE[@]}" "${PRE[@]}" --max-steps $((AR_STEPS + A2D_STEPS)) --lr 1e-3
    stage tiny-mdm-instruct --objective mdm --init "$OUT/tiny-mdm" "${SFT[@]}"
    while [[ ! -f "$OUT/tiny-ar/config.json" || -d "$OUT/tiny-ar/checkpoint" ]]; do sleep 30; done
    stage tiny-ar-instruct --objective causal --init "$OUT/tiny-ar" "${SFT[@]}"
    ;;
  *) echo "unknown chain $CHAIN (ar | mdm)" >&2; exit 2 ;;
esac
