"""``dlm check``: a self-test of a checkpoint (a released DLM once scored 0% top-1 at a fully
masked input and nobody noticed).

Every check reports ``pass`` / ``warn`` / ``fail`` (or ``info`` / ``skip``) with the measured
number and the rule it was held to. The text is :data:`SENTENCES`, each encoded as
``[BOS] + tokens + [EOS]`` (pretraining documents end with EOS; BOS, as in ``dlm eval --task
perplexity``, is the condition and is never masked or scored), left-padded into one batch.

* ``masked 15% / 50% / 100%`` (diffusion models): mask that share of each sentence's tokens and
  score the masked positions: top-1 accuracy and NLL (nats/token). One forward pass per level over
  seeded copies of the sentences in which every token is masked about twice
  (:func:`~dlm.check_scores.mask_windows`). Two yardsticks need no model:
  uniform guessing (NLL ``log V``) and a unigram model that always guesses the most frequent token
  of the sentences (the *baseline*: its share of the scored tokens, 7.7% with the shipped
  tokenizer). ``fail`` when top-1 is under a quarter of the baseline (1.9%): worse than always
  guessing any one of the six most common tokens here (``and`` 5.8%, ``for`` 3.9%, ``a`` 3.2% ...);
  random weights score ~0% and the published bug 0%. With context (15%, 50%) also ``fail`` when the
  NLL is no better than uniform, and ``warn`` when top-1 is under the baseline itself: the model is
  alive but no better than a unigram guess. The shipped tiny-mdm-instruct sits there (top-1 4-7% at
  15% over mask seeds, NLL a steady 6.4): it predicts EOS, its SFT answer filler, at many masked
  positions of plain text. At 100% only the position is left and about the baseline is the best a
  model can do; the NLL is not judged there: an SFT model has never seen an empty prompt and may
  be confidently wrong (tiny-a2d-instruct: 9.9 nats > log 8192).
* ``next token`` (causal LMs, ``dlm_objective: causal``): the with-context rules on next-token
  prediction of the unmasked sentences under causal attention; no masking rows.
* ``shift``: the 15% and 50% passes (the causal pass for a causal LM) read both ways, shifted
  (position ``i - 1`` predicts ``i``) and unshifted, on the positions both readings cover; ``warn``
  when the reading the registry does not use has an NLL lower by more than :data:`SHIFT_MARGIN`
  nats (the shipped models win their own reading by 0.8 to 4 nats; a shifted model read unshifted
  still scores fair because a masked position's raw output also hints at its own token).
* ``mask id``: set, in the vocabulary, and the tokenizer's mask token (or another special token
  when the tokenizer declares none; an ordinary token warns); ``mask predictions``: ``fail`` when
  the mask id is the top-1 prediction at most masked positions of all levels, ``warn`` above 10%.
* ``eos ids``: set (diffusion answers end at EOS; ``fail`` when missing) and in the vocabulary.
* ``chat template``: ``warn`` when absent from a model whose ``dlm_training.task`` is ``sft``.
* ``padding``: the shortest sentence alone against its left-padded row of the 15% batch; ``fail``
  when the logits of its real positions differ by more than a tolerance (relative to the largest
  logit: 1e-4 in float32, 3e-2 in 16-bit types).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.check_scores import (LEVELS, SENTENCES, SHIFT_MARGIN, Batch, CheckResult, accuracy_check, baseline,
                              encode_sentences, forward, mask_prediction_check, mask_windows, merge, padding_check,
                              readings, score, shift_check)

__all__ = ["SENTENCES", "SHIFT_MARGIN", "CheckResult", "as_json", "failed", "run_checks", "table"]

def mask_id_check(model) -> CheckResult:
    f, tok = model.facts, model.tokenizer
    mask_id = f.mask_id
    if mask_id is None:
        result = "info" if f.causal else "fail"
        return CheckResult("mask id", result, "not set", "a diffusion model needs one (config.json mask_token_id)")
    if not 0 <= mask_id < f.vocab_size:
        return CheckResult("mask id", "fail", str(mask_id), f"outside the vocabulary [0, {f.vocab_size})")
    declared = getattr(tok, "mask_token_id", None) if tok is not None else None
    token = tok.convert_ids_to_tokens(mask_id) if tok is not None and mask_id < len(tok) else None
    value = f"{mask_id}" + (f" {token!r}" if token is not None else "")
    if declared is not None:
        ok = declared == mask_id
        return CheckResult("mask id", "pass" if ok else "fail", value,
                           f"the tokenizer's mask token is {tok.mask_token!r} ({declared})")
    if token is None:
        return CheckResult("mask id", "pass", value, "outside the tokenizer's vocabulary: never produced by text")
    special = mask_id in set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    return CheckResult("mask id", "pass" if special else "warn", value,
                       "a special token of the tokenizer" if special else
                       "an ordinary token of the tokenizer: text can contain it")


def eos_check(model) -> CheckResult:
    f = model.facts
    if not f.eos_ids:
        return CheckResult("eos ids", "fail", "not set", "answers end at EOS (config.json eos_token_id)")
    bad = [i for i in f.eos_ids if not 0 <= i < f.vocab_size]
    if bad:
        return CheckResult("eos ids", "fail", str(list(f.eos_ids)), f"{bad[0]} is outside [0, {f.vocab_size})")
    tok = model.tokenizer
    names = [tok.convert_ids_to_tokens(i) for i in f.eos_ids if i < len(tok)] if tok is not None else []
    return CheckResult("eos ids", "pass", str(list(f.eos_ids)) + (f" {names}" if names else ""),
                       f"inside the vocabulary [0, {f.vocab_size})")


def chat_template_check(model) -> CheckResult:
    present = bool(getattr(model.tokenizer, "chat_template", None))
    training = model.config.get("dlm_training")
    sft = isinstance(training, dict) and training.get("task") == "sft"
    if present:
        return CheckResult("chat template", "pass", "present", "prompts can use the chat format")
    if sft:
        return CheckResult("chat template", "warn", "absent", "dlm_training.task is sft: prompts need the "
                           "template it was fine-tuned with")
    return CheckResult("chat template", "info", "absent", "a base model: prompts are plain text")


@dataclass
class Passes:
    """What the forward passes measured, for the checks that read them."""

    rows: list[CheckResult]  # the accuracy rows
    readings: list[tuple[dict, dict]]  # (registry reading, other reading) per pass with context
    batch: Batch  # the sentences of the pass the padding check reuses (B rows)
    ids: torch.Tensor  # (B, L) its input (with masks)
    logits: torch.Tensor  # (B, L, V) its aligned logits
    mask_share: float | None = None  # share of masked positions with the mask id as top-1
    masked: int = 0  # masked positions scored


def causal_passes(model, batch: Batch) -> Passes:
    """One causal pass over the clean sentences: next-token prediction."""
    logits = forward(model, batch.ids, batch.attention_mask)  # (B, L, V)
    row = accuracy_check("next token", score(logits, batch.ids, batch.scored), baseline(batch),
                         model.facts.vocab_size, full_mask=False)
    return Passes([row], [readings(logits, batch.ids, batch.scored, model.facts.shifted)], batch, batch.ids, logits)


def masked_passes(model, batch: Batch, mask_id: int, seed: int) -> Passes:
    """One pass per masking level over differently masked copies of ``batch``."""
    g = torch.Generator().manual_seed(seed)
    base, out, hits = baseline(batch), None, 0
    for level in LEVELS:
        copies, masked = mask_windows(batch, level, g)  # copies: B * c rows; masked (B * c, L)
        noisy = torch.where(masked, mask_id, copies.ids)  # (B * c, L)
        logits = forward(model, noisy, copies.attention_mask)  # (B * c, L, V)
        row = accuracy_check(f"masked {level:.0%}", score(logits, copies.ids, masked), base,
                             model.facts.vocab_size, full_mask=level == 1)
        if out is None:  # the 15% pass: the padding check reuses it
            out = Passes([], [], copies, noisy, logits)
        out.rows.append(row)
        if level < 1:
            out.readings.append(readings(logits, copies.ids, masked, model.facts.shifted))
        hits += int((logits.argmax(-1)[masked] == mask_id).sum())
        out.masked += int(masked.sum())
    out.mask_share = hits / out.masked
    return out


def run_checks(model, seed: int = 0) -> list[CheckResult]:
    """All checks of the module doc on a loaded :class:`~dlm.models.diffusion_lm.DiffusionLM`."""
    model.eval()
    f = model.facts
    usable_mask = f.mask_id is not None and 0 <= f.mask_id < f.vocab_size
    batch = encode_sentences(model)
    if f.causal:
        passes = causal_passes(model, batch)
    elif usable_mask:
        passes = masked_passes(model, batch, f.mask_id, seed)
    else:
        passes = Passes([CheckResult("masked", "skip", "-", "no usable mask id")], [], batch, batch.ids,
                        forward(model, batch.ids, batch.attention_mask))
    results = list(passes.rows)
    if passes.readings:
        results.append(shift_check(merge([r[0] for r in passes.readings]), merge([r[1] for r in passes.readings]),
                                   f.shifted))
    results.append(mask_id_check(model))
    if passes.mask_share is not None:
        results.append(mask_prediction_check(passes.mask_share, passes.masked))
    results += [eos_check(model), chat_template_check(model), padding_check(model, passes.ids, passes.batch, passes.logits)]
    return results


def failed(results: list[CheckResult]) -> bool:
    return any(r.result == "fail" for r in results)


def table(results: list[CheckResult]) -> str:
    """One row per check: check | result | value | threshold/notes."""
    rows = [("check", "result", "value", "threshold / notes")] + [(r.name, r.result, r.value, r.notes)
                                                                  for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + " | " + row[3] for row in rows)


def as_json(model, results: list[CheckResult], seed: int = 0) -> dict:
    f = model.facts
    return {"model": model.path, "model_type": f.model_type, "shifted": f.shifted, "causal": f.causal,
            "seed": seed, "passed": not failed(results),
            "checks": [{"check": r.name, "result": r.result, "value": r.value, "notes": r.notes, **r.numbers}
                       for r in results]}
