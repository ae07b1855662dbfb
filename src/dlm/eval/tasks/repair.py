"""Corruption repair: replace a share of a text's tokens and count how many the model puts back
while keeping the rest (DSL-LLaDA's test T1, ``eval_unified.py``).

For each text and rate r: ``numpy.random.RandomState(corruption_seed + id)`` picks
``max(1, floor(n r))`` positions (``choice(n, k, replace=False)``, sorted) and, position by
position, a replacement, drawn from the same generator by the option ``corruption``:

* ``random`` (default; the reference's T1a ``corrupt_tokens_random``): an id uniform in
  ``[low_id, high_id)``, redrawn while it equals the original;
* ``semantic`` (the reference's T1b "semantic auto", ``build_wte_topk`` + ``corrupt_tokens_semantic``):
  one of the original token's ``neighbours`` (default 5, the reference's k) nearest neighbours in
  the model's input-embedding space, chosen by ``randint(0, neighbours)``. Neighbours are ranked
  by cosine similarity between the backbone's input embedding rows (float32, on the model's
  device; equal similarities by increasing id) over the vocabulary less the token itself and the
  special ids (:func:`dlm.repair.special_ids`: mask, BOS, pad, EoT, EOS and the tokenizer's special
  tokens - the reference excludes only the token itself, which in LLaDA's 126k vocabulary makes
  no practical difference). ``low_id`` / ``high_id`` do not apply. The reference runs it at 10
  and 30 % (``-t rates=10,30``).

The model reads the corrupted tokens (no mask token) in one forward pass and predicts every
position by argmax (:func:`dlm.repair.repair`). ``fix`` is the share of corrupted positions
predicted as the original token, ``clean`` the share of the other positions predicted as
themselves (both in %). A budget of ``k`` forward passes feeds the argmax back ``k - 1`` more
times. A BOS is put before each text (a shifted model has no prediction for its first position);
it is never corrupted nor scored. The corruption mode and its neighbour count are task options,
so they are part of the run's settings: a run of one mode never resumes into the other's files.

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


def _positions(rng: np.random.RandomState, n: int, rate: float) -> list[int]:
    """The sorted positions to corrupt: ``max(1, floor(n rate))`` of ``n``, drawn without replacement."""
    return sorted(rng.choice(n, max(1, int(n * rate)), replace=False).tolist())


def corrupt_tokens(tokens: list[int], rate: float, seed: int, low: int, high: int) -> tuple[list[int], list[int]]:
    """(corrupted tokens, sorted corrupted positions) - the reference's draws, in its order."""
    rng = np.random.RandomState(seed)
    positions = _positions(rng, len(tokens), rate)
    corrupted = list(tokens)
    for pos in positions:
        new = rng.randint(low, high)
        while new == tokens[pos]:
            new = rng.randint(low, high)
        corrupted[pos] = int(new)
    return corrupted, positions


def corrupt_tokens_semantic(tokens: list[int], rate: float, seed: int,
                            neighbours: dict[int, list[int]]) -> tuple[list[int], list[int]]:
    """(corrupted tokens, sorted corrupted positions): the positions drawn as in :func:`corrupt_tokens`,
    then per position one of ``neighbours[token]`` by ``randint(0, len)`` (the reference's
    ``corrupt_tokens_semantic``)."""
    rng = np.random.RandomState(seed)
    positions = _positions(rng, len(tokens), rate)
    corrupted = list(tokens)
    for pos in positions:
        near = neighbours[tokens[pos]]
        corrupted[pos] = int(near[rng.randint(0, len(near))])
    return corrupted, positions


CORRUPTIONS = ("random", "semantic")


class Repair(Task):
    name = "repair"
    description = ("corruption repair: share of replaced tokens (random, or embedding neighbours with "
                   "corruption=semantic) restored (fix) and others kept (clean)")
    kind = "score"
    default_budgets = (1,)
    accepts_txt = True
    options = {"rates": "10,30,50", "corruption_seed": 42, "low_id": -1, "high_id": -1, "split": "test",
               "field": "text", "max_tokens": 0, "corruption": "random", "neighbours": 5}

    def __init__(self, data=None, **options):
        if isinstance(options.get("rates"), int) and not isinstance(options["rates"], bool):
            options["rates"] = str(options["rates"])  # -t rates=30 arrives as an int
        super().__init__(data, **options)
        mode = self.opts["corruption"]
        if mode not in CORRUPTIONS:
            raise DLMError(f"task repair: corruption must be one of {', '.join(CORRUPTIONS)}, got {mode!r}")
        if mode == "random" and "neighbours" in options:
            raise DLMError("task repair: neighbours applies to corruption=semantic only")
        if mode == "semantic" and ({"low_id", "high_id"} & set(options)):
            raise DLMError("task repair: low_id / high_id apply to corruption=random only (semantic replacements "
                           "are embedding neighbours)")
        if self.opts["neighbours"] < 1:
            raise DLMError(f"task repair: neighbours must be >= 1, got {self.opts['neighbours']}")
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
        if self.opts["corruption"] == "random":
            self.id_range = self._id_range(model)
        else:
            from dlm.repair import special_ids

            self.excluded_ids = sorted(special_ids(model))
            available = model.facts.vocab_size - 1 - len(self.excluded_ids)
            if self.opts["neighbours"] > available:
                raise DLMError(f"task repair: neighbours must be at most {available} for this model (its vocabulary "
                               f"less the token and {len(self.excluded_ids)} special ids), got {self.opts['neighbours']}")
            self._neighbours: dict[int, list[int]] = {}  # token -> its nearest neighbours (filled batch by batch)
            self._model_id = id(model)
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
        out["corruption"] = self.opts["corruption"]  # also in task_options; here it names a mixed-mode rerun first
        if self.opts["corruption"] == "random" and hasattr(self, "id_range"):
            out["replacement_ids"] = list(self.id_range)
            out["texts_passed_over"] = self.passed_over
        elif self.opts["corruption"] == "semantic" and hasattr(self, "excluded_ids"):
            out["neighbours_excluded_ids"] = self.excluded_ids  # besides the token itself
            out["texts_passed_over"] = self.passed_over
        return out

    def neighbours_for(self, model, tokens) -> dict[int, list[int]]:
        """The nearest neighbours of ``tokens`` (cached for the run)."""
        from dlm.repair import nearest_neighbours

        if getattr(self, "_model_id", None) != id(model):
            raise DLMError("task repair: load_for(model) must run before scoring with that model")
        todo = {int(t) for t in tokens} - set(self._neighbours)
        if todo:
            self._neighbours.update(nearest_neighbours(model, todo, self.opts["neighbours"], self.excluded_ids))
        return self._neighbours

    def check_budget(self, model, nfe: int) -> None:
        from dlm.repair import MAX_PASSES

        if not 1 <= nfe <= MAX_PASSES:
            raise DLMError(f"--nfe is the number of forward passes per text and must be in [1, {MAX_PASSES}], got {nfe}")

    def budgets_for(self, model) -> tuple[int, ...]:
        return self.default_budgets

    def _predict(self, model, rows: list[list[int]], passes: int) -> list[list[int]]:
        """Each row after ``passes`` repair passes (:func:`dlm.repair.repair`), read behind a kept BOS."""
        from dlm.repair import leading_token, repair
        from dlm.sampling.batching import left_pad

        bos = leading_token(model)
        ids, mask = left_pad(model, [[bos] + r for r in rows])  # (B, 1 + n)
        first = ids.shape[1] - torch.tensor([len(r) + 1 for r in rows])  # (B,) BOS positions
        keep = torch.arange(ids.shape[1])[None] == first[:, None]  # the BOS (padding never changes)
        out = repair(model, ids, mask, passes=passes, keep=keep)
        return [out[i, out.shape[1] - len(r):].tolist() for i, r in enumerate(rows)]

    def corrupt(self, model, tokens: list[int], rate: int, seed_id: int) -> tuple[list[int], list[int]]:
        """(corrupted tokens, corrupted positions) of one text at ``rate`` %, by the corruption mode."""
        seed = self.opts["corruption_seed"] + seed_id
        if self.opts["corruption"] == "semantic":
            return corrupt_tokens_semantic(tokens, rate / 100, seed, self.neighbours_for(model, tokens))
        low, high = self.id_range
        return corrupt_tokens(tokens, rate / 100, seed, low, high)

    def score_batch(self, model, examples: list[Example], nfe: int, seed: int) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = [{"tokens": len(ex.fields["tokens"])} for ex in examples]
        for rate in self.rates:
            corrupted, positions = zip(*[self.corrupt(model, ex.fields["tokens"], rate, ex.fields["seed_id"])
                                         for ex in examples])
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
