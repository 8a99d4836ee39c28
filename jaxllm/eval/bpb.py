"""Bits per byte: tokenizer-independent loss, so runs with different vocabularies compare.

bpb = (sum of target-token losses in nats) / ln 2 / (UTF-8 bytes those target tokens spell).
Special tokens (BOS) spell zero bytes.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from jaxllm.data.pipeline import target_bytes, token_byte_lengths  # noqa: F401  (re-exported)


def bits_per_byte(nats: float, n_bytes: float) -> float:
    return nats / math.log(2) / max(n_bytes, 1.0)


def evaluate_loss_and_bpb(eval_fn: Callable[[dict], tuple], batches: Iterable[dict],
                          byte_lengths: np.ndarray) -> dict:
    """Run `eval_fn(batch) -> (summed nats, token count)` over batches; return loss, bpb and counts."""
    nats = tokens = n_bytes = 0.0
    for batch in batches:
        s, t = eval_fn(batch)
        nats += float(s)
        tokens += float(t)
        n_bytes += target_bytes(batch, byte_lengths)
    return {"loss": nats / max(tokens, 1.0), "bpb": bits_per_byte(nats, n_bytes), "tokens": tokens, "bytes": n_bytes}


def unigram_bpb(train_counts: np.ndarray, batches: Iterable[dict], byte_lengths: np.ndarray) -> float:
    """bpb of a token unigram model (add-one smoothed counts from training data): the floor to beat."""
    probs = (train_counts + 1.0) / (train_counts.sum() + len(train_counts))
    neg_log = -np.log(probs)
    nats = n_bytes = 0.0
    for batch in batches:
        targets, mask = np.asarray(batch["targets"]), np.asarray(batch["loss_mask"])
        nats += float(np.sum(neg_log[targets] * mask))
        n_bytes += target_bytes(batch, byte_lengths)
    return bits_per_byte(nats, n_bytes)
