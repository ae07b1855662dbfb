"""Model-free baselines for generation tasks, scored by the same runner as the models.

``lead-N`` answers with the first N words of the source text (summarisation tasks): the classic
"lead" baseline of news summarisation. A model that cannot beat the first six words of the
document has not learnt to summarise. The model given to ``dlm eval`` still decides which
examples are evaluated (its tokenizer applies the task's ``max_prompt_tokens``) and counts the
answer tokens, so a baseline row is directly comparable to that model's rows.
"""

from __future__ import annotations

import re

from dlm.errors import DLMError

_LEAD = re.compile(r"lead-([1-9][0-9]*)")


def parse_baseline(name: str) -> int:
    """The number of words of a ``lead-N`` baseline (N >= 1); anything else is refused."""
    m = _LEAD.fullmatch(name.strip())
    if m is None:
        raise DLMError(f"unknown baseline {name!r}: the baseline is lead-N (the first N words of the source, "
                       "N >= 1), e.g. lead-6")
    return int(m.group(1))


def lead(source: str, words: int) -> str:
    """The first ``words`` words of ``source`` (whitespace-separated, joined by single spaces)."""
    return " ".join(source.split()[:words])
