"""The benchmark's rows (one model and sampler each): every example decoded at each batch size and
timed, then summarised: ROUGE, identical-to-AR rate, TPF, acceptance and tokens/s."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

import dlm
from dlm.eval.rouge import ROUGE_TYPES, rouge_per_sample
from dlm.eval.runner import model_identity
from dlm.eval.samples import example_seed
from dlm.sampling.batching import answer_ids, left_pad

from .tasks import Bench


@dataclass
class Row:
    key: str  # "ar", "isd-2", "llada-32": the row's name in the result file
    label: str  # what the Markdown table calls it
    model: Any
    sampler: str
    stride: int | None = None
    nfe: int | None = None

    def options(self, gen_length: int) -> dict[str, Any]:
        if self.sampler == "isd":
            return {"gen_length": gen_length, "stride": self.stride, "temperature": 0.0}
        if self.sampler == "llada":
            return {"gen_length": gen_length, "block_length": gen_length, "steps": self.nfe, "temperature": 0.0,
                    "remasking": "low_confidence"}
        return {"gen_length": gen_length, "temperature": 0.0}


def sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def produced(model, row_ids: list[int], gen_length: int) -> list[int]:
    """The generated ids up to and including the first stop token (what the model actually wrote)."""
    answer = answer_ids(model, row_ids)
    return row_ids[:len(answer) + 1] if len(answer) < gen_length else answer


def run_row(row: Row, bench: Bench, batch_sizes: list[int], seed: int, progress: bool) -> dict[str, Any]:
    """Every example of ``bench`` with ``row`` at each batch size. Returns the per-batch-size
    records: produced ids per example, timings, forwards and ISD statistics."""
    from tqdm.auto import tqdm

    model, prompts, G = row.model, bench.prompts_for(row.model), bench.gen_length
    options = row.options(G)
    seeds = [example_seed(seed, ex_id) for ex_id in bench.ids]
    n = len(prompts)
    by_batch: dict[int, dict[str, Any]] = {}

    def call(idx: list[int]):
        input_ids, attention_mask = left_pad(model, [prompts[i] for i in idx])
        sync(model)
        t0 = time.perf_counter()
        out = dlm.generate(model, input_ids, attention_mask, sampler=row.sampler, seed=[seeds[i] for i in idx],
                           return_dict=True, **options)
        sync(model)
        return out, time.perf_counter() - t0

    for bs in batch_sizes:
        order = list(range(n)) if bs == 1 else sorted(range(n), key=lambda i: len(prompts[i]))
        batches = [order[s:s + bs] for s in range(0, n, bs)]
        rec: dict[str, Any] = {"ids": [None] * n, "forwards": [0] * n, "calls": [], "accepted": 0, "proposed": 0,
                               "stats_mismatch": 0}
        out, seconds = call(batches[0])  # warm-up: not in the medians
        warm_tokens = sum(len(produced(model, r, G)) for r in out.generated.tolist())
        rec["warmup"] = {"seconds": seconds, "tokens": warm_tokens, "tokens_per_second": warm_tokens / seconds}
        bar = tqdm(batches, desc=f"{bench.name} {row.key} b{bs}", unit="call", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        for idx in bar:
            out, seconds = call(idx)
            rows = out.generated.tolist()
            tokens = 0
            for j, (i, ids) in enumerate(zip(idx, rows)):
                rec["ids"][i] = produced(model, ids, G)
                tokens += len(rec["ids"][i])
                if row.sampler == "isd":
                    rec["forwards"][i] = out.stats["forwards"][j]
                elif row.sampler == "ar":
                    rec["forwards"][i] = len(rec["ids"][i])  # one forward per token (the prefill gives the first)
                else:
                    rec["forwards"][i] = out.nfe
            if row.sampler == "isd":
                rec["accepted"] += out.stats["accepted"]
                rec["proposed"] += out.stats["proposed"]
                if out.stats["tokens"] != [len(rec["ids"][i]) for i in idx]:  # the sampler's count vs the ids
                    rec["stats_mismatch"] += 1
                    print(f"warning: {row.key}: out.stats tokens {out.stats['tokens']} != generated "
                          f"{[len(rec['ids'][i]) for i in idx]}", file=sys.stderr)
            rec["calls"].append({"examples": len(idx), "tokens": tokens, "seconds": seconds, "nfe": out.nfe,
                                 "tokens_per_second": tokens / seconds})
        bar.close()
        by_batch[bs] = rec
    return by_batch


def summarise_row(row: Row, bench: Bench, by_batch: dict[int, dict[str, Any]], ar: dict[int, dict[str, Any]] | None,
                  samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The row's numbers: quality and TPF from the smallest batch size, speed at every batch size."""
    model = row.model
    first = min(by_batch)
    rec = by_batch[first]
    preds = [model.decode(answer_ids(model, ids)).strip() for ids in rec["ids"]]
    per = rouge_per_sample(preds, bench.references)
    n = max(1, len(per))
    tokens = [len(ids) for ids in rec["ids"]]
    identical = {}
    if ar is not None:
        for bs in by_batch:
            if bs in ar:
                same = [a == b for a, b in zip(by_batch[bs]["ids"], ar[bs]["ids"])]
                identical[str(bs)] = sum(same) / max(1, len(same))
    forwards = sum(rec["forwards"])
    entry: dict[str, Any] = {
        "row": row.key, "label": row.label, "model": model_identity(model)["model"], "sampler": row.sampler,
        "options": row.options(bench.gen_length),
        **{k: sum(p[k] for p in per) / n for k in ROUGE_TYPES},
        "identical_to_ar": identical.get(str(first)), "identical_to_ar_by_batch_size": identical,
        "quality_batch_size": first,
        "tpf": sum(tokens) / forwards if forwards else None,
        "tokens": sum(tokens), "forwards": forwards, "mean_tokens": sum(tokens) / n,
        "empty": sum(not p for p in preds) / n,
    }
    if row.sampler == "isd":
        rounds = forwards - len(tokens)  # prefills left out: the reference's per-request figure
        entry["tpf_excl_prefill"] = sum(tokens) / rounds if rounds else None
        entry["acceptance_rate"] = rec["accepted"] / rec["proposed"] if rec["proposed"] else None
        entry["accepted"], entry["proposed"] = rec["accepted"], rec["proposed"]
        entry["stats_mismatch_calls"] = sum(r["stats_mismatch"] for r in by_batch.values())  # should be 0
    else:
        entry["acceptance_rate"] = None
    entry["speed"] = {}
    for bs, r in by_batch.items():
        tps = [c["tokens_per_second"] for c in r["calls"]]
        entry["speed"][str(bs)] = {
            "tokens_per_second_median": statistics.median(tps), "calls": len(tps),
            "tokens": sum(c["tokens"] for c in r["calls"]), "seconds": sum(c["seconds"] for c in r["calls"]),
            "tokens_per_second_pooled": sum(c["tokens"] for c in r["calls"]) / sum(c["seconds"] for c in r["calls"]),
            "seconds_per_call_median": statistics.median(c["seconds"] for c in r["calls"]),
            "warmup": r["warmup"], "per_call": r["calls"],
        }
    for i, (ex_id, ref, pred, ids) in enumerate(zip(bench.ids, bench.references, preds, rec["ids"])):
        samples.append({"task": bench.name, "row": row.key, "id": ex_id, "prompt": bench.texts[i], "reference": ref,
                        "prediction": pred, "ids": ids, "forwards": rec["forwards"][i],
                        "identical_to_ar": None if ar is None else ids == ar[first]["ids"][i], **per[i]})
    return entry
