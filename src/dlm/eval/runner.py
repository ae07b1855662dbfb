"""``dlm eval``: run one task at several NFE budgets, write every sample and a summary, resume.

For a run named ``NAME`` (default ``{model}__{task}__{sampler}``, plus ``-{preset}``) the output
directory gets

    NAME.samples.jsonl   one JSON line per (budget, example), appended batch by batch
    NAME.summary.json    settings, seed, versions, hardware and the metrics per budget

A run that is stopped goes on where it stopped: samples already in the JSONL are not redone, as
long as the settings match (otherwise the run is refused: use another --out or --name, or
--overwrite). Budgets may be added, and ``--limit`` grown, between runs: the example selection
(a seeded shuffle) keeps earlier examples as its prefix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dlm.errors import DLMError
from dlm.eval.diagnostics import aggregate_diagnostics, sample_diagnostics
from dlm.eval.tasks.base import Example, Task

# settings that may change between a run and its resumption
RESUMABLE_CHANGES = ("budgets", "limit", "batch_size")


@dataclass
class EvalConfig:
    task: Task
    model_ref: str  # what the user passed (shipped name or directory), recorded
    out_dir: Path
    sampler: str | None = None  # None: the model's default sampler (generation tasks)
    budgets: list[int] | None = None  # None: the task's defaults (or one run for budget-less samplers)
    preset: str = "default"
    options: dict[str, Any] = field(default_factory=dict)  # sampler options over the preset
    limit: int | None = None
    seed: int = 0
    batch_size: int = 8
    name: str | None = None
    progress: bool = False
    overwrite: bool = False


def hardware(model) -> dict[str, Any]:
    from dlm.provenance import cpu_model

    out: dict[str, Any] = {"device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
                           "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}
    if model.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(model.device)
    return out


def _sampler_plan(model, cfg: EvalConfig) -> tuple[str | None, dict[str, Any], list[int | None]]:
    """(sampler name, options before the budget, budgets)."""
    from dlm.sampling import default_sampler, model_generation_defaults, prepare_sampler, sampler_class

    task = cfg.task
    if task.kind == "score":
        if cfg.sampler is not None:
            raise DLMError(f"task {task.name!r} scores with the model's own forward passes; --sampler does not apply")
        if cfg.options or cfg.preset != "default":
            raise DLMError(f"task {task.name!r} takes no sampler options or presets")
        budgets = list(cfg.budgets or task.budgets_for(model))
        for nfe in budgets:
            task.check_budget(model, nfe)
        return None, {}, budgets
    name = cfg.sampler or default_sampler(model)
    cls = sampler_class(name)
    if cfg.preset not in task.presets:
        raise DLMError(f"task {task.name!r} has no preset {cfg.preset!r} (presets: {', '.join(task.presets)})")
    preset = dict(task.presets[cfg.preset])
    if cfg.preset == "default":  # the default preset applies where the sampler has the option
        names = {f.name for f in dataclasses.fields(cls.Options)}
        preset = {k: v for k, v in preset.items() if k in names}
    options = {**model_generation_defaults(model, cls), **preset, **cfg.options}
    if not cls.has_step_budget():
        if cfg.budgets:
            cls.options_for_nfe(cfg.budgets[0], options)  # raises the sampler's message
        prepare_sampler(model, name, options)
        return name, options, [None]
    budgets = list(cfg.budgets or task.budgets_for(model))
    for nfe in budgets:  # every budget is checked before anything runs or is written
        if nfe < 1:
            raise DLMError(f"NFE budgets must be >= 1, got {nfe}")
        budget_options = cls.options_for_nfe(nfe, options)
        clash = sorted(set(budget_options) & set(cfg.options))
        if clash:
            raise DLMError(f"--nfe sets {clash[0]}; leave out -o {clash[0]}=...")
        prepare_sampler(model, name, {**options, **budget_options})
    return name, options, budgets


def _read_samples(path: Path) -> list[dict[str, Any]]:
    """Samples already written; a last line cut off by a killed run is dropped from the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        path.write_bytes(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _check_resume(summary_path: Path, settings: dict[str, Any]) -> None:
    if not summary_path.exists():
        return
    old = json.loads(summary_path.read_text()).get("settings", {})
    diff = sorted(k for k in set(old) | set(settings) if k not in RESUMABLE_CHANGES and old.get(k) != settings.get(k))
    if diff:
        k = diff[0]
        raise DLMError(f"{summary_path} was written with other settings ({k}: {old.get(k)!r} there, {settings.get(k)!r} "
                       f"now); use another --out or --name, or --overwrite to start again")


def run_eval(model, cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate ``model`` on ``cfg.task``; returns the summary (also written to disk)."""
    from dlm.provenance import software_versions

    task = cfg.task
    if cfg.batch_size < 1:
        raise DLMError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.limit is not None and cfg.limit < 1:
        raise DLMError(f"--limit must be >= 1, got {cfg.limit}")
    sampler, options, budgets = _sampler_plan(model, cfg)
    examples = task.load_for(model)
    prompts: dict[str, list[int]] = {}
    fits = None
    if task.kind == "generate":
        max_prompt = task.opts.get("max_prompt_tokens") or 0

        def fits(ex: Example) -> bool:
            prompts[ex.id] = model.encode_prompt(ex.prompt)
            return not max_prompt or len(prompts[ex.id]) <= max_prompt
    selected, skipped = task.select(examples, cfg.limit, cfg.seed, fits)
    if not selected:
        raise DLMError(f"task {task.name!r}: no examples to evaluate in {task.data}")
    if skipped:
        print(f"dlm eval: passed over {skipped} examples whose prompt exceeds max_prompt_tokens="
              f"{task.opts.get('max_prompt_tokens')} (recorded in the summary)", file=sys.stderr)

    model_tag = Path(cfg.model_ref).name if cfg.model_ref else "default"
    name = cfg.name or f"{model_tag}__{task.name}__{sampler or 'model'}" + (
        f"-{cfg.preset}" if cfg.preset != "default" else "")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    samples_path = cfg.out_dir / f"{name}.samples.jsonl"
    summary_path = cfg.out_dir / f"{name}.summary.json"
    settings = {**task.settings(), "model": cfg.model_ref or "default", "model_path": str(model.path),
                "sampler": sampler, "preset": cfg.preset if task.kind == "generate" else None, "options": options,
                "seed": cfg.seed, "budgets": budgets, "limit": cfg.limit, "batch_size": cfg.batch_size}
    if cfg.overwrite:
        samples_path.unlink(missing_ok=True)
        summary_path.unlink(missing_ok=True)
    _check_resume(summary_path, settings)
    done = _read_samples(samples_path)
    done_keys = {(s["budget"], s["id"]) for s in done}
    summary: dict[str, Any] = {
        "name": name, "settings": settings, "versions": software_versions(), "hardware": hardware(model),
        "selection": {"examples": len(selected), "available": len(examples), "skipped_too_long": skipped},
        "primary_metric": task.primary_metric, "higher_is_better": task.higher_is_better,
        "samples_file": samples_path.name, "results": [],
    }
    _write_json(summary_path, {**summary, "status": "running"})
    by_budget: dict[Any, list[dict[str, Any]]] = {}
    for s in done:
        by_budget.setdefault(s["budget"], []).append(s)
    with open(samples_path, "a", encoding="utf-8") as out:
        for budget in budgets:
            todo = [ex for ex in selected if (budget, ex.id) not in done_keys]
            bar = None
            if cfg.progress and todo:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(todo), desc=f"{task.name} nfe={budget if budget is not None else '-'}",
                           unit="ex", file=sys.stderr)
            if task.kind == "generate":
                todo.sort(key=lambda ex: len(prompts[ex.id]))  # similar lengths share a batch
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start: start + cfg.batch_size]
                if task.kind == "generate":
                    records = _generate_batch(model, task, batch, prompts, sampler, options, budget, cfg.seed)
                else:
                    t0 = time.perf_counter()
                    records = task.score_batch(model, batch, budget, cfg.seed)
                    seconds = time.perf_counter() - t0
                    records = [{"nfe": budget, "seconds": seconds / len(batch), **r} for r in records]
                for ex, rec in zip(batch, records):
                    line = {"task": task.name, "budget": budget, "id": ex.id, **rec}
                    out.write(json.dumps(line) + "\n")
                    by_budget.setdefault(budget, []).append(line)
                out.flush()
                if bar is not None:
                    bar.update(len(batch))
            if bar is not None:
                bar.close()
            summary["results"] = _results(task, by_budget, selected)
            _write_json(summary_path, {**summary, "status": "running"})
    summary["results"] = _results(task, by_budget, selected)
    summary["status"] = "complete"
    _write_json(summary_path, summary)
    return summary


def _generate_batch(model, task: Task, batch: list[Example], prompts: dict[str, list[int]], sampler: str,
                    options: dict[str, Any], budget: int | None, seed: int) -> list[dict[str, Any]]:
    from dlm.sampling import sampler_class
    from dlm.sampling.batching import generate_answers

    run_options = dict(options)
    if budget is not None:
        run_options.update(sampler_class(sampler).options_for_nfe(budget, options))
    out, answers = generate_answers(model, [prompts[ex.id] for ex in batch], sampler=sampler, seed=seed, **run_options)
    G = out.generated.shape[1]
    records = []
    for ex, answer in zip(batch, answers):
        text = model.decode(answer).strip()
        length_ref = ex.fields.get("length_reference", ex.reference)
        ref_tokens = len(model.tokenizer(length_ref, add_special_tokens=False)["input_ids"]) if length_ref else None
        records.append({
            "prompt": ex.prompt, "reference": ex.reference, "output": text, "nfe": out.nfe,
            "seconds": out.seconds / len(batch), "gen_length": G,
            **task.score(text, ex), **sample_diagnostics(answer, text, len(answer) < G, ref_tokens),
        })
    return records


def _results(task: Task, by_budget: dict[Any, list[dict[str, Any]]], selected: list[Example]) -> list[dict[str, Any]]:
    """Metrics per budget over the selected examples - budgets of earlier runs included."""
    ids = {ex.id for ex in selected}
    out = []
    for budget in sorted(by_budget, key=lambda b: (b is None, b or 0)):
        rows = [s for s in by_budget[budget] if s["id"] in ids]
        if rows:
            out.append({"budget": budget, **aggregate(task, rows)})
    return out


def aggregate(task: Task, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of one budget: the task's, the diagnostics and the speed."""
    n = len(rows)
    seconds = sum(r["seconds"] for r in rows)
    out: dict[str, Any] = {"examples": n, **task.aggregate(rows)}
    out["mean_nfe"] = sum(r["nfe"] for r in rows) / max(1, n)
    out["seconds"] = seconds
    out["seconds_per_example"] = seconds / max(1, n)
    if task.kind == "generate":
        out.update(aggregate_diagnostics(rows))
        tokens = sum(r["answer_tokens"] for r in rows)
        out["tokens_per_second"] = tokens / seconds if seconds > 0 else None
        out["tokens_per_pass"] = tokens / max(1, sum(r["nfe"] for r in rows))
    return out
