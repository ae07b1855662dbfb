"""Time the reference Fast-dLLM samplers (NVlabs/Fast-dLLM v1/llada/generate.py) on a LLaDA checkpoint.

    /work/refenv/bin/python benchmarks/fastdllm_reference.py --reference-dir /tmp/fast_ref \\
        --model DIR [--prompt-length 32] [--seed 0] [--batch 1] [--gen-length 128] \\
        [--block-length 32] [--steps 128] [--threshold X | --factor F] [--repeats 3] \\
        [--functions none,prefix,dual] [--threads 1] [--out results.json]

Needs an environment with torch, numpy and transformers 4.x (the reference modeling file cannot be
imported with transformers 5.x). ``--reference-dir`` is laid out as in the reference repository
(``generate.py`` plus ``model/{__init__,modeling_llada,configuration_llada}.py``; see
tests/fixtures/fast/README.md for how to extract them). This file contains no reference code: it
imports ``generate`` from that directory and loads ``--model`` with the reference
``model.modeling_llada.LLaDAModelLM.from_pretrained(DIR, torch_dtype=torch.float32)``, the very class
``generate.py`` imports (the checkpoint needs no modeling files next to it; loading must report no
missing or unexpected keys). The benchmark checkpoint comes from
benchmarks/make_fastdllm_bench_checkpoint.py.

Prompts (exact recipe, so dlm can build identical ones): with ``mask``, ``eos``, ``pad`` the
``mask_token_id``, ``eos_token_id``, ``pad_token_id`` of DIR/config.json and
``hi = min(mask, eos, pad)`` (every special id is >= hi, so none is drawn)::

    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, hi, (batch, prompt_length), generator=g)   # int64

For the benchmark checkpoint hi = 32000. Every call (warm-up and timed) is preceded by
``torch.manual_seed(seed)`` and runs ``fn(model, prompt, steps=..., gen_length=...,
block_length=..., temperature=..., remasking=..., mask_id=mask, threshold=..., factor=...)`` under
the reference's own ``@torch.no_grad()``; the wall time of the call (``time.perf_counter``) is
recorded. Functions: ``none`` = ``generate``, ``prefix`` = ``generate_with_prefix_cache``,
``dual`` = ``generate_with_dual_cache``; each gets one untimed warm-up call, then ``--repeats``
timed calls. The JSON written to ``--out`` holds, per function: all times, the median, completion
tokens/s (batch * gen_length / median), nfe, forward passes per second, mask ids left in the
answer, whether every call returned the same ids, and the last call's output ids; plus settings,
the prompt, software versions, thread count, CPU model, the checkpoint's config and the sha256 of
the reference files.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

FUNCTIONS = {"none": "generate", "prefix": "generate_with_prefix_cache", "dual": "generate_with_dual_cache"}
REFERENCE_FILES = ("generate.py", "model/__init__.py", "model/modeling_llada.py", "model/configuration_llada.py")


def _provenance():
    """dlm's provenance module, loaded from its file: it needs only the standard library, and this
    script runs in the reference's environment, where dlm itself is not installed."""
    path = Path(__file__).resolve().parents[1] / "src" / "dlm" / "provenance.py"
    spec = importlib.util.spec_from_file_location("dlm_provenance", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PROVENANCE = _provenance()
cpu_model, sha256_file = _PROVENANCE.cpu_model, _PROVENANCE.file_sha256


def make_prompt(torch, config: dict, batch: int, prompt_length: int, seed: int):
    """The documented prompt recipe (see the module docstring)."""
    hi = min(int(config["mask_token_id"]), int(config["eos_token_id"]), int(config["pad_token_id"]))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, hi, (batch, prompt_length), generator=g), hi


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path, help="LLaDA checkpoint directory")
    ap.add_argument("--prompt-ids", type=Path, default=None,
                    help="JSON file: a list of equal-length id lists (one batch; overrides --prompt-length, "
                         "--batch and the random prompt), e.g. the prompts of a dlm bench run")
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--gen-length", type=int, default=128)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--factor", type=float, default=None)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per function (after one warm-up)")
    ap.add_argument("--functions", default="none,prefix,dual", help="comma list of none, prefix, dual")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--out", type=Path, default=Path("fastdllm_reference.json"))
    return ap.parse_args()


def main():
    args = parse_args()
    funcs = [f.strip() for f in args.functions.split(",") if f.strip()]
    unknown = set(funcs) - set(FUNCTIONS)
    if unknown:
        sys.exit(f"unknown --functions {sorted(unknown)}; choose from {list(FUNCTIONS)}")
    ref_dir = args.reference_dir.resolve()
    missing = [f for f in REFERENCE_FILES if not (ref_dir / f).is_file()]
    if missing:
        sys.exit(f"--reference-dir {ref_dir} lacks {missing}")

    sys.dont_write_bytecode = True  # keep the reference dir clean
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ref_dir))
    ref = importlib.import_module("generate")
    from model.modeling_llada import LLaDAModelLM  # noqa: E402  (the class generate.py imports)

    model_dir = args.model.resolve()
    config = json.loads((model_dir / "config.json").read_text())
    t0 = time.perf_counter()
    model, info = LLaDAModelLM.from_pretrained(str(model_dir), torch_dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"reference load of {model_dir} reported {bad}")
    model = model.eval()
    load_s = time.perf_counter() - t0
    mask_id = int(config["mask_token_id"])
    prompt, hi = make_prompt(torch, config, args.batch, args.prompt_length, args.seed)
    if args.prompt_ids is not None:
        prompt = torch.tensor(json.loads(args.prompt_ids.read_text()), dtype=torch.long)
        args.batch, args.prompt_length = prompt.shape
    kwargs = dict(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length,
                  temperature=args.temperature, remasking=args.remasking, mask_id=mask_id,
                  threshold=args.threshold, factor=args.factor)
    print(f"loaded {model_dir} in {load_s:.1f}s; prompt {tuple(prompt.shape)} ids in [0, {hi}); {kwargs}", flush=True)

    results = {}
    for name in funcs:
        fn = getattr(ref, FUNCTIONS[name])
        times, outs, nfes = [], [], []
        for call in range(args.repeats + 1):
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            out, nfe = fn(model, prompt.clone(), **kwargs)
            elapsed = time.perf_counter() - start
            nfe = int(nfe)
            label = "warm-up" if call == 0 else f"call {call}"
            print(f"  {name:6s} {label:8s} {elapsed:8.3f}s nfe {nfe}", flush=True)
            if call:
                times.append(elapsed)
            outs.append(out.tolist())
            nfes.append(nfe)
        med = statistics.median(times)
        last = outs[-1]
        answer = [row[args.prompt_length:] for row in last]
        results[name] = {
            "function": FUNCTIONS[name],
            "seconds": times,
            "median_seconds": med,
            "completion_tokens_per_s": args.batch * args.gen_length / med,
            "nfe": nfes[-1],
            "forward_passes_per_s": nfes[-1] / med,
            "masks_left": sum(t == mask_id for row in answer for t in row),
            "identical_across_calls": all(o == last for o in outs) and len(set(nfes)) == 1,
            "output": last,
        }
        print(f"{name:6s} median {med:.3f}s  {results[name]['completion_tokens_per_s']:.1f} tok/s  "
              f"nfe {nfes[-1]}  masks left {results[name]['masks_left']}", flush=True)

    report = {
        "what": "reference Fast-dLLM samplers (NVlabs/Fast-dLLM v1/llada/generate.py), CPU fp32",
        "settings": {**{k: v for k, v in kwargs.items()}, "batch": args.batch, "prompt_length": args.prompt_length,
                     "seed": args.seed, "repeats": args.repeats, "warmup_calls": 1, "functions": funcs,
                     "prompt_recipe": "torch.randint(0, min(mask, eos, pad), (batch, prompt_length), "
                                      "generator=torch.Generator().manual_seed(seed)); "
                                      "torch.manual_seed(seed) before every call"},
        "prompt": prompt.tolist(),
        "results": results,
        "model": {"dir": str(model_dir), "config": {k: config[k] for k in (
                      "vocab_size", "embedding_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                      "mlp_hidden_size", "mask_token_id", "eos_token_id", "pad_token_id", "max_sequence_length")},
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "load_seconds": load_s},
        "reference_files_sha256": {f: sha256_file(ref_dir / f) for f in REFERENCE_FILES},
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "threads": {"torch_num_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "torch_num_interop_threads": torch.get_num_interop_threads()},
        "hardware": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine()},
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    if (model_dir / "model.safetensors").is_file():
        report["model"]["model.safetensors_sha256"] = sha256_file(model_dir / "model.safetensors")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
