"""Quality filters on extracted text: Gopher repetition and quality, C4 lines, FineWeb's extras.

Rules and thresholds follow the Gopher paper (Rae et al. 2021, table A1), C4 (Raffel et al. 2020)
and FineWeb (Penedo et al. 2024) as implemented in datatrove; words come from a regex tokenizer
instead of datatrove's spaCy/NLTK ones. Each filter is `f(doc, cfg) -> (doc|None, reason|None)`.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional

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


def _top_ngram_chars(ws: list[str], n: int) -> int:
    grams = [" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def _dup_ngram_chars(ws: list[str], n: int) -> int:
    seen, chars, i = set(), 0, 0
    while i < len(ws) - n + 1:
        gram = "".join(ws[i:i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
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
    for n, frac in zip((2, 3, 4), cfg.top_ngram_fracs):
        if _top_ngram_chars(ws, n) / len(text) > frac:
            return None, f"top_{n}_gram"
    for n, frac in zip(range(5, 11), cfg.dup_ngram_fracs):
        if _dup_ngram_chars(ws, n) / len(text) > frac:
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
