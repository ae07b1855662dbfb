"""One batch of ``dlm eval`` samples: each example's seed, its generated (or baseline) answer,
the task's scores, the diagnostics and, with ``--introspection``, the acceptance rate."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from dlm.errors import DLMError
from dlm.eval.diagnostics import sample_diagnostics
from dlm.eval.plan import SamplerPlan
from dlm.eval.tasks.base import Example, Task

SEED_SCHEME = "per example: int.from_bytes(sha256(f'{seed}:{id}')[:8]) % 2**31"
# the definition --introspection scores (settings["introspection"]), see dlm.diffusion.introspection
INTROSPECTION = ("acceptance_rate: mean over answer tokens (through the first stop token) of min(1, p/q); q recorded "
                 "by the sampler, p re-scored causally (causal LMs: one causal pass; diffusion models: positions >= k "
                 "masked), both softmax(l/T), T = 0 read at 1")


def example_seed(seed: int, example_id: str) -> int:
    """The sampler seed of one example: a stable hash of (``--seed``, example id), below 2**31.

    Each example draws its own noise, so its sample does not depend on its batch (``--batch-size``,
    resuming) - only on ``--seed`` and its id.
    """
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def check_introspection(task: Task, baseline: str | None) -> None:
    """--introspection re-scores a sampler's answers: refused for scoring tasks and baselines."""
    if baseline is not None:
        raise DLMError(f"--introspection re-scores a sampler's answers; --baseline {baseline} generates nothing")
    if task.kind != "generate":
        raise DLMError(f"--introspection applies to generation tasks; {task.name!r} scores the model itself")


def generate_batch(model, task: Task, batch: list[Example], prompts: dict[str, list[int]], plan: SamplerPlan,
                    budget: int | None, seed: int, introspection: bool = False) -> list[dict[str, Any]]:
    from dlm.sampling import sampler_class
    from dlm.sampling.batching import generate_answers, left_pad

    if plan.lead_words is not None:
        return baseline_batch(model, task, batch, plan.lead_words)
    run_options = dict(plan.options)
    if budget is not None:
        run_options.update(sampler_class(plan.sampler).options_for_nfe(budget, plan.options))
    seeds = [example_seed(seed, ex.id) for ex in batch]  # one generator per row: batch-independent samples
    revises = getattr(sampler_class(plan.sampler), "revises", False)
    out, answers = generate_answers(model, [prompts[ex.id] for ex in batch], sampler=plan.sampler, seed=seeds,
                                    output_token_probs=introspection, output_history=revises, **run_options)
    G = out.generated.shape[1]
    extra: list[dict[str, Any]] = [{} for _ in batch]
    if revises:  # what the sampler changed after showing it, and whether that matched the reference
        extra = revision_records(model, task, batch, out)
    if introspection:
        from dlm.diffusion.introspection import acceptance_rate

        t0 = time.perf_counter()
        alpha = acceptance_rate(model, out, attention_mask=left_pad(model, [prompts[ex.id] for ex in batch])[1])
        seconds = (time.perf_counter() - t0) / len(batch)
        extra = [{**e, "acceptance_rate": rate, "introspection_seconds": seconds} for e, rate in zip(extra, alpha.rates)]
    records = []
    # passes each row needed (ar, isd: a row that stopped leaves or idles; diffusion samplers: every row takes all)
    row_forwards = out.stats.get("forwards") or [out.nfe] * len(batch)
    for ex, answer, ex_seed, more, forwards in zip(batch, answers, seeds, extra, row_forwards):
        text = model.decode(answer).strip()
        length_ref = ex.fields.get("length_reference", ex.reference)
        ref_tokens = len(model.tokenizer(length_ref, add_special_tokens=False)["input_ids"]) if length_ref else None
        records.append({
            "prompt": ex.prompt, "reference": ex.reference, "output": text, "seed": ex_seed, "nfe": out.nfe,
            "forwards": forwards, "seconds": out.seconds / len(batch), "gen_length": G,
            **task.score(text, ex), **sample_diagnostics(answer, text, len(answer) < G, ref_tokens), **more,
        })
    return records


def revision_records(model, task: Task, batch: list[Example], out) -> list[dict[str, Any]]:
    """Per row: visible tokens revised (directly or through the mask), the share of the answer
    canvas they make up, and how many revisions were right (a token other than the reference's
    changed into it) or wrong (the reference's token changed away), against the reference answer
    tokenised and EOS-filled to the canvas (the layout the SFT models are trained on)."""
    from dlm.sampling.revision import revision_events, score_revisions

    events = revision_events(out.history, out.prompt_length, model.facts.resolve_mask_id())
    G = out.generated.shape[1]
    eos = model.facts.eos_ids[0] if model.facts.eos_ids else None
    records = []
    for row, ex in enumerate(batch):
        ref_text = ex.fields.get("solution", ex.reference)
        ref = model.tokenizer(ref_text, add_special_tokens=False)["input_ids"][:G]
        if eos is not None:
            ref = ref + [eos] * (G - len(ref))
        mine = [e for e in events if e.row == row]
        scored = score_revisions(mine, {row: ref})
        records.append({"revisions": scored["revisions"], "revisions_right": scored["right"],
                        "revisions_wrong": scored["wrong"],
                        "share_revised": len({e.position for e in mine}) / G if G else 0.0})
    return records


def baseline_batch(model, task: Task, batch: list[Example], words: int) -> list[dict[str, Any]]:
    """Samples of the lead-N baseline: the first N words of each source, scored like a model's answer."""
    from dlm.eval.baselines import lead

    records = []
    for ex in batch:
        t0 = time.perf_counter()
        text = lead(ex.fields["source"], words)
        seconds = time.perf_counter() - t0
        answer = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        length_ref = ex.fields.get("length_reference", ex.reference)
        ref_tokens = len(model.tokenizer(length_ref, add_special_tokens=False)["input_ids"]) if length_ref else None
        records.append({"prompt": ex.prompt, "reference": ex.reference, "output": text, "seed": None, "nfe": 0,
                        "seconds": seconds, "gen_length": None,
                        **task.score(text, ex), **sample_diagnostics(answer, text, False, ref_tokens)})
    return records
