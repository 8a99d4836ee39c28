"""Run named evaluations on one model: `evaluate(model, ["mmlu", "bpb", ...])` -> JSON-able results.

Task names: the multiple-choice sets of jaxllm.eval.tasks, the generative ones of
jaxllm.eval.generative, "bpb" (held-out text), and the behaviour checks of jaxllm.eval.behaviour.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

from jaxllm.eval.model import EvalModel


def known_tasks() -> dict[str, str]:
    from jaxllm.eval.behaviour import BEHAVIOURS
    from jaxllm.eval.generative import GEN_TASKS
    from jaxllm.eval.tasks import MC_TASKS

    return {**{k: v[1] for k, v in MC_TASKS.items()}, **GEN_TASKS,
            "bpb": "bits per byte on held-out Wikipedia summaries", **{k: v[1] for k, v in BEHAVIOURS.items()}}


def run_task(model: EvalModel, task: str, *, limit: Optional[int] = None, shots: Optional[int] = None,
             style: str = "cloze", seed: int = 0, batch_tokens: int = 2048, progress: bool = True) -> dict:
    from jaxllm.eval.behaviour import BEHAVIOURS
    from jaxllm.eval.bpb_task import run_bpb_task
    from jaxllm.eval.generative import GEN_TASKS, run_gen_task
    from jaxllm.eval.tasks import MC_TASKS, run_mc_task

    t0 = time.perf_counter()
    if task in MC_TASKS:
        r = run_mc_task(model, task, limit=limit, shots=shots, style=style, seed=seed, batch_tokens=batch_tokens,
                        progress=progress)
    elif task in GEN_TASKS:
        r = run_gen_task(model, task, limit=limit or 50, shots=shots, seed=seed)
    elif task == "bpb":
        r = run_bpb_task(model, limit=limit or 200)
    elif task in BEHAVIOURS:
        r = BEHAVIOURS[task][0](model, n=limit or 20, seed=seed)
    else:
        raise ValueError(f"unknown eval task {task!r}; known: {', '.join(known_tasks())}")
    r["seconds"] = time.perf_counter() - t0
    return r


def evaluate(model: EvalModel, tasks: Sequence[str], **kw) -> dict:
    """{"model", "kind", "results": {task: result}}; see run_task for the options."""
    unknown = [t for t in tasks if t not in known_tasks()]
    if unknown:
        raise ValueError(f"unknown eval task(s) {', '.join(unknown)}; known: {', '.join(known_tasks())}")
    return {"model": model.name, "kind": model.kind, "results": {t: run_task(model, t, **kw) for t in tasks}}


def summary_rows(report: dict) -> list[dict]:
    """One row per task: task, metric, value, chance, n (for tables and the report card)."""
    rows = []
    for task, r in report["results"].items():
        if r.get("kind") == "bits_per_byte":
            rows.append({"task": task, "metric": "bpb", "value": r["bpb"], "chance": None, "n": r["n"]})
        else:
            metric = r.get("metric", "accuracy")
            rows.append({"task": task, "metric": metric, "value": r["accuracy"], "chance": r.get("chance"),
                         "n": r["n"]})
            for key in sorted(k for k in r if k.startswith("pass@")):
                rows.append({"task": task, "metric": key, "value": r[key], "chance": None, "n": r["n"]})
    return rows


def format_table(rows: Sequence[dict]) -> str:
    def f(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:.4f}" if isinstance(x, float) else str(x))

    head = ["task", "metric", "value", "chance", "n"]
    body = [[f(r[h]) for h in head] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=float) + "\n")
    tmp.replace(path)
    return path
