"""Plot the I-DLM benchmark: tokens per forward and tokens/s of each decoding, from the result JSON
files ``benchmarks/isd.py`` writes (one panel row per task found in them).

    .venv/bin/python benchmarks/plot_isd.py benchmarks/results/isd/*.json --out docs/isd.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_tasks(paths: list[Path]) -> list[tuple[str, dict, dict]]:
    """(task name, task result, whole result) for every task of every file."""
    out = []
    for path in paths:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"plot_isd: {path}: cannot read a benchmark result ({e})")
        if result.get("benchmark") != "isd":
            sys.exit(f"plot_isd: {path} is not a benchmarks/isd.py result")
        out += [(name, task, result) for name, task in result["tasks"].items()]
    if not out:
        sys.exit("plot_isd: no task in the given files")
    return out


def plot(tasks: list[tuple[str, dict, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.6 * len(tasks)), squeeze=False)
    for (name, task, result), (ax_tpf, ax_speed) in zip(tasks, axes):
        rows = task["rows"]
        labels = [r["label"].replace(", KV cache", "").replace(" (", "\n(") for r in rows]
        x = range(len(rows))
        ax_tpf.bar(x, [r["tpf"] or 0 for r in rows], color="tab:blue")
        ax_tpf.axhline(1.0, color="grey", lw=0.8, ls="--")
        for i, r in enumerate(rows):
            if r.get("acceptance_rate") is not None:
                ax_tpf.annotate(f"acc. {r['acceptance_rate']:.0%}", (i, r["tpf"]), ha="center", va="bottom", fontsize=8)
        ax_tpf.set_ylabel("generated tokens per forward (TPF)")
        batch_sizes = [str(b) for b in result["settings"]["batch_sizes"]]
        width = 0.8 / len(batch_sizes)
        for j, b in enumerate(batch_sizes):
            speed = [r["speed"].get(b, {}).get("tokens_per_second_median") or 0 for r in rows]
            ax_speed.bar([i + (j - (len(batch_sizes) - 1) / 2) * width for i in x], speed, width, label=f"batch {b}")
        ax_speed.set_ylabel("tokens / s (median)")
        ax_speed.legend(fontsize=8)
        for ax in (ax_tpf, ax_speed):
            ax.set_xticks(list(x), labels, fontsize=8)
            ax.set_title(f"{name}: {task['selection']['examples']} examples, {result['model']['model']}", fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
    hw = tasks[0][2]["hardware"]
    fig.suptitle(f"I-DLM benchmark ({hw.get('gpu') or hw.get('cpu')}, {hw.get('torch_threads')} torch threads)",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="result JSON files of benchmarks/isd.py")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args(argv)
    plot(load_tasks(args.results), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
