"""Corruption repair: replace a share of a text's tokens with random ones and count how many the
model puts back while keeping the rest (DSL-LLaDA's test T1, ``eval_unified.py``).

For each text and rate r: ``numpy.random.RandomState(corruption_seed + id)`` picks
``max(1, floor(n r))`` positions (``choice(n, k, replace=False)``, sorted) and, position by
position, a replacement id uniform in ``[low_id, high_id)`` redrawn while it equals the original.
The model reads the corrupted tokens (no mask token) in one forward pass and predicts every
position by argmax. ``fix`` is the share of corrupted positions predicted as the original token,
``clean`` the share of the other positions predicted as themselves (both in %). A budget of ``k``
forward passes feeds the argmax back ``k - 1`` more times. A BOS is put before each text (a
shifted model has no prediction for its first position); it is never corrupted nor scored.

Data: JSON/JSONL records with ``tokens`` (ids, as DSL-LLaDA's ``texts_100.json``) or ``text``
(option ``field``), or a ``.txt`` file with one text per line. Texts of fewer than 2 tokens, or more
than ``max_tokens`` when it is set, are passed over and counted in the summary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dlm.errors import DLMError
from dlm.eval.tasks.base import Example, Task


def corrupt_tokens(tokens: list[int], rate: float, seed: int, low: int, high: int) -> tuple[list[int], list[int]]:
    """(corrupted tokens, sorted corrupted positions) - the reference's draws, in its order."""
    rng = np.random.RandomState(seed)
    n = len(tokens)
    positions = sorted(rng.choice(n, max(1, int(n * rate)), replace=False).tolist())
    corrupted = list(tokens)
    for pos in positions:
        new = rng.randint(low, high)
        while new == tokens[pos]:
            new = rng.randint(low, high)
        corrupted[pos] = int(new)
    return corrupted, positions


class Repair(Task):
    name = "repair"
    description = "corruption repair: share of randomly replaced tokens restored (fix) and others kept (clean)"
    kind = "score"
    default_budgets = (1,)
    accepts_txt = True
    options = {"rates": "10,30,50", "corruption_seed": 42, "low_id": -1, "high_id": -1, "split": "test",
               "field": "text", "max_tokens": 0}

    def __init__(self, data=None, **options):
        super().__init__(data, **options)
        try:
            self.rates = [int(r) for r in str(self.opts["rates"]).split(",")]
        except ValueError:
            raise DLMError(f"task repair: rates must be percentages like '10,30,50', got {self.opts['rates']!r}") from None
        if not self.rates or any(not 0 < r < 100 for r in self.rates):
            raise DLMError(f"task repair: rates must be percentages in (0, 100), got {self.opts['rates']!r}")

    @property
    def primary_metric(self) -> str:  # type: ignore[override]
        return f"fix_{self.rates[0]}"

    def load_for(self, model) -> list[Example]:
        files = self.files()
        if files[0].suffix == ".txt":
            records = [{"id": i, self.opts["field"]: line} for i, line in
                       enumerate(files[0].read_text(encoding="utf-8").splitlines()) if line.strip()]
        else:
            files, records = self.records()
        out, field = [], self.opts["field"]
        self.passed_over = 0  # texts under 2 tokens or over max_tokens (recorded)
        for i, r in enumerate(records):
            if "tokens" in r:
                ids = [int(t) for t in r["tokens"]]
            elif field in r:
                if model.tokenizer is None:
                    raise DLMError("texts need a model with a tokenizer (or give pre-tokenized 'tokens')")
                ids = model.tokenizer(r[field], add_special_tokens=False)["input_ids"]
            else:
                raise DLMError(f"{files[0]}: records need 'tokens' or {field!r} (found {', '.join(sorted(r))})")
            if len(ids) < 2 or (self.opts["max_tokens"] and len(ids) > self.opts["max_tokens"]):
                self.passed_over += 1
                continue
            rid = r.get("id", i)
            seed_id = int(rid) if isinstance(rid, int) or str(rid).isdigit() else i
            out.append(Example(str(rid), fields={"tokens": ids, "seed_id": seed_id}))
        self.id_range = self._id_range(model)
        return out

    def _id_range(self, model) -> tuple[int, int]:
        facts = model.facts
        specials = [i for i in (facts.mask_id, facts.bos_id, facts.pad_id, facts.eot_id, *facts.eos_ids) if i is not None]
        low = self.opts["low_id"] if self.opts["low_id"] >= 0 else max(specials, default=-1) + 1
        high = self.opts["high_id"] if self.opts["high_id"] >= 0 else facts.vocab_size
        if not 0 <= low < high <= facts.vocab_size:
            raise DLMError(f"task repair: replacement ids [{low}, {high}) must lie in [0, {facts.vocab_size})")
        return low, high

    def data_settings(self) -> dict[str, Any]:
        out = super().data_settings()
        if hasattr(self, "id_range"):
            out["replacement_ids"] = list(self.id_range)
            out["texts_passed_over"] = self.passed_over
        return out

    def check_budget(self, model, nfe: int) -> None:
        if nfe < 1:
            raise DLMError(f"--nfe is the number of forward passes per text and must be >= 1, got {nfe}")

    def budgets_for(self, model) -> tuple[int, ...]:
        return self.default_budgets

    @torch.no_grad()
    def _predict(self, model, rows: list[list[int]], passes: int) -> list[list[int]]:
        from dlm.sampling.batching import left_pad

        bos = model.facts.bos_id if model.facts.bos_id is not None else model.facts.stop_ids[0]
        ids, mask = left_pad(model, [[bos] + r for r in rows])  # (B, 1 + n)
        ids = ids.to(model.device)
        mask = mask.to(model.device) if mask is not None else None
        for _ in range(passes):
            pred = model(ids, attention_mask=mask).logits.argmax(-1)  # (B, 1 + n)
            first = ids.shape[1] - torch.tensor([len(r) + 1 for r in rows], device=ids.device)  # (B,) BOS positions
            keep = torch.arange(ids.shape[1], device=ids.device)[None] <= first[:, None]  # padding and BOS
            ids = torch.where(keep, ids, pred)
        return [ids[i, ids.shape[1] - len(r):].tolist() for i, r in enumerate(rows)]

    def score_batch(self, model, examples: list[Example], nfe: int, seed: int) -> list[dict[str, Any]]:
        low, high = self.id_range
        records: list[dict[str, Any]] = [{"tokens": len(ex.fields["tokens"])} for ex in examples]
        for rate in self.rates:
            corrupted, positions = zip(*[corrupt_tokens(ex.fields["tokens"], rate / 100, self.opts["corruption_seed"]
                                                        + ex.fields["seed_id"], low, high) for ex in examples])
            preds = self._predict(model, list(corrupted), nfe)
            for rec, ex, pos, pred in zip(records, examples, positions, preds):
                gold, bad = ex.fields["tokens"], set(pos)
                fixed = sum(pred[p] == gold[p] for p in pos)
                clean = [i for i in range(len(gold)) if i not in bad]
                rec[f"fix_{rate}"] = 100.0 * fixed / len(pos)
                rec[f"clean_{rate}"] = 100.0 * sum(pred[i] == gold[i] for i in clean) / len(clean) if clean else 100.0
        return records

    def metric_names(self) -> tuple[str, ...]:
        return tuple(f"{k}_{r}" for r in self.rates for k in ("fix", "clean"))
