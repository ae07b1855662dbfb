"""The figures of ``dlm bench`` per run (from the recorded calls) and its Markdown table."""

from __future__ import annotations

import math
import statistics
from typing import Any

from dlm.bench.specs import RunSpec, is_greedy


def p90(values: list[float]) -> float:
    """The 90th percentile by nearest rank: the smallest value with at least 90% of the values <= it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def summarise(spec: RunSpec, res: dict[str, Any], prompts: list[list[int]], repeats: int) -> dict[str, Any]:
    calls = res["calls"]
    rows = sum(len(c["prompts"]) for c in calls)
    tokens = sum(sum(c["completion_tokens"]) for c in calls)
    row_passes = sum(c["nfe"] * len(c["prompts"]) for c in calls)  # each row's share of its call's NFE
    per_repeat = []
    for r in range(repeats):
        mine = [c for c in calls if c["repeat"] == r]
        seconds = sum(c["wall_seconds"] for c in mine)
        per_repeat.append(sum(sum(c["completion_tokens"]) for c in mine) / seconds if seconds > 0 else None)
    latencies = [c["wall_seconds"] for c in calls]
    per_row = all(c["forwards"] is not None for c in calls)  # the sampler reports each row's passes
    forwards = sum(sum(c["forwards"]) for c in calls) if per_row else 0
    out: dict[str, Any] = {
        "prompt_tokens_mean": _mean(len(p) for p in prompts),
        "completion_tokens_mean": tokens / rows,
        "nfe_mean": _mean(c["nfe"] for c in calls),
        "forwards_per_row_mean": forwards / rows if per_row else None,
        "tokens_per_forward": tokens / row_passes if row_passes else None,
        "tokens_per_row_forward": tokens / forwards if forwards else None,
        "tokens_per_second": statistics.median([t for t in per_repeat if t is not None] or [math.nan]),
        "tokens_per_second_per_repeat": per_repeat,
        "latency_median": statistics.median(latencies),
        "latency_p90": p90(latencies),
        "cold_seconds": res["cold"]["wall_seconds"],
        "peak_memory_bytes": max([c["peak_memory_bytes"] for c in calls] + [res["cold"]["peak_memory_bytes"]]),
        "peak_memory_kind": res["cold"].get("peak_memory_kind"),
        "greedy": is_greedy(spec.resolved or res["options"]),
        "deterministic": res["deterministic"],
    }
    return out


def compare(summaries: dict[str, dict[str, Any]], answers: dict[str, list[list[int]]], reference: str,
            baseline: str | None) -> None:
    """Add ``same_as_baseline`` (vs ``reference``) and, with ``baseline``, the ratio columns."""
    ref = summaries[reference]
    for label, s in summaries.items():
        if s["greedy"] and ref["greedy"]:
            same = sum(a == b for a, b in zip(answers[label], answers[reference]))
            s["same_as_baseline"] = same / len(answers[label])
        else:
            s["same_as_baseline"] = None
        if baseline is not None:
            b = summaries[baseline]
            s["tokens_per_second_ratio"] = (s["tokens_per_second"] / b["tokens_per_second"]
                                            if b["tokens_per_second"] else None)
            s["latency_speedup"] = b["latency_median"] / s["latency_median"] if s["latency_median"] else None
            s["nfe_ratio"] = s["nfe_mean"] / b["nfe_mean"] if b["nfe_mean"] else None


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


COLUMNS = [  # (header, key, digits)
    ("prompt tok", "prompt_tokens_mean", 1), ("compl tok", "completion_tokens_mean", 1), ("NFE", "nfe_mean", 1),
    ("fwd/row", "forwards_per_row_mean", 1), ("tok/fwd", "tokens_per_forward", 2),
    ("tok/row-fwd", "tokens_per_row_forward", 2), ("tok/s", "tokens_per_second", 1),
    ("lat med s", "latency_median", 4), ("lat p90 s", "latency_p90", 4), ("cold s", "cold_seconds", 4),
]
RATIOS = [("tok/s x", "tokens_per_second_ratio", 2), ("speedup", "latency_speedup", 2), ("NFE x", "nfe_ratio", 2)]


def markdown(record: dict[str, Any]) -> str:
    """The run's settings in a few lines and the table, one row per run."""
    st, hw = record["settings"], record["hardware"]
    runs = record["runs"]
    memory = "peak MiB (GPU)" if hw["device"].startswith("cuda") else "peak RSS MiB (process)"
    optional = ("forwards_per_row_mean", "tokens_per_row_forward")  # shown when some run reports forwards per row
    cols = [c for c in COLUMNS if c[1] not in optional or any(r[c[1]] is not None for r in runs)]
    ratios = RATIOS if st["baseline"] is not None else []
    src = st["prompts"]
    prompt_text = {"debian": f"the first {src['count']} Debian test prompts",
                   "random": f"{src['count']} random prompts of {src.get('length')} ids (seed {src.get('seed')})",
                   "file": f"{src['count']} prompt(s) from {src.get('file')}",
                   }.get(src["kind"], f"{src['count']} prompt(s) given with --prompt")
    lines = [
        f"dlm bench: {record['model']['model']} on {hw['device']} ({hw['dtype']}, "
        f"torch threads {hw['torch_threads']}), "
        f"{prompt_text}, batch size {st['batch_size']}, timed repeats {st['repeats']}, seed {st['seed']}",
        "",
    ]
    headers = ["run", "sampler"] + [h for h, _, _ in cols] + [memory, "same"] + [h for h, _, _ in ratios]
    lines += ["| " + " | ".join(headers) + " |", "|---|---|" + "---:|" * (len(headers) - 2)]
    for r in runs:
        cells = [_fmt(r[k], d) for _, k, d in cols] + [_mib(r["peak_memory_bytes"]), _fmt(r["same_as_baseline"])]
        cells += [_fmt(r.get(k), d) for _, k, d in ratios]
        lines.append(f"| {r['label']} | {r['sampler']} | " + " | ".join(cells) + " |")
    ref = st["reference"]
    lines += ["", f"same: share of prompts whose answer ids equal those of run {ref!r} (greedy runs only); "
              f"latencies per call of {st['batch_size']} prompt(s); tok/s: median over repeats"
              + ("; ratios against " + repr(st["baseline"]) if st["baseline"] is not None else "")]
    return "\n".join(lines) + "\n"
