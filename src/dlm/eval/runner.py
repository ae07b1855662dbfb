"""``dlm eval``: run one task at several NFE budgets, write every sample and a summary, resume.

For a run named ``NAME`` (default ``{model}__{task}__{sampler}``, plus ``-{preset}``; the model
is named by what was loaded - a shipped model's name, else its directory's name) the output
directory gets

    NAME.samples.jsonl   one JSON line per (budget, example), appended batch by batch
    NAME.summary.json    settings, seed, versions, hardware and the metrics per budget

A run that is stopped goes on where it stopped: samples already in the JSONL are not redone, as
long as the settings match (otherwise the run is refused: use another --out or --name, or
--overwrite). Budgets may be added, and ``--limit`` grown, between runs: the example selection
(a shuffle seeded with ``sample_seed``) keeps earlier examples as its prefix. Each example samples
with its own seed derived from ``seed`` and its id, so its output does not depend on the batch it
ran in. The summary's ``status`` is ``running``, ``complete``, or ``interrupted`` (Ctrl-C or an
error, with a ``resume`` hint); a run killed outright stays ``running`` and the next run says so.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dlm.errors import DLMError, first_line
from dlm.eval.diagnostics import aggregate_diagnostics
from dlm.eval.plan import SamplerPlan, budget_options, sampler_plan
from dlm.eval.samples import INTROSPECTION, SEED_SCHEME, check_introspection, generate_batch
from dlm.eval.tasks.base import Example, Task

# settings that may change between a run and its resumption
RESUMABLE_CHANGES = ("budgets", "limit", "batch_size", "model_requested")
RESUME_HINT = "rerun the same dlm eval command to continue (samples already written are kept)"
@dataclass
class EvalConfig:
    task: Task
    out_dir: Path
    model_arg: str | None = None  # what the user typed for --model (None: nothing), recorded as typed
    sampler: str | None = None  # None: the model's default sampler (generation tasks)
    budgets: list[int] | None = None  # None: the task's defaults (or one run for budget-less samplers)
    preset: str = "default"
    options: dict[str, Any] = field(default_factory=dict)  # sampler options over the preset
    limit: int | None = None
    seed: int = 0  # sampler noise (each example's own seed derives from it, see example_seed)
    sample_seed: int = 0  # the shuffle that selects the examples
    batch_size: int = 8
    name: str | None = None
    baseline: str | None = None  # "lead-N": score a model-free baseline instead of generating (dlm.eval.baselines)
    introspection: bool = False  # add each sample's introspective acceptance rate (dlm.acceptance_rate)
    progress: bool = False
    overwrite: bool = False


def hardware(model) -> dict[str, Any]:
    from dlm.provenance import cpu_model

    out: dict[str, Any] = {"device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
                           "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}
    if model.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(model.device)
    return out


def model_identity(model) -> dict[str, Any]:
    """The loaded model's name, path and whether it is shipped: the shipped name, ``ORG/NAME`` for a
    snapshot in the Hugging Face cache (``.../models--ORG--NAME/snapshots/REV``), a packaged base's
    registry name (``smollm2-135m-instruct``, not its cache folder), else its directory's
    name; ``"model"`` for a model held only in memory.

    ``--model tiny-a2d-instruct`` and no ``--model`` load the same files, so they get the same name.
    """
    from dlm.models.default import pretrained_dir

    if model.path is None:
        return {"model": "model", "model_path": None, "model_shipped": False}
    path = Path(model.path).resolve()
    shipped = path.parent == pretrained_dir().resolve()
    name = path.name
    base = (getattr(model, "config", None) or {}).get("dlm_base")
    if isinstance(base, dict) and _is_base_entry(path, base.get("name")):  # a packaged base, converted into the cache
        name = base["name"]
    elif path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        name = path.parent.parent.name.removeprefix("models--").replace("--", "/", 1)
    return {"model": name, "model_path": str(path), "model_shipped": shipped}


def _is_base_entry(path: Path, name) -> bool:
    """Whether ``path`` is the cached conversion of the packaged base ``name`` itself (an adapter or a
    model fine-tuned from it also records the base in its config, but has a name of its own)."""
    from dlm.models.bases import BASES

    return isinstance(name, str) and name in BASES and path.name == BASES[name].entry


def select_examples(task: Task, model, examples: list[Example], limit: int | None,
                    sample_seed: int) -> tuple[list[Example], int, dict[str, list[int]]]:
    """The examples ``dlm eval`` evaluates: ``task.select``'s seeded shuffle, passing over (and
    counting) generation prompts longer than the task's ``max_prompt_tokens`` in ``model``'s
    tokenizer. Returns (selected, skipped, {id: encoded prompt} for generation tasks)."""
    prompts: dict[str, list[int]] = {}
    max_prompt = task.opts.get("max_prompt_tokens") or 0

    def fits(ex: Example) -> bool:
        prompts[ex.id] = model.encode_prompt(ex.prompt)
        return not max_prompt or len(prompts[ex.id]) <= max_prompt
    selected, skipped = task.select(examples, limit, sample_seed, fits if task.kind == "generate" else None)
    return selected, skipped, prompts


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


def _check_resume(summary_path: Path, settings: dict[str, Any]) -> str | None:
    """Refuse to resume a run written with other settings; returns the earlier run's status (None: no run)."""
    if not summary_path.exists():
        return None
    try:
        old_summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        raise DLMError(f"{summary_path} is not JSON; use another --out or --name, or --overwrite") from None
    old = old_summary.get("settings", {})
    diff = sorted(k for k in set(old) | set(settings) if k not in RESUMABLE_CHANGES and old.get(k) != settings.get(k))
    if diff:
        k = diff[0]
        raise DLMError(f"{summary_path} was written with other settings ({k}: {old.get(k)!r} there, {settings.get(k)!r} "
                       f"now); use another --out or --name, or --overwrite to start again")
    return old_summary.get("status")


def run_eval(model, cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate ``model`` on ``cfg.task``; returns the summary (also written to disk)."""
    from dlm.outputs import check_output_dir
    from dlm.provenance import software_versions

    task = cfg.task
    if cfg.batch_size < 1:
        raise DLMError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.limit is not None and cfg.limit < 1:
        raise DLMError(f"--limit must be >= 1, got {cfg.limit}")
    check_output_dir(cfg.out_dir)
    if cfg.introspection:
        check_introspection(task, cfg.baseline)
    plan = sampler_plan(model, cfg)
    examples = task.load_for(model)
    if plan.lead_words is not None and examples and "source" not in examples[0].fields:
        raise DLMError(f"--baseline {cfg.baseline}: the {task.name!r} data at {task.data} gives ready prompts "
                       "without a source text to take the lead words from")
    selected, skipped, prompts = select_examples(task, model, examples, cfg.limit, cfg.sample_seed)
    if not selected:
        raise DLMError(f"task {task.name!r}: no examples to evaluate in {task.data}")
    if skipped:
        print(f"dlm eval: passed over {skipped} examples whose prompt exceeds max_prompt_tokens="
              f"{task.opts.get('max_prompt_tokens')} (recorded in the summary)", file=sys.stderr)

    identity = model_identity(model)
    name = cfg.name or f"{identity['model'].replace('/', '--')}__{task.name}__{plan.sampler or 'model'}" + (
        f"-{cfg.preset}" if cfg.preset != "default" else "")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    samples_path = cfg.out_dir / f"{name}.samples.jsonl"
    summary_path = cfg.out_dir / f"{name}.summary.json"
    settings = {**task.settings(), **identity, "model_requested": cfg.model_arg,
                "sampler": plan.sampler, "preset": cfg.preset if task.kind == "generate" else None,
                "options": plan.options, "resolved_options": plan.resolved, "seed": cfg.seed,
                "sampler_seeds": SEED_SCHEME if task.kind == "generate" else None, "sample_seed": cfg.sample_seed,
                "budgets": plan.budgets, "limit": cfg.limit, "batch_size": cfg.batch_size,
                # only when on, so that summaries written before the option existed still resume
                **({"introspection": INTROSPECTION} if cfg.introspection else {})}
    if cfg.overwrite:
        samples_path.unlink(missing_ok=True)
        summary_path.unlink(missing_ok=True)
    previous = _check_resume(summary_path, settings)
    done = _read_samples(samples_path)
    if previous == "running":
        print(f"dlm eval: the previous run of {name} did not finish (its summary still says 'running': it was "
              f"killed, or another dlm eval is writing it now); resuming it with the {len(done)} samples it wrote",
              file=sys.stderr)
    elif previous == "interrupted":
        print(f"dlm eval: resuming the interrupted run {name} ({len(done)} samples done)", file=sys.stderr)
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
    done_keys = {(s["budget"], s["id"]) for s in done}
    try:
        with open(samples_path, "a", encoding="utf-8") as out:
            for budget in plan.budgets:
                todo = [ex for ex in selected if (budget, ex.id) not in done_keys]
                _run_budget(model, cfg, plan, budget, todo, prompts, out, by_budget)
                summary["results"] = _results(task, by_budget, selected, plan)
                _write_json(summary_path, {**summary, "status": "running"})
    except BaseException as e:  # Ctrl-C or a failure: the summary says so, and how to go on
        summary["results"] = _results(task, by_budget, selected, plan)
        reason = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else first_line(e)
        _write_json(summary_path, {**summary, "status": "interrupted", "stopped_by": reason, "resume": RESUME_HINT})
        written = sum(len(v) for v in by_budget.values())
        print(f"dlm eval: stopped with {written} samples in {samples_path}; {RESUME_HINT}", file=sys.stderr)
        raise
    summary["results"] = _results(task, by_budget, selected, plan)
    summary["status"] = "complete"
    _write_json(summary_path, summary)
    return summary


def _run_budget(model, cfg: EvalConfig, plan: SamplerPlan, budget: int | None, todo: list[Example],
                prompts: dict[str, list[int]], out, by_budget: dict[Any, list[dict[str, Any]]]) -> None:
    """Evaluate ``todo`` at one budget, batch by batch, appending every sample to ``out`` as it is done."""
    task = cfg.task
    bar = None
    if cfg.progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"{task.name} nfe={budget if budget is not None else '-'}",
                   unit="ex", file=sys.stderr)
    if task.kind == "generate":
        todo = sorted(todo, key=lambda ex: len(prompts[ex.id]))  # similar lengths share a batch
    try:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start: start + cfg.batch_size]
            if task.kind == "generate":
                records = generate_batch(model, task, batch, prompts, plan, budget, cfg.seed,
                                          introspection=cfg.introspection)
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
    finally:
        if bar is not None:
            bar.close()


def _results(task: Task, by_budget: dict[Any, list[dict[str, Any]]], selected: list[Example],
             plan: SamplerPlan) -> list[dict[str, Any]]:
    """Metrics per budget over the selected examples - budgets of earlier runs included - with the
    sampler options that depend on the budget (``steps``)."""
    ids = {ex.id for ex in selected}
    out = []
    for budget in sorted(by_budget, key=lambda b: (b is None, b or 0)):
        rows = [s for s in by_budget[budget] if s["id"] in ids]
        if rows:
            row: dict[str, Any] = {"budget": budget}
            if plan.sampler is not None:
                row["sampler_options"] = plan.by_budget.get(budget) or budget_options(plan, budget)
            out.append({**row, **aggregate(task, rows)})
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
        # per row: the passes it took part in (ar / isd stop rows early); samples written before dlm
        # recorded them fall back to the batch's NFE
        passes = sum(r.get("forwards", r["nfe"]) for r in rows)
        out["tokens_per_pass"] = tokens / passes if passes else None  # None: a baseline, nothing generated
    return out
