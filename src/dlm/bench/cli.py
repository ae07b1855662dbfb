"""``dlm bench``: several samplers / option sets on one model, side by side in one process."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dlm.errors import DLMError


def _check_counts(args: argparse.Namespace) -> None:
    for flag, value in (("--repeats", args.repeats), ("--batch-size", args.batch_size),
                        ("--num-prompts", args.num_prompts), ("--random-prompts", args.random_prompts),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise DLMError(f"{flag} must be >= 1, got {value}")


def _output_paths(args: argparse.Namespace) -> dict[str, list[Path]]:
    """Where the JSON and Markdown go, every path checked writable (nothing is created)."""
    from dlm.outputs import check_output_dir, check_output_file

    paths: dict[str, list[Path]] = {"json": [], "md": []}
    if args.json:
        paths["json"].append(check_output_file(args.json, (".json",), overwrite=True, flag="--json"))
    if args.markdown:
        paths["md"].append(check_output_file(args.markdown, (".md",), overwrite=True, flag="--markdown"))
    if args.out:
        folder = check_output_dir(args.out)
        paths["json"].append(check_output_file(folder / "bench.json", (".json",), overwrite=True, flag="--out"))
        paths["md"].append(check_output_file(folder / "bench.md", (".md",), overwrite=True, flag="--out"))
    return paths


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    import dlm
    from dlm.bench import prompts as P
    from dlm.bench.measure import peak_memory, run_protocol
    from dlm.bench.report import compare, markdown, summarise
    from dlm.bench.specs import parse_runs, prepare_runs
    from dlm.eval.runner import hardware, model_identity
    from dlm.prompt_input import read_prompts
    from dlm.provenance import software_versions

    # everything that can be checked without the model is checked before it loads
    _check_counts(args)
    specs, shared = parse_runs(args.run, args.set)
    labels = [s.label for s in specs]
    if args.baseline is not None and args.baseline not in labels:
        raise DLMError(f"--baseline {args.baseline!r} is not a run label (labels: {', '.join(map(repr, labels))})")
    paths = _output_paths(args)
    entries = read_prompts(args) if (args.prompt or args.prompts_file) else None
    if args.threads:
        torch.set_num_threads(args.threads)

    model = dlm.load(args.model, device=args.device, dtype=args.dtype)
    prepare_runs(model, specs)
    chat = None if args.chat == "auto" else args.chat == "on"
    count = args.num_prompts
    if args.random_prompts:
        prompts = P.random_prompts(model, count or P.DEFAULT_NUM_PROMPTS, args.random_prompts, args.seed)
    elif entries is not None:
        source = ({"kind": "file", "file": args.prompts_file} if args.prompts_file else {"kind": "--prompt"})
        prompts = P.text_prompts(model, entries[:count] if count else entries, chat, source)
    else:
        prompts = P.debian_prompts(model, count or P.DEFAULT_NUM_PROMPTS, chat)
    batches = P.batches(len(prompts.ids), args.batch_size)
    memory_kind, memory_at_start = peak_memory(model)

    hw = {**hardware(model), "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg())}
    results = run_protocol(model, specs, prompts.ids, batches, args.repeats, args.seed, args.progress)
    hw["loadavg_end"] = list(os.getloadavg())

    reference = args.baseline or specs[0].label
    summaries = {s.label: summarise(s, results[s.label], prompts.ids, args.repeats) for s in specs}
    compare(summaries, {label: r["answers"] for label, r in results.items()}, reference, args.baseline)
    decode = model.tokenizer is not None
    runs = []
    for spec in specs:
        res = results[spec.label]
        runs.append({
            "label": spec.label, "spec": spec.text, "sampler": spec.sampler, "options": spec.options,
            "resolved_options": res["options"], **summaries[spec.label],
            "answers": res["answers"],
            **({"answer_texts": [model.decode(a) for a in res["answers"]]} if decode else {}),
            "cold": res["cold"], "calls": res["calls"],
        })
    record: dict[str, Any] = {
        "benchmark": "dlm bench",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {**model_identity(model), "model_requested": args.model},
        "settings": {
            "runs": [{"label": s.label, "spec": s.text, "sampler": s.sampler, "options": s.options,
                      "resolved_options": results[s.label]["options"]} for s in specs],
            "shared_options": shared, "baseline": args.baseline, "reference": reference,
            "prompts": prompts.source, "batch_size": args.batch_size, "batches": len(batches),
            "repeats": args.repeats, "seed": args.seed, "threads": args.threads,
            "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
            "protocol": "per run one cold call on the first batch, then per repeat every run in turn over every "
                        "batch (round-robin); wall time of each dlm.generate call (CUDA synchronised)",
        },
        "memory": {"kind": memory_kind, "before_runs_bytes": memory_at_start},
        "versions": software_versions(), "hardware": hw,
        "prompts": [{"index": i, "text": t, "ids": ids} for i, (t, ids) in enumerate(zip(prompts.texts, prompts.ids))],
        "runs": runs,
    }
    table = markdown(record)
    for path in paths["json"]:
        _write(path, json.dumps(record, indent=1, default=str) + "\n")
    for path in paths["md"]:
        _write(path, table)
    print(table, end="")
    return 0


def add_parser(sub) -> None:
    from dlm.models.default import DEFAULT_MODEL

    b = sub.add_parser(
        "bench", help="time several samplers / option sets on one model, side by side",
        description="Decode the same prompts with every --run on one model in one process: one cold call per "
                    "run, then --repeats timed passes over all prompt batches, runs interleaved round-robin. "
                    "Prints a Markdown table (tokens, NFE, tokens/s, latency, memory, agreement with the "
                    "baseline); --json keeps every call.",
        epilog="SPEC is '[LABEL:] SAMPLER [KEY=VALUE ...]', e.g. --run 'half: llada steps=16'. Every spec is "
               "validated before anything runs. See docs/bench.md.")
    b.add_argument("--model", default=None, help="checkpoint directory or shipped model name "
                   f"(default: the embedded default, {DEFAULT_MODEL})")
    b.add_argument("--run", action="append", required=True, metavar="SPEC",
                   help="a run: '[LABEL:] SAMPLER [KEY=VALUE ...]' (values as -o values: JSON where JSON); "
                        "repeat for each run; the label defaults to the spec text")
    b.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="an option shared by every run (a run's own KEY overrides it); a run whose sampler "
                        "lacks the option is refused")
    b.add_argument("--baseline", default=None, metavar="LABEL",
                   help="the run the ratio columns and same_as_baseline compare against (default: same_as_baseline "
                        "against the first run, no ratios)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append", help="prompt text (repeat for more prompts)")
    src.add_argument("--prompts-file", metavar="FILE", help="one prompt per line, or .jsonl with \"prompt\"")
    src.add_argument("--random-prompts", type=int, metavar="LEN",
                     help="seeded random prompts of LEN ids without special ids (models without a tokenizer)")
    b.add_argument("--num-prompts", type=int, default=None, metavar="N",
                   help="number of prompts: Debian test prompts or random prompts (default 8); with --prompt / "
                        "--prompts-file, the first N")
    b.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                   help="wrap text prompts in the tokenizer's chat template (auto: when it has one)")
    b.add_argument("--batch-size", type=int, default=1, help="prompts per dlm.generate call (default 1)")
    b.add_argument("--repeats", type=int, default=3, help="timed passes over all prompts per run (default 3)")
    b.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    b.add_argument("--seed", type=int, default=0, help="seed of every call and of --random-prompts (default 0)")
    b.add_argument("--device", default="cpu", help="torch device (default cpu)")
    b.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)")
    b.add_argument("--json", metavar="FILE", help="write every measurement and the settings as JSON")
    b.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    b.add_argument("--out", metavar="DIR", help="write DIR/bench.json and DIR/bench.md")
    b.add_argument("--progress", dest="progress", action="store_true", default=True,
                   help="a line per run and repeat on stderr (default)")
    b.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")
    b.set_defaults(func=cmd_bench)
