"""How ``dlm eval`` runs a task's samples: the sampler, its options per NFE budget (validated before
anything runs), or a model-free baseline (``--baseline lead-N``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dlm.errors import DLMError

if TYPE_CHECKING:
    from dlm.eval.runner import EvalConfig


@dataclass
class SamplerPlan:
    sampler: str | None  # None for scoring tasks
    options: dict[str, Any]  # model defaults + preset + user options, before the budget
    budgets: list[int | None]
    resolved: dict[str, Any]  # every validated option that is the same at every budget
    by_budget: dict[Any, dict[str, Any]]  # per budget, the validated options that depend on it (e.g. steps)
    lead_words: int | None = None  # a lead-N baseline answers with the first N source words; nothing is generated


def sampler_plan(model, cfg: EvalConfig) -> SamplerPlan:
    """The sampler, its options and budgets; every budget is validated before anything runs or is written."""
    from dlm.sampling import default_sampler, model_generation_defaults, prepare_sampler, sampler_class
    from dlm.sampling.aliases import resolve_aliases

    task = cfg.task
    if cfg.baseline is not None:
        return baseline_plan(cfg)
    if task.kind == "score":
        if cfg.sampler is not None:
            raise DLMError(f"task {task.name!r} scores with the model's own forward passes; --sampler does not apply")
        if cfg.options or cfg.preset != "default":
            raise DLMError(f"task {task.name!r} takes no sampler options or presets")
        budgets = list(cfg.budgets or task.budgets_for(model))
        for nfe in budgets:
            task.check_budget(model, nfe)
        return SamplerPlan(None, {}, budgets, {}, {})
    name = cfg.sampler or default_sampler(model)
    cls = sampler_class(name)
    if cfg.preset not in task.presets:
        raise DLMError(f"task {task.name!r} has no preset {cfg.preset!r} (presets: {', '.join(task.presets)})")
    preset = dict(task.presets[cfg.preset])
    own = {f.name for f in dataclasses.fields(cls.Options)}
    if cfg.preset == "default":  # the default preset applies where the sampler has the option
        preset = {k: v for k, v in preset.items() if k in own}
    user_options = resolve_aliases(cfg.options, own)  # -o max_new_tokens=N overrides the checkpoint's gen_length
    options = {**model_generation_defaults(model, cls), **preset, **user_options}
    if not cls.has_step_budget(options):
        if cfg.budgets:
            cls.options_for_nfe(cfg.budgets[0], options)  # raises the sampler's message
        budgets: list[int | None] = [None]
        budget_keys: set[str] = set()
        resolved = {None: dataclasses.asdict(prepare_sampler(model, name, options).opts)}
    else:
        budgets = list(cfg.budgets or task.budgets_for(model))
        budget_keys, resolved = set(), {}
        for nfe in budgets:
            if nfe < 1:
                raise DLMError(f"NFE budgets must be >= 1, got {nfe}")
            budget_options = cls.options_for_nfe(nfe, options)
            clash = sorted(set(budget_options) & set(user_options))
            if clash:
                raise DLMError(f"--nfe sets {clash[0]}; leave out -o {clash[0]}=...")
            budget_keys |= set(budget_options)
            resolved[nfe] = dataclasses.asdict(prepare_sampler(model, name, {**options, **budget_options}).opts)
    first = resolved[budgets[0]]
    common = {k: v for k, v in first.items()
              if k not in budget_keys and all(r[k] == v for r in resolved.values())}
    by_budget = {b: {k: v for k, v in r.items() if k not in common} for b, r in resolved.items()}
    return SamplerPlan(name, options, budgets, common, by_budget)


def baseline_plan(cfg: EvalConfig) -> SamplerPlan:
    from dlm.eval.baselines import parse_baseline

    words = parse_baseline(cfg.baseline)
    if cfg.task.kind != "generate":
        raise DLMError(f"--baseline applies to generation tasks; {cfg.task.name!r} scores the model itself")
    given = [flag for flag, value in (("--sampler", cfg.sampler), ("--nfe", cfg.budgets), ("-o", cfg.options))
             if value] + (["--preset"] if cfg.preset != "default" else [])
    if given:
        raise DLMError(f"--baseline {cfg.baseline} generates nothing, so {', '.join(given)} do(es) not apply")
    name = f"lead-{words}"
    return SamplerPlan(name, {"baseline": name}, [None], {}, {None: {}}, lead_words=words)


def budget_options(plan: SamplerPlan, budget: int | None) -> dict[str, Any]:
    """The budget-dependent options of a budget an earlier run evaluated (not among this run's budgets)."""
    from dlm.sampling import sampler_class

    return sampler_class(plan.sampler).options_for_nfe(budget, plan.options) if budget is not None else {}
