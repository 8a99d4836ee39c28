"""Quality filters on extracted text: Gopher repetition and quality, C4 lines, FineWeb's extras.

Rules and thresholds follow the Gopher paper (Rae et al. 2021, table A1), C4 (Raffel et al. 2020)
and FineWeb (Penedo et al. 2024) as implemented in datatrove; words come from a regex tokenizer
instead of datatrove's spaCy/NLTK ones. Each filter is `f(doc, cfg) -> (doc|None, reason|None)`.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional

import numpy as np

from .config import QualityConfig

Doc = dict
Result = tuple[Optional[Doc], Optional[str]]

_WORD = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]+")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~’“”‘–—…·•")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
END_PUNCT = (".", "?", "!", '"', "'")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def words(text: str) -> list[str]:
    """Word tokens (punctuation runs are their own tokens, as in datatrove's tokenizers)."""
    return _WORD.findall(text)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in repeated items)."""
    seen, n, chars = set(), 0, 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


def _ngram_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit id per word n-gram (polynomial hash of word ids). [len(ids) - n + 1] uint64."""
    m = len(ids) - n + 1
    h = np.zeros(max(m, 0), np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * np.uint64(0x100000001B3) + ids[k:k + m]
    return h


def _top_ngram_chars(grams: np.ndarray, cum: np.ndarray, n: int) -> int:
    """Characters covered by the most frequent n-gram (joined with spaces), first one on ties."""
    if len(grams) == 0:
        return 0
    _, first, counts = np.unique(grams, return_index=True, return_counts=True)
    top = counts.max()
    i = int(first[counts == top].min())
    return int(cum[i + n] - cum[i] + n - 1) * int(top)


def _dup_ngram_chars(grams: np.ndarray, cum: np.ndarray, n: int, limit: float = -1.0) -> int:
    """Characters in repeated n-grams, jumping over each repeat (Gopher's greedy count).

    The greedy count only counts positions whose n-gram occurred earlier, so the total length of
    all non-first occurrences bounds it; when that bound is <= `limit` it is returned instead of
    running the sequential loop (the caller only compares the result against `limit`).
    """
    if len(grams) == 0:
        return 0
    _, first = np.unique(grams, return_index=True)
    repeat = np.ones(len(grams), bool)
    repeat[first] = False
    bound = int((cum[n:][repeat] - cum[:-n][repeat]).sum())
    if bound <= limit:
        return bound
    # the same greedy walk, visiting only candidate positions: everything between two candidates is
    # a first occurrence, so it is unseen and simply added to `seen`
    g = grams.tolist()
    cands = np.flatnonzero(repeat).tolist()
    seen: set[int] = set()
    chars, i, k = 0, 0, 0
    while k < len(cands):
        c = cands[k]
        k += 1
        if c < i:
            continue
        seen.update(g[i:c])
        if g[c] in seen:
            chars += int(cum[c + n] - cum[c])
            i = c + n
        else:
            seen.add(g[c])
            i = c + 1
    return chars


def gopher_repetition(doc: Doc, cfg: QualityConfig) -> Result:
    """Drop documents with repeated lines, paragraphs or n-grams (Gopher repetition rules)."""
    text = doc["text"]
    if not text:
        return None, "empty"
    paragraphs = _PARAGRAPHS.split(text.strip())
    n, chars = _duplicates(paragraphs)
    if n / len(paragraphs) > cfg.dup_para_frac:
        return None, "dup_para_frac"
    if chars / len(text) > cfg.dup_para_char_frac:
        return None, "dup_para_char_frac"
    lines = _LINES.split(text)
    n, chars = _duplicates(lines)
    if n / len(lines) > cfg.dup_line_frac:
        return None, "dup_line_frac"
    if chars / len(text) > cfg.dup_line_char_frac:
        return None, "dup_line_char_frac"
    ws = words(text)
    vocab = {w: i + 1 for i, w in enumerate(dict.fromkeys(ws))}
    ids = np.fromiter(map(vocab.__getitem__, ws), np.uint64, len(ws))  # [words]
    cum = np.concatenate([[0], np.cumsum([len(w) for w in ws], dtype=np.int64)])  # [words + 1]
    for n, frac in zip((2, 3, 4), cfg.top_ngram_fracs):
        if _top_ngram_chars(_ngram_ids(ids, n), cum, n) / len(text) > frac:
            return None, f"top_{n}_gram"
    for n, frac in zip(range(5, 11), cfg.dup_ngram_fracs):
        if _dup_ngram_chars(_ngram_ids(ids, n), cum, n, frac * len(text)) / len(text) > frac:
            return None, f"duplicated_{n}_grams"
    return doc, None


def gopher_quality(doc: Doc, cfg: QualityConfig) -> Result:
    """Word count, word length, symbol, bullet, ellipsis, alphabetic and stop-word rules (Gopher)."""
    text = doc["text"]
    ws = words(text)
    n_words = max(len(ws), 1)
    real = [w for w in ws if any(c not in _PUNCT for c in w)]
    if len(real) < cfg.min_doc_words:
        return None, "gopher_short_doc"
    if len(real) > cfg.max_doc_words:
        return None, "gopher_long_doc"
    avg = sum(len(w) for w in real) / len(real)
    if avg < cfg.min_avg_word_length:
        return None, "gopher_below_avg_word_length"
    if avg > cfg.max_avg_word_length:
        return None, "gopher_above_avg_word_length"
    if text.count("#") / n_words > cfg.max_symbol_word_ratio:
        return None, "gopher_too_many_hashes"
    if (text.count("...") + text.count("…")) / n_words > cfg.max_symbol_word_ratio:
        return None, "gopher_too_many_ellipsis"
    lines = text.splitlines() or [""]
    if sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines) > cfg.max_bullet_lines_ratio:
        return None, "gopher_too_many_bullets"
    if sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
        return None, "gopher_too_many_end_ellipsis"
    if sum(any(c.isalpha() for c in w) for w in ws) / n_words < cfg.max_non_alpha_words_ratio:
        return None, "gopher_below_alpha_threshold"
    if sum(w.lower() in STOP_WORDS for w in ws) < cfg.min_stop_words:
        return None, "gopher_enough_stop_words"
    return doc, None


def c4(doc: Doc, cfg: QualityConfig) -> Result:
    """C4 line filters: drop short/javascript/policy lines; drop docs with lorem ipsum or `{`."""
    kept, sentences = [], 0
    for line in doc["text"].splitlines():
        line = line.strip()
        ws = line.split()
        if any(len(w) > cfg.c4_max_word_length for w in ws):
            continue
        line = _CITATION.sub("", line)
        if cfg.c4_filter_no_terminal_punct and (not line.endswith(END_PUNCT) or line.endswith("...")):
            continue
        if len(ws) < cfg.c4_min_words_per_line:
            continue
        low = line.lower()
        if cfg.c4_filter_lorem_ipsum and "lorem ipsum" in low:
            return None, "c4_lorem_ipsum"
        if cfg.c4_filter_javascript and "javascript" in low:
            continue
        if cfg.c4_filter_curly_bracket and "{" in line:
            return None, "c4_curly_bracket"
        if cfg.c4_filter_policy and any(p in low for p in POLICY):
            continue
        sentences += len([s for s in _SENTENCE_END.split(line) if s.strip()])
        kept.append(line)
    if sentences < cfg.c4_min_sentences:
        return None, "c4_too_few_sentences"
    return dict(doc, text="\n".join(kept).strip()), None


def fineweb(doc: Doc, cfg: QualityConfig) -> Result:
    """FineWeb's extra filters: terminal punctuation, short lines, duplicated lines, list-like docs."""
    text = doc["text"]
    lines = [s for s in text.split("\n") if s.strip()]
    if not lines:
        return None, "fineweb_empty"
    if sum(s.endswith(END_PUNCT) for s in lines) / len(lines) < cfg.line_punct_thr:
        return None, "fineweb_line_punct_ratio"
    if sum(len(s) <= cfg.short_line_length for s in lines) / len(lines) >= cfg.short_line_thr:
        return None, "fineweb_short_line_ratio"
    if _duplicates(lines)[1] / max(len(text.replace("\n", "")), 1) >= cfg.char_duplicates_ratio:
        return None, "fineweb_char_dup_ratio"
    if text.count("\n") / max(len(words(text)), 1) > cfg.new_line_ratio:
        return None, "fineweb_list_ratio"
    return doc, None
