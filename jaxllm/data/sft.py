"""SFT data: weighted mixtures of conversation JSONL → rendered, masked rows in the pretraining batch format.

Batches are dicts of [batch, seq_len] arrays with the keys of `jaxllm.data.pipeline` (inputs, targets,
segment_ids, positions: int32; loss_mask: float32), so the pretraining train step runs unchanged:
loss_mask is 1 only where the target is a token the assistant writes.

    data = load_sft_data(SFTDataConfig(files=("identity.jsonl", "arith.jsonl"), weights=(2.0, 1.0)), tok)
    it = make_sft_iterator(data.train, cfg)                 # endless, shuffled, resumable (grain)
    for batch in make_sft_eval_batches(data.validation, cfg): ...

Held-out split: a conversation is held out when the hash of its id (or, without one, of everything
but the assistant's words) falls below val_fraction, so one question never lands in both splits and
the split does not depend on file order or the mixture. Conversations longer than the context are
split at turn boundaries or dropped, and counted (`data.summary()`), never truncated mid-turn.
Packing ("pack") places whole conversations into rows by best fit (each is its own segment:
attention and positions restart); "pad" puts one conversation per row.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np

from jaxllm.data.chat import FitStats, fit_conversation, get_template, read_jsonl
from jaxllm.data.pipeline import _LIVE, _pad_batch, batches_of_rows
from jaxllm.data.sources import DataError, _unit_hash


@dataclass(frozen=True)
class SFTDataConfig:
    files: tuple[str, ...] = ()  # conversation JSONL files ({"messages": [...]} per line)
    weights: tuple[float, ...] = ()  # per file; empty = 1 each; 2.0 repeats a file's conversations twice
    template: str = "jaxllm"  # chat template: jaxllm, video, chatml, smollm2 (see jaxllm/data/chat.py)
    seq_len: int = 256  # tokens per row
    batch_size: int = 16  # rows per batch, per process
    seed: int = 0
    packing: Literal["pack", "pad"] = "pack"
    val_fraction: float = 0.05  # held-out conversations (by hash), for the held-out SFT loss
    overlong: Literal["split", "drop"] = "split"  # conversations longer than seq_len+1 tokens
    on_error: Literal["fail", "skip"] = "fail"  # malformed conversations: fail naming file:line, or skip+count

    def __post_init__(self):
        if self.weights and len(self.weights) != len(self.files):
            raise DataError(f"sft.weights has {len(self.weights)} entries but sft.files has {len(self.files)}; "
                            "give one weight per file or none")
        if any(w < 0 for w in self.weights):
            raise DataError(f"sft.weights must be >= 0, got {list(self.weights)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"sft.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.packing not in ("pack", "pad"):
            raise DataError(f"sft.packing={self.packing!r}: use 'pack' or 'pad'")


def split_key(conversation: dict) -> str:
    """What decides a conversation's split: its id, else everything but the assistant's words."""
    if conversation.get("id") is not None:
        return str(conversation["id"])
    return json.dumps([[m.get("role"), m.get("content")] for m in conversation["messages"]
                       if m.get("role") in ("system", "user")], ensure_ascii=False, sort_keys=True)


def is_held_out(conversation: dict, val_fraction: float) -> bool:
    return _unit_hash("sft-split", split_key(conversation)) < val_fraction


def example(ids: list[int], mask: list[int]) -> dict[str, np.ndarray]:
    """Rendered (ids [n], mask [n]) → next-token pairs: inputs, targets, loss_mask, each [n-1]."""
    ids_a = np.asarray(ids, np.int32)
    return {"inputs": ids_a[:-1], "targets": ids_a[1:], "loss_mask": np.asarray(mask[1:], np.float32)}


@dataclass
class SFTData:
    """Rendered examples of both splits and the counts behind them."""
    train: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    train_stats: FitStats = field(default_factory=FitStats)
    validation_stats: FitStats = field(default_factory=FitStats)
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)  # file → {train, validation, repeats}
    errors: list[str] = field(default_factory=list)  # skipped malformed records (on_error="skip")

    def summary(self) -> str:
        lines = [f"{f}: {c['train']} train ({c['repeats']} after weighting), {c['validation']} held out"
                 for f, c in self.per_file.items()]
        lines += [f"train: {self.train_stats.summary()}", f"validation: {self.validation_stats.summary()}"]
        if self.errors:
            lines.append(f"skipped {len(self.errors)} malformed conversation(s), first: {self.errors[0]}")
        return "\n".join(lines)


def _copies(key: str, weight: float) -> int:
    """floor(w) copies plus one more with probability frac(w), decided by the hash (stable across runs)."""
    whole, frac = int(weight), weight - int(weight)
    return whole + int(frac > 0 and _unit_hash("sft-weight", key) < frac)


def load_sft_data(cfg: SFTDataConfig, tokenizer) -> SFTData:
    """Read, validate, split, weight and render the mixture (eagerly: counts are known before training)."""
    if not cfg.files:
        raise DataError("sft.files is empty; write conversations with `jaxllm sft generate NAME --out FILE`")
    template = get_template(cfg.template)
    weights = cfg.weights or (1.0,) * len(cfg.files)
    data = SFTData()
    for path, weight in zip(cfg.files, weights):
        counts = {"train": 0, "validation": 0, "repeats": 0}
        for where, conv in read_jsonl(path, on_error=cfg.on_error, errors=data.errors):
            held = is_held_out(conv, cfg.val_fraction)
            counts["validation" if held else "train"] += 1
            copies = 1 if held else _copies(where + split_key(conv), weight)
            if copies == 0:
                continue
            stats = data.validation_stats if held else data.train_stats
            pieces = fit_conversation(conv, tokenizer, template, cfg.seq_len + 1, cfg.overlong, where, stats)
            rows = [example(ids, mask) for ids, mask in pieces if len(ids) >= 2]
            (data.validation if held else data.train).extend(rows * copies)
            counts["repeats"] += 0 if held else copies
        data.per_file[str(path)] = counts
    if not data.train:
        raise DataError(f"no training conversations left in {', '.join(cfg.files)} after the split and fitting "
                        f"into seq_len={cfg.seq_len} ({data.train_stats.summary()}); raise seq_len or add data")
    return data


def _pad_row(ex: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One conversation per row, right-padded: the row fields, [seq_len] each."""
    n = len(ex["inputs"])
    out = {k: np.zeros(seq_len, v.dtype) for k, v in ex.items()}
    for k, v in ex.items():
        out[k][:n] = v
    seg = np.zeros(seq_len, np.int32)
    seg[:n] = 1
    pos = np.zeros(seq_len, np.int32)
    pos[:n] = np.arange(n)
    return {"inputs": out["inputs"], "targets": out["targets"], "segment_ids": seg, "positions": pos,
            "loss_mask": out["loss_mask"] * (seg > 0)}


def _finalize_packed(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    seg = ex["inputs_segment_ids"].astype(np.int32)
    return {"inputs": ex["inputs"].astype(np.int32), "targets": ex["targets"].astype(np.int32),
            "segment_ids": seg,  # 1, 2, ... per conversation in the row; 0 = padding
            "positions": ex["inputs_positions"].astype(np.int32),
            "loss_mask": ex["loss_mask"].astype(np.float32) * (seg > 0)}


def _rows(examples, cfg: SFTDataConfig):
    """MapDataset of examples → IterDataset of rows (dicts of [seq_len] arrays)."""
    import grain
    import grain.experimental as ge

    rows = examples.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if cfg.packing == "pad":
        return rows.map(functools.partial(_pad_row, seq_len=cfg.seq_len))
    lengths = {"inputs": cfg.seq_len, "targets": cfg.seq_len, "loss_mask": cfg.seq_len}
    rows = ge.BestFitPackIterDataset(rows, length_struct=lengths, num_packing_bins=max(cfg.batch_size, 8),
                                     seed=cfg.seed, shuffle_bins=True)
    return rows.map(_finalize_packed)


def make_sft_iterator(examples: list[dict], cfg: SFTDataConfig, process_index: int = 0, process_count: int = 1,
                      num_epochs: int | None = None, prefetch: int = 2):
    """A grain DatasetIterator of numpy batches (the pretraining batch format), [cfg.batch_size, cfg.seq_len]
    each; this process reads a disjoint slice of the examples, reshuffled every epoch; endless when
    num_epochs is None. `get_state()`/`set_state()` resume exactly."""
    import grain
    import grain.experimental as ge

    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, {process_count})")
    if len(examples) < process_count:
        raise DataError(f"{len(examples)} SFT examples, fewer than {process_count} processes; add data")
    ds = grain.MapDataset.source(examples)[process_index::process_count].seed(cfg.seed).shuffle().repeat(num_epochs)
    batches = _rows(ds, cfg).batch(cfg.batch_size, drop_remainder=False)
    batches = batches.map(functools.partial(_pad_batch, batch_size=cfg.batch_size))
    if prefetch > 0:
        batches = ge.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)
    it = iter(batches)
    if prefetch > 0:
        _LIVE.add(it)  # closed at exit like the pretraining iterators
    return it


def make_sft_eval_batches(examples: list[dict], cfg: SFTDataConfig, max_batches: int | None = None,
                          process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Held-out batches in a fixed order, each trained-on target exactly once over all processes (when
    max_batches is None); every process gets the same number of batches (short ones padded)."""
    import grain

    cfg = dataclasses.replace(cfg, seed=0)
    rows = _rows(grain.MapDataset.source(examples), cfg)
    return batches_of_rows(rows, cfg.batch_size, cfg.seq_len, max_batches, process_index, process_count)
