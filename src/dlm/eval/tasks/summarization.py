"""Summarisation: the four benchmarks of DSL-LLaDA (XSum, CNN/DailyMail, PubMed, arXiv) and the
shipped Debian package descriptions, scored with ROUGE-1/2/L.

Protocol of DSL-LLaDA's ``eval_summarization.py``: the user message is ``instruction + "\\n\\n" +
source`` with the source cut to its first 1,500 words, wrapped in the chat template; 128 generated
tokens for XSum, 256 for the others; LLaDA low-confidence remasking at T = 0 with steps = NFE in
one block (preset ``default``) or with EOS logits at -inf and 32-token blocks (preset
``eos_block``, the paper's "LLaDA+EOS+Block" baseline). Records may also carry a ready ``prompt``
and a ``reference`` (the layout of DSL-LLaDA's ``eval_data/*.json``); the prompt is then used as is.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dlm.eval.datafiles import pick_field
from dlm.eval.rouge import ROUGE_TYPES, rouge_per_sample
from dlm.eval.tasks.base import Example, Task


class SummarizationTask(Task):
    kind = "generate"
    primary_metric = "rouge1"
    source_fields: ClassVar[tuple[str, ...]] = ("document", "article", "text")
    reference_fields: ClassVar[tuple[str, ...]] = ("summary", "highlights", "abstract", "reference")
    instruction: ClassVar[str]
    gen_length: ClassVar[int] = 256
    options = {"split": "test", "max_source_words": 1500, "max_prompt_tokens": 0}

    @classmethod
    def _presets(cls) -> dict[str, dict[str, Any]]:
        g = cls.gen_length
        return {"default": {"gen_length": g, "block_length": g},
                "eos_block": {"gen_length": g, "block_length": 32, "logits_eos_inf": True}}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "gen_length" in cls.__dict__ or "presets" not in cls.__dict__:
            cls.presets = cls._presets()

    def load(self) -> list[Example]:
        files, records = self.records()
        if not records:
            return []
        src = str(files[0])
        if "prompt" in records[0] and not any(f in records[0] for f in self.source_fields):
            ref = pick_field(records[0], self.reference_fields, "reference", src)
            return [Example(str(i), r["prompt"], r[ref]) for i, r in enumerate(records)]
        source = pick_field(records[0], self.source_fields, "source text", src)
        ref = pick_field(records[0], self.reference_fields, "reference summary", src)
        return [Example(str(r.get("id", i)) if "id" in r else str(i), self.prompt(r[source]), r[ref],
                        fields={"source": r[source]})
                for i, r in enumerate(records)]

    def prompt(self, source: str) -> str:
        words = self.opts["max_source_words"]
        if words and len(source.split()) > words:
            source = " ".join(source.split()[:words])
        return f"{self.instruction}\n\n{source}"

    def data_settings(self) -> dict[str, Any]:
        return {**super().data_settings(), "instruction": self.instruction}

    def score(self, prediction: str, example: Example) -> dict[str, Any]:
        return rouge_per_sample([prediction], [example.reference])[0]

    def metric_names(self) -> tuple[str, ...]:
        return ROUGE_TYPES


class XSum(SummarizationTask):
    name = "xsum"
    description = "XSum (EdinburghNLP/xsum layout: document, summary), one-sentence summaries"
    instruction = "Summarize the following text in one sentence:"
    gen_length = 128


class CNNDailyMail(SummarizationTask):
    name = "cnn_dailymail"
    description = "CNN/DailyMail 3.0.0 (abisee/cnn_dailymail layout: article, highlights)"
    instruction = "Summarize the following news article in 2-3 sentences:"
    gen_length = 256


class PubMed(SummarizationTask):
    name = "pubmed"
    description = "PubMed (ccdv/pubmed-summarization layout: article, abstract)"
    instruction = "Summarize the following scientific paper in a concise abstract:"
    gen_length = 256


class ArXiv(SummarizationTask):
    name = "arxiv"
    description = "arXiv (ccdv/arxiv-summarization layout: article, abstract)"
    instruction = "Summarize the following research paper in a concise abstract:"
    gen_length = 256


class Debian(SummarizationTask):
    """The shipped test split: package description -> one-line synopsis, with the prompt the
    instruct models were fine-tuned on; prompts over 224 tokens (skipped in fine-tuning too) are
    passed over and counted."""

    name = "debian"
    description = "Debian package descriptions -> synopsis (the shipped test split, data/debian)"
    source_fields = ("description",)
    reference_fields = ("synopsis",)
    gen_length = 32
    default_data = "debian"
    options = {"split": "test", "max_source_words": 0, "max_prompt_tokens": 224}

    @property
    def instruction(self) -> str:  # type: ignore[override]
        from dlm.train.data import SUMMARY_INSTRUCTION

        return SUMMARY_INSTRUCTION
