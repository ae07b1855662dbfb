"""Time dlm.generate against a straightforward per-step loop on the same random LLaDA models.

    .venv/bin/python benchmarks/bench_generate.py [--repeats 5] [--out benchmarks/results/generate.json]

For each model size and sampler setting both implementations run on identical inputs; outputs are
checked to be identical token for token, and the median wall time of each plus their ratio is
printed side by side. The result file records settings, seed, software versions and hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dlm  # noqa: E402
from dlm.models.default import tiny_llada_config  # noqa: E402
from dlm.provenance import cpu_model, software_versions  # noqa: E402
from dlm.models.diffusion_lm import DiffusionLM  # noqa: E402
from dlm.models.llada import LLaDAConfig, LLaDAModelLM  # noqa: E402
from dlm.models.registry import resolve_facts  # noqa: E402
from naive_loop import naive_generate  # noqa: E402

MODELS = {
    "tiny (d64 x2, V 263)": dict(vocab=263, d_model=64, n_layers=2, n_heads=4, mlp=128),
    "small (d256 x4, V 16384)": dict(vocab=16384, d_model=256, n_layers=4, n_heads=8, mlp=704),
}
SETTINGS = {
    "one block, T=0": dict(steps=32, gen_length=32, block_length=32),
    "4 blocks, T=0": dict(steps=32, gen_length=64, block_length=16),
    "4 blocks, T=1": dict(steps=32, gen_length=64, block_length=16, temperature=1.0),
}


def build(spec: dict, seed: int) -> DiffusionLM:
    cfg = tiny_llada_config(spec["vocab"], d_model=spec["d_model"], n_layers=spec["n_layers"],
                            n_heads=spec["n_heads"], n_kv_heads=spec["n_heads"], mlp_hidden_size=spec["mlp"],
                            mask_token_id=spec["vocab"] - 1, eos_token_id=spec["vocab"] - 2)
    net = LLaDAModelLM(LLaDAConfig.from_dict(cfg))
    net.init_weights(std=0.3, generator=torch.Generator().manual_seed(seed))
    return DiffusionLM(net, resolve_facts("llada", cfg, spec["vocab"]), cfg).eval()


def time_it(fn, repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        torch.manual_seed(0)
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "generate.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    print(f"{'model':<26} {'setting':<16} {'naive s':>9} {'dlm s':>9} {'speedup':>8}  same")
    for mname, spec in MODELS.items():
        model = build(spec, args.seed)
        g = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, spec["vocab"] - 8, (args.batch, args.prompt_length), generator=g)
        for sname, kw in SETTINGS.items():
            t_naive, ref = time_it(lambda: naive_generate(model, ids, **kw), args.repeats)
            t_dlm, out = time_it(lambda: dlm.generate(model, ids, **kw), args.repeats)
            same = bool(torch.equal(out, ref))
            rows.append(dict(model=mname, setting=sname, options=kw, naive_s=t_naive, dlm_s=t_dlm,
                             speedup=t_naive / t_dlm, identical_output=same))
            print(f"{mname:<26} {sname:<16} {t_naive:>9.4f} {t_dlm:>9.4f} {t_naive / t_dlm:>7.2f}x  {same}")
    result = {
        "benchmark": "dlm.generate (llada sampler) vs a straightforward per-step loop",
        "median_of": args.repeats, "batch": args.batch, "prompt_length": args.prompt_length, "seed": args.seed,
        "threads": args.threads, "rows": rows,
        "versions": software_versions(),
        "hardware": {"machine": platform.machine(), "cpu": cpu_model(),
                     "cpus": os.cpu_count(), "cuda": torch.cuda.is_available()},
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
