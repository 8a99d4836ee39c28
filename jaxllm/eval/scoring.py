"""Log-likelihood scoring of continuations and multiple-choice decisions (pure functions + one jitted forward).

A request is (context ids, continuation ids); its score is sum log p(continuation | context). Many
requests are scored together: sorted by length, right-padded into buckets of a few fixed lengths
(so a suite compiles a handful of shapes, not one per batch), one forward pass per batch.

Tokenization of options follows lm-eval-harness: trailing whitespace of the context moves to the
option, then context + option is tokenized as one string and the option's tokens are the suffix
after the longest common prefix with the tokenized context. So " Paris" after "Answer:" is scored
as the single token the model would really see, and an option that merges with the end of the
context ("... the ma" + "t") is scored on the merged token rather than on an impossible split.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.model import ModelConfig, Transformer, token_log_probs

Normalize = Literal["sum", "tokens", "bytes"]
TIE_ATOL = 1e-6  # log-likelihoods closer than this count as tied


@dataclass(frozen=True)
class Request:
    """One continuation to score: context token ids (non-empty) and continuation token ids (non-empty)."""
    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class Score:
    logprob: float  # sum of log p over the continuation tokens (nats)
    n_tokens: int
    greedy: bool  # every continuation token was the model's argmax


def split_continuation(encode: Callable[[str], list[int]], context: str, continuation: str,
                       prefix: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) with the continuation as the suffix difference of one tokenization.

    `prefix` (e.g. [BOS]) goes in front of the context. An empty context scores the continuation from
    the prefix alone; with neither, there is nothing to condition on and this raises.
    """
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    if not continuation:
        raise ValueError("split_continuation: empty continuation; every option needs some text")
    whole = encode(context + continuation)
    ctx = encode(context) if context else []
    k = 0
    while k < min(len(ctx), len(whole)) and ctx[k] == whole[k]:
        k += 1
    k = min(k, len(whole) - 1)  # the continuation always keeps at least one token
    context_ids = list(prefix) + whole[:k]
    if not context_ids:
        raise ValueError(f"split_continuation: nothing to condition {continuation!r} on; pass prefix=[bos_id]")
    return context_ids, whole[k:]


def bucket_length(n: int, minimum: int = 32) -> int:
    """Padded length for n tokens: the next of minimum * (1, 2, 3, 4, 6, 8, 12, 16, ...), i.e. powers of two
    and 1.5x powers of two, so a suite compiles few shapes and pads at most a third."""
    k = minimum
    while True:
        if n <= k:
            return k
        if k >= 2 * minimum and n <= k * 3 // 2:
            return k * 3 // 2
        k *= 2


@functools.partial(jax.jit, static_argnames=("cfg",))
def score_batch(params, cfg: ModelConfig, inputs: jax.Array, targets: jax.Array, mask: jax.Array,
                segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum of masked target log-probs [batch] and whether every masked target was the argmax [batch].

    inputs/targets/segment_ids int32 [batch, length]; mask float32 [batch, length] (1 = continuation).
    """
    logits = Transformer(cfg).apply({"params": params}, inputs, segment_ids=segment_ids)
    lp = token_log_probs(logits, targets)  # [batch, length]
    hit = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(lp * mask, axis=-1), jnp.all(hit | (mask == 0), axis=-1)


def pack(requests: Sequence[Request], length: int, rows: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Requests as right-padded model inputs [rows, length]; contexts are cut from the left to fit."""
    inputs = np.full((rows, length), pad_id, np.int32)
    targets = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.float32)
    seg = np.zeros((rows, length), np.int32)
    for i, r in enumerate(requests):
        seq = (list(r.context) + list(r.continuation))[-(length + 1):]
        n = len(seq) - 1
        inputs[i, :n], targets[i, :n], seg[i, :n] = seq[:-1], seq[1:], 1
        mask[i, n - len(r.continuation):n] = 1.0
    return {"inputs": inputs, "targets": targets, "mask": mask, "segment_ids": seg}


def score_requests(params, cfg: ModelConfig, requests: Sequence[Request], *, batch_tokens: int = 4096,
                   max_rows: int = 64, min_length: int = 32, bucket: bool = True, progress=None) -> list[Score]:
    """Score every request; batches hold about `batch_tokens` tokens, lengths padded to `bucket_length`.

    A batch holds requests of one padded length; a bucket's last batch shrinks to a power of two rows.
    max_rows=1 scores one by one (the baseline of benchmarks/eval_throughput.py); bucket=False pads
    nothing (one compilation per distinct length: slow, for comparison).
    `progress(n)` is called after each batch with the number of requests done.
    """
    for i, r in enumerate(requests):
        if not r.context or not r.continuation:
            raise ValueError(f"request {i} has an empty context or continuation")
        if len(r.continuation) >= cfg.max_seq_len:
            raise ValueError(f"request {i}: continuation of {len(r.continuation)} tokens does not fit "
                             f"max_seq_len={cfg.max_seq_len}")
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i].context) + len(requests[i].continuation)))

    def padded(i: int) -> int:
        need = min(len(requests[i].context) + len(requests[i].continuation) - 1, cfg.max_seq_len)
        return min(bucket_length(need, min_length), cfg.max_seq_len) if bucket else need

    out: list[Score | None] = [None] * len(requests)
    start = 0
    while start < len(order):
        length = padded(order[start])
        rows = max(1, min(max_rows, batch_tokens // length))
        same = start
        while same < len(order) and same - start < rows and padded(order[same]) == length:
            same += 1
        if same - start < rows:  # the bucket's last batch: fewer rows (a power of two), not empty padding
            rows = min(rows, 1 << (same - start - 1).bit_length())
        idx = order[start:same]
        b = pack([requests[i] for i in idx], length, rows)
        lp, greedy = score_batch(params, cfg, *(jnp.asarray(b[k]) for k in ("inputs", "targets", "mask", "segment_ids")))
        lp, greedy = np.asarray(lp), np.asarray(greedy)
        for j, i in enumerate(idx):
            out[i] = Score(float(lp[j]), len(requests[i].continuation), bool(greedy[j]))
        start = same
        if progress is not None:
            progress(len(idx))
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------- multiple-choice decisions
def normalized(logprobs: Sequence[float], n_tokens: Sequence[int], n_bytes: Sequence[int],
               normalize: Normalize) -> np.ndarray:
    """Option scores: summed log-likelihood, or per token, or per UTF-8 byte of the option text."""
    lp = np.asarray(logprobs, np.float64)
    if normalize == "sum":
        return lp
    denom = np.asarray(n_tokens if normalize == "tokens" else n_bytes, np.float64)
    return lp / np.maximum(denom, 1.0)


def choose(scores: Sequence[float], atol: float = TIE_ATOL) -> list[int]:
    """Indices of the best options (several when tied within atol)."""
    s = np.asarray(scores, np.float64)
    return [int(i) for i in np.flatnonzero(s >= s.max() - atol)]


def credit(best: Sequence[int], answer: int) -> float:
    """Expected accuracy of picking uniformly among tied best options: 1/len(best) if the answer is one."""
    return 1.0 / len(best) if answer in best else 0.0


def mc_accuracy(items: Sequence[dict], normalize: Normalize) -> dict:
    """Accuracy (tie-aware) and chance over items {"logprobs", "n_tokens", "n_bytes", "answer"}."""
    if not items:
        return {"accuracy": float("nan"), "chance": float("nan"), "n": 0, "ties": 0}
    acc = ties = chance = 0.0
    for it in items:
        best = choose(normalized(it["logprobs"], it["n_tokens"], it["n_bytes"], normalize))
        acc += credit(best, it["answer"])
        ties += len(best) > 1
        chance += 1.0 / len(it["logprobs"])
    n = len(items)
    return {"accuracy": acc / n, "chance": chance / n, "n": n, "ties": int(ties),
            "stderr": math.sqrt(max(acc / n * (1 - acc / n), 0.0) / n)}
