"""The revision table and plot of ``scripts/revision_table.sh`` (issue 19), from its eval summaries.

    python benchmarks/revision_table.py benchmarks/results/revision

reads ``OUT/{arith,debian}/<label>__<sampler>.summary.json`` (label: sft = before SCOPE, scope =
after, control = the same-compute masked-diffusion SFT) and writes ``OUT/report.md`` (per task: the
primary metric by sampler and steps for each model; the share of answer positions revised and the
right / wrong revisions per answer) and ``OUT/revision.png`` (metric against steps, one panel per
task, one line per sampler and model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {"sft": "before SCOPE", "scope": "after SCOPE", "control": "same-compute control"}
SAMPLERS = ("llada", "d3im", "remdm", "edit", "wino")
METRIC = {"arith": ("exact_match_strict", "exact match (%)"), "debian": ("rouge1", "ROUGE-1 F x 100")}


def steps_of(sampler: str, result: dict) -> int | None:
    """The step count of a result: remdm runs two passes a step; edit / wino have no step budget."""
    if result.get("budget") is None:
        return None
    return result["budget"] // 2 if sampler == "remdm" else result["budget"]


def load(out: Path) -> dict:
    """{task: {(label, sampler): [result, ...]}} with ``steps`` added to each result."""
    table: dict = {}
    for task in METRIC:
        for f in sorted((out / task).glob("*__*.summary.json")):
            label, sampler = f.name.removesuffix(".summary.json").split("__", 1)
            summary = json.loads(f.read_text())
            partial = summary.get("status") != "complete"  # stopped before every budget ran (a time limit)
            rows = [dict(r, steps=steps_of(sampler, r), partial=partial) for r in summary["results"]]
            if rows:
                table.setdefault(task, {})[(label, sampler)] = rows
    return table


def fmt(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(table: dict) -> str:
    lines = ["# Revision samplers with and without SCOPE", ""]
    for task, runs in table.items():
        key, name = METRIC[task]
        lines += [f"## {task}: {name}", "",
                  "| sampler | model | steps | NFE | " + name + " | revised positions (%) | revisions / answer | "
                  "right | wrong |", "|---|---|---|---|---|---|---|---|---|"]
        for sampler in SAMPLERS:
            for label in LABELS:
                for r in runs.get((label, sampler), []):
                    revs = r.get("mean_revisions")
                    mark = " *" if r["partial"] else ""
                    lines.append(
                        f"| {sampler}{mark} | {LABELS[label]} | {r['steps'] if r['steps'] is not None else '-'} | "
                        f"{fmt(r['mean_nfe'])} | {fmt(r.get(key))} | "
                        f"{fmt(None if revs is None else 100 * r.get('share_revised', 0.0))} | {fmt(revs, 2)} | "
                        f"{fmt(r.get('mean_revisions_right'), 2)} | {fmt(r.get('mean_revisions_wrong'), 2)} |")
        lines.append("")
    if any(r["partial"] for runs in table.values() for rows in runs.values() for r in rows):
        lines += ["\\* a run stopped by the time limit: the budgets it finished are shown, the others are missing.", ""]
    return "\n".join(lines)


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(6.5 * len(table), 4.5), squeeze=False)
    styles = {"sft": "-", "scope": "--", "control": ":"}
    for ax, (task, runs) in zip(axes[0], table.items()):
        key, name = METRIC[task]
        for i, sampler in enumerate(SAMPLERS):
            for label, style in styles.items():
                rows = runs.get((label, sampler), [])
                pts = sorted((r["steps"] if r["steps"] is not None else r["mean_nfe"], r.get(key)) for r in rows)
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, marker="o" if len(xs) > 1 else "s", color=f"C{i}",
                        label=f"{sampler}, {LABELS[label]}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("steps (edit / wino: their forward passes)")
        ax.set_ylabel(name)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    legend = {}  # every line of every panel, once
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend.keys()), fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=120)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/revision_table.py OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    table = load(out)
    if not table:
        print(f"no eval summaries under {out}/arith or {out}/debian", file=sys.stderr)
        return 1
    (out / "report.md").write_text(markdown(table))
    plot(table, out / "revision.png")
    print(f"wrote {out / 'report.md'} and {out / 'revision.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
