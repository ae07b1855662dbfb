"""The benchmark's two tasks and their examples: ``summaries`` (the ``debian`` eval task's seeded
selection, chat prompts) and ``continuation`` (held-out text, plain prompts of its first tokens)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlm.errors import DLMError
from dlm.eval.runner import select_examples
from dlm.eval.tasks import get_task

from . import ROOT

TECHDOCS = ROOT / "benchmarks" / "data" / "techdocs"
TASKS = ("summaries", "continuation")


@dataclass
class Bench:
    """One task: the selected examples, their prompts (per model) and references."""

    name: str
    description: str
    gen_length: int
    ids: list[str]
    references: list[str]
    prompts: dict[int, list[list[int]]] = field(default_factory=dict)  # id(model) -> prompt ids per example
    selection: dict[str, Any] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)  # the prompt as text, for the samples file

    def prompts_for(self, model) -> list[list[int]]:
        return self.prompts[id(model)]


def summaries_bench(model, others: list, data: str | None, limit: int, sample_seed: int,
                    gen_length: int | None = None) -> Bench:
    """The ``debian`` eval task's selection (``Task.select`` with its max_prompt_tokens filter)."""
    task = get_task("debian", data)
    gen_length = gen_length or task.gen_length
    max_prompt = task.opts.get("max_prompt_tokens") or 0
    examples = task.load_for(model)
    selected, skipped, encoded = select_examples(task, model, examples, limit, sample_seed)
    bench = Bench("summaries", f"Debian test pairs (the debian eval task, prompts <= {max_prompt} tokens), "
                  f"chat prompt, {gen_length} new tokens, ROUGE against the synopsis",
                  gen_length, [ex.id for ex in selected], [ex.reference for ex in selected],
                  texts=[ex.prompt for ex in selected])
    bench.prompts[id(model)] = [encoded[ex.id] for ex in selected]
    for other in others:  # a diffusion model with the same tokenizer, possibly another chat template
        bench.prompts[id(other)] = [other.encode_prompt(ex.prompt) for ex in selected]
    bench.selection = {"data": str(task.data), "split": task.opts["split"], "sample_seed": sample_seed,
                       "examples": len(selected), "available": len(examples), "skipped_too_long": skipped,
                       "max_prompt_tokens": max_prompt}
    return bench


def special_prefix(tokenizer, text: str) -> list[int]:
    """The special tokens the tokenizer puts before ``text`` itself (e.g. BOS), or []."""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text, add_special_tokens=True)["input_ids"]
    for j in range(len(full) - len(plain) + 1):
        if full[j:j + len(plain)] == plain:
            return list(full[:j])
    return []


def continuation_bench(model, others: list, data: str | None, limit: int, sample_seed: int, prompt_tokens: int,
                       gen_length: int) -> Bench:
    """Held-out text: the same seeded selection over the split's descriptions that have at least
    prompt_tokens + gen_length tokens; prompt = the first prompt_tokens, reference = the next gen_length."""
    task = get_task("debian", data)
    examples = task.load_for(model)
    if examples and "source" not in examples[0].fields:
        raise DLMError(f"{task.data}: the continuation task needs records with a 'description' text")
    tok = model.tokenizer
    split: dict[str, tuple[list[int], list[int]]] = {}

    def fits(ex) -> bool:
        ids = tok(ex.fields["source"], add_special_tokens=False)["input_ids"]
        if len(ids) < prompt_tokens + gen_length:
            return False
        split[ex.id] = ids[:prompt_tokens], ids[prompt_tokens:prompt_tokens + gen_length]
        return True

    selected, skipped = task.select(examples, limit, sample_seed, fits)
    prefix = special_prefix(tok, "text") if selected else []
    prompts = [prefix + split[ex.id][0] for ex in selected]
    bench = Bench("continuation", f"held-out text ({task.data.name} {task.opts['split']} descriptions with >= "
                  f"{prompt_tokens + gen_length} tokens): the first {prompt_tokens} tokens as a plain prompt, "
                  f"{gen_length} new tokens, ROUGE against the next {gen_length} tokens",
                  gen_length, [ex.id for ex in selected],
                  [model.decode(split[ex.id][1]).strip() for ex in selected],
                  texts=[model.decode(split[ex.id][0]) for ex in selected])
    for m in [model, *others]:  # same tokenizer (checked): the same ids
        bench.prompts[id(m)] = prompts
    bench.selection = {"data": str(task.data), "split": task.opts["split"], "sample_seed": sample_seed,
                       "examples": len(selected), "available": len(examples), "skipped_too_short": skipped,
                       "prompt_tokens": prompt_tokens, "special_prefix": prefix}
    return bench
