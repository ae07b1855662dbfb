"""The prompts every run of ``dlm bench`` decodes: given texts, the Debian test split as ``dlm eval
--task debian`` builds its prompts, or seeded random token ids (models without a tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dlm.errors import DLMError

DEFAULT_NUM_PROMPTS = 8
RANDOM_RECIPE = ("ids = allowed[torch.randint(len(allowed), (N, LEN), generator=torch.Generator().manual_seed(seed))], "
                 "allowed = [0, V) without the special ids (mask, EOS, EoT, BOS, pad, the tokenizer's special tokens)")


@dataclass
class Prompts:
    ids: list[list[int]]
    texts: list[str | None]
    source: dict[str, Any] = field(default_factory=dict)  # what the JSON records about where they came from


def special_ids(model) -> list[int]:
    """The ids random prompts leave out: the model's mask, EOS, EoT, BOS and pad ids and every special
    token of its tokenizer."""
    facts = model.facts
    ids = {facts.mask_id, facts.eot_id, facts.bos_id, facts.pad_id, *facts.eos_ids}
    tok = model.tokenizer
    if tok is not None:
        ids |= set(getattr(tok, "all_special_ids", None) or [])
    return sorted(i for i in ids if i is not None and 0 <= i < facts.vocab_size)


def random_prompts(model, count: int, length: int, seed: int) -> Prompts:
    """``count`` prompts of ``length`` ids drawn uniformly from the vocabulary without its special ids."""
    V = model.facts.vocab_size
    specials = special_ids(model)
    keep = torch.ones(V, dtype=torch.bool)
    if specials:
        keep[torch.tensor(specials)] = False
    allowed = keep.nonzero()[:, 0]
    if len(allowed) == 0:
        raise DLMError(f"--random-prompts: the vocabulary of {V} ids has only special ids")
    g = torch.Generator().manual_seed(seed)
    ids = allowed[torch.randint(len(allowed), (count, length), generator=g)]
    return Prompts(ids.tolist(), [None] * count,
                   {"kind": "random", "count": count, "length": length, "seed": seed, "vocab_size": V,
                    "excluded_ids": specials, "recipe": RANDOM_RECIPE})


def debian_prompts(model, count: int, chat: bool | None) -> Prompts:
    """The first ``count`` prompts of the Debian test split in file order, built as ``dlm eval --task
    debian`` builds them (the task's instruction + description, the model's chat template), passing
    over prompts longer than the task's max_prompt_tokens as the evaluation does."""
    from dlm.eval.tasks import get_task

    if model.tokenizer is None:
        raise DLMError(f"{model.path or 'this model'} has no tokenizer, so the Debian prompts cannot be encoded; "
                       "use --random-prompts LEN")
    task = get_task("debian")
    max_prompt = task.opts.get("max_prompt_tokens") or 0
    ids, texts, skipped = [], [], 0
    for ex in task.load_for(model):
        if len(ids) == count:
            break
        encoded = model.encode_prompt(ex.prompt, chat=chat)
        if max_prompt and len(encoded) > max_prompt:
            skipped += 1
            continue
        ids.append(encoded)
        texts.append(ex.prompt)
    if not ids:
        raise DLMError(f"no Debian test prompt fits max_prompt_tokens={max_prompt} in {task.data}")
    files = task.files()
    return Prompts(ids, texts, {"kind": "debian", "count": len(ids), "data": str(task.data), "split": "test",
                                "files": [str(f) for f in files], "order": "file order (the first N)",
                                "max_prompt_tokens": max_prompt, "skipped_too_long": skipped,
                                "chat": "auto" if chat is None else chat})


def text_prompts(model, entries: list[tuple[object, str]], chat: bool | None, source: dict[str, Any]) -> Prompts:
    ids = [model.encode_prompt(text, chat=chat) for _, text in entries]
    return Prompts(ids, [text for _, text in entries],
                   {**source, "count": len(ids), "chat": "auto" if chat is None else chat})


def batches(n: int, batch_size: int) -> list[list[int]]:
    """Prompt indices split into consecutive batches of ``batch_size`` (the last may be smaller)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
