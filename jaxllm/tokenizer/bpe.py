"""Our own byte-level BPE trainer, in plain Python and numpy (no compiled extension).

The classic incremental algorithm: split the text into chunks with the pre-tokenization regex,
count each distinct chunk once, keep the count of every adjacent token pair plus the chunks each
pair occurs in, and repeatedly merge the most frequent pair, touching only the chunks that hold it.
A lazy max-heap finds the best pair; ties go to the smallest (left id, right id), so the result is
deterministic. The n-th new token gets id 256 + n, which is exactly its tiktoken rank.
"""
from __future__ import annotations

import heapq
from collections import Counter
from itertools import chain
from typing import Iterable

import numpy as np
import regex
from tqdm.auto import tqdm

_SHIFT = 32  # a pair (a, b) is stored as the int a << 32 | b: hashing ints beats hashing tuples


def count_chunks(texts: Iterable[str], pattern: str) -> Counter[str]:
    """How often each pre-tokenization chunk occurs."""
    split = regex.compile(pattern).findall
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split(text))
    return counts


def _initial_pairs(words: list[list[int]], freqs: list[int]):
    """Pair counts and, per pair, the sorted word indices holding it (numpy: ~10x a Python loop).

    Returns (stats: pair -> count, where0: pair -> (lo, hi) into `owners`, owners).
    """
    lengths = np.fromiter(map(len, words), np.int64, len(words))
    flat = np.fromiter(chain.from_iterable(words), np.int64, int(lengths.sum()))
    word_of = np.repeat(np.arange(len(words)), lengths)
    inside = word_of[1:] == word_of[:-1]  # drop pairs that would span two words
    keys = ((flat[:-1] << _SHIFT) | flat[1:])[inside]
    owner = word_of[1:][inside]
    order = np.argsort(keys, kind="stable")
    keys, owner = keys[order], owner[order]
    uniq, starts, counts = np.unique(keys, return_index=True, return_counts=True)
    totals = np.add.reduceat(np.asarray(freqs, np.int64)[owner], starts) if len(keys) else np.zeros(0, np.int64)
    stats = dict(zip(uniq.tolist(), totals.tolist()))
    where0 = dict(zip(uniq.tolist(), zip(starts.tolist(), (starts + counts).tolist())))
    return stats, where0, owner


def train_bpe(chunk_counts: dict[str, int], n_merges: int,
              progress: bool = True) -> tuple[dict[bytes, int], list[tuple[bytes, bytes]]]:
    """Learn up to `n_merges` new tokens; returns tiktoken ranks and the merges as byte pairs.

    A merge whose result already exists (e.g. (a, bc) after (ab, c)) reuses that token's id, so ranks
    stay contiguous and every id is one token.
    """
    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, c in chunk_counts.items():
        ids = list(chunk.encode("utf-8"))
        if len(ids) > 1:
            words.append(ids)
            freqs.append(c)
    vocab = [bytes([i]) for i in range(256)]
    index = {t: i for i, t in enumerate(vocab)}
    merges: list[tuple[bytes, bytes]] = []
    if not words:
        return index, merges

    stats, where0, owners = _initial_pairs(words, freqs)  # pair -> count; where the pair started out
    where: dict[int, set[int]] = {}  # pair -> words that gained it since
    heap = [(-c, p) for p, c in stats.items()]
    heapq.heapify(heap)
    mask = (1 << _SHIFT) - 1
    bar = tqdm(total=n_merges, desc="bpe merges", unit="merge", disable=not progress, leave=False)
    while len(vocab) < 256 + n_merges and heap:
        neg, p = heapq.heappop(heap)
        current = stats.get(p, 0)
        if current <= 0:
            continue
        if current != -neg:  # stale entry: the count changed since it was pushed
            heapq.heappush(heap, (-current, p))
            continue
        a, b = p >> _SHIFT, p & mask
        merged = vocab[a] + vocab[b]
        merges.append((vocab[a], vocab[b]))
        new = index.get(merged)
        if new is None:
            new = index[merged] = len(vocab)
            vocab.append(merged)
            bar.update(1)
        holders = where.pop(p, set())
        span = where0.pop(p, None)
        if span is not None:
            holders.update(owners[span[0]:span[1]].tolist())
        touched: set[int] = set()
        get = stats.get
        for i in holders:
            w = words[i]
            if a not in w:
                continue
            c = freqs[i]
            # merge left to right, non-overlapping (the rule encoding uses); update only the pairs
            # next to each merge: the left neighbour is already rewritten, the right one is not yet
            out, j, n = [], 0, len(w)
            while j < n:
                if w[j] == a and j + 1 < n and w[j + 1] == b:
                    if out:
                        left = out[-1]
                        q = left << _SHIFT | a
                        stats[q] -= c
                        q = left << _SHIFT | new
                        stats[q] = get(q, 0) + c
                        touched.add(q)
                        s = where.get(q)
                        if s is None:
                            where[q] = {i}
                        else:
                            s.add(i)
                    if j + 2 < n:
                        right = w[j + 2]
                        q = b << _SHIFT | right
                        stats[q] -= c
                        q = new << _SHIFT | right
                        stats[q] = get(q, 0) + c
                        touched.add(q)
                        s = where.get(q)
                        if s is None:
                            where[q] = {i}
                        else:
                            s.add(i)
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
        stats.pop(p, None)
        for q in touched:  # pairs with the new token changed: push them once with their final count
            if stats[q] > 0:
                heapq.heappush(heap, (-stats[q], q))
    bar.close()
    return index, merges
