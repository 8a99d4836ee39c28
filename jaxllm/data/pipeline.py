"""Grain pretraining pipeline: token shards → shuffled, packed, batched rows with segment ids.

Each document [BOS, t1..tn] becomes (inputs=[BOS, t1..tn-1], targets=[t1..tn]) *before* packing,
so a target never belongs to another document and no prediction is lost when a document is split
across rows. Packing (see docs/pipeline.md): "concat" concatenates and splits into rows of
`seq_len` (no padding, the default), "bestfit" places whole documents (or seq_len chunks of long
ones) into rows by best fit and pads the rest. The iterator is a grain DatasetIterator: its
`get_state()`/`set_state()` resume exactly, also in a new process.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import gc
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np

from jaxllm.data.shards import ShardSource, read_manifest

FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


@dataclass(frozen=True)
class PipelineConfig:
    seq_len: int = 256  # tokens per row
    batch_size: int = 16  # rows per batch, per process
    seed: int = 0  # document shuffle (a new order each epoch) and best-fit bin shuffle
    packing: Literal["concat", "bestfit"] = "concat"
    num_workers: int = 0  # grain worker processes (0: in the calling process)
    # batches read ahead by a background thread (0 workers) or per worker process. 0 by default:
    # JAX's async dispatch already overlaps next(it) with the running step, and on a 2-core CPU a
    # prefetch thread only competes with the step for the GIL and cores (benchmarks/pipeline_bench.py)
    prefetch: int = 0

    def __post_init__(self):
        for name in ("seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PipelineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.prefetch < 0:
            raise ValueError(f"PipelineConfig.num_workers and .prefetch must be >= 0, "
                             f"got {self.num_workers} and {self.prefetch}")


_LIVE: weakref.WeakSet = weakref.WeakSet()  # prefetching iterators, closed before interpreter teardown


@atexit.register
def _close_live() -> None:
    """Close live prefetching iterators while grain's modules still exist; then turn off grain's
    `DatasetIterator.__del__`, which (grain 0.2.18) prints TypeErrors during interpreter teardown."""
    grain = sys.modules.get("grain")
    if grain is None:  # this process never built a pipeline
        return
    gc.collect()
    for it in list(_LIVE):
        it.close()
    grain.DatasetIterator.__del__ = lambda self: None


def _has_pairs(doc: np.ndarray) -> bool:
    return len(doc) >= 2  # a BOS-only (empty) document predicts nothing


def _pairs(doc: np.ndarray) -> dict[str, np.ndarray]:
    """One document [n] → next-token pairs: inputs [n-1], targets [n-1]."""
    doc = doc.astype(np.int32)
    return {"inputs": doc[:-1], "targets": doc[1:]}


class _Chunks:
    """Flat-map a document's pairs into pieces of at most seq_len (best-fit packing needs them)."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def flat_map(self, ex: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        n = len(ex["inputs"])
        return [{k: v[i:i + self.seq_len] for k, v in ex.items()} for i in range(0, n, self.seq_len)]


def _finalize(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Packed row (grain's *_segment_ids/*_positions names) → our row fields, [seq_len] each."""
    seg = ex["inputs_segment_ids"].astype(np.int32)
    return {
        "inputs": ex["inputs"].astype(np.int32),
        "targets": ex["targets"].astype(np.int32),
        "segment_ids": seg,  # 1, 2, 3... per document piece in the row; 0 = padding
        "positions": ex["inputs_positions"].astype(np.int32),  # position within the piece
        "loss_mask": (seg > 0).astype(np.float32),  # targets are always same-document by construction
    }


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Pad a short final batch with empty rows (loss_mask 0) so every batch has the same shape."""
    n = len(batch["inputs"])
    if n == batch_size:
        return batch
    return {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


def _own_arrays(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copy worker batches out of grain's shared memory into ordinary arrays the caller owns."""
    return {k: np.array(v) for k, v in batch.items()}


def _packed_rows(docs, cfg: PipelineConfig):
    """MapDataset of token arrays → IterDataset of packed rows (dicts of [seq_len] arrays)."""
    import grain
    import grain.experimental as ge

    rows = docs.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    rows = rows.filter(_has_pairs).map(_pairs)
    lengths = {"inputs": cfg.seq_len, "targets": cfg.seq_len}
    if cfg.packing == "concat":
        rows = ge.ConcatThenSplitIterDataset(rows, length_struct=lengths)
    elif cfg.packing == "bestfit":
        rows = ge.FlatMapIterDataset(rows, _Chunks(cfg.seq_len))
        rows = ge.BestFitPackIterDataset(rows, length_struct=lengths, num_packing_bins=max(cfg.batch_size, 8),
                                         seed=cfg.seed, shuffle_bins=True)
    else:
        raise ValueError(f"PipelineConfig.packing={cfg.packing!r}: use 'concat' or 'bestfit'")
    return rows.map(_finalize)


def process_documents(shard_dir: str, cfg: PipelineConfig, process_index: int = 0, process_count: int = 1,
                      num_epochs: int | None = None):
    """This process's documents as a grain MapDataset: a disjoint slice, shuffled anew each epoch."""
    import grain

    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, {process_count})")
    docs = grain.MapDataset.source(ShardSource(shard_dir))
    if len(docs) < process_count:
        raise ValueError(f"{shard_dir} has {len(docs)} documents, fewer than {process_count} processes")
    docs = docs[process_index::process_count]  # disjoint slices that together cover every document
    return docs.seed(cfg.seed).shuffle().repeat(num_epochs)  # repeat after shuffle: new order per epoch


def make_pretrain_iterator(shard_dir: str, cfg: PipelineConfig, process_index: int = 0,
                           process_count: int = 1, num_epochs: int | None = None):
    """A grain DatasetIterator of numpy batches {inputs, targets, segment_ids, positions: int32, loss_mask:
    float32}, each [cfg.batch_size, cfg.seq_len]. Endless when num_epochs is None; with a finite
    number of epochs the last batch is padded with empty rows (and processes may differ in length).
    """
    import grain
    import grain.experimental as ge

    rows = _packed_rows(process_documents(shard_dir, cfg, process_index, process_count, num_epochs), cfg)
    batches = rows.batch(cfg.batch_size, drop_remainder=False)
    batches = batches.map(functools.partial(_pad_batch, batch_size=cfg.batch_size))
    if cfg.num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's multiprocessing reads absl flags
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=max(cfg.prefetch, 1)))
        batches = batches.map(_own_arrays)
    elif cfg.prefetch > 0:
        batches = ge.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=cfg.prefetch)
    it = iter(batches)
    if cfg.num_workers > 0 or cfg.prefetch > 0:
        _LIVE.add(it)  # threads/processes behind it: close at exit (or call it.close() yourself)
    return it


def make_eval_batches(shard_dir: str, cfg: PipelineConfig, max_batches: int | None = None,
                      process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic validation batches: documents in shard order, packed like training, each
    target token exactly once over all processes (when max_batches is None). Every process gets
    the same number of batches (short ones padded with empty rows), so collectives never hang.
    """
    import grain

    cfg = dataclasses.replace(cfg, seed=0)
    rows = _packed_rows(grain.MapDataset.source(ShardSource(shard_dir)), cfg)
    return batches_of_rows(rows, cfg.batch_size, cfg.seq_len, max_batches, process_index, process_count)


def batches_of_rows(rows, batch_size: int, seq_len: int, max_batches: int | None = None, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic batches from an iterable of rows: each global group of rows is cut into per-process
    slices; every process gets the same number of batches (short ones padded with empty rows)."""
    rows = iter(rows)
    global_rows = batch_size * process_count
    done = 0
    while max_batches is None or done < max_batches:
        group = [row for _, row in zip(range(global_rows), rows)]
        if not group:
            return
        mine = group[process_index * batch_size:(process_index + 1) * batch_size]
        if mine:
            batch = {k: np.stack([r[k] for r in mine]) for k in FIELDS}
        else:
            batch = {k: np.zeros((0, seq_len), np.float32 if k == "loss_mask" else np.int32) for k in FIELDS}
        yield _pad_batch(batch, batch_size)
        done += 1


def token_byte_lengths(tokenizer) -> np.ndarray:
    """[n_vocab] int32: UTF-8 bytes each token id stands for (0 for special tokens such as BOS).

    With it, `target_bytes(batch, table)` counts exactly the bytes a batch's targets cover, so
    bits per byte is exact for any subset of batches (byte-level BPE: a document's token byte
    lengths sum to its UTF-8 length, which the manifest's `bytes` records).
    """
    special = set(getattr(tokenizer, "special_ids", {}).values()) | {tokenizer.bos_id}
    table = np.zeros(tokenizer.n_vocab, np.int32)
    for i in range(tokenizer.n_vocab):
        if i not in special:
            try:
                table[i] = len(tokenizer.token_bytes(i))
            except KeyError:  # an unused id in the vocabulary
                pass
    return table


def target_bytes(batch: dict[str, np.ndarray], table: np.ndarray) -> int:
    """UTF-8 bytes covered by the counted (loss_mask > 0) target tokens of a batch."""
    return int((table[batch["targets"]] * (batch["loss_mask"] > 0)).sum())


def bytes_per_token(shard_dir: str) -> float:
    """Corpus-average UTF-8 bytes per text token from the manifest (exact over a full epoch)."""
    m = read_manifest(shard_dir)
    return m["bytes"] / max(m["tokens"], 1)


def describe_batch(batch: dict[str, Any], tokenizer, max_rows: int | None = None, max_chars: int = 200) -> str:
    """Readable view of a batch: per row, each document piece (segment) decoded on its own line."""
    inputs, targets = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
    seg, pos, mask = np.asarray(batch["segment_ids"]), np.asarray(batch["positions"]), np.asarray(batch["loss_mask"])
    b, length = inputs.shape
    pieces = sum(len(np.unique(row[row > 0])) for row in seg)
    lines = [f"batch [{b}, {length}]: {pieces} document pieces, {int((seg > 0).sum())} tokens, "
             f"{int((seg == 0).sum())} padding, {int(mask.sum())} counted targets"]
    for r in range(b if max_rows is None else min(b, max_rows)):
        lines.append(f"row {r}:")
        for s in [s for s in np.unique(seg[r]) if s > 0]:
            idx = np.flatnonzero(seg[r] == s)
            # the segment's text = its inputs plus its last target (the next token it predicts)
            text = tokenizer.decode([int(t) for t in inputs[r, idx]] + [int(targets[r, idx[-1]])])
            if len(text) > max_chars:
                text = text[: max_chars // 2] + " … " + text[-max_chars // 2:]
            lines.append(f"  seg {s} pos {pos[r, idx[0]]}..{pos[r, idx[-1]]} ({len(idx)} tokens): {text!r}")
        pad = int((seg[r] == 0).sum())
        if pad:
            lines.append(f"  padding: {pad} tokens")
    return "\n".join(lines)
