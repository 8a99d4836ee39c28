"""Pretraining input pipeline throughput (tokens/s) on real shards, side by side in one run.

Builds (once, cached under --work) a tokenizer and token shards from the default corpus mixture,
then times `make_pretrain_iterator` for both packings and a few worker settings. Compare the
tokens/s printed here with what a train step consumes (tokens per step / step time): the issue asks
for at least 10x headroom. Pass --train-tokens-per-s to print that ratio.

    python benchmarks/pipeline_bench.py [--batches 200] [--seq-len 256] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from jaxllm.data import pipeline as P
from jaxllm.data.shards import read_manifest, write_shards
from jaxllm.fetch import cache_dir


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, to report how loaded it was during a sample."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def build(work: Path, vocab: int, max_docs: int) -> Path:
    """Tokenizer + shards from the default corpus mixture (reused when already built)."""
    from jaxllm.data.sources import DataConfig, documents
    from jaxllm.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

    tok_dir, shard_dir = work / f"tok{vocab}", work / f"shards{vocab}"
    data = DataConfig(max_documents=max_docs)
    if not (tok_dir / "tokenizer.tiktoken").exists():
        t = time.perf_counter()
        tok = train_tokenizer((d["text"] for d in documents(data, "train")),
                              TokenizerConfig(vocab_size=vocab, trainer="hf", max_train_bytes=5_000_000))
        tok.save(tok_dir)
        print(f"tokenizer: vocab {vocab} trained in {time.perf_counter() - t:.1f}s")
    if not (shard_dir / "manifest.json").exists():
        t = time.perf_counter()
        m = write_shards(documents(data, "train"), str(tok_dir), str(shard_dir), num_shards=8, num_workers=2)
        dt = time.perf_counter() - t
        print(f"write_shards: {m['documents']} docs, {m['tokens']:,} tokens, {m['bytes']:,} bytes in {dt:.1f}s "
              f"({m['tokens'] / dt:,.0f} tokens/s with 2 worker processes)")
    Tokenizer.load(tok_dir)  # fail early on a broken cache
    return shard_dir


def measure(shard_dir: Path, cfg: P.PipelineConfig, batches: int) -> dict:
    it = P.make_pretrain_iterator(str(shard_dir), cfg)
    try:
        t0 = time.perf_counter()
        first = next(it)  # startup: opening shards, spawning workers, filling buffers
        startup = time.perf_counter() - t0
        busy0, tot0 = cpu_busy()
        real = 0
        t = time.perf_counter()
        for _ in range(batches):
            b = next(it)
            real += int(np.asarray(b["loss_mask"]).sum())
        dt = time.perf_counter() - t
        busy1, tot1 = cpu_busy()
    finally:
        if hasattr(it, "close"):
            it.close()
    rows = batches * cfg.batch_size * cfg.seq_len
    assert first["inputs"].shape == (cfg.batch_size, cfg.seq_len)
    return {"tokens_s": rows / dt, "real_tokens_s": real / dt, "padding": 1 - real / rows,
            "startup_s": startup, "cpu_load": (busy1 - busy0) / max(tot1 - tot0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", help="an existing shard directory (default: build from the default corpus)")
    ap.add_argument("--work", default=str(cache_dir() / "bench-pipeline"), help="where to build tokenizer + shards")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-docs", type=int, default=0, help="cap the corpus (0 = all)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    ap.add_argument("--train-tokens-per-s", type=float, default=0.0,
                    help="tokens/s a train step consumes (tokens per step / step time) to print headroom")
    args = ap.parse_args()

    shard_dir = Path(args.shards) if args.shards else build(Path(args.work), args.vocab, args.max_docs)
    m = read_manifest(shard_dir)
    print(f"shards: {shard_dir} — {m['documents']:,} docs, {m['tokens']:,} tokens, "
          f"{m['bytes'] / m['tokens']:.2f} bytes/token, {os.cpu_count()} CPUs")
    print(f"{'packing':8} {'workers':>7} {'prefetch':>8} {'row tok/s':>12} {'real tok/s':>12} {'vs first':>8} "
          f"{'padding':>8} {'startup':>8} {'machine busy':>12}")
    results = {}
    for packing in ("concat", "bestfit"):
        for workers in args.workers:
            for prefetch in ((0, 2) if workers == 0 else (2,)):
                cfg = P.PipelineConfig(seq_len=args.seq_len, batch_size=args.batch_size, packing=packing,
                                       num_workers=workers, prefetch=prefetch)
                r = measure(shard_dir, cfg, args.batches)
                results[(packing, workers, prefetch)] = r
                ratio = r["real_tokens_s"] / next(iter(results.values()))["real_tokens_s"]
                print(f"{packing:8} {workers:7d} {prefetch:8d} {r['tokens_s']:12,.0f} {r['real_tokens_s']:12,.0f} "
                      f"{ratio:7.2f}x {r['padding']:8.1%} {r['startup_s']:7.2f}s {r['cpu_load']:12.0%}")
    print("real tok/s counts target tokens (not padding); machine busy = all CPUs' busy share during the "
          "sample (~1/cores is this process alone; near 100% means other load skewed the numbers)")
    best = max(results.values(), key=lambda r: r["real_tokens_s"])
    if args.train_tokens_per_s:
        print(f"headroom: best pipeline {best['real_tokens_s']:,.0f} real tokens/s = "
              f"{best['real_tokens_s'] / args.train_tokens_per_s:.1f}x the train step's {args.train_tokens_per_s:,.0f}")


if __name__ == "__main__":
    main()
