"""Per-sample diagnostics of generated token sequences: length, repetition, diversity, degeneration.

All functions take the *answer* ids: the generated tokens up to (not including) the first stop
token (EOS / end of turn), as :func:`dlm.sampling.batching.answer_ids` returns them.

* ``adjacent_repetition``: share of tokens equal to the token before them ("the the the").
* ``distinct_n``: distinct n-grams / n-grams in the sample (1.0 for a sample with no n-grams).
* ``degenerate``: empty text, or at least 4 tokens of which more than half repeat the token before
  or more than half are one and the same token.
* ``premature_stop``: the model ended its answer (a stop token inside the generated region) before
  a quarter of the reference length (in tokens of the same tokenizer).
* ``acceptance_rate`` (``dlm eval --introspection``): the introspective acceptance rate of the
  sample (:func:`dlm.acceptance_rate`, written by the runner); per budget its mean over the samples
  that have one.
"""

from __future__ import annotations

from collections import Counter

DEGENERATE_MIN_TOKENS = 4


def adjacent_repetition(ids: list[int]) -> float:
    if len(ids) < 2:
        return 0.0
    return sum(a == b for a, b in zip(ids, ids[1:])) / (len(ids) - 1)


def distinct_n(ids: list[int], n: int) -> float:
    grams = [tuple(ids[i: i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def degenerate(ids: list[int], text: str) -> bool:
    if not text.strip():
        return True
    if len(ids) < DEGENERATE_MIN_TOKENS:
        return False
    top = Counter(ids).most_common(1)[0][1]
    return adjacent_repetition(ids) > 0.5 or top > len(ids) / 2


def premature_stop(answer_length: int, stopped: bool, reference_length: int) -> bool:
    return stopped and answer_length < reference_length / 4


def sample_diagnostics(answer: list[int], text: str, stopped: bool, reference_length: int | None) -> dict:
    """The per-sample diagnostic fields written to the samples JSONL."""
    out = {
        "answer_tokens": len(answer),
        "words": len(text.split()),
        "stopped": stopped,
        "empty": not text.strip(),
        "degenerate": degenerate(answer, text),
        "adjacent_repetition": adjacent_repetition(answer),
        "distinct_1": distinct_n(answer, 1),
        "distinct_2": distinct_n(answer, 2),
    }
    if reference_length is not None:
        out["reference_tokens"] = reference_length
        out["premature_stop"] = premature_stop(len(answer), stopped, reference_length)
    return out


def aggregate_diagnostics(samples: list[dict]) -> dict:
    """Means over samples (shares for the boolean fields)."""
    n = len(samples)
    if n == 0:
        return {}
    keys = ["answer_tokens", "words", "adjacent_repetition", "distinct_1", "distinct_2"]
    out = {f"mean_{k}" if k in ("answer_tokens", "words") else k: sum(s[k] for s in samples) / n for k in keys}
    for k in ("empty", "degenerate", "stopped", "premature_stop"):
        if all(k in s for s in samples):
            out[f"share_{k}"] = sum(bool(s[k]) for s in samples) / n
    for k in ("revisions", "revisions_right", "revisions_wrong", "share_revised"):  # revision samplers
        if all(k in s for s in samples):
            out[f"mean_{k}" if k != "share_revised" else k] = sum(s[k] for s in samples) / n
    if all("acceptance_rate" in s for s in samples):
        rates = [s["acceptance_rate"] for s in samples if s["acceptance_rate"] is not None]
        out["acceptance_rate"] = sum(rates) / len(rates) if rates else None
    return out
