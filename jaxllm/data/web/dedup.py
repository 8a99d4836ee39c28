"""Exact and MinHash-LSH near-duplicate detection, split into map / group-by-key / resolve steps.

map:      per document, an exact content hash and `bands` LSH band keys of a MinHash signature
          over word n-gram shingles (vectorised numpy, seeded, so every worker agrees);
group:    entries with the same (band, key) form a bucket; works on any partition of the entries
          as long as equal keys land in the same partition (what a distributed group-by-key does);
resolve:  exact buckets keep their first document; the rest are unioned (union-find) into
          near-duplicate clusters that keep their first document. "First" = smallest order key
          (input file index, record index), so the result does not depend on worker count.
"""
from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

from .config import DedupConfig

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)
_NONWORD = re.compile(r"[^\w]+")
EXACT_BAND = -1


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, collapsed whitespace: what both hashes see."""
    return " ".join(_NONWORD.sub(" ", text.lower()).split())


def exact_hash(text: str) -> int:
    """64-bit hash of the normalized text, as a signed int64 value."""
    return int.from_bytes(hashlib.blake2b(normalize(text).encode(), digest_size=8).digest(), "little",
                          signed=True)


@functools.lru_cache(maxsize=4)
def _perms(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    a = rng.randint(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    b = rng.randint(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    return a, b


def _word_hash(w: str) -> int:
    return int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")


_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
                 0x2545F4914F6CDD1D, 0x9FB21C651E98DF25], dtype=np.uint64)


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of the distinct word n-grams of the normalized text. [num_shingles] uint64."""
    ws = normalize(text).split()
    if not ws:
        return np.zeros(1, np.uint64)
    cache: dict[str, int] = {}
    wh = np.fromiter((cache.setdefault(w, _word_hash(w)) if w not in cache else cache[w] for w in ws),
                     dtype=np.uint64, count=len(ws))
    k = min(n, len(ws))
    m = len(ws) - k + 1
    with np.errstate(over="ignore"):
        h = np.zeros(m, np.uint64)
        for i in range(k):  # position-weighted sum of word hashes, then a 64-bit finaliser
            h += wh[i:i + m] * _MIX[i]
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
    return np.unique(h & _MAX32)


def minhash(shingles: np.ndarray, num_perm: int, seed: int, block: int = 4096) -> np.ndarray:
    """MinHash signature with datasketch's permutation family ((a*x+b) mod 2^61-1). [num_perm] uint32."""
    a, b = _perms(num_perm, seed)
    sig = np.full(num_perm, _MAX32, np.uint64)
    with np.errstate(over="ignore"):
        for s in range(0, len(shingles), block):
            x = shingles[s:s + block, None]                      # [block, 1]
            phv = ((x * a[None, :] + b[None, :]) % _MERSENNE) & _MAX32  # [block, num_perm]
            sig = np.minimum(sig, phv.min(axis=0))
    return sig.astype(np.uint32)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per LSH band of a signature. [bands] int64."""
    m = sig[: bands * rows].astype(np.uint64).reshape(bands, rows)  # [bands, rows]
    with np.errstate(over="ignore"):
        k = (m * _MIX[None, :rows]).sum(axis=1) + np.arange(bands, dtype=np.uint64) * _MIX[9]
        k ^= k >> np.uint64(31)
        k *= np.uint64(0xBF58476D1CE4E5B9)
        k ^= k >> np.uint64(29)
    return k.view(np.int64)


def doc_entries(text: str, order: int, cfg: DedupConfig) -> list[tuple[int, int, int]]:
    """Map step: (band, key, order) entries for one document; band -1 is the exact hash."""
    out = []
    if cfg.exact:
        out.append((EXACT_BAND, exact_hash(text), order))
    if cfg.minhash:
        sig = minhash(shingle_hashes(text, cfg.ngram), cfg.bands * cfg.rows, cfg.seed)
        out += [(b, int(k), order) for b, k in enumerate(band_keys(sig, cfg.bands, cfg.rows))]
    return out


def entries_array(entries: list[tuple[int, int, int]]) -> np.ndarray:
    """Entries as an [n, 3] int64 array (band, key, order)."""
    return np.asarray(entries, dtype=np.int64).reshape(-1, 3)


def partition(entries: np.ndarray, num_partitions: int) -> list[np.ndarray]:
    """Split entries so that equal (band, key) land in the same partition (the shuffle)."""
    if num_partitions == 1:
        return [entries]
    part = (entries[:, 1].view(np.uint64) % np.uint64(num_partitions)).astype(np.int64)
    return [entries[part == p] for p in range(num_partitions)]


def group_buckets(entries: np.ndarray) -> list[tuple[int, tuple[int, ...]]]:
    """Reduce step: (band, sorted orders) for every (band, key) shared by >= 2 documents."""
    if len(entries) == 0:
        return []
    idx = np.lexsort((entries[:, 2], entries[:, 1], entries[:, 0]))
    e = entries[idx]
    new = np.ones(len(e), bool)
    new[1:] = (e[1:, 0] != e[:-1, 0]) | (e[1:, 1] != e[:-1, 1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(e))
    return [(int(e[s, 0]), tuple(int(o) for o in np.unique(e[s:t, 2])))
            for s, t in zip(starts, ends) if t - s > 1 and len(np.unique(e[s:t, 2])) > 1]


def resolve(buckets: list[tuple[int, tuple[int, ...]]]) -> dict[int, tuple[str, int]]:
    """Orders to drop -> (reason, order kept in their place): exact first, then near clusters."""
    removed: dict[int, tuple[str, int]] = {}
    for band, orders in sorted(buckets):
        if band == EXACT_BAND:
            for o in orders[1:]:
                removed[o] = ("exact_duplicate", orders[0])
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for band, orders in sorted(buckets):
        if band == EXACT_BAND:
            continue
        alive = [o for o in orders if o not in removed]
        for o in alive[1:]:
            ra, rb = find(alive[0]), find(o)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the root is the smallest order of the cluster
    for o in list(parent):
        root = find(o)
        if root != o:
            removed[o] = ("near_duplicate", root)
    return removed
