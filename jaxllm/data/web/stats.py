"""Merge per-shard statistics into the run's stats table (JSON + markdown) and removed-doc samples."""
from __future__ import annotations

import json
from pathlib import Path

from .shard import _atomic_write


def _add(dst: dict, src: dict) -> None:
    for k, v in src.items():
        dst[k] = dst.get(k, 0) + v


def merge_stats(shards: list[dict], stage_order: tuple[str, ...], samples_per_filter: int) -> dict:
    """Sum shard stats; stages in pipeline order with docs in, removed and reasons (sorted by count)."""
    total = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0}
    removed: dict[str, dict] = {}
    notes: dict[str, int] = {}
    pii: dict[str, int] = {}
    samples: dict[str, list] = {}
    for s in shards:
        for k in total:
            total[k] += s.get(k, 0)
        for stage, reasons in s["removed"].items():
            _add(removed.setdefault(stage, {}), reasons)
        _add(notes, s["notes"])
        _add(pii, s["pii"])
        for stage, docs in s["samples"].items():
            samples.setdefault(stage, []).extend(docs)
    stages, alive = [], total["docs_in"]
    for stage in list(stage_order) + sorted(set(removed) - set(stage_order)):
        reasons = removed.get(stage, {})
        n = sum(reasons.values())
        stages.append({"stage": stage, "docs_in": alive, "removed": n,
                       "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))})
        alive -= n
    for stage in samples:
        samples[stage] = sorted(samples[stage], key=lambda d: d["order"])[:samples_per_filter]
    return {**total, "stages": stages, "notes": notes, "pii_replaced": pii, "samples": samples}


def markdown(stats: dict) -> str:
    """The stats table as markdown (what report.md embeds)."""
    mb = lambda b: f"{b / 1e6:.2f} MB"  # noqa: E731
    lines = [f"documents in: {stats['docs_in']} ({mb(stats['bytes_in'])}), "
             f"out: {stats['docs_out']} ({mb(stats['bytes_out'])} of text)", "",
             "| stage | docs in | removed | reasons |", "|---|---:|---:|---|"]
    for s in stats["stages"]:
        reasons = ", ".join(f"{k} {v}" for k, v in s["reasons"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['docs_in']} | {s['removed']} | {reasons} |")
    lines.append(f"| output | {stats['docs_out']} | | |")
    if stats["notes"]:
        lines += ["", "repaired (kept): " + ", ".join(f"{k} {v}" for k, v in sorted(stats["notes"].items()))]
    if stats["pii_replaced"]:
        lines += ["", "PII replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["pii_replaced"].items()))]
    return "\n".join(lines) + "\n"


def write_report(stats: dict, out: Path) -> None:
    """stats.json, stats.md and samples/<stage>.jsonl (removed documents for inspection)."""
    samples = stats.pop("samples")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for stage, docs in samples.items():
        _atomic_write(out / "samples" / f"{stage}.jsonl",
                      "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode())
    stats["samples_dir"] = str(out / "samples")
    _atomic_write(out / "stats.md", markdown(stats).encode())
    _atomic_write(out / "stats.json", json.dumps(stats, indent=1).encode())
