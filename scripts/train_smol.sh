#!/usr/bin/env bash
# Train the smol family: LoRA adapters on the packaged base smollm2-135m-instruct (SmolLM2-135M-Instruct).
#
#   bash scripts/train_smol.sh ar     # smol-ar-instruct: causal LoRA SFT on the Debian summarisation split
#   bash scripts/train_smol.sh a2d    # smol-a2d (DiffuGPT adaptation: annealing, shift, ELBO; LoRA + mask row)
#                                     #   -> smol-a2d-instruct (diffusion SFT of smol-a2d)
#   bash scripts/train_smol.sh idlm   # smol-idlm: introspective LoRA SFT (I-DLM), stride 2 then 4
#
# Runs write to runs/NAME (checkpoints there; rerun the same command to resume, e.g. after
# --max-minutes or Ctrl-C) and the finished adapter is copied to src/dlm/pretrained/NAME.
# Extra arguments go to every `dlm train` call (e.g. --max-minutes 50, or --threads 4 on a bigger
# machine; --mixed-precision bf16 where the CPU has bf16 instructions (AMX / AVX512-BF16).
set -euo pipefail
cd "$(dirname "$0")/.."
DLM=${DLM:-.venv/bin/dlm}
RUNS=${RUNS:-runs}
SHIP=${SHIP:-src/dlm/pretrained}
CHAIN=${1:?usage: train_smol.sh ar|a2d|idlm [extra dlm train args]}
shift
EXTRA=(--threads 1 "$@")
BASE=smollm2-135m-instruct
LORA=(--lora 16 --save-dtype bfloat16)
SFT=(--task sft --seq-len 256 --answer-length 32 --batch-size 8 --instruction-dropout 0.3 --lr 2e-4
     --warmup-steps 12 --eval-every 40 --eval-batches 4 --save-every 20)
PRE=(--task pretrain --seq-len 256 --batch-size 8 --eval-every 100 --eval-batches 8 --save-every 25)

stage() {  # stage NAME ARGS...: train RUNS/NAME (resuming), then ship the finished adapter
  local name=$1
  shift
  "$DLM" train --out "$RUNS/$name" --name "$name" "$@" "${EXTRA[@]}"
  if [[ -f "$RUNS/$name/training_log.json" && ! -d "$RUNS/$name/checkpoint" ]]; then
    mkdir -p "$SHIP/$name"
    cp "$RUNS/$name"/{adapter_config.json,adapter_model.safetensors,dlm_adapter.json,README.md,training_log.json} \
       "$RUNS/$name"/tokenizer* "$SHIP/$name"/
    [[ -f "$RUNS/$name/chat_template.jinja" ]] && cp "$RUNS/$name/chat_template.jinja" "$SHIP/$name/"
    echo "== $name: shipped in $SHIP/$name"
  else
    echo "== $name: not finished; run the same command again to continue" >&2
    exit 3
  fi
}

case "$CHAIN" in
  ar)
    stage smol-ar-instruct --objective causal --init "$BASE" "${LORA[@]}" "${SFT[@]}" --max-steps 80
    ;;
  a2d)
    stage smol-a2d --objective a2d --init "$BASE" "${LORA[@]}" "${PRE[@]}" --max-steps 240 --lr 3e-4 \
      --warmup-steps 24 --anneal-steps 100
    stage smol-a2d-instruct --objective mdm --init smol-a2d "${LORA[@]}" "${SFT[@]}" --max-steps 160
    ;;
  idlm)
    stage smol-idlm --objective idlm --init "$BASE" "${LORA[@]}" "${SFT[@]}" --max-steps 150 \
      --stride-schedule 2:0,4:50
    ;;
  *) echo "unknown chain $CHAIN (ar | a2d | idlm)" >&2; exit 2 ;;
esac
