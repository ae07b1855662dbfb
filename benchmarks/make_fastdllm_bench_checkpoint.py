"""Write the random LLaDA checkpoint that benchmarks/fastdllm_reference.py times.

    python benchmarks/make_fastdllm_bench_checkpoint.py OUT_DIR [--head-scale S]

Runs with any environment that has torch + safetensors (dlm's .venv or the reference's), because
it only uses tests/fixtures/llada/make_checkpoint.py. The directory is fully determined by
:data:`BENCH` (and the head scale): build it on dlm's side with

    make_llada_checkpoint(out_dir, **bench_kwargs(head_scale))

and compare ``state_dict_sha256`` (printed, and written to OUT_DIR/bench_checkpoint.json) if in
doubt; at head scale 1 it is 3de47a830a7395c4b80fca7f604ce8b55603881c5fb17d0508032da3f7eaef9a.
Size: vocab 32768, d_model 512, 8 layers, 8 heads (no GQA), MLP 1376: 58,860,032 parameters,
235 MB of fp32 safetensors. Mask id 32000 (EOS 32001, pad 32002) lies inside the vocabulary; its
output-head row is zeroed so the random model never proposes it (the reference's top-k loops
fail if it does). ``--head-scale S`` multiplies every other head row by S (default 1: logit std
about 2, so top-1 probabilities stay far below 0.5 and threshold / factor rules commit about one
token per pass; a larger S makes them commit more).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "llada"))
import make_checkpoint as mc  # noqa: E402

MASK_ID = 32000

BENCH = dict(
    seed=0,
    shards=1,
    vocab_size=32768,
    embedding_size=32768,
    d_model=512,
    n_heads=8,
    n_kv_heads=8,
    n_layers=8,
    mlp_hidden_size=1376,
    mlp_ratio=4,
    mask_token_id=MASK_ID,
    eos_token_id=32001,
    pad_token_id=32002,
)


def bench_kwargs(head_scale: float = 1.0) -> dict:
    """make_llada_checkpoint kwargs: BENCH plus the head_row_scale (mask row 0, others head_scale)."""
    rows = {MASK_ID: 0.0}
    if head_scale != 1.0:
        rows = {**{i: float(head_scale) for i in range(BENCH["vocab_size"])}, MASK_ID: 0.0}
    return dict(BENCH, head_row_scale=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--head-scale", type=float, default=1.0)
    args = ap.parse_args()
    kw = bench_kwargs(args.head_scale)
    config = mc.make_llada_checkpoint(args.out_dir, **kw)
    over = {k: v for k, v in kw.items() if k not in ("seed", "shards", "head_row_scale")}
    state = mc.make_state_dict(mc.build_config(**over), kw["seed"], kw["head_row_scale"])
    info = {
        "bench_kwargs": {k: v for k, v in BENCH.items()},
        "head_scale": args.head_scale,
        "head_row_scale_rule": "mask row 0.0, every other row times head_scale (no other rows if head_scale == 1)",
        "parameters": sum(t.numel() for t in state.values()),
        "state_sha256": mc.state_dict_sha256(state),
        "config": config,
    }
    (args.out_dir / "bench_checkpoint.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps({k: info[k] for k in ("head_scale", "parameters", "state_sha256")}))


if __name__ == "__main__":
    main()
