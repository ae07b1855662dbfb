"""The benchmark's command line: the options and their checks (bad arguments exit with status 2
and one message), and the models they name."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import dlm
from dlm.errors import DLMError

from .tasks import TASKS, TECHDOCS


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


def parse_args(argv: list[str] | None, doc: str) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """The checked options; ``doc`` is the script's docstring (its first paragraph heads --help)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
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
