"""The evaluation tasks, by name (``dlm eval --task NAME``)."""

from __future__ import annotations

from dlm.errors import DLMError
from dlm.eval.tasks.arith import Arith
from dlm.eval.tasks.base import Example, Task
from dlm.eval.tasks.gsm8k import GSM8K
from dlm.eval.tasks.perplexity import Perplexity
from dlm.eval.tasks.repair import Repair
from dlm.eval.tasks.summarization import ArXiv, CNNDailyMail, Debian, PubMed, XSum

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Debian, XSum, CNNDailyMail, PubMed, ArXiv, GSM8K,
                                                          Perplexity, Repair, Arith)}


def get_task(name: str, data=None, **options) -> Task:
    if name not in TASKS:
        raise DLMError(f"unknown task {name!r} (available: {', '.join(TASKS)})")
    return TASKS[name](data, **options)


__all__ = ["TASKS", "Example", "Task", "get_task"]
