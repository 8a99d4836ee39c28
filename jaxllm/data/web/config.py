"""Configuration of the web pipeline: one frozen section per stage, each switchable with `enabled`.

Defaults follow FineWeb (datatrove's FineWeb example) where a FineWeb value exists; every field is a
plain type so `--set web.quality.gopher_min_words=20` style overrides work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass(frozen=True)
class ReadConfig:
    """WARC/HTML reading and payload decoding (bad records are counted, never fatal)."""
    max_bytes: int = 5_000_000          # payloads above this are skipped as `too_large`
    min_bytes: int = 1                  # payloads below this are skipped as `empty`
    content_types: tuple[str, ...] = ("text/html", "application/xhtml+xml")
    max_replacement_ratio: float = 0.02  # decoded text with more U+FFFD than this is `undecodable`


@dataclass(frozen=True)
class UrlFilterConfig:
    """Domain blocklist plus banned words in the URL (FineWeb's URLFilter, with a small default list)."""
    enabled: bool = True
    blocklist_file: Optional[str] = None  # extra domains, one per line (`#` comments); added to the default
    use_default_blocklist: bool = True
    banned_words: tuple[str, ...] = ("porn", "xxx", "casino", "viagra", "cialis", "warez", "keygen",
                                     "malware", "phishing", "escort", "hentai")
    soft_banned_words: tuple[str, ...] = ("sex", "adult", "nude", "cam", "crack", "free", "pills",
                                          "bet", "loan")
    soft_banned_min: int = 2            # drop when this many soft words appear as URL tokens
    banned_subwords: tuple[str, ...] = ("pornhub", "xvideos", "viagra", "freecasino")


@dataclass(frozen=True)
class ExtractConfig:
    """HTML to text; `resiliparse` by default, `trafilatura` if installed."""
    enabled: bool = True
    backend: Literal["resiliparse", "trafilatura"] = "resiliparse"
    main_content: bool = True           # drop navigation, headers, footers (boilerplate)
    min_chars: int = 1                  # extracted text shorter than this is `no_text`


@dataclass(frozen=True)
class LanguageConfig:
    """Language identification with py3langid (model ships inside the wheel)."""
    enabled: bool = True
    languages: tuple[str, ...] = ("en",)
    threshold: float = 0.65             # FineWeb's threshold
    max_chars: int = 4000               # classify on the first N characters (speed)


@dataclass(frozen=True)
class QualityConfig:
    """Gopher quality + repetition, C4 line filters and FineWeb's extra filters (datatrove defaults)."""
    gopher_repetition: bool = True
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_ngram_fracs: tuple[float, ...] = (0.2, 0.18, 0.16)          # n = 2, 3, 4
    dup_ngram_fracs: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # n = 5..10

    gopher_quality: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_non_alpha_words_ratio: float = 0.8  # at least this fraction of words must contain a letter
    min_stop_words: int = 2

    c4: bool = True
    c4_filter_no_terminal_punct: bool = False  # FineWeb turns this C4 rule off
    c4_min_words_per_line: int = 3
    c4_max_word_length: int = 1000
    c4_min_sentences: int = 5
    c4_filter_lorem_ipsum: bool = True
    c4_filter_javascript: bool = True
    c4_filter_curly_bracket: bool = True
    c4_filter_policy: bool = True

    fineweb: bool = True
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


@dataclass(frozen=True)
class DedupConfig:
    """Exact (content hash) and MinHash-LSH near-duplicate removal across all shards."""
    exact: bool = True
    minhash: bool = True
    ngram: int = 5                      # word n-gram shingles
    bands: int = 14                     # FineWeb: 14 bands x 8 rows
    rows: int = 8
    seed: int = 1


@dataclass(frozen=True)
class PiiConfig:
    """Replace e-mail addresses, IP addresses, phone numbers and US SSNs with placeholders."""
    enabled: bool = True
    email: bool = True
    ip: bool = True
    phone: bool = True
    ssn: bool = True
    email_placeholder: str = "<EMAIL>"
    ip_placeholder: str = "<IP_ADDRESS>"
    phone_placeholder: str = "<PHONE>"
    ssn_placeholder: str = "<SSN>"


@dataclass(frozen=True)
class OutputConfig:
    """Where and how documents are written."""
    samples_per_filter: int = 20        # removed documents kept per stage for inspection
    sample_chars: int = 2000            # text kept per removed sample


@dataclass(frozen=True)
class WebConfig:
    """The whole pipeline; `engine` picks local processes or Ray (see docs/web_pipeline.md)."""
    read: ReadConfig = field(default_factory=ReadConfig)
    url_filter: UrlFilterConfig = field(default_factory=UrlFilterConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    engine: Literal["local", "ray"] = "local"


@dataclass(frozen=True)
class RecipeConfig:
    """Which real pages to pack into WARC files for a run (see jaxllm/data/web/recipe.py)."""
    sources: tuple[str, ...] = ("postgresql", "python", "handbook", "spam")
    pages_per_source: int = 150         # 0 = every page of each source
    handbook_languages: tuple[str, ...] = ("en-US", "de-DE", "fr-FR", "es-ES", "ja-JP", "ru-RU")
    num_shards: int = 4
    planted: bool = True                # add the planted cases (duplicates, PII, bad records, ...)
    huge_page: bool = True              # include the 50 MB page among the planted cases
