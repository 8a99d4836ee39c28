"""Bits per byte of any model on held-out text (tokenizer-independent, so different vocabularies compare).

Documents are tokenized with the model's tokenizer, each as [prefix] + ids, cut into windows of
`seq_len` + 1 tokens, and scored with `jaxllm.eval.bpb.evaluate_loss_and_bpb` (bytes counted from
the tokens' own UTF-8 spellings; BOS/special targets spell 0 bytes and are not counted).
"""
from __future__ import annotations

import functools
import itertools
from typing import Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.eval.bpb import evaluate_loss_and_bpb, token_byte_lengths
from jaxllm.eval.model import EvalModel
from jaxllm.model import ModelConfig, Transformer, token_log_probs


@functools.partial(jax.jit, static_argnames=("cfg",))
def summed_nats(params, cfg: ModelConfig, inputs, targets, loss_mask, segment_ids, positions):
    """(sum of masked target losses in nats, number of masked targets) for one batch [batch, length]."""
    logits = Transformer(cfg).apply({"params": params}, inputs, positions=positions, segment_ids=segment_ids)
    nll = -token_log_probs(logits, targets) * loss_mask
    return jnp.sum(nll), jnp.sum(loss_mask)


def text_batches(token_docs: Iterable[Sequence[int]], seq_len: int, batch_size: int,
                 special_ids: Sequence[int] = ()) -> Iterator[dict[str, np.ndarray]]:
    """Windows of seq_len + 1 tokens (one per row, consecutive windows overlap by one token), batched.

    Every non-special token after a document's first is a target exactly once.
    """
    special = np.asarray(sorted(set(special_ids)), np.int64)
    rows = []
    for doc in token_docs:
        doc = list(doc)
        for start in range(0, max(len(doc) - 1, 0), seq_len):
            rows.append(doc[start:start + seq_len + 1])
            if len(rows) == batch_size:
                yield _batch(rows, seq_len, special)
                rows = []
    if rows:
        yield _batch(rows, seq_len, special)


def _batch(rows, seq_len: int, special: np.ndarray) -> dict[str, np.ndarray]:
    b = {k: np.zeros((len(rows), seq_len), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
    b["loss_mask"] = np.zeros((len(rows), seq_len), np.float32)
    for i, row in enumerate(rows):
        n = len(row) - 1
        b["inputs"][i, :n], b["targets"][i, :n] = row[:-1], row[1:]
        b["segment_ids"][i, :n] = 1
        b["positions"][i, :n] = np.arange(n)
        b["loss_mask"][i, :n] = ~np.isin(np.asarray(row[1:]), special)
    return b


def _pad_rows(batch: dict, rows: int) -> dict:
    extra = rows - batch["inputs"].shape[0]
    return batch if extra <= 0 else {k: np.concatenate([v, np.zeros((extra,) + v.shape[1:], v.dtype)])
                                     for k, v in batch.items()}


def model_bpb(model: EvalModel, texts: Iterable[str], *, seq_len: Optional[int] = None, batch_size: int = 8,
              byte_lengths: Optional[np.ndarray] = None) -> dict:
    """{"loss" (nats/token), "bpb", "tokens", "bytes"} of `model` on `texts`."""
    seq_len = min(seq_len or 256, model.cfg.max_seq_len)
    table = token_byte_lengths(model.tokenizer) if byte_lengths is None else byte_lengths
    special = list(getattr(model.tokenizer, "special_ids", {}).values()) + list(model.prefix)
    docs = (list(model.prefix) + model.encode(t) for t in texts)

    def eval_fn(batch):
        padded = _pad_rows(batch, batch_size)  # one shape: one compilation
        s, n = summed_nats(model.params, model.cfg, *(jnp.asarray(padded[k]) for k in
                                                       ("inputs", "targets", "loss_mask", "segment_ids", "positions")))
        return float(s), float(n)

    return evaluate_loss_and_bpb(eval_fn, text_batches(docs, seq_len, batch_size, special), table)


BPB_SOURCE = "wikipedia-summaries"


def heldout_texts(source: str = BPB_SOURCE, limit: int = 200) -> list[str]:
    """The first `limit` documents of a named corpus's validation split (jaxllm.data.sources)."""
    from jaxllm.data import corpora  # noqa: F401  (registers the named corpora)
    from jaxllm.data.sources import get_source

    return [d["text"] for d in itertools.islice(get_source(source).documents("validation"), limit)]


def run_bpb_task(model: EvalModel, *, limit: int = 200, source: str = BPB_SOURCE, seq_len: int = 256,
                 batch_size: int = 8, texts: Optional[Sequence[str]] = None) -> dict:
    texts = list(texts) if texts is not None else heldout_texts(source, limit)
    r = model_bpb(model, texts, seq_len=seq_len, batch_size=batch_size)
    return {"task": "bpb", "kind": "bits_per_byte", "source": source, "n": len(texts), "accuracy": None,
            "chance": None, **r}
