"""Held-out perplexity of a text file: the masked-diffusion ELBO bound (diffusion models) or the
exact next-token NLL (causal LMs).

The text (a ``.txt`` file, or JSON/JSONL/Parquet records with a ``text`` field - or the one named by
the ``field`` option - one document each)
is tokenised, documents are joined with EOS and cut into blocks of ``seq_len - 1`` tokens, each
preceded by BOS as its condition (the layout of ``dlm train``'s pretraining blocks). The tail that
does not fill a block is left out and its size recorded. The budget is the number of masked copies
per block of LLaDA's stratified Monte Carlo estimator, i.e. forward passes per block; a causal LM
needs exactly one.
"""

from __future__ import annotations

from typing import Any

import torch

from dlm.errors import DLMError
from dlm.eval.datafiles import pick_field
from dlm.eval.perplexity import causal_nll_per_block, diffusion_nll_of_block
from dlm.eval.tasks.base import Example, Task


class Perplexity(Task):
    name = "perplexity"
    description = "ELBO perplexity bound (diffusion) or exact perplexity (causal) of a text file"
    kind = "score"
    primary_metric = "perplexity"
    higher_is_better = False
    accepts_txt = True
    default_budgets = (8, 32)
    options = {"seq_len": 256, "split": "test", "field": ""}  # field: the record field holding the text

    def _texts(self) -> list[str]:
        files = self.files()
        if files[0].suffix == ".txt":
            return [files[0].read_text(encoding="utf-8")]
        files, records = self.records()
        names = (self.opts["field"],) if self.opts["field"] else ("text", "content", "document")
        field = pick_field(records[0], names, "text", str(files[0])) if records else "text"
        return [r[field] for r in records]

    def load_for(self, model) -> list[Example]:
        from dlm.train.data import pack_documents

        if model.tokenizer is None:
            raise DLMError("the perplexity task needs a model with a tokenizer")
        seq_len = self.opts["seq_len"]
        if seq_len < 2:
            raise DLMError(f"task perplexity: seq_len must be >= 2, got {seq_len}")
        bos = model.facts.bos_id if model.facts.bos_id is not None else model.facts.stop_ids[0]
        blocks, stats = pack_documents(model.tokenizer, self._texts(), seq_len - 1)
        if len(blocks) == 0:
            raise DLMError(f"{self.data}: only {stats['tokens']} tokens, fewer than one block of {seq_len - 1}")
        self.pack_stats = stats
        return [Example(str(i), fields={"ids": [bos] + b.tolist()}) for i, b in enumerate(blocks)]

    def data_settings(self) -> dict[str, Any]:
        out = super().data_settings()
        if hasattr(self, "pack_stats"):
            out["packing"] = self.pack_stats
        return out

    def check_budget(self, model, nfe: int) -> None:
        if model.facts.causal and nfe != 1:
            raise DLMError(f"{model.path or 'this model'} is a causal LM: its perplexity is exact with one forward "
                           f"pass per block; use --nfe 1 (got {nfe})")
        if not model.facts.causal and nfe < 1:
            raise DLMError(f"--nfe is the number of Monte Carlo copies per block and must be >= 1, got {nfe}")

    def budgets_for(self, model) -> tuple[int, ...]:
        return (1,) if model.facts.causal else self.default_budgets

    def score_batch(self, model, examples: list[Example], nfe: int, seed: int) -> list[dict[str, Any]]:
        blocks = torch.tensor([ex.fields["ids"] for ex in examples], dtype=torch.long)  # (N, seq_len)
        if model.facts.causal:
            nll = causal_nll_per_block(model, blocks)
        else:  # one generator per block: a resumed run draws the same masks
            nll = [diffusion_nll_of_block(model, blocks[i], nfe, torch.Generator().manual_seed(seed * 1_000_003 + int(ex.id)))
                   for i, ex in enumerate(examples)]
        return [{"nll_per_token": v, "tokens": blocks.shape[1] - 1} for v in nll]

    def aggregate(self, samples: list[dict[str, Any]]) -> dict[str, float]:
        import math

        nll = sum(s["nll_per_token"] for s in samples) / max(1, len(samples))
        return {"nll_per_token": nll, "perplexity": math.exp(nll), "bits_per_token": nll / math.log(2)}

    def metric_names(self) -> tuple[str, ...]:
        return ("nll_per_token", "perplexity", "bits_per_token")
