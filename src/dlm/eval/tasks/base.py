"""What a task is: examples, prompts, references and how each sample is scored.

Two kinds of task share one runner (:mod:`dlm.eval.runner`):

* a **generation task** (summarisation, math) turns each example into a prompt; the runner decodes
  it with a sampler at each NFE budget and the task scores the decoded text (``score``);
* a **scoring task** (perplexity, corruption repair) runs the model itself on a batch of examples
  at a budget (``score_batch``) - the budget is a number of forward passes per example.

Adding a task is one small module: subclass, fill in the class attributes and one or two methods,
and add the class to ``TASKS`` in :mod:`dlm.eval.tasks`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dlm.errors import DLMError
from dlm.eval.datafiles import fingerprint, read_records, split_files


@dataclass
class Example:
    id: str  # stable across runs (row index in the data file): resuming matches samples by it
    prompt: str = ""  # the user message (generation tasks; wrapped in the chat template when there is one)
    reference: str = ""  # what the output is scored against
    fields: dict[str, Any] = field(default_factory=dict)  # anything else the task needs


class Task:
    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[str] = "generate"  # "generate" | "score"
    primary_metric: ClassVar[str]  # what `dlm report` plots
    higher_is_better: ClassVar[bool] = True
    default_budgets: ClassVar[tuple[int, ...]] = (8, 16, 32, 64)
    # named sampler-option presets ("default" first); user options override the chosen preset
    presets: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}
    # task options a user may set with --task-option KEY=VALUE, with their defaults
    options: ClassVar[dict[str, Any]] = {}
    default_data: ClassVar[str | None] = None  # the shipped data set used without --data (dlm.paths.SHIPPED_DATA)
    accepts_txt: ClassVar[bool] = False  # whether --data may be a plain .txt file
    generated_data: ClassVar[str | None] = None  # where a task that makes its own examples gets them (no --data)

    def __init__(self, data: str | Path | None = None, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise DLMError(f"task {self.name!r} has no option {unknown[0]!r} (options: {known})")
        self.opts = {**self.options, **options}
        for key, value in self.opts.items():
            default = self.options[key]
            if default is not None and not isinstance(value, type(default)) and not (
                    isinstance(default, float) and isinstance(value, int)):
                raise DLMError(f"task {self.name!r}: option {key!r} must be {type(default).__name__}, got {value!r}")
        if data is None:
            data = self._default_data_path()
        self.data = Path(data)

    def _default_data_path(self) -> Path:
        """The shipped copy (the same one ``dlm train`` reads, whatever the current directory)."""
        if self.default_data is not None:
            from dlm.paths import shipped_data

            return shipped_data(self.default_data)
        raise DLMError(f"task {self.name!r} needs --data (a local file or directory in the Hugging Face "
                       f"dataset layout; nothing is downloaded)")

    # -- data -------------------------------------------------------------------------------
    def load(self) -> list[Example]:
        """All examples of the evaluation split, in file order."""
        raise NotImplementedError

    def load_for(self, model) -> list[Example]:
        """The examples for ``model`` (tasks that tokenise their data themselves override this)."""
        return self.load()

    def budgets_for(self, model) -> tuple[int, ...]:
        """The NFE budgets evaluated when the user gives none."""
        return self.default_budgets

    def check_budget(self, model, nfe: int) -> None:
        """Reject a budget a scoring task cannot run (generation budgets are checked by the sampler)."""

    def files(self) -> list[Path]:
        """The data files of the task's split (a ``.txt`` file as it is, where the task reads text)."""
        if self.accepts_txt and self.data.is_file() and self.data.suffix == ".txt":
            return [self.data]
        return split_files(self.data, self.opts.get("split", "test"))

    def records(self) -> tuple[list[Path], list[dict[str, Any]]]:
        """The split's files and their records."""
        files = self.files()
        return files, read_records(files)

    def data_settings(self) -> dict[str, Any]:
        """What identifies the data (path, files, fingerprint), recorded with every result."""
        files = self.files()
        combined, per_file = fingerprint(files)
        return {"data": str(self.data), "files": [str(f) for f in files], "data_sha256": combined,
                "files_sha256": per_file}

    def select(self, examples: list[Example], limit: int | None, seed: int, fits=None) -> tuple[list[Example], int]:
        """A seeded shuffle of ``examples``, then the first ``limit`` that ``fits`` (all when None).

        Growing ``limit`` keeps the earlier selection as a prefix, so a run resumes with more examples.
        Returns the selection and how many examples were passed over because they did not fit.
        """
        order = list(examples)
        random.Random(seed).shuffle(order)
        chosen, skipped = [], 0
        for ex in order:
            if limit is not None and len(chosen) >= limit:
                break
            if fits is None or fits(ex):
                chosen.append(ex)
            else:
                skipped += 1
        return chosen, skipped

    # -- scoring ----------------------------------------------------------------------------
    def score(self, prediction: str, example: Example) -> dict[str, Any]:
        """Per-sample metrics of a generation task."""
        raise NotImplementedError

    def score_batch(self, model, examples: list[Example], nfe: int, seed: int) -> list[dict[str, Any]]:
        """Per-sample records of a scoring task at ``nfe`` forward passes per example."""
        raise NotImplementedError

    def aggregate(self, samples: list[dict[str, Any]]) -> dict[str, float]:
        """Corpus metrics: by default the mean of every metric in ``metric_names``."""
        n = max(1, len(samples))
        return {k: sum(float(s[k]) for s in samples) / n for k in self.metric_names()}

    def metric_names(self) -> tuple[str, ...]:
        return (self.primary_metric,)

    def settings(self) -> dict[str, Any]:
        return {"task": self.name, **self.data_settings(), "task_options": dict(self.opts)}
