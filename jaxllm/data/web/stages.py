"""Per-document stages before quality filtering: decode, URL filter, HTML extraction, language id.

Every stage is `stage(doc, cfg) -> (doc, None)` to keep or `(None, reason)` to drop, where `doc` is a
dict {id, url, raw|html|text, meta}. They are pure apart from lazily loaded, read-only models.
"""
from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from .config import ExtractConfig, LanguageConfig, ReadConfig, UrlFilterConfig

Doc = dict
Result = tuple[Optional[Doc], Optional[str]]


# ---------------------------------------------------------------- decode
def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def decode(doc: Doc, cfg: ReadConfig) -> Result:
    """HTTP body bytes to an HTML string; checks type and size, repairs wrong/missing charsets.

    A declared charset that fails to decode, or a single-byte one declared for a valid UTF-8 body,
    is replaced by detection; `meta['charset_note']` records the repair so the stats can count it.
    """
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    raw: bytes = doc["raw"]
    meta = dict(doc["meta"])
    ctype = (meta.get("content_type") or "").lower()
    if not ctype:
        head = raw[:512].lstrip().lower()
        ctype = "text/html" if head.startswith((b"<!doctype html", b"<html", b"<?xml")) else "unknown"
        meta["content_type"] = ctype
    if len(raw) > cfg.max_bytes:
        return None, "too_large"
    if ctype not in cfg.content_types:
        return None, "not_html"
    if len(raw.strip()) < cfg.min_bytes:
        return None, "empty"
    declared = (meta.get("charset") or "").lower() or None
    is_utf8 = _valid_utf8(raw)
    if declared is None:
        enc = "utf-8" if is_utf8 else detect_encoding(raw)
        meta["charset_note"] = "missing_charset"
    elif declared.replace("_", "-") in ("utf-8", "utf8"):
        enc = "utf-8" if is_utf8 else detect_encoding(raw)
        if not is_utf8:
            meta["charset_note"] = "wrong_charset"
    else:
        try:
            raw.decode(declared)
            ok = True
        except (UnicodeDecodeError, LookupError):
            ok = False
        if is_utf8 and not raw.isascii():
            enc, ok = "utf-8", False  # a valid non-ASCII UTF-8 body decoded as latin-1 would be mojibake
        else:
            enc = declared if ok else detect_encoding(raw)
        if not ok:
            meta["charset_note"] = "wrong_charset"
    try:
        html = bytes_to_str(raw, enc, errors="replace")
    except (LookupError, UnicodeError):
        return None, "undecodable"
    if html.count("\ufffd") > cfg.max_replacement_ratio * max(len(html), 1):
        return None, "undecodable"
    meta["charset"] = enc
    return {"id": doc["id"], "url": doc["url"], "html": html, "meta": meta}, None


# ---------------------------------------------------------------- URL filter
@functools.lru_cache(maxsize=8)
def _blocklist(extra_file: Optional[str], use_default: bool) -> frozenset[str]:
    lines: list[str] = []
    if use_default:
        lines += resources.files("jaxllm.data.web").joinpath("blocklist.txt").read_text().splitlines()
    if extra_file:
        p = Path(extra_file)
        if not p.exists():
            raise FileNotFoundError(f"URL blocklist {p} does not exist; fix web.url_filter.blocklist_file")
        lines += p.read_text().splitlines()
    return frozenset(s.strip().lower().lstrip(".") for s in lines if s.strip() and not s.startswith("#"))


def url_filter(doc: Doc, cfg: UrlFilterConfig) -> Result:
    """Drop blocklisted domains (and their subdomains) and URLs with banned words."""
    url = doc["url"].lower()
    host = (urlsplit(url).hostname or "").rstrip(".")
    blocked = _blocklist(cfg.blocklist_file, cfg.use_default_blocklist)
    parts = host.split(".")
    if any(".".join(parts[i:]) in blocked for i in range(len(parts))):
        return None, "blocklisted_domain"
    tokens = set(re.split(r"[^a-z0-9]+", url))
    if tokens & set(cfg.banned_words):
        return None, "banned_word"
    if len(tokens & set(cfg.soft_banned_words)) >= cfg.soft_banned_min:
        return None, "soft_banned_words"
    flat = re.sub(r"[^a-z0-9]", "", url)
    if any(w in flat for w in cfg.banned_subwords):
        return None, "banned_subword"
    return doc, None


# ---------------------------------------------------------------- extraction
def extract(doc: Doc, cfg: ExtractConfig) -> Result:
    """HTML to plain text without navigation/boilerplate (resiliparse main-content extraction)."""
    html = doc["html"]
    if cfg.backend == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text
        text = extract_plain_text(html, main_content=cfg.main_content, alt_texts=False,
                                  form_fields=False, noscript=False, comments=False)
    else:
        try:
            import trafilatura
        except ImportError as e:
            raise ImportError("web.extract.backend=trafilatura needs `pip install trafilatura`") from e
        text = trafilatura.extract(html, favor_precision=cfg.main_content, include_comments=False) or ""
    text = text.strip()
    if len(text) < cfg.min_chars:
        return None, "no_text"
    return {"id": doc["id"], "url": doc["url"], "text": text, "meta": doc["meta"]}, None


# ---------------------------------------------------------------- language id
@functools.lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str, max_chars: int = 4000) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid's bundled model."""
    lang, score = _identifier().classify(text[:max_chars].replace("\n", " "))
    return lang, float(score)


def language(doc: Doc, cfg: LanguageConfig) -> Result:
    """Keep documents in `cfg.languages` whose score reaches `cfg.threshold` (FineWeb: en, 0.65)."""
    lang, score = detect_language(doc["text"], cfg.max_chars)
    if lang not in cfg.languages:
        return None, f"language_{lang}"
    if score < cfg.threshold:
        return None, "low_language_score"
    meta = dict(doc["meta"], language=lang, language_score=round(score, 4))
    return dict(doc, meta=meta), None
