"""``KEY=VALUE`` options on the command line, shared by ``dlm generate``, ``eval`` and ``trace``.

``-o KEY=VALUE`` sets any sampler option (values are read as JSON where they are JSON, else as
text). A key given twice, a key that repeats a dedicated flag (``--steps 4 -o steps=8``) and the
arguments of :func:`dlm.generate` that are not sampler options (``-o seed=3``: use ``--seed``) are
refused, each naming what to do instead.
"""

from __future__ import annotations

import json
from typing import Any

from dlm.errors import DLMError


def parse_option(text: str, flag: str = "-o") -> tuple[str, Any]:
    """``"steps=8"`` -> ``("steps", 8)``; dashes in the key become underscores."""
    if "=" not in text:
        raise DLMError(f"{flag} expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict; a key given twice is refused."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, value = parse_option(item, flag)
        if key in out:
            raise DLMError(f"{flag} {key} is given twice; give it once")
        out[key] = value
    return out


def sampler_option_values(items: list[str] | None, command: str, flags: dict[str, str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` sampler options. ``flags`` maps the arguments of ``dlm.generate`` that a command
    has a flag for (``seed`` -> ``--seed``) to that flag; its other arguments are set by the command."""
    import inspect

    from dlm.sampling import generate

    call_args = {p.name for p in inspect.signature(generate).parameters.values() if p.kind != p.VAR_KEYWORD}
    options = key_values(items, "-o")
    for key in options:
        if key in flags:
            raise DLMError(f"-o {key}=... is not a sampler option; use {flags[key]}")
        if key in call_args:
            raise DLMError(f"-o {key}=... is not a sampler option (dlm {command} sets {key} itself); leave it out")
    return options


def with_flag_options(options: dict[str, Any], flag_values: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus the sampler options given by their own flags (``{"steps": 8}`` from ``--steps
    8``; None and False mean not given); an option given both ways is refused."""
    merged = dict(options)
    for key, value in flag_values.items():
        if value is None or value is False:
            continue
        if key in merged:
            raise DLMError(f"-o {key} repeats --{key.replace('_', '-')}; give it once")
        merged[key] = value
    return merged
