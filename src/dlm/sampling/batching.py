"""Prompt batching and answer extraction shared by the CLI, the evaluations and the benchmarks."""

from __future__ import annotations

import torch

from dlm.errors import DLMError


def left_pad(model, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-pad token id lists into (input_ids (B, P), attention_mask (B, P) or None when unpadded).

    The pad id is the model's pad token, or its first EOS when the pad token is the mask token.
    An empty prompt in a padded batch becomes a row of padding only (see :func:`dlm.generate`).
    """
    if not prompts:
        raise DLMError("no prompts to generate for (an empty batch)")
    facts = model.facts
    pad = facts.pad_id if facts.pad_id is not None and facts.pad_id != facts.mask_id else (facts.eos_ids or (0,))[0]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
    return ids, (mask if bool((mask == 0).any()) else None)


def answer_ids(model, ids: list[int]) -> list[int]:
    """Generated ids up to (not including) the first EOS / end-of-turn token."""
    stops = set(model.facts.stop_ids)
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i]
    return ids


def generate_answers(model, prompts: list[list[int]], **generate_kwargs):
    """Left-pad ``prompts``, decode them in one batch and cut each row at its first stop token.

    Returns ``(output, answers)``: the :class:`GenerationOutput` (``return_dict=True``) and, per
    row, the generated ids before the first EOS / end-of-turn. ``generate_kwargs`` go to
    :func:`dlm.generate` (sampler, seed, options, ...).
    """
    import dlm

    input_ids, attention_mask = left_pad(model, prompts)
    out = dlm.generate(model, input_ids, attention_mask, return_dict=True, **generate_kwargs)
    return out, [answer_ids(model, row) for row in out.generated.tolist()]
