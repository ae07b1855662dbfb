"""``dlm report --common``: compare runs on the examples they all scored.

Runs of one task may cover different examples: a cheap model over 500 pairs, an expensive one over
the first 100 of the same seeded selection (``--limit`` grown later), or a model whose tokenizer
passes over a few more long prompts. Their means are then over different sets. This re-aggregates
every run's samples (``NAME.samples.jsonl`` beside each summary) over the example ids that every
run scored at every one of its budgets, with the same metrics ``dlm eval`` computes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlm.errors import DLMError


def read_samples(summary: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(summary["_path"]).with_name(summary.get("samples_file") or "")
    if not summary.get("samples_file") or not path.is_file():
        raise DLMError(f"{summary['_path']}: its samples file {path.name or '(none recorded)'} is missing; "
                       "--common re-scores runs from their samples")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DLMError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def restrict_to_common(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Copies of ``runs`` (summaries of one task) whose ``results`` are re-aggregated over the
    examples every run scored at each of its budgets; and how many examples that is."""
    from dlm.eval.runner import aggregate
    from dlm.eval.tasks import get_task

    task = get_task(runs[0]["settings"]["task"])
    per_run: list[dict[Any, dict[Any, dict[str, Any]]]] = []  # run -> budget -> id -> sample
    for run in runs:
        budgets = {row["budget"] for row in run["results"]}
        by_budget: dict[Any, dict[Any, dict[str, Any]]] = {b: {} for b in budgets}
        for s in read_samples(run):
            if s.get("budget") in by_budget:
                by_budget[s["budget"]][s["id"]] = s
        per_run.append(by_budget)
    id_sets = [set(ids) for by_budget in per_run for ids in by_budget.values()]
    common = set.intersection(*id_sets) if id_sets else set()
    if not common:
        raise DLMError(f"task {runs[0]['settings']['task']}: no example was scored by every run; "
                       "--common needs runs over overlapping examples")
    out = []
    for run, by_budget in zip(runs, per_run):
        results = []
        for row in run["results"]:
            samples = [by_budget[row["budget"]][i] for i in sorted(common, key=str)]
            new = {"budget": row["budget"], **aggregate(task, samples)}
            if "sampler_options" in row:
                new["sampler_options"] = row["sampler_options"]
            results.append(new)
        out.append({**run, "results": results})
    return out, len(common)
