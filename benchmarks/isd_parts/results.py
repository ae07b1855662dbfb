"""The benchmark's output: the Markdown table of a result, the git state it records, and the three
files written (result JSON, Markdown table beside it, batch-1 predictions as ``_samples.jsonl``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import ROOT


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    bss = [str(b) for b in s["batch_sizes"]]
    lines = [f"# I-DLM benchmark: {result['model']['model']}", "",
             f"torch threads {result['hardware']['torch_threads']}, {result['hardware']['cpu']}"
             + (f", {result['hardware']['gpu']}" if "gpu" in result["hardware"] else "")
             + f", device {result['hardware']['device']}, dlm {result['versions']['dlm']}, "
               f"torch {result['versions']['torch']}; seed {s['seed']}, sample seed {s['sample_seed']}"]
    for name, t in result["tasks"].items():
        micro = t["forward_micro"]["by_batch_size"]
        lines += ["", f"## {name}: {t['selection']['examples']} examples", "", t["description"], "",
                  "| decoding | ROUGE-1 | ROUGE-2 | ROUGE-L | identical to AR | TPF | acceptance | "
                  + " | ".join(f"tok/s b{b}" for b in bss) + " | "
                  + " | ".join(f"fwd (2N-1) / fwd 1, b{b}" for b in bss) + " |",
                  "|---|" + "---:|" * (6 + 2 * len(bss))]
        for e in t["rows"]:
            stride = e["options"].get("stride") if e["sampler"] == "isd" else None
            ratios = []
            for b in bss:
                m = micro.get(b)
                if m is None:
                    ratios.append("-")
                elif e["sampler"] == "ar":
                    ratios.append(f"1 ({m['single_token_seconds'] * 1e3:.2f} ms)")
                elif stride is not None:
                    st = m["strides"][str(stride)]
                    ratios.append(f"{st['ratio_to_single_token']:.2f} ({st['seconds'] * 1e3:.2f} ms)")
                else:
                    ratios.append("-")
            lines.append(f"| {e['label']} | {e['rouge1']:.2f} | {e['rouge2']:.2f} | {e['rougeL']:.2f} | "
                         f"{_fmt(e['identical_to_ar'], '.1%')} | {_fmt(e['tpf'], '.2f')} | "
                         f"{_fmt(e['acceptance_rate'], '.1%')} | "
                         + " | ".join(_fmt(e['speed'].get(b, {}).get('tokens_per_second_median'), '.1f')
                                      for b in bss) + " | " + " | ".join(ratios) + " |")
        warm = "; ".join(f"{e['row']} " + ", ".join(
            f"b{b} {w['seconds']:.3f} s ({w['tokens_per_second']:.1f} tok/s)"
            for b, w in ((b, e["speed"][b]["warmup"]) for b in bss if b in e["speed"])) for e in t["rows"])
        lines += ["", f"Warm-up calls (first call of each row and batch size, excluded from the medians): {warm}.",
                  f"Forward micro-benchmark: KV cache of {t['forward_micro']['prompt_length']} tokens (the median "
                  f"prompt length), median of {t['forward_micro']['repeats']} timed forwards."]
    return "\n".join(lines) + "\n"


def git_state() -> dict[str, Any] | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return None


def write_results(out: Path, result: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    """Writes the result JSON, its Markdown table (also printed) and the samples file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    with open(out.with_name(out.stem + "_samples.jsonl"), "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    print(table)
    print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_name(out.stem + '_samples.jsonl')}", file=sys.stderr)
