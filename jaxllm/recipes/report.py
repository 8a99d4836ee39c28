"""`report.md` for a run: config, data and tokenizer stats, curves, evaluations and samples."""
from __future__ import annotations

import os
from pathlib import Path

import jax

from jaxllm.config import to_json
from jaxllm.recipes.experiment import RunContext


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def _fmt(x, digits=4):
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def render_report(ctx: RunContext) -> str:
    r, cfg, run_dir = ctx.results, ctx.cfg, ctx.run_dir
    lines = [f"# Run report: {cfg.name}", "", f"Run directory: `{run_dir}`", ""]
    if cfg.notes:
        lines += [cfg.notes, ""]
    lines += ["## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {res.get('seconds', '')} |" for name, res in r.items() if isinstance(res, dict)]
    lines.append("")
    if "data" in r:
        d = r["data"]
        lines += ["## Data", "", f"Sources: {', '.join(d.get('sources', []))}", "",
                  "| split | documents | UTF-8 bytes |", "|---|---|---|"]
        for split in ("train", "validation"):
            if split in d:
                lines.append(f"| {split} | {d[split]['documents']:,} | {d[split]['bytes']:,} |")
        lines.append("")
    if "tokenizer" in r:
        t = r["tokenizer"]
        merges = ", ".join(f"`{a!r}+{b!r}`" for a, b in t.get("first_merges", []))
        lines += ["## Tokenizer", "", f"Byte-level BPE, vocabulary {t['vocab_size']:,} (with special tokens); "
                  f"{t['val_tokens_per_byte']:.4f} tokens per byte on validation text.", "",
                  f"First merges: {merges}", ""]
    if "shards" in r:
        s = r["shards"]
        lines += ["## Token shards", "", "| split | documents | tokens | bytes |", "|---|---|---|---|"]
        for split, v in s.items():
            if isinstance(v, dict) and "tokens" in v:
                lines.append(f"| {split} | {v['documents']:,} | {v['tokens']:,} | {v['bytes']:,} |")
        lines.append("")
    if "pretrain" in r:
        p = r["pretrain"]
        m = cfg.model
        lines += ["## Pretraining", "",
                  f"Model: {m.family}, {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads "
                  f"({m.n_kv_heads} kv), context {m.max_seq_len}, {p.get('params', 0):,} parameters.", "",
                  f"{p['steps']} steps in {p['train_seconds']} s of training"
                  + (" (stopped by the time budget)" if p.get("stopped_by_time_budget") else "")
                  + f"; final validation loss {p['val_loss']:.4f} nats/token, **{p['val_bpb']:.4f} bits per byte**.", ""]
        for png in ("loss.png", "val_bpb.png"):
            path = run_dir / "pretrain" / png
            if path.exists():
                lines += [f"![{png}]({_rel(path, run_dir)})", ""]
        if p.get("samples"):
            lines += ["Samples at the end of pretraining:", ""]
            lines += [f"- `{s!r}`" for s in p["samples"]]
            lines.append("")
    if "evaluate" in r:
        e = r["evaluate"]
        lines += ["## Evaluation", "", "| model | validation bits per byte |", "|---|---|",
                  f"| token unigram (add-one, train counts) | {e['unigram_bpb']:.4f} |",
                  f"| this run | {e['val_bpb']:.4f} |", "",
                  f"(over {e['eval_tokens']:,.0f} validation target tokens)", ""]
        if e.get("resamples"):
            lines += ["The same prefix sampled four times (the model is a stochastic document simulator):", ""]
            lines += [f"- `{s!r}`" for s in e["resamples"]]
            lines.append("")
    extra = [k for k in r if k not in ("data", "tokenizer", "shards", "pretrain", "evaluate", "report")]
    for name in extra:
        section = r[name]
        if isinstance(section, dict) and section.get("report_md"):
            lines += [section["report_md"], ""]
    lines += ["## Config", "", "```json", to_json(cfg), "```", ""]
    return "\n".join(lines)


def report_stage(ctx: RunContext) -> dict:
    path = ctx.run_dir / "report.md"
    if jax.process_index() == 0:
        path.write_text(render_report(ctx))
    return {"path": str(path)}
