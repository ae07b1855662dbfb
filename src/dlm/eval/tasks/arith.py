"""Multi-step arithmetic word problems generated in-repo (:mod:`dlm.data.arith`), scored as GSM8K:
exact match of the number after ``####`` (strict) or of the last number (flexible).

No data file: the split is generated from its fixed seed, so every run and machine scores the same
500 test problems, which ``dlm train --task arith`` never trains on.
"""

from __future__ import annotations

from typing import Any

from dlm.data.arith import GENERATOR_VERSION, INSTRUCTION, SPLIT_SIZES, arith_split
from dlm.errors import DLMError
from dlm.eval.tasks.base import Example
from dlm.eval.tasks.gsm8k import GSM8K, reference_answer


class Arith(GSM8K):
    name = "arith"
    description = "multi-step arithmetic word problems generated offline (answer after '####'), exact match"
    primary_metric = "exact_match_strict"
    presets = {"default": {"gen_length": 64, "block_length": 64}}
    default_budgets = (16, 32, 64)
    options = {"split": "test", "instruction": INSTRUCTION}
    generated_data = "generated (dlm.data.arith)"

    def __init__(self, data=None, **options: Any):
        if data is not None:
            raise DLMError("task 'arith' generates its problems (dlm.data.arith); it takes no --data")
        super().__init__("<generated>", **options)
        if self.opts["split"] not in SPLIT_SIZES:
            raise DLMError(f"task 'arith': split must be one of {', '.join(SPLIT_SIZES)}, got {self.opts['split']!r}")

    def load(self) -> list[Example]:
        instruction = self.opts["instruction"]
        return [Example(str(i), f"{instruction}\n\n{r['question']}" if instruction else r["question"],
                        reference_answer(r["answer"]), {"length_reference": r["answer"], "solution": r["answer"]})
                for i, r in enumerate(arith_split(self.opts["split"]))]

    def data_settings(self) -> dict[str, Any]:
        return {"data": self.generated_data, "generator_version": GENERATOR_VERSION,
                "split_size": SPLIT_SIZES[self.opts["split"]]}
