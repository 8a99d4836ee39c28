"""Tables and PNG plots comparing evaluation reports across stages (base → SFT → RL → RLHF) or models."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from jaxllm.eval.harness import summary_rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return Path(path)


def stage_table(reports: Mapping[str, dict]) -> list[dict]:
    """One row per (task, metric): {"task", "metric", "chance", <stage>: value, ...} from `evaluate` reports."""
    rows: dict[tuple, dict] = {}
    for stage, report in reports.items():
        for r in summary_rows(report):
            row = rows.setdefault((r["task"], r["metric"]), {"task": r["task"], "metric": r["metric"],
                                                             "chance": r["chance"]})
            row[stage] = r["value"]
    return list(rows.values())


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table of rows (missing cells '-', floats to 3 decimals)."""
    def cell(x):
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot_stage_bars(reports: Mapping[str, dict], path: str | Path, title: str = "evaluations by stage") -> Path:
    """Grouped bars: accuracy-like metrics per task for each stage, chance as a black tick (bpb left out)."""
    plt = _pyplot()
    rows = [r for r in stage_table(reports) if r["metric"] != "bpb"]
    stages = list(reports)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 3.6))
    x = np.arange(len(rows))
    width = 0.8 / max(len(stages), 1)
    for i, s in enumerate(stages):
        vals = [r.get(s, np.nan) for r in rows]
        ax.bar(x + (i - (len(stages) - 1) / 2) * width, [np.nan if v is None else v for v in vals], width, label=s)
    for j, r in enumerate(rows):
        if r["chance"]:
            ax.hlines(r["chance"], j - 0.45, j + 0.45, colors="black", linewidth=1.5)
    ax.set_xticks(x, [f"{r['task']}\n{r['metric']}" for r in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (black tick: chance)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_counts(counts: Mapping[str, int], path: str | Path, title: str) -> Path:
    """A bar chart of outcome counts (e.g. the '9.11 vs 9.9' answers)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(list(counts), list(counts.values()), color=["tab:green", "tab:red", "tab:gray"][:len(counts)])
    ax.set_ylabel("answers")
    ax.set_title(title)
    return _save(fig, path)


def plot_lines(series: Mapping[str, Sequence[float]], path: str | Path, title: str, xlabel: str = "position",
               ylabel: str = "") -> Path:
    """One line per named series against its index (e.g. per-token loss along a document)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, ys in series.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, label=name, linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
