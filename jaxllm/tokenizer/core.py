"""The `Tokenizer`: byte-level BPE ranks plus special tokens, encoded and decoded by tiktoken.

A tokenizer is just `ranks: dict[bytes, int]` (tiktoken's format: a token's rank is its id and its
merge priority), a pre-tokenization regex and a few special tokens with ids after the ranks.
Every encode/decode goes through a `tiktoken.Encoding` built from these, so what we train is
exactly what tiktoken runs, and OpenAI's own rank files load the same way.
"""
from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import AbstractSet, Iterable, Literal, Sequence, Union

import tiktoken

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",  # starts every document; also the separator between packed documents
    "<|im_start|>", "<|im_sep|>", "<|im_end|>",  # chat turns: <|im_start|>role<|im_sep|>text<|im_end|>
    "<|python_start|>", "<|python_end|>",  # model-written code for the tool
    "<|output_start|>", "<|output_end|>",  # the tool's output, fed back to the model
    "<|search_start|>", "<|search_end|>",  # a search query and its results
)

# Pre-tokenization regexes: text is split into chunks first, and merges never cross chunks.
PATTERNS: dict[str, str] = {
    # GPT-2 / r50k / p50k (tiktoken's faster equivalent of the original).
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    # GPT-4 / cl100k_base: case-insensitive contractions, digits in groups of at most 3.
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    # GPT-4o / o200k_base: splits CamelCase words, keeps contractions attached.
    "o200k": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]),
}

RANKS_FILE = "tokenizer.tiktoken"  # tiktoken's rank format: "<base64 token> <rank>" per line
META_FILE = "tokenizer_meta.json"  # name, pattern, special tokens, bos

AllowedSpecial = Union[Literal["none", "all"], AbstractSet[str]]


def resolve_pattern(pattern: str) -> str:
    """A pattern name from PATTERNS, or a raw regex passed through."""
    return PATTERNS.get(pattern, pattern)


def recover_merges(ranks: dict[bytes, int], limit: int | None = None) -> list[tuple[bytes, bytes]]:
    """The merge that made each non-byte token, in rank order (as BPE training would list them).

    For a token of rank r, running BPE on its bytes with only ranks < r leaves exactly two parts:
    those are the pair that tiktoken merges into it.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        if limit is not None and len(merges) >= limit:
            break
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


class Tokenizer:
    """Byte-level BPE tokenizer backed by a `tiktoken.Encoding` built from our ranks."""

    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int], pattern: str = "gpt4",
                 name: str = "jaxllm", bos: str = "<|bos|>",
                 merges: Sequence[tuple[bytes, bytes]] | None = None):
        if bos not in special_tokens:
            raise ValueError(f"bos token {bos!r} is not among the special tokens {sorted(special_tokens)}")
        self.name = name
        self.pattern = resolve_pattern(pattern)
        self.ranks = ranks
        self.special_ids: dict[str, int] = dict(special_tokens)
        clash = set(self.special_ids.values()) & set(ranks.values())
        if clash:
            raise ValueError(f"special token ids {sorted(clash)[:5]} are also BPE ranks; put specials after the ranks")
        self.bos = bos
        self.bos_id: int = self.special_ids[bos]
        self._merges = list(merges) if merges is not None else None
        self.enc = tiktoken.Encoding(name=name, pat_str=self.pattern, mergeable_ranks=ranks,
                                     special_tokens=self.special_ids)
        self.n_vocab: int = self.enc.n_vocab
        self._all_special = frozenset(self.special_ids)

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, n_vocab={self.n_vocab}, specials={len(self.special_ids)})"

    # --- encoding ---------------------------------------------------------------------------
    def _allowed(self, allowed_special: AllowedSpecial) -> AbstractSet[str]:
        if allowed_special == "none":
            return frozenset()
        if allowed_special == "all":
            return self._all_special
        unknown = set(allowed_special) - self._all_special
        if unknown:
            raise ValueError(f"unknown special tokens {sorted(unknown)}; this tokenizer has {sorted(self._all_special)}")
        return frozenset(allowed_special)

    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Token ids of `text`; special-token text is ordinary text unless in `allowed_special`."""
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self.enc.encode_ordinary(text)
        return self.enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2,
                     allowed_special: AllowedSpecial = "none") -> list[list[int]]:
        """`encode` over many texts on `num_threads` threads (tiktoken releases the GIL).

        Each thread loops over a contiguous slice: one task per text (tiktoken's own
        encode_ordinary_batch) costs more than encoding a typical short document.
        """
        allowed = self._allowed(allowed_special)
        if allowed:
            encode = partial(self.enc.encode, allowed_special=allowed, disallowed_special=())
        else:
            encode = self.enc.encode_ordinary
        texts = list(texts)
        if num_threads <= 1 or len(texts) < 2 * num_threads:
            return [encode(t) for t in texts]
        step = -(-len(texts) // (4 * num_threads))  # a few slices per thread evens out long documents
        slices = [texts[i:i + step] for i in range(0, len(texts), step)]
        with ThreadPoolExecutor(num_threads) as pool:
            parts = list(pool.map(lambda part: [encode(t) for t in part], slices))
        return [ids for part in parts for ids in part]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids for arbitrary bytes (also invalid UTF-8): byte-level BPE can spell any bytes."""
        return self.enc._encode_bytes(data)

    # --- decoding ---------------------------------------------------------------------------
    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.enc.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.enc.decode_bytes(list(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self.enc.decode_single_token_bytes(token_id)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """All merges in order as (left, right) byte pairs, recovered from the ranks if needed."""
        if self._merges is None:
            self._merges = recover_merges(self.ranks)
        return self._merges

    def first_merges(self, n: int) -> list[tuple[bytes, bytes]]:
        """The first `n` merges (cheap even for 200k-token vocabularies)."""
        if self._merges is not None:
            return self._merges[:n]
        return recover_merges(self.ranks, limit=n)

    # --- files ------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.tiktoken` (ranks, loadable by tiktoken.load) and `tokenizer_meta.json`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        lines = [base64.b64encode(tok) + b" " + str(rank).encode()
                 for tok, rank in sorted(self.ranks.items(), key=lambda kv: kv[1])]
        (out / RANKS_FILE).write_bytes(b"\n".join(lines) + b"\n")
        meta = {"format": "jaxllm-tokenizer-v1", "name": self.name, "pattern": self.pattern,
                "bos": self.bos, "special_tokens": self.special_ids}
        (out / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        """Load a directory written by `save`."""
        d = Path(directory)
        meta_path, ranks_path = d / META_FILE, d / RANKS_FILE
        for p in (meta_path, ranks_path):
            if not p.exists():
                raise FileNotFoundError(f"{p} not found: expected a directory written by Tokenizer.save "
                                        f"(with {RANKS_FILE} and {META_FILE}) or an encoding name")
        try:
            meta = json.loads(meta_path.read_text())
            special = {str(k): int(v) for k, v in meta["special_tokens"].items()}
            pattern, name, bos = meta["pattern"], meta.get("name", d.name), meta["bos"]
        except (json.JSONDecodeError, KeyError, AttributeError, ValueError) as e:
            raise ValueError(f"{meta_path} is malformed ({e!r}); re-save the tokenizer") from e
        return cls(read_ranks(ranks_path), special, pattern=pattern, name=name, bos=bos)


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a tiktoken rank file; a bad line names the file and line number."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a tiktoken rank line "
                                 f"('<base64 token> <rank>'): {line[:80]!r}") from e
    return ranks
