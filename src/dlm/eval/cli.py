"""``dlm eval``, ``dlm report``, ``dlm trace`` and ``dlm lm-eval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dlm.cli_options import key_values, sampler_option_values, with_flag_options
from dlm.errors import DLMError

# flags for what is not a sampler option (-o seed=3 is refused with "use --seed")
EVAL_FLAGS = {"sampler": "--sampler", "seed": "--seed (sampler noise) or --sample-seed (example selection)",
              "sample_seed": "--sample-seed", "progress": "--progress / --no-progress"}
TRACE_FLAGS = {"sampler": "--sampler", "seed": "--seed", "chat": "--chat"}


def _parse_budgets(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        budgets = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise DLMError(f"--nfe must be integers separated by commas, e.g. 8,16,32,64; got {text!r}") from None
    if not budgets or len(set(budgets)) != len(budgets):
        raise DLMError(f"--nfe must list distinct budgets, got {text!r}")
    return budgets


def _print_table(summary: dict) -> None:
    """The run's metrics per budget: the task's own (as in ``dlm report``) and a few diagnostics."""
    from dlm.eval.report import format_value, task_metrics

    cols = task_metrics([summary]) + ["mean_nfe", "seconds_per_example", "mean_answer_tokens", "share_empty",
                                       "share_premature_stop", "tokens_per_pass", "acceptance_rate"]
    cols = [c for c in cols if any(c in r for r in summary["results"])]
    print("| budget | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in summary["results"]:
        budget = r["budget"] if r["budget"] is not None else "-"
        print(f"| {budget} | " + " | ".join(format_value(r.get(c)) for c in cols) + " |")


def cmd_eval(args: argparse.Namespace) -> int:
    import dlm
    from dlm.outputs import check_output_dir
    from dlm.eval.runner import EvalConfig, run_eval
    from dlm.eval.tasks import get_task

    # everything that can be checked without the model is checked before it loads
    task = get_task(args.task, args.data, **key_values(args.task_option, "--task-option"))
    budgets = _parse_budgets(args.nfe)
    options = sampler_option_values(args.option, "eval", EVAL_FLAGS)
    out_dir = check_output_dir(args.out)
    if args.baseline is not None:
        from dlm.eval.baselines import parse_baseline

        parse_baseline(args.baseline)
    if args.introspection:
        from dlm.eval.runner import check_introspection

        check_introspection(task, args.baseline)
    model = dlm.load(args.model, device=args.device, dtype=args.dtype)
    cfg = EvalConfig(task=task, model_arg=args.model, out_dir=out_dir, sampler=args.sampler,
                     budgets=budgets, preset=args.preset, options=options,
                     limit=args.limit, seed=args.seed, sample_seed=args.sample_seed, batch_size=args.batch_size,
                     name=args.name, baseline=args.baseline, progress=sys.stderr.isatty() if args.progress is None else args.progress,
                     overwrite=args.overwrite, introspection=args.introspection)
    summary = run_eval(model, cfg)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['name']}: {summary['selection']['examples']} examples -> {out_dir / summary['name']}"
              ".{samples.jsonl,summary.json}")
        _print_table(summary)
    return 0


def describe_task(cls) -> dict:
    """What ``dlm eval-tasks --json`` says about one task."""
    from dlm.paths import shipped_data

    data = None
    if cls.default_data is not None:
        try:
            data = str(shipped_data(cls.default_data))
        except DLMError:  # this installation lacks the shipped copy: --data is needed
            data = None
    if cls.generated_data is not None:  # the task makes its own examples and takes no --data
        data = cls.generated_data
    task = cls(None if cls.generated_data is not None else Path("."))  # default options; no data is read
    return {"name": cls.name, "description": cls.description, "kind": cls.kind,
            "primary_metric": task.primary_metric, "higher_is_better": cls.higher_is_better,
            "default_budgets": list(cls.default_budgets), "presets": cls.presets, "options": cls.options,
            "default_data": data}


def cmd_tasks(args: argparse.Namespace) -> int:
    from dlm.eval.tasks import TASKS

    tasks = [describe_task(cls) for cls in TASKS.values()]
    if args.json:
        print(json.dumps(tasks))
        return 0
    for t in tasks:
        opts = ", ".join(f"{k}={v!r}" for k, v in t["options"].items()) or "-"
        presets = "; ".join(f"{name} {json.dumps(p)}" for name, p in t["presets"].items())
        budgets = ",".join(map(str, t["default_budgets"]))
        print(f"{t['name']:<14} {t['description']}\n{'':<14} {t['kind']}, budgets {budgets}, data: "
              f"{t['default_data'] or '--data needed'}\n{'':<14} presets: {presets}\n{'':<14} options: {opts}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dlm.eval.report import write_report

    files = write_report(Path(args.results), Path(args.out) if args.out else None, common=args.common)
    for f in files:
        print(f)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    import dlm
    from dlm.outputs import check_output_file
    from dlm.eval.trace import SUFFIXES, trace

    out = check_output_file(args.out, SUFFIXES, overwrite=args.overwrite)
    if args.fps <= 0:
        raise DLMError(f"--fps must be > 0, got {args.fps}")
    options = with_flag_options(sampler_option_values(args.option, "trace", TRACE_FLAGS),
                                {key: getattr(args, key) for key in ("steps", "gen_length", "block_length", "temperature")})
    chat = None if args.chat == "auto" else args.chat == "on"
    model = dlm.load(args.model, device=args.device, dtype=args.dtype)
    path = trace(model, args.prompt, out, sampler=args.sampler, seed=args.seed, fps=args.fps, chat=chat,
                 overwrite=args.overwrite, **options)
    print(path)
    return 0


def cmd_lm_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from dlm.eval.lm_eval_plugin import run_harness_cli

    return run_harness_cli(rest)


def add_parser(sub) -> None:
    from dlm.eval.tasks import TASKS
    from dlm.sampling import SAMPLERS

    e = sub.add_parser("eval", help="evaluate a model on a task at several NFE budgets",
                       description="Run a task at several NFE budgets; write every sample (JSONL) and a summary "
                                   "(JSON: settings, seed, versions, hardware, metrics). Resumable.")
    e.add_argument("--model", default=None, help="checkpoint directory or shipped model name (default: the default model)")
    e.add_argument("--task", required=True, choices=list(TASKS), help="task (see `dlm eval-tasks`)")
    e.add_argument("--data", default=None, help="local data file or directory (Hugging Face dataset layout); "
                   "debian defaults to the shipped data/debian")
    e.add_argument("--sampler", default=None, choices=sorted(SAMPLERS),
                   help="sampler for generation tasks (default: isd for introspective models, ar for other causal LMs, llada for diffusion models)")
    e.add_argument("--nfe", default=None, help="comma-separated forward-pass budgets, e.g. 8,16,32,64 "
                   "(default: the task's; scoring tasks: Monte Carlo copies or passes per example)")
    e.add_argument("--preset", default="default", help="the task's named sampler preset (e.g. eos_block)")
    e.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="sampler option over the preset")
    e.add_argument("-t", "--task-option", action="append", metavar="KEY=VALUE", help="task option (see dlm eval-tasks)")
    e.add_argument("--limit", type=int, default=None, help="evaluate this many examples (seeded shuffle; default all)")
    e.add_argument("--batch-size", type=int, default=8, help="examples per batch (default 8)")
    e.add_argument("--seed", type=int, default=0, help="seed of the sampler noise; each example samples with its own "
                   "seed derived from it and the example's id (default 0)")
    e.add_argument("--sample-seed", type=int, default=0, help="seed of the shuffle that selects the examples "
                   "(default 0)")
    e.add_argument("--baseline", default=None, metavar="lead-N",
                   help="score a model-free baseline instead of generating: lead-N answers with the first N words "
                        "of the source (summarisation tasks); --model still selects the examples (its tokenizer "
                        "applies max_prompt_tokens) and counts answer tokens")
    e.add_argument("--introspection", action="store_true",
                   help="generation tasks: add each sample's introspective acceptance rate (I-DLM: mean of "
                        "min(1, p/q) over its answer tokens, p the model's causal re-scoring; one extra pass for a "
                        "causal LM, one per answer token for a diffusion model) and its mean per budget")
    e.add_argument("--out", default="results", help="output directory (default results/)")
    e.add_argument("--name", default=None, help="run name (default: MODEL__TASK__SAMPLER)")
    e.add_argument("--overwrite", action="store_true", help="discard earlier results of this run instead of resuming")
    e.add_argument("--device", default="cpu", help="torch device (default cpu)")
    e.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar")
    e.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("eval-tasks", help="list the evaluation tasks, their presets and options")
    t.add_argument("--json", action="store_true", help="print every task (kind, budgets, presets, options, data) "
                   "as JSON")
    t.set_defaults(func=cmd_tasks)

    r = sub.add_parser("report", help="plots and a Markdown table from dlm eval results",
                       description="Read every *.summary.json under RESULTS and draw quality-vs-NFE and "
                                   "quality-vs-seconds curves (PNG) per task, plus report.md.")
    r.add_argument("results", help="directory with dlm eval results")
    r.add_argument("--out", default=None, help="where to write the report (default: RESULTS)")
    r.add_argument("--common", action="store_true",
                   help="score every run of a task on the examples all its runs scored (from the samples files), "
                        "so runs over different --limit or selections compare on the same examples")
    r.set_defaults(func=cmd_report)

    tr = sub.add_parser("trace", help="render a denoising trajectory as HTML or an animated GIF",
                        description="Generate for one prompt and render the canvas after every step.")
    tr.add_argument("--model", default=None, help="checkpoint directory or shipped model name")
    tr.add_argument("--prompt", required=True, help="prompt text")
    tr.add_argument("--out", required=True, help="output file: .html or .gif (an existing file needs --overwrite)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    tr.add_argument("--sampler", default=None, choices=sorted(SAMPLERS), help="sampler (default: by model kind)")
    tr.add_argument("--gen-length", type=int, help="tokens to generate (default: the model's answer length, else 128)")
    tr.add_argument("--steps", type=int, help="denoising steps (default: gen-length)")
    tr.add_argument("--block-length", type=int, help="semi-autoregressive block length (default: gen-length)")
    tr.add_argument("--temperature", type=float, help="sampling temperature (default 0 = greedy)")
    tr.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="any other sampler option")
    tr.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                    help="wrap the prompt in the tokenizer's chat template (auto: when it has one)")
    tr.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tr.add_argument("--fps", type=float, default=2.0, help="GIF frames per second (default 2)")
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--dtype", default=None)
    tr.set_defaults(func=cmd_trace)

    lm = sub.add_parser("lm-eval", help="run lm-evaluation-harness with dlm models registered (--model dlm)",
                        add_help=False, description="Everything after `dlm lm-eval` goes to lm-evaluation-harness "
                                                    "(pip install 'dlm[lm-eval]'), with --model dlm available.")
    lm.set_defaults(func=None, passthrough=cmd_lm_eval)
