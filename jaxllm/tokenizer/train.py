"""Train a byte-level BPE tokenizer whose ranks tiktoken runs exactly.

Two trainers learn the same merges (tested: identical merge sets, order differs only among ties):
HF `tokenizers` (Rust) and ours in `bpe.py` (plain Python). `benchmarks/tokenizer_bench.py`
times both; the faster one is the default.
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

import regex
from tqdm.auto import tqdm

from jaxllm.tokenizer.bpe import count_chunks, train_bpe
from jaxllm.tokenizer.core import SPECIAL_TOKENS, Tokenizer, resolve_pattern


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 4096  # all ids, special tokens included (so the embedding is a round size)
    trainer: Literal["hf", "ours"] = "hf"  # faster on benchmarks/tokenizer_bench.py (~1.1-1.25x at 10 MB)
    max_train_bytes: int = 20_000_000  # UTF-8 bytes of training text; the rest of the stream is unread
    pattern: str = "gpt4"  # pre-tokenization regex: "gpt4", "gpt2", "o200k" or a raw regex
    name: str = "jaxllm"


def capped(texts: Iterable[str], max_bytes: int, progress: bool = True) -> Iterator[str]:
    """The texts until `max_bytes` UTF-8 bytes have been yielded (whole documents)."""
    seen = 0
    with tqdm(total=max_bytes, unit="B", unit_scale=True, desc="tokenizer text", disable=not progress,
              leave=False) as bar:
        for text in texts:
            if seen >= max_bytes:
                break
            n = len(text.encode("utf-8"))
            seen += n
            bar.update(n)
            yield text


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map that HF's ByteLevel pre-tokenizer uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def hf_pattern(pattern: str) -> str:
    """`pattern` for HF's Oniguruma regex, which reads `{1,3}+` as "repeat {1,3} one or more times"
    rather than as possessive; the greedy form splits identically (checked on the corpus)."""
    return regex.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def train_hf(texts: Iterable[str], n_ranks: int, pattern: str, progress: bool = True):
    """Train with HF `tokenizers`; returns (ranks, merges as byte pairs, the HF tokenizer)."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(hf_pattern(pattern)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    show = progress and sys.stdout.isatty()  # off a terminal, HF's bar writes blank lines to stdout
    trainer = trainers.BpeTrainer(vocab_size=n_ranks, min_frequency=0, show_progress=show, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    merges = []
    for left, right in json.loads(hf.to_str())["model"]["merges"]:
        a, b = bytes(to_byte[ch] for ch in left), bytes(to_byte[ch] for ch in right)
        merges.append((a, b))
        ranks.setdefault(a + b, len(ranks))  # a second merge making the same bytes adds no token
    return ranks, merges, hf


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig = TokenizerConfig(), progress: bool = True) -> Tokenizer:
    """Byte-level BPE on `texts` with cfg.vocab_size ids: 256 bytes, merges, then SPECIAL_TOKENS."""
    n_ranks = cfg.vocab_size - len(SPECIAL_TOKENS)
    if n_ranks < 256:
        raise ValueError(f"tokenizer.vocab_size={cfg.vocab_size} is too small: it needs 256 byte tokens plus "
                         f"{len(SPECIAL_TOKENS)} special tokens; use at least {256 + len(SPECIAL_TOKENS)}")
    pattern = resolve_pattern(cfg.pattern)
    stream = capped(texts, cfg.max_train_bytes, progress)
    if cfg.trainer == "hf":
        ranks, merges, _ = train_hf(stream, n_ranks, pattern, progress)
    elif cfg.trainer == "ours":
        ranks, merges = train_bpe(count_chunks(stream, pattern), n_ranks - 256, progress)
    else:
        raise ValueError(f"tokenizer.trainer={cfg.trainer!r} is not one of 'hf', 'ours'")
    if len(ranks) < n_ranks:
        warnings.warn(f"the training text ran out of pairs: {len(ranks) + len(SPECIAL_TOKENS)} tokens instead "
                      f"of tokenizer.vocab_size={cfg.vocab_size}; give more text or a smaller vocab_size")
    specials = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    return Tokenizer(ranks, specials, pattern=pattern, name=cfg.name, merges=merges)
