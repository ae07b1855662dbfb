#!/usr/bin/env bash
# dlm's `fast` sampler against the Fast-dLLM reference (issue 16 target 1), side by side, one thread:
# a random LLaDA (d_model 512, 8 layers, 8 heads, vocab 32768; benchmarks/make_fastdllm_bench_checkpoint.py),
# prompt 64, gen 128, block 32, steps 128, T = 0.
#   1. dlm bench at batch 1 on one random prompt: llada, fast none / prefix / dual (top-k, steps 128)
#   2. the reference's generate / generate_with_prefix_cache / generate_with_dual_cache on the same prompt,
#      in its own environment (transformers 4.x; tests/fixtures/fast/README.md says how to extract it)
#   3. dlm bench of fast dual on 8 prompts at batch 1 and at batch 8
#   4. one table: tokens/s of each, dlm / reference, and whether the outputs are identical
# REF_DIR: the extracted reference files; REF_PY: the reference environment's python.
set -euo pipefail
cd "$(dirname "$0")/.."
REF_DIR=${REF_DIR:-/tmp/fast_ref}
REF_PY=${REF_PY:-/work/refenv/bin/python}
CK=${CK:-$HOME/.cache/dlm/bench/fastdllm-d512}
OUT=${OUT:-benchmarks/results/fast-speed}
REPEATS=${REPEATS:-3}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
[ -f "$CK/config.json" ] || .venv/bin/python benchmarks/make_fastdllm_bench_checkpoint.py "$CK"
common=(--model "$CK" --random-prompts 64 --threads 1 --repeats "$REPEATS" --seed 0 --no-progress
        --set gen_length=128 --set block_length=32)
.venv/bin/dlm bench "${common[@]}" --num-prompts 1 --batch-size 1 --baseline llada \
  --run "llada: llada steps=128" --run "none: fast steps=128" --run "prefix: fast cache=prefix steps=128" \
  --run "dual: fast cache=dual steps=128" --out "$OUT/dlm-batch1"
.venv/bin/python -c "import json,sys; b=json.load(open(sys.argv[1])); json.dump([p['ids'] for p in b['prompts']], open(sys.argv[2], 'w'))" \
  "$OUT/dlm-batch1/bench.json" "$OUT/prompt.json"
"$REF_PY" benchmarks/fastdllm_reference.py --reference-dir "$REF_DIR" --model "$CK" --prompt-ids "$OUT/prompt.json" \
  --gen-length 128 --block-length 32 --steps 128 --repeats "$REPEATS" --out "$OUT/reference.json"
.venv/bin/dlm bench "${common[@]}" --num-prompts 8 --batch-size 1 --run "dual: fast cache=dual steps=128" \
  --out "$OUT/dlm-8prompts-batch1"
.venv/bin/dlm bench "${common[@]}" --num-prompts 8 --batch-size 8 --run "dual: fast cache=dual steps=128" \
  --out "$OUT/dlm-8prompts-batch8"
.venv/bin/python benchmarks/fast_vs_reference_table.py "$OUT"
