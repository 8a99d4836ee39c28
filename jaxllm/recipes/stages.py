"""The pretraining stages of an experiment: data → tokenizer → shards → pretrain → evaluate.

Each stage takes the RunContext, writes under its own folder of the run directory, and returns a
small JSON-able dict (recorded in stages.json and used by the report). Stages are idempotent:
re-running one after a crash resumes or redoes it without corrupting what is there.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os

import numpy as np

from jaxllm.data import sources
from jaxllm.data.pipeline import make_eval_batches
from jaxllm.data.shards import ShardSource, write_shards
from jaxllm.data.web import register_output, run_pipeline
from jaxllm.data.web.recipe import build_warcs
from jaxllm.eval.bpb import token_byte_lengths, unigram_bpb
from jaxllm.recipes.experiment import RunContext
from jaxllm.recipes.pretrain import load_params, pretrain, sample_texts
from jaxllm.tokenizer import Tokenizer, train_tokenizer


def _documents(ctx: RunContext, split: str):
    register_web_output(ctx)
    docs = sources.documents(ctx.cfg.data, split)
    plan = planted_documents(ctx)
    return docs if plan is None else with_planted(docs, plan, split)


# ---------------------------------------------------------------- the regurgitation demo's planted documents
def planted_documents(ctx: RunContext) -> dict | None:
    """Two held-aside documents for the regurgitation demo, or None when planting is off.

    On when the run has a `demos` stage and demos.plant_repeats > 0: the first two validation documents
    of a moderate length (demos.plant_chars) leave the validation split; one ("repeated") goes into the
    training split plant_repeats times, the other ("once") once, as the control. Decided once and kept
    in data/planted.json, so the tokenizer and shards stages (and a resumed run) plant the same ones.
    """
    demos = getattr(ctx.cfg, "demos", None)
    if demos is None or demos.plant_repeats <= 0 or "demos" not in ctx.cfg.stages:
        return None
    path = ctx.run_dir / "data" / "planted.json"
    if path.exists():
        return json.loads(path.read_text())
    lo, hi = demos.plant_chars
    register_web_output(ctx)
    picked = list(itertools.islice((d for d in sources.documents(ctx.cfg.data, "validation")
                                    if lo <= len(d["text"]) <= hi), 2))
    if len(picked) < 2:
        raise ValueError(f"demos.plant_chars={demos.plant_chars}: fewer than two validation documents of that many "
                         "characters to plant; widen the range or set demos.plant_repeats=0")
    plan = {"repeats": demos.plant_repeats,
            "repeated": {"source_id": picked[0]["id"], "text": picked[0]["text"]},
            "once": {"source_id": picked[1]["id"], "text": picked[1]["text"]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".planted.json.tmp")
    tmp.write_text(json.dumps(plan, indent=1))
    os.replace(tmp, path)
    return plan


def with_planted(docs, plan: dict, split: str):
    """`docs` without the two planted documents, plus (in the training split) their planted copies first."""
    held = {plan["repeated"]["source_id"], plan["once"]["source_id"]}
    if split in ("train", "all"):
        for i in range(plan["repeats"]):
            yield {"id": f"planted/repeated/{i}", "text": plan["repeated"]["text"], "source": "planted",
                   "meta": {"planted": "repeated", "copy": i}}
        yield {"id": "planted/once", "text": plan["once"]["text"], "source": "planted", "meta": {"planted": "once"}}
    for doc in docs:
        if doc["id"] not in held:
            yield doc


def register_web_output(ctx: RunContext) -> None:
    """Make the web stage's output the data source `web` (also when a resumed run skips that stage)."""
    if "web" in ctx.cfg.stages:
        register_output("web", ctx.run_dir / "web" / "output")


def web_stage(ctx: RunContext) -> dict:
    """Real pages packed as WARC (+ planted cases) → the FineWeb-style pipeline → clean JSONL documents."""
    out = ctx.stage_dir("web")
    warcs = build_warcs(ctx.cfg.web_recipe, out / "input")
    stats = run_pipeline(ctx.cfg.web, warcs, out / "output", num_workers=os.cpu_count() or 1)
    table = (out / "output" / "stats.md").read_text() if (out / "output" / "stats.md").exists() else ""
    return {"docs_in": stats.get("docs_in"), "docs_out": stats.get("docs_out"), "stages": stats.get("stages"),
            "report_md": "## Web data (FineWeb-style pipeline)\n\n" + table}


def data_stage(ctx: RunContext) -> dict:
    """Fetch every source of the mixture into the cache and count documents and bytes per split."""
    stats: dict = {}
    register_web_output(ctx)
    for name in ctx.cfg.data.sources:
        source = sources.get_source(name)
        source.fetch()
    for split in ("train", "validation"):
        n_docs = n_bytes = 0
        for doc in _documents(ctx, split):
            n_docs += 1
            n_bytes += len(doc["text"].encode("utf-8"))
        stats[split] = {"documents": n_docs, "bytes": n_bytes}
    plan = planted_documents(ctx)
    if plan is not None:
        stats["planted"] = {"repeats": plan["repeats"], "repeated": plan["repeated"]["source_id"],
                            "once": plan["once"]["source_id"], "chars": [len(plan[k]["text"]) for k in ("repeated", "once")]}
    return {"sources": list(ctx.cfg.data.sources), **stats}


def tokenizer_stage(ctx: RunContext) -> dict:
    """Train the BPE tokenizer on the training split and measure tokens per byte on validation."""
    out = ctx.stage_dir("tokenizer")
    if (out / "tokenizer.json").exists() or any(out.glob("*.tiktoken")):
        try:
            tok = Tokenizer.load(out)
        except Exception:
            tok = None
    else:
        tok = None
    if tok is None:
        tok = train_tokenizer((d["text"] for d in _documents(ctx, "train")), ctx.cfg.tokenizer)
        tok.save(out)
    val_texts = [d["text"] for d in itertools.islice(_documents(ctx, "validation"), 2000)]
    n_tokens = sum(len(ids) for ids in tok.encode_batch(val_texts))
    n_bytes = sum(len(t.encode("utf-8")) for t in val_texts)
    merges = [(a.decode("utf-8", "replace"), b.decode("utf-8", "replace")) for a, b in tok.first_merges(10)]
    return {"dir": str(out), "vocab_size": tok.n_vocab, "val_tokens_per_byte": n_tokens / max(n_bytes, 1),
            "first_merges": merges}


def shards_stage(ctx: RunContext) -> dict:
    tok_dir = ctx.results["tokenizer"]["dir"]
    out = {}
    for split, num_shards in (("train", 8), ("validation", 1)):
        shard_dir = ctx.stage_dir("shards") / split
        manifest = write_shards(_documents(ctx, split), tok_dir, str(shard_dir), num_shards=num_shards, num_workers=2)
        out[split] = {"dir": str(shard_dir), "documents": manifest["documents"], "tokens": manifest["tokens"],
                      "bytes": manifest["bytes"]}
    return out


def pretrain_stage(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    tok = Tokenizer.load(ctx.results["tokenizer"]["dir"])
    model_cfg = model_for_tokenizer(cfg.model, tok)
    shards = ctx.results["shards"]
    result = pretrain(ctx.stage_dir("pretrain"), model_cfg, cfg.mesh, cfg.optim, cfg.train, cfg.pipeline,
                      shards["train"]["dir"], shards["validation"]["dir"], tok, cfg.sample, seed=cfg.seed)
    return result


def model_for_tokenizer(model_cfg, tok):
    """The model config with its vocabulary fitted to the trained tokenizer."""
    if model_cfg.vocab_size != tok.n_vocab:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tok.n_vocab)
    return model_cfg


def evaluate_stage(ctx: RunContext) -> dict:
    """Validation bpb against a token-unigram baseline, and several samples from one prefix."""
    cfg = ctx.cfg
    tok = Tokenizer.load(ctx.results["tokenizer"]["dir"])
    shards = ctx.results["shards"]
    counts = np.zeros(tok.n_vocab, np.float64)
    train_src = ShardSource(shards["train"]["dir"])
    for i in range(len(train_src)):
        np.add.at(counts, train_src[i][1:].astype(np.int64), 1)  # skip BOS: it is never a target
    byte_lengths = token_byte_lengths(tok)
    batches = list(make_eval_batches(shards["validation"]["dir"], cfg.pipeline, cfg.train.eval_batches))
    baseline = unigram_bpb(counts, batches, byte_lengths)
    model_cfg = model_for_tokenizer(cfg.model, tok)
    params = load_params(ctx.run_dir / "pretrain", model_cfg, cfg.optim, cfg.mesh)
    prefix = cfg.sample.prompts[0] if cfg.sample.prompts else "The"
    resamples = sample_texts(params, model_cfg, tok, [prefix] * 4, cfg.sample.max_new_tokens,
                             cfg.sample.temperature, cfg.sample.top_k, cfg.sample.top_p, seed=cfg.sample.seed + 1)
    return {"val_bpb": ctx.results["pretrain"]["val_bpb"], "unigram_bpb": baseline,
            "eval_tokens": float(sum(b["loss_mask"].sum() for b in batches)), "resamples": resamples}
