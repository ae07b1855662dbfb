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

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # isd_parts, beside this script

from dlm.errors import DLMError  # noqa: E402
from dlm.eval.runner import hardware, model_identity  # noqa: E402
from dlm.provenance import software_versions  # noqa: E402
from dlm.sampling import prepare_sampler  # noqa: E402
from isd_parts import ROOT  # noqa: E402
from isd_parts.arguments import load_models, parse_args  # noqa: E402
from isd_parts.forward_micro import forward_micro  # noqa: E402
from isd_parts.results import git_state, write_results  # noqa: E402
from isd_parts.rows import Row, run_row, summarise_row  # noqa: E402
from isd_parts.tasks import Bench, continuation_bench, summaries_bench  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, ap = parse_args(argv, __doc__)
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

    write_results(out, result, samples)
    return result


if __name__ == "__main__":
    main()
