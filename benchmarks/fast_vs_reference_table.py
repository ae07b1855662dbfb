"""The side-by-side table of benchmarks/fast_vs_reference.sh: dlm bench runs against the Fast-dLLM reference.

    .venv/bin/python benchmarks/fast_vs_reference_table.py benchmarks/results/fast-speed

Reads dlm-batch1/bench.json, reference.json, dlm-8prompts-batch1/bench.json and
dlm-8prompts-batch8/bench.json; prints a Markdown table and writes summary.json next to them.
Throughput is counted the reference's way for both: batch x gen_length / median seconds per call
(every canvas position is generated; dlm bench's own tokens/s counts answers only up to the first
stop token). Outputs are compared as answers cut at the first EOS.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def bench_runs(path: Path) -> tuple[dict, dict]:
    bench = json.loads(path.read_text())
    return bench, {r["label"]: r for r in bench["runs"]}


def per_call_seconds(run: dict) -> float:
    return statistics.median(c["wall_seconds"] for c in run["calls"])


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/fast-speed")
    b1, runs1 = bench_runs(out / "dlm-batch1" / "bench.json")
    ref = json.loads((out / "reference.json").read_text())
    _, runs8_1 = bench_runs(out / "dlm-8prompts-batch1" / "bench.json")
    _, runs8_8 = bench_runs(out / "dlm-8prompts-batch8" / "bench.json")
    gen = ref["settings"]["gen_length"]
    P = ref["settings"]["prompt_length"]
    eos = ref["model"]["config"]["eos_token_id"]

    def cut(ids: list[int]) -> list[int]:
        return ids[:ids.index(eos)] if eos in ids else ids

    rows, summary = [], {}
    for name in ("none", "prefix", "dual"):
        mine, theirs = runs1[name], ref["results"][name]
        dlm_tps = gen / per_call_seconds(mine)
        ref_tps = ref["results"][name]["completion_tokens_per_s"]
        same = mine["answers"][0] == cut(theirs["output"][0][P:])
        summary[name] = {"dlm_tokens_per_s": dlm_tps, "reference_tokens_per_s": ref_tps, "ratio": dlm_tps / ref_tps,
                         "dlm_nfe": mine["nfe_mean"], "reference_nfe": theirs["nfe"], "same_output": same}
        rows.append(f"| fast {name} (batch 1) | {dlm_tps:.2f} | {ref_tps:.2f} | {dlm_tps / ref_tps:.2f} | "
                    f"{mine['nfe_mean']:.0f} / {theirs['nfe']} | {'yes' if same else 'no'} |")
    llada_tps = gen / per_call_seconds(runs1["llada"])
    b1_tps = 8 * gen / sum(c["wall_seconds"] for c in runs8_1["dual"]["calls"]) * len({c["repeat"] for c in runs8_1["dual"]["calls"]})
    b8_tps = 8 * gen / per_call_seconds(runs8_8["dual"])
    summary["llada_batch1_tokens_per_s"] = llada_tps
    summary["dual_8_prompts"] = {"batch1_tokens_per_s": b1_tps, "batch8_tokens_per_s": b8_tps, "ratio": b8_tps / b1_tps}
    print(f"random LLaDA {ref['model']['parameters'] / 1e6:.1f}M, prompt {P}, gen {gen}, block "
          f"{ref['settings']['block_length']}, steps {ref['settings']['steps']}, T = 0, one thread; "
          f"{b1['hardware'].get('cpu', '?')} ({b1['hardware'].get('cpus', '?')} cores, load average {b1['hardware'].get('loadavg_start', ['?'])[0]:.1f} at the start)")
    print()
    print("| sampler | dlm tok/s | reference tok/s | dlm / reference | NFE dlm / ref | same output |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| llada (batch 1) | {llada_tps:.2f} | | | {runs1['llada']['nfe_mean']:.0f} | |")
    print("\n".join(rows))
    print()
    print(f"fast dual on 8 prompts: batch 1 {b1_tps:.2f} tok/s, batch 8 {b8_tps:.2f} tok/s "
          f"({b8_tps / b1_tps:.2f}x)")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
