"""Math word problems in the GSM8K layout (``question``, ``answer`` ending in ``#### <number>``),
scored by exact match of the final number.

The reference number is what follows ``####`` in ``answer``. From a prediction, ``strict`` takes
the number after its own ``####`` (nothing when there is none) and ``flexible`` the last number in
the text (lm-evaluation-harness' two GSM8K filters). Numbers compare after removing ``,`` ``$`` and a
trailing ``.``, and as values (``72.0`` == ``72``).
"""

from __future__ import annotations

import re
from typing import Any

from dlm.errors import DLMError
from dlm.eval.datafiles import pick_field
from dlm.eval.tasks.base import Example, Task

NUMBER = r"-?[$0-9.,]*[0-9]"
INSTRUCTION = "Solve the problem step by step. Give the final answer after '####'."


def normalize_number(text: str | None) -> str | None:
    if text is None:
        return None
    t = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(t)
    except ValueError:
        return t or None
    return str(int(value)) if value == int(value) else repr(value)


def reference_answer(answer: str) -> str:
    if "####" not in answer:
        raise DLMError(f"GSM8K answer without '####': {answer[:80]!r}")
    return normalize_number(answer.split("####")[-1]) or ""


def extract_strict(prediction: str) -> str | None:
    m = re.search(r"####\s*(" + NUMBER + ")", prediction)
    return normalize_number(m.group(1)) if m else None


def extract_flexible(prediction: str) -> str | None:
    found = re.findall(NUMBER, prediction)
    return normalize_number(found[-1]) if found else None


class GSM8K(Task):
    name = "gsm8k"
    description = "GSM8K-layout math word problems (question, answer '... #### N'), exact match"
    kind = "generate"
    primary_metric = "exact_match_flexible"
    presets = {"default": {"gen_length": 256, "block_length": 32},
               "one_block": {"gen_length": 256, "block_length": 256}}
    default_budgets = (64, 128, 256)
    options = {"split": "test", "instruction": INSTRUCTION, "max_prompt_tokens": 0}

    def load(self) -> list[Example]:
        files, records = self.records()
        if not records:
            return []
        q = pick_field(records[0], ("question",), "question", str(files[0]))
        a = pick_field(records[0], ("answer",), "answer", str(files[0]))
        instruction = self.opts["instruction"]
        return [Example(str(i), f"{instruction}\n\n{r[q]}" if instruction else r[q], reference_answer(r[a]),
                        {"length_reference": r[a]}) for i, r in enumerate(records)]

    def score(self, prediction: str, example: Example) -> dict[str, Any]:
        strict, flexible = extract_strict(prediction), extract_flexible(prediction)
        return {"extracted_strict": strict, "extracted_flexible": flexible,
                "exact_match_strict": 100.0 * (strict == example.reference),
                "exact_match_flexible": 100.0 * (flexible == example.reference)}

    def metric_names(self) -> tuple[str, ...]:
        return ("exact_match_strict", "exact_match_flexible")
