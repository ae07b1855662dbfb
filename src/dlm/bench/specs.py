"""``--run SPEC`` and ``--set KEY=VALUE``: what each run of ``dlm bench`` decodes with, checked
before the model loads (sampler names, option names, reserved keys) and again against the model
(:func:`dlm.sampling.prepare_sampler`: types, combinations, model kind) before anything runs.

A SPEC is ``[LABEL:] SAMPLER [KEY=VALUE ...]``: whitespace-separated words (shell quoting allowed,
``"prompt='a b'"``), values read like ``dlm generate -o`` values (JSON where they are JSON, else
text). The label is the text before the first ``:`` when that text has no ``=``; without one the
label is the spec itself (its words joined by single spaces).
"""

from __future__ import annotations

import dataclasses
import inspect
import shlex
from dataclasses import dataclass, field
from typing import Any

from dlm.cli_options import key_values, parse_option
from dlm.errors import DLMError

# what to use instead of a dlm.generate() argument given as an option
RESERVED_HINTS = {"seed": "use --seed", "sampler": "the sampler is the spec's first word",
                  "progress": "use --no-progress", "return_dict": "dlm bench sets it",
                  "output_history": "dlm bench records no history", "output_token_probs": "dlm bench sets it"}


@dataclass
class RunSpec:
    label: str
    sampler: str
    own: dict[str, Any]  # the options written in the spec
    text: str  # the spec as given
    options: dict[str, Any] = field(default_factory=dict)  # --set options, then the spec's own over them
    resolved: dict[str, Any] | None = None  # every option after prepare_sampler (defaults, checkpoint defaults)


def _generate_arguments() -> set[str]:
    from dlm.sampling import generate

    return {p.name for p in inspect.signature(generate).parameters.values() if p.kind != p.VAR_KEYWORD}


def _check_reserved(options: dict[str, Any], where: str) -> None:
    reserved = _generate_arguments()
    for key in options:
        if key in reserved:
            hint = RESERVED_HINTS.get(key, "dlm bench sets it itself")
            raise DLMError(f"{where}: {key}=... is not a sampler option ({hint})")


def parse_spec(text: str) -> RunSpec:
    """``"dual09: fast cache=dual threshold=0.9"`` -> RunSpec(label="dual09", sampler="fast", ...)."""
    head, sep, rest = text.partition(":")
    if sep and "=" not in head and head.strip():
        label, body = head.strip(), rest
    else:
        label, body = None, text
    try:
        words = shlex.split(body)
    except ValueError as e:
        raise DLMError(f"--run {text!r}: {e}") from None
    if not words:
        raise DLMError(f"--run {text!r} names no sampler (SPEC is [LABEL:] SAMPLER [KEY=VALUE ...])")
    if "=" in words[0]:
        raise DLMError(f"--run {text!r} starts with an option; a spec starts with the sampler name "
                       "([LABEL:] SAMPLER [KEY=VALUE ...])")
    sampler, items = words[0], words[1:]
    label = label or " ".join(words)
    where = f"--run {label!r}"
    own: dict[str, Any] = {}
    for item in items:
        key, value = parse_option(item, where)
        if key in own:
            raise DLMError(f"{where}: {key} is given twice; give it once")
        own[key] = value
    _check_reserved(own, where)
    return RunSpec(label=label, sampler=sampler, own=own, text=text)


def parse_runs(run_texts: list[str], set_items: list[str] | None) -> tuple[list[RunSpec], dict[str, Any]]:
    """Every ``--run`` and the shared ``--set`` options, checked without the model: known samplers,
    distinct labels, no reserved keys, and every shared key accepted by every run's sampler (a shared
    key a run cannot take is refused naming the run, never dropped)."""
    from dlm.sampling import sampler_class
    from dlm.sampling.aliases import resolve_aliases

    shared = key_values(set_items, "--set")
    _check_reserved(shared, "--set")
    specs = [parse_spec(t) for t in run_texts]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.label in seen:
            raise DLMError(f"two runs are labelled {spec.label!r} ({seen[spec.label]!r} and {spec.text!r}); "
                           "name them apart with LABEL: SAMPLER ...")
        seen[spec.label] = spec.text
        try:
            cls = sampler_class(spec.sampler)
        except DLMError as e:
            raise DLMError(f"--run {spec.label!r}: {e}") from None
        names = {f.name for f in dataclasses.fields(cls.Options)}
        for key, value in shared.items():
            if key in spec.own:
                continue  # the run's own value overrides it
            try:
                translated = resolve_aliases({key: value}, names)
            except DLMError as e:
                raise DLMError(f"--set {key}: {e} (run {spec.label!r})") from None
            unknown = sorted(set(translated) - names)
            if unknown:
                raise DLMError(f"--set {key}=... does not apply to run {spec.label!r}: sampler {spec.sampler!r} has no "
                               f"option {unknown[0]!r} (options: {', '.join(sorted(names))}); give it in the runs "
                               "that take it instead")
        spec.options = {**{k: v for k, v in shared.items() if k not in spec.own}, **spec.own}
    return specs, shared


def prepare_runs(model, specs: list[RunSpec]) -> None:
    """Validate every run's options for ``model`` (:func:`dlm.sampling.prepare_sampler`) and record
    the resolved options; a problem names the run."""
    from dlm.sampling import prepare_sampler

    for spec in specs:
        try:
            smp = prepare_sampler(model, spec.sampler, spec.options)
        except DLMError as e:
            raise DLMError(f"--run {spec.label!r}: {e}") from None
        spec.resolved = dataclasses.asdict(smp.opts)


def is_greedy(resolved: dict[str, Any]) -> bool:
    """Whether a run's output follows from the prompt alone: temperature 0 (or no temperature option)
    and no random remasking order. Read from the resolved options, whatever the sampler."""
    temperature = resolved.get("temperature", 0)
    if isinstance(temperature, (int, float)) and temperature != 0:
        return False
    return resolved.get("remasking") != "random"
