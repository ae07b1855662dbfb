"""The timing protocol of ``dlm bench``: one cold call per run, then ``repeats`` timed passes over
every prompt batch, the runs interleaved round-robin within each repeat (A, B, A, B, ...) so that
drift in the machine's load hits every run alike. Every call is recorded."""

from __future__ import annotations

import itertools
import resource
import sys
import time
from typing import Any

import torch

from dlm.bench.specs import RunSpec


def peak_memory(model) -> tuple[str, int]:
    """(what, bytes): CUDA's max_memory_allocated since the last reset on a GPU; on the CPU the
    process's peak resident set size (getrusage: process-wide, since the process started)."""
    if model.device.type == "cuda":
        return "cuda_max_memory_allocated", int(torch.cuda.max_memory_allocated(model.device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return "process_peak_rss", int(rss if sys.platform == "darwin" else rss * 1024)  # Linux: KiB


def _sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def call(model, spec: RunSpec, prompts: list[list[int]], indices: list[int], seed: int) -> dict[str, Any]:
    """One timed ``dlm.generate`` call on the prompts ``indices`` (left-padded as one batch)."""
    from dlm.sampling.batching import generate_answers

    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    _sync(model)
    start = time.perf_counter()
    out, answers = generate_answers(model, [prompts[i] for i in indices], sampler=spec.sampler, seed=seed,
                                    **spec.options)
    _sync(model)
    wall = time.perf_counter() - start
    memory_kind, memory = peak_memory(model)
    forwards = out.stats.get("forwards")
    return {
        "prompts": indices, "wall_seconds": wall, "generate_seconds": out.seconds, "nfe": out.nfe,
        "forwards": list(forwards) if isinstance(forwards, (list, tuple)) else None,
        "completion_tokens": [len(a) for a in answers], "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "stats": {k: v for k, v in out.stats.items() if k != "forwards"},
        "_answers": answers, "_options": out.options,
    }


def run_protocol(model, specs: list[RunSpec], prompts: list[list[int]], batches: list[list[int]], repeats: int,
                 seed: int, progress: bool) -> dict[str, dict[str, Any]]:
    """Per run label: its cold call, its timed calls (repeat, batch) and its answers per prompt (from
    the first timed repeat) with whether every repeat gave the same."""
    results: dict[str, dict[str, Any]] = {s.label: {"calls": [], "answers": None, "deterministic": True}
                                          for s in specs}

    order = itertools.count()  # every call's place in the whole sequence (cold calls first)

    def say(text: str) -> None:
        if progress:
            print(f"dlm bench: {text}", file=sys.stderr, flush=True)

    for spec in specs:  # cold: the first call of each run (first batch), reported on its own
        rec = call(model, spec, prompts, batches[0], seed)
        results[spec.label]["options"] = rec.pop("_options")
        rec.pop("_answers")
        results[spec.label]["cold"] = {"phase": "cold", "order": next(order), "batch": 0, **rec}
        say(f"cold  {spec.label}: {rec['wall_seconds']:.3f} s, NFE {rec['nfe']}")
    for r in range(repeats):
        for spec in specs:
            res = results[spec.label]
            answers: dict[int, list[int]] = {}
            seconds = tokens = 0
            for b, indices in enumerate(batches):
                rec = call(model, spec, prompts, indices, seed)
                rec.pop("_options")
                answers.update(zip(indices, rec.pop("_answers")))
                res["calls"].append({"phase": "timed", "order": next(order), "repeat": r, "batch": b, **rec})
                seconds += rec["wall_seconds"]
                tokens += sum(rec["completion_tokens"])
            ordered = [answers[i] for i in range(len(prompts))]
            if res["answers"] is None:
                res["answers"] = ordered
            elif ordered != res["answers"]:
                res["deterministic"] = False
            say(f"repeat {r + 1}/{repeats}  {spec.label}: {len(batches)} calls, {seconds:.3f} s, "
                f"{tokens / seconds if seconds > 0 else float('nan'):.1f} completion tokens/s")
    return results
