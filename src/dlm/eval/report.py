"""``dlm report RESULTS``: curves and a Markdown table from the summaries ``dlm eval`` wrote.

Per task: ``{task}.png`` with two panels - the task's primary metric against the mean NFE and
against the seconds per example - one curve per run (model, sampler, preset); and one section of
``report.md`` with every budget of every run, the diagnostics and the settings that produced it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlm.errors import DLMError

TABLE_COLUMNS = ("mean_nfe", "seconds_per_example", "tokens_per_second", "tokens_per_pass", "mean_answer_tokens",
                 "adjacent_repetition", "distinct_2", "share_empty", "share_degenerate", "share_premature_stop",
                 "acceptance_rate")


NOT_METRICS = ("budget", "examples", "seconds", "mean_words", "distinct_1", "share_stopped", "sampler_options")


def load_summaries(results: Path) -> list[dict[str, Any]]:
    if not results.is_dir():
        raise DLMError(f"{results} is not a directory of dlm eval results")
    out = []
    for path in sorted(results.rglob("*.summary.json")):
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DLMError(f"{path}: not JSON ({e.msg})") from None
        if "settings" not in summary or "results" not in summary:
            raise DLMError(f"{path}: not a dlm eval summary")
        summary["_path"] = str(path)
        out.append(summary)
    if not out:
        raise DLMError(f"no *.summary.json under {results}; run `dlm eval --out {results}` first")
    return out


def run_label(summary: dict[str, Any]) -> str:
    """``model / sampler`` (plus the preset), or the run's own ``--name`` when it was given one."""
    s = summary["settings"]
    parts = summary.get("name", "").split("__")
    if len(parts) == 3 and parts[1] == s["task"]:  # MODEL__TASK__SAMPLER[-PRESET or custom suffix]
        return f"{parts[0]} / {parts[2]}"
    if summary.get("name"):
        return summary["name"]
    return f"{Path(s['model']).name} / {s['sampler'] or 'model'}"


def task_metrics(runs: list[dict[str, Any]]) -> list[str]:
    primary = runs[0]["primary_metric"]
    keys = [primary]
    for r in runs:
        for row in r["results"]:
            for k in row:
                if k not in keys and k not in TABLE_COLUMNS and k not in NOT_METRICS:
                    keys.append(k)
    return keys


def plot_task(task: str, runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = runs[0]["primary_metric"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        rows = sorted(run["results"], key=lambda r: r["mean_nfe"])
        if not rows:
            continue
        nfe = [r["mean_nfe"] for r in rows]
        secs = [r["seconds_per_example"] for r in rows]
        val = [r[metric] for r in rows]
        style = dict(marker="o", label=run_label(run))
        axes[0].plot(nfe, val, **style)
        axes[1].plot(secs, val, **style)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("forward passes per example (NFE)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("seconds per example")
    better = "higher" if runs[0].get("higher_is_better", True) else "lower"
    for ax in axes:
        ax.set_ylabel(f"{metric} ({better} is better)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    hw = runs[0].get("hardware", {})
    fig.suptitle(f"{task}: {metric} vs NFE and time ({hw.get('gpu') or hw.get('cpu', '')}, {hw.get('device', '')})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.2f}"
    return str(v)


def markdown(task: str, runs: list[dict[str, Any]], png: str) -> str:
    metrics = task_metrics(runs)
    cols = [c for c in TABLE_COLUMNS if any(c in row for r in runs for row in r["results"])]
    lines = [f"## {task}", "", f"![{task}]({png})", "",
             "| run | budget | examples | " + " | ".join(metrics + cols) + " |",
             "|---" * (3 + len(metrics) + len(cols)) + "|"]
    for run in runs:
        for row in sorted(run["results"], key=lambda r: r["mean_nfe"]):
            budget = row["budget"] if row["budget"] is not None else "-"
            lines.append(f"| {run_label(run)} | {budget} | {row['examples']} | "
                         + " | ".join(format_value(row.get(k)) for k in metrics + cols) + " |")
    lines += ["", "Settings:", ""]
    for run in runs:
        s, v, hw = run["settings"], run.get("versions", {}), run.get("hardware", {})
        data = s.get("data_sha256", "")
        lines.append(f"- **{run_label(run)}** (`{Path(run['_path']).name}`, {run.get('status', '?')}): "
                     f"model `{s['model']}`, options `{json.dumps(s.get('resolved_options', s.get('options', {})))}`, "
                     f"seed {s['seed']}{seeds(s)}, "
                     f"data `{s.get('data')}`{f' (sha256 {data})' if data else ''}, "
                     f"{run['selection']['examples']} examples; "
                     + ", ".join(f"{k} {val}" for k, val in v.items())
                     + f"; {hw.get('gpu') or hw.get('cpu')} ({hw.get('device')}, {hw.get('dtype')}, "
                       f"{hw.get('torch_threads')} threads)")
    return "\n".join(lines) + "\n"


def seeds(settings: dict[str, Any]) -> str:
    """The example-selection seed, where the run recorded one apart from the sampler seed."""
    return f" (examples: sample seed {settings['sample_seed']})" if "sample_seed" in settings else ""


def write_report(results: Path, out: Path | None = None, common: bool = False) -> list[Path]:
    """Write ``{task}.png`` per task and ``report.md`` into ``out`` (default ``results``); with
    ``common`` every run of a task is scored on the examples all of them scored
    (:mod:`dlm.eval.common`)."""
    from dlm.outputs import check_output_dir

    summaries = load_summaries(results)
    out = check_output_dir(out or results, "--out" if out is not None else "RESULTS")  # before any plotting
    out.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for summary in summaries:
        by_task.setdefault(summary["settings"]["task"], []).append(summary)
    written, sections = [], ["# dlm eval report", "", f"From `{results}`: {sum(map(len, by_task.values()))} runs.", ""]
    for task, runs in sorted(by_task.items()):
        if common:
            from dlm.eval.common import restrict_to_common

            runs, n = restrict_to_common(runs)
            sections += [f"Task {task}: every run scored on the {n} examples that all {len(runs)} runs scored "
                         "(`--common`).", ""]
        png = out / f"{task}.png"
        plot_task(task, runs, png)
        written.append(png)
        sections.append(markdown(task, runs, png.name))
    md = out / "report.md"
    md.write_text("\n".join(sections))
    written.append(md)
    return written
