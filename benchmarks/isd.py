"""The I-DLM benchmark: introspective strided decoding (``isd``) against greedy AR decoding with a
KV cache, for one causal model, side by side in one process.

    .venv/bin/python benchmarks/isd.py [--model smol-idlm] [--limit 200] [--strides 2,3,4]
        [--batch-sizes 1,8] [--threads 2] [--diffusion-model M --diffusion-nfe 32] [--out FILE.json]

Two tasks (``--tasks``), the same examples for every row:

* ``summaries``: a seeded sample of the ``debian`` eval task's test pairs, selected exactly as
  ``dlm eval --task debian --limit N --sample-seed S`` selects them (``Task.select``: a seeded
  shuffle, prompts over the task's 224 tokens passed over); the task's chat prompt, 32 new tokens;
  ROUGE against the reference synopsis.
* ``continuation``: open-ended continuation of held-out text. The same seeded selection over the
  test split's descriptions (``--continuation-data``: the shipped Debian data, ``techdocs`` for
  benchmarks/data/techdocs, or a directory in that layout), keeping those with at least
  ``--prompt-tokens`` + ``--continuation-length`` tokens; the first ``--prompt-tokens`` tokens are
  the prompt, plain (no chat template; the tokenizer's own special prefix, if it adds one), and the
  model continues ``--continuation-length`` tokens; ROUGE against the text's next tokens.

Rows: ``ar`` (greedy, KV cache; the reference every row is compared with), ``isd`` at each stride
N of ``--strides`` (T = 0, so its output should equal ``ar``'s), and with ``--diffusion-model`` the
``llada`` sampler (low-confidence remasking, T = 0, one block) at ``--diffusion-nfe`` forwards.

Columns: ROUGE-1/2/L; the identical-output rate (share of examples whose generated ids, up to and
including the stop token, equal AR greedy's exactly); TPF (generated tokens per forward, prefill
included, pooled over the batch-1 calls: ``isd`` from ``out.stats``, 1 for ``ar``, tokens / NFE for
``llada``); the draft acceptance rate (``isd``); tokens/s at each batch size (generated tokens up to
and including the stop token / wall seconds of the ``dlm.generate`` call; median over examples at
batch 1 and over batches - prompts sorted by length, as ``dlm eval`` batches them - otherwise; one
extra warm-up call on the first example / batch runs first, excluded and reported on its own); and
a micro-benchmark: the median time of one forward of 2N - 1 new slots against one single-token
forward, both after a KV cache of a prompt of the task's median prompt length (interleaved, after
warm-up forwards; the ratio is what one ISD round costs in AR steps).

Writes a JSON result file (settings, seed, versions, hardware, every number), a Markdown table
beside it (same stem, ``.md``, also printed) and every batch-1 prediction (``_samples.jsonl``).
Bad arguments exit with status 2 and one message.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
TECHDOCS = ROOT / "benchmarks" / "data" / "techdocs"
TASKS = ("summaries", "continuation")

import dlm  # noqa: E402
from dlm.errors import DLMError  # noqa: E402
from dlm.eval.rouge import ROUGE_TYPES, rouge_per_sample  # noqa: E402
from dlm.eval.runner import hardware, model_identity, select_examples  # noqa: E402
from dlm.eval.samples import example_seed  # noqa: E402
from dlm.eval.tasks import get_task  # noqa: E402
from dlm.provenance import software_versions  # noqa: E402
from dlm.sampling import prepare_sampler  # noqa: E402
from dlm.sampling.autoregressive import kv_cache_kwargs  # noqa: E402
from dlm.sampling.batching import answer_ids, left_pad  # noqa: E402


# -- what runs ------------------------------------------------------------------------------------
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


@dataclass
class Bench:
    """One task: the selected examples, their prompts (per model) and references."""

    name: str
    description: str
    gen_length: int
    ids: list[str]
    references: list[str]
    prompts: dict[int, list[list[int]]] = field(default_factory=dict)  # id(model) -> prompt ids per example
    selection: dict[str, Any] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)  # the prompt as text, for the samples file

    def prompts_for(self, model) -> list[list[int]]:
        return self.prompts[id(model)]


def summaries_bench(model, others: list, data: str | None, limit: int, sample_seed: int,
                    gen_length: int | None = None) -> Bench:
    """The ``debian`` eval task's selection (``Task.select`` with its max_prompt_tokens filter)."""
    task = get_task("debian", data)
    gen_length = gen_length or task.gen_length
    max_prompt = task.opts.get("max_prompt_tokens") or 0
    examples = task.load_for(model)
    selected, skipped, encoded = select_examples(task, model, examples, limit, sample_seed)
    bench = Bench("summaries", f"Debian test pairs (the debian eval task, prompts <= {max_prompt} tokens), "
                  f"chat prompt, {gen_length} new tokens, ROUGE against the synopsis",
                  gen_length, [ex.id for ex in selected], [ex.reference for ex in selected],
                  texts=[ex.prompt for ex in selected])
    bench.prompts[id(model)] = [encoded[ex.id] for ex in selected]
    for other in others:  # a diffusion model with the same tokenizer, possibly another chat template
        bench.prompts[id(other)] = [other.encode_prompt(ex.prompt) for ex in selected]
    bench.selection = {"data": str(task.data), "split": task.opts["split"], "sample_seed": sample_seed,
                       "examples": len(selected), "available": len(examples), "skipped_too_long": skipped,
                       "max_prompt_tokens": max_prompt}
    return bench


def special_prefix(tokenizer, text: str) -> list[int]:
    """The special tokens the tokenizer puts before ``text`` itself (e.g. BOS), or []."""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text, add_special_tokens=True)["input_ids"]
    for j in range(len(full) - len(plain) + 1):
        if full[j:j + len(plain)] == plain:
            return list(full[:j])
    return []


def continuation_bench(model, others: list, data: str | None, limit: int, sample_seed: int, prompt_tokens: int,
                       gen_length: int) -> Bench:
    """Held-out text: the same seeded selection over the split's descriptions that have at least
    prompt_tokens + gen_length tokens; prompt = the first prompt_tokens, reference = the next gen_length."""
    task = get_task("debian", data)
    examples = task.load_for(model)
    if examples and "source" not in examples[0].fields:
        raise DLMError(f"{task.data}: the continuation task needs records with a 'description' text")
    tok = model.tokenizer
    split: dict[str, tuple[list[int], list[int]]] = {}

    def fits(ex) -> bool:
        ids = tok(ex.fields["source"], add_special_tokens=False)["input_ids"]
        if len(ids) < prompt_tokens + gen_length:
            return False
        split[ex.id] = ids[:prompt_tokens], ids[prompt_tokens:prompt_tokens + gen_length]
        return True

    selected, skipped = task.select(examples, limit, sample_seed, fits)
    prefix = special_prefix(tok, "text") if selected else []
    prompts = [prefix + split[ex.id][0] for ex in selected]
    bench = Bench("continuation", f"held-out text ({task.data.name} {task.opts['split']} descriptions with >= "
                  f"{prompt_tokens + gen_length} tokens): the first {prompt_tokens} tokens as a plain prompt, "
                  f"{gen_length} new tokens, ROUGE against the next {gen_length} tokens",
                  gen_length, [ex.id for ex in selected],
                  [model.decode(split[ex.id][1]).strip() for ex in selected],
                  texts=[model.decode(split[ex.id][0]) for ex in selected])
    for m in [model, *others]:  # same tokenizer (checked): the same ids
        bench.prompts[id(m)] = prompts
    bench.selection = {"data": str(task.data), "split": task.opts["split"], "sample_seed": sample_seed,
                       "examples": len(selected), "available": len(examples), "skipped_too_short": skipped,
                       "prompt_tokens": prompt_tokens, "special_prefix": prefix}
    return bench


# -- measuring ------------------------------------------------------------------------------------
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


def truncate(cache, length: int) -> None:
    """Keep the first ``length`` cached positions of every layer (as the isd sampler re-packs its
    cache: ``DynamicCache.crop``'s meaning differs between transformers releases)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]


@torch.no_grad()
def forward_micro(model, prompt: list[int], strides: list[int], batch_sizes: list[int], repeats: int,
                  warmup: int) -> dict[str, Any]:
    """Median seconds of one forward of W = 2N - 1 mask slots and of one single-token forward, each
    after a KV cache of ``prompt`` (cropped back after every timed forward), per batch size; the
    widths are timed in turn within every repeat so that load changes hit them alike."""
    net, dev = model.net, model.device
    P, mask_id = len(prompt), model.facts.resolve_mask_id()
    token = prompt[-1] if prompt[-1] != mask_id else 0  # a real token for the AR step
    widths = [1] + [2 * n - 1 for n in strides]
    out: dict[str, Any] = {"prompt_length": P, "repeats": repeats, "warmup_forwards": warmup, "by_batch_size": {}}
    was_training = model.training
    model.eval()
    try:
        for bs in batch_sizes:
            ids = torch.tensor([prompt] * bs, device=dev)
            cache = kv_cache_kwargs(net)
            kv = next(iter(cache.values()))
            net(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(P, device=dev)[None]
                .expand(bs, -1), use_cache=True, logits_to_keep=1, **cache)
            times: dict[int, list[float]] = {w: [] for w in widths}
            for k in range(warmup + repeats):
                for w in widths:
                    inp = torch.full((bs, w), mask_id if w > 1 else token, dtype=torch.long, device=dev)
                    pos = (P + torch.arange(w, device=dev))[None].expand(bs, -1)
                    attn = torch.ones(bs, P + w, dtype=torch.long, device=dev)
                    sync(model)
                    t0 = time.perf_counter()
                    net(input_ids=inp, attention_mask=attn, position_ids=pos, use_cache=True, **cache)
                    sync(model)
                    if k >= warmup:
                        times[w].append(time.perf_counter() - t0)
                    truncate(kv, P)
            single = statistics.median(times[1])
            out["by_batch_size"][str(bs)] = {
                "single_token_seconds": single,
                "strides": {str(n): {"slots": 2 * n - 1, "seconds": statistics.median(times[2 * n - 1]),
                                     "ratio_to_single_token": statistics.median(times[2 * n - 1]) / single}
                            for n in strides}}
    finally:
        model.train(was_training)
    return out


# -- output ---------------------------------------------------------------------------------------
def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    bss = [str(b) for b in s["batch_sizes"]]
    lines = [f"# I-DLM benchmark: {result['model']['model']}", "",
             f"torch threads {result['hardware']['torch_threads']}, {result['hardware']['cpu']}"
             + (f", {result['hardware']['gpu']}" if "gpu" in result["hardware"] else "")
             + f", device {result['hardware']['device']}, dlm {result['versions']['dlm']}, "
               f"torch {result['versions']['torch']}; seed {s['seed']}, sample seed {s['sample_seed']}"]
    for name, t in result["tasks"].items():
        micro = t["forward_micro"]["by_batch_size"]
        lines += ["", f"## {name}: {t['selection']['examples']} examples", "", t["description"], "",
                  "| decoding | ROUGE-1 | ROUGE-2 | ROUGE-L | identical to AR | TPF | acceptance | "
                  + " | ".join(f"tok/s b{b}" for b in bss) + " | "
                  + " | ".join(f"fwd (2N-1) / fwd 1, b{b}" for b in bss) + " |",
                  "|---|" + "---:|" * (6 + 2 * len(bss))]
        for e in t["rows"]:
            stride = e["options"].get("stride") if e["sampler"] == "isd" else None
            ratios = []
            for b in bss:
                m = micro.get(b)
                if m is None:
                    ratios.append("-")
                elif e["sampler"] == "ar":
                    ratios.append(f"1 ({m['single_token_seconds'] * 1e3:.2f} ms)")
                elif stride is not None:
                    st = m["strides"][str(stride)]
                    ratios.append(f"{st['ratio_to_single_token']:.2f} ({st['seconds'] * 1e3:.2f} ms)")
                else:
                    ratios.append("-")
            lines.append(f"| {e['label']} | {e['rouge1']:.2f} | {e['rouge2']:.2f} | {e['rougeL']:.2f} | "
                         f"{_fmt(e['identical_to_ar'], '.1%')} | {_fmt(e['tpf'], '.2f')} | "
                         f"{_fmt(e['acceptance_rate'], '.1%')} | "
                         + " | ".join(_fmt(e['speed'].get(b, {}).get('tokens_per_second_median'), '.1f')
                                      for b in bss) + " | " + " | ".join(ratios) + " |")
        warm = "; ".join(f"{e['row']} " + ", ".join(
            f"b{b} {w['seconds']:.3f} s ({w['tokens_per_second']:.1f} tok/s)"
            for b, w in ((b, e["speed"][b]["warmup"]) for b in bss if b in e["speed"])) for e in t["rows"])
        lines += ["", f"Warm-up calls (first call of each row and batch size, excluded from the medians): {warm}.",
                  f"Forward micro-benchmark: KV cache of {t['forward_micro']['prompt_length']} tokens (the median "
                  f"prompt length), median of {t['forward_micro']['repeats']} timed forwards."]
    return "\n".join(lines) + "\n"


def git_state() -> dict[str, Any] | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return None


# -- arguments ------------------------------------------------------------------------------------
def int_list(text: str, what: str, minimum: int, ap: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ap.error(f"{what} must be comma-separated integers, got {text!r}")
    if not values:
        ap.error(f"{what} is empty")
    bad = [v for v in values if v < minimum]
    if bad:
        ap.error(f"{what} must all be >= {minimum}, got {bad[0]}")
    if len(set(values)) != len(values):
        ap.error(f"{what} has a value twice: {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smol-idlm", help="the causal / introspective model (name or directory)")
    ap.add_argument("--strides", default="2,3,4", help="ISD strides N (>= 2)")
    ap.add_argument("--batch-sizes", default="1,8", help="batch sizes timed (quality from the smallest)")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"any of {', '.join(TASKS)}")
    ap.add_argument("--limit", type=int, default=200, help="examples per task (seeded selection)")
    ap.add_argument("--sample-seed", type=int, default=0, help="the shuffle that selects examples (as dlm eval)")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed (per example, as dlm eval; T = 0 draws none)")
    ap.add_argument("--data", default=None, help="summaries data (default: the shipped data/debian)")
    ap.add_argument("--gen-length", type=int, default=None, help="summary tokens (default: the task's, 32)")
    ap.add_argument("--continuation-data", default=None,
                    help="held-out text: 'debian' (the default, the shipped test split), 'techdocs' "
                         "(benchmarks/data/techdocs) or a directory in that layout")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="continuation prompt length in tokens")
    ap.add_argument("--continuation-length", type=int, default=64, help="continuation tokens to generate")
    ap.add_argument("--diffusion-model", default=None, help="also decode with this diffusion model (llada sampler)")
    ap.add_argument("--diffusion-nfe", type=int, default=32, help="llada steps (= NFE, one block)")
    ap.add_argument("--micro-repeats", type=int, default=30, help="timed forwards per width (micro-benchmark)")
    ap.add_argument("--micro-warmup", type=int, default=3, help="untimed forwards per width first")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/isd/MODEL.json); "
                                                "the Markdown table and samples go beside it")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    args.strides = int_list(args.strides, "--strides", 2, ap)
    args.batch_sizes = sorted(int_list(args.batch_sizes, "--batch-sizes", 1, ap))
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown or not args.tasks:
        ap.error(f"--tasks: unknown task {unknown[0]!r} (tasks: {', '.join(TASKS)})" if unknown else "--tasks is empty")
    for name in ("limit", "prompt_tokens", "continuation_length", "diffusion_nfe", "micro_repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.micro_warmup < 0:
        ap.error(f"--micro-warmup must be >= 0, got {args.micro_warmup}")
    if args.gen_length is not None and args.gen_length < 1:
        ap.error(f"--gen-length must be >= 1, got {args.gen_length}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if args.continuation_data in (None, "debian"):
        args.continuation_data = args.data
    elif args.continuation_data == "techdocs":
        args.continuation_data = str(TECHDOCS)
    for name in ("data", "continuation_data"):
        path = getattr(args, name)
        if path is not None and not Path(path).exists():
            ap.error(f"--{name.replace('_', '-')}: {path} does not exist")
    if args.out is not None and Path(args.out).is_dir():
        ap.error(f"--out is a directory ({args.out}); give the result file's path, e.g. {Path(args.out) / 'isd.json'}")
    return args, ap


def load_models(args, ap) -> tuple[Any, Any | None]:
    try:
        model = dlm.load(args.model, device=args.device)
    except DLMError as e:
        hint = " (train it with: bash scripts/train_smol.sh idlm)" if args.model == "smol-idlm" else ""
        ap.error(f"--model {args.model}: {e}{hint}")
    if not model.facts.causal:
        ap.error(f"--model {args.model} is a diffusion model; ISD and AR decode causal LMs "
                 "(give it as --diffusion-model)")
    if model.tokenizer is None:
        ap.error(f"--model {args.model} has no tokenizer (the benchmark reads text)")
    diffusion = None
    if args.diffusion_model:
        try:
            diffusion = dlm.load(args.diffusion_model, device=args.device)
        except DLMError as e:
            ap.error(f"--diffusion-model {args.diffusion_model}: {e}")
        if diffusion.facts.causal:
            ap.error(f"--diffusion-model {args.diffusion_model} is a causal LM; give a diffusion model")
        if diffusion.tokenizer is None or diffusion.tokenizer.get_vocab() != model.tokenizer.get_vocab():
            ap.error(f"--diffusion-model {args.diffusion_model} does not share --model's tokenizer; the identical-"
                     "output rate and the continuation prompts need the same token ids")
    return model, diffusion


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, ap = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, diffusion = load_models(args, ap)
    name = model_identity(model)["model"].replace("/", "--")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "isd" / f"{name}.json"

    rows = [Row("ar", "AR greedy, KV cache", model, "ar")]
    rows += [Row(f"isd-{n}", f"ISD N={n}", model, "isd", stride=n) for n in args.strides]
    if diffusion is not None:
        rows.append(Row(f"llada-{args.diffusion_nfe}", f"LLaDA NFE {args.diffusion_nfe} "
                        f"({model_identity(diffusion)['model']})", diffusion, "llada", nfe=args.diffusion_nfe))

    others = [diffusion] if diffusion is not None else []
    benches: list[Bench] = []
    try:
        for task in args.tasks:
            if task == "summaries":
                bench = summaries_bench(model, others, args.data, args.limit, args.sample_seed, args.gen_length)
            else:
                bench = continuation_bench(model, others, args.continuation_data, args.limit, args.sample_seed,
                                           args.prompt_tokens, args.continuation_length)
            if not bench.ids:
                ap.error(f"{task}: no example in {bench.selection['data']} fits")
            for row in rows:  # every option checked before anything runs
                prepare_sampler(row.model, row.sampler, row.options(bench.gen_length))
            benches.append(bench)
    except DLMError as e:
        ap.error(str(e))

    hw = hardware(model)
    result: dict[str, Any] = {
        "benchmark": "isd", "settings": {k: v for k, v in vars(args).items()} | {"out": str(out)},
        "seed": args.seed, "sample_seed": args.sample_seed,
        "versions": software_versions(), "git": git_state(),
        "hardware": hw | {"loadavg_start": list(os.getloadavg())},
        "model": model_identity(model), "diffusion_model": model_identity(diffusion) if diffusion else None,
        "tasks": {},
    }
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    for bench in benches:
        print(f"## {bench.name}: {len(bench.ids)} examples", file=sys.stderr)
        entries, ar = [], None
        for row in rows:
            by_batch = run_row(row, bench, args.batch_sizes, args.seed, not args.no_progress)
            if row.sampler == "ar":
                ar = by_batch
            entries.append(summarise_row(row, bench, by_batch, ar, samples))
            e = entries[-1]
            print(f"{row.key}: rouge1 {e['rouge1']:.2f} identical {e['identical_to_ar']} tpf {e['tpf']} "
                  f"acceptance {e['acceptance_rate']} tok/s "
                  + ", ".join(f"b{b} {s['tokens_per_second_median']:.1f}" for b, s in e["speed"].items()),
                  file=sys.stderr)
        lengths = sorted(len(p) for p in bench.prompts_for(model))
        micro_prompt = sorted(bench.prompts_for(model), key=len)[(len(lengths) - 1) // 2]  # a median-length prompt
        micro = forward_micro(model, micro_prompt, args.strides, args.batch_sizes, args.micro_repeats,
                              args.micro_warmup)
        result["tasks"][bench.name] = {
            "description": bench.description, "selection": bench.selection, "gen_length": bench.gen_length,
            "prompt_tokens": {"min": lengths[0], "median": statistics.median(lengths), "max": lengths[-1]},
            "rows": entries, "forward_micro": micro}
    result["seconds"] = time.perf_counter() - started
    result["hardware"]["loadavg_end"] = list(os.getloadavg())

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    with open(out.with_name(out.stem + "_samples.jsonl"), "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    print(table)
    print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_name(out.stem + '_samples.jsonl')}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
