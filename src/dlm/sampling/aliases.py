"""Hugging Face ``generate()`` option names, translated to dlm's or refused with a message.

One table for ``dlm.generate``, ``dlm generate -o`` and ``dlm eval -o``: ``max_new_tokens`` is
``gen_length``, ``do_sample=False`` is ``temperature=0``; names dlm has no equivalent for are
refused with what to use instead. A name a sampler defines as its own option is left alone.
"""

from __future__ import annotations

from typing import Any

from dlm.errors import DLMError

RENAMED: dict[str, str] = {"max_new_tokens": "gen_length"}

REFUSED: dict[str, str] = {
    "num_beams": "dlm samplers do not do beam search",
    "top_p": "this sampler has no nucleus (top-p) sampling (isd and dream have); use temperature",
    "top_k": "this sampler has no top-k sampling (isd and dream have); use temperature",
    "max_length": "use gen_length (the number of tokens to generate, not counting the prompt)",
    "min_new_tokens": "not supported; use gen_length (diffusion samplers fill all gen_length positions)",
    "num_return_sequences": "not supported; repeat the prompt in the batch (with per-row seeds: seed=[...])",
    "repetition_penalty": "not supported by dlm samplers",
}


def resolve_aliases(options: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """``options`` with Hugging Face names translated; ``own``: the sampler's option names (never translated)."""
    options = dict(options)
    for hf_name, name in RENAMED.items():
        if hf_name in options and hf_name not in own:
            if name in options:
                raise DLMError(f"{hf_name} is another name for {name}; give one of them, not both")
            options[name] = options.pop(hf_name)
    for hf_name, why in REFUSED.items():
        if hf_name in options and hf_name not in own:
            raise DLMError(f"option {hf_name!r} (a Hugging Face generate() name): {why}")
    if "do_sample" in options and "do_sample" not in own:
        do_sample = options.pop("do_sample")
        temperature = options.get("temperature")
        if not isinstance(do_sample, bool):
            raise DLMError(f"do_sample must be true or false, got {do_sample!r}")
        if do_sample and not (isinstance(temperature, (int, float)) and temperature > 0):
            raise DLMError("do_sample=true needs a temperature > 0 (dlm samples when temperature > 0; "
                           "the default 0 is greedy)")
        if not do_sample:
            if temperature not in (None, 0):
                raise DLMError(f"do_sample=false means temperature 0, but temperature={temperature!r} was given")
            options["temperature"] = 0.0
    return options
