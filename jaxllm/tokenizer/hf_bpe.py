"""Byte-level BPE tokenizers of pretrained models (GGUF metadata, Hugging Face tokenizer.json).

Why not tiktoken, like our own `Tokenizer`: tiktoken merges the pair whose *result* has the lowest
rank and needs a token for every byte. A pretrained vocabulary need not satisfy either: SmolLM2's
merge order does follow its token ids, but 21 byte values (e.g. 0x04, 0xF5-0xFF) have no token,
and Hugging Face silently drops such bytes where tiktoken fails. So this class is backed by HF
`tokenizers` (`models.BPE` + `ByteLevel`), built from the vocab and merges exactly the way
`transformers` builds them, and offers the same methods as `jaxllm.tokenizer.core.Tokenizer`.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken, Regex, Tokenizer as _Backend, decoders, models, pre_tokenizers

from jaxllm.tokenizer.core import AllowedSpecial

TOKENIZER_FILE = "tokenizer.json"  # Hugging Face tokenizers' own format (loads in transformers too)
META_FILE = "tokenizer_meta.json"
FORMAT = "jaxllm-hf-bpe-v1"

# Pre-tokenizer regexes by GGUF `tokenizer.ggml.pre`, as transformers maps them; names not listed
# (e.g. "gpt2", "smollm") use ByteLevel's built-in GPT-2 regex, which is what transformers does too.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE_SPLITS: dict[str, str] = {name: _LLAMA3_SPLIT for name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe")}


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (the spelling of byte-level tokens)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def spell(data: bytes) -> str:
    """Bytes in the byte-level alphabet (how vocab files write tokens)."""
    alphabet = byte_alphabet()
    return "".join(alphabet[b] for b in data)


def unspell(token: str) -> bytes:
    """The bytes a byte-level token stands for; characters outside the alphabet count as UTF-8 text."""
    inverse = _inverse_alphabet()
    return b"".join(bytes([inverse[c]]) if c in inverse else c.encode("utf-8") for c in token)


@lru_cache(maxsize=1)
def _inverse_alphabet() -> dict[str, int]:
    return {c: b for b, c in byte_alphabet().items()}


class HFBPETokenizer:
    """A pretrained byte-level BPE vocabulary, encoded and decoded by HF `tokenizers`.

    `tokens[i]` is token i spelled in the byte alphabet, `merges` are pairs of spelled tokens in
    priority order, `special_tokens` map control-token text to ids (matched whole in text only when
    allowed, like our `Tokenizer`).
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[tuple[str, str]], special_tokens: dict[str, int],
                 bos: str, pre_split: str | None = None, name: str = "hf-bpe", eos: str | None = None,
                 backend: _Backend | None = None):
        if bos not in special_tokens:
            raise ValueError(f"bos token {bos!r} is not among the special tokens {sorted(special_tokens)}")
        self.name = name
        self.tokens = list(tokens)
        self.pre_split = pre_split
        self.special_ids: dict[str, int] = dict(special_tokens)
        self.bos, self.bos_id = bos, self.special_ids[bos]
        self.eos = eos
        self.eos_id: int | None = (None if eos is None else self.special_ids[eos] if eos in self.special_ids
                                  else self.tokens.index(eos))
        self.n_vocab: int = max(len(self.tokens), max(self.special_ids.values(), default=-1) + 1)
        self._merges = [tuple(m) for m in merges]
        self._all_special = frozenset(self.special_ids)
        if backend is None:  # built the way transformers builds GPT2Tokenizer (+ a GGUF split regex)
            vocab = {t: i for i, t in enumerate(self.tokens)}
            backend = _Backend(models.BPE(vocab=vocab, merges=self._merges, dropout=None, continuing_subword_prefix="",
                                          end_of_word_suffix="", fuse_unk=False))
            if pre_split is None:
                backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            else:
                backend.pre_tokenizer = pre_tokenizers.Sequence([
                    pre_tokenizers.Split(Regex(pre_split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            backend.decoder = decoders.ByteLevel()
            backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                        for t, _ in sorted(self.special_ids.items(), key=lambda kv: kv[1])])
        backend.encode_special_tokens = True  # special-token text is ordinary text; `encode` splits allowed ones
        self._backend = backend
        self._bytes = [unspell(t) for t in self.tokens] + [b""] * (self.n_vocab - len(self.tokens))
        for text, i in self.special_ids.items():
            self._bytes[i] = text.encode("utf-8")
        self._regex_cache: dict[frozenset, re.Pattern] = {}

    @classmethod
    def from_gguf_metadata(cls, tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int],
                           bos_id: int, eos_id: int | None = None, pre: str | None = None,
                           name: str = "gguf") -> "HFBPETokenizer":
        """From `tokenizer.ggml.*` fields of a byte-level ("gpt2") GGUF, as transformers reads them.

        Tokens typed CONTROL (3) become special tokens; a control token spelled outside the byte
        alphabet is a llama.cpp mislabel and stays ordinary, as in transformers.
        """
        alphabet = set(byte_alphabet().values())
        spelled = [t if set(t) <= alphabet else spell(t.encode("utf-8")) for t in tokens]
        special = {t: i for i, (t, k) in enumerate(zip(tokens, token_types)) if k == 3 and set(t) <= alphabet}
        bos = tokens[bos_id]
        special.setdefault(bos, bos_id)
        eos = None if eos_id is None else tokens[eos_id]
        return cls(spelled, [tuple(m.split(" ", 1)) for m in merges], special, bos=bos,
                   pre_split=GGUF_PRE_SPLITS.get(pre or ""), name=name, eos=eos)

    @classmethod
    def from_tokenizer_json(cls, path: str | Path, bos: str | None = None, eos: str | None = None,
                            name: str | None = None) -> "HFBPETokenizer":
        """From a Hugging Face `tokenizer.json` with a byte-level BPE model (GPT-2, Llama 3, SmolLM...).

        Its own normalizer/pre-tokenizer pipeline is kept as is, so encodings match transformers."""
        path = Path(path)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            model = spec["model"]
            backend = _Backend.from_str(json.dumps(spec))
        except Exception as e:  # OSError, JSON, missing keys, or tokenizers refusing it
            raise ValueError(f"{path}: not a tokenizers JSON file ({e})") from e
        if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("decoder")):
            raise ValueError(f"{path}: model {model.get('type')!r} with decoder {spec.get('decoder')} is not byte-level BPE")
        vocab: dict[str, int] = model["vocab"]
        added = spec.get("added_tokens") or []
        tokens = [""] * (max([*vocab.values(), *(a["id"] for a in added)]) + 1)
        for t, i in vocab.items():
            tokens[i] = t
        for a in added:
            tokens[a["id"]] = a["content"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        special = {a["content"]: a["id"] for a in added if a.get("special")}
        if not special:
            raise ValueError(f"{path}: no special tokens; a chat or base model needs at least a bos/eos token")
        return cls(tokens, merges, special, bos=bos or next(iter(special)), name=name or path.parent.name, eos=eos,
                   backend=backend)

    def __repr__(self) -> str:
        return f"HFBPETokenizer(name={self.name!r}, n_vocab={self.n_vocab}, specials={len(self.special_ids)})"

    # --- encoding ---------------------------------------------------------------------------
    def _allowed(self, allowed_special: AllowedSpecial) -> frozenset:
        if allowed_special == "none":
            return frozenset()
        if allowed_special == "all":
            return self._all_special
        unknown = set(allowed_special) - self._all_special
        if unknown:
            raise ValueError(f"unknown special tokens {sorted(unknown)}; this tokenizer has {sorted(self._all_special)}")
        return frozenset(allowed_special)

    def _special_regex(self, allowed: frozenset) -> re.Pattern:
        if allowed not in self._regex_cache:  # longest first: leftmost-longest, like HF's added vocabulary
            self._regex_cache[allowed] = re.compile("|".join(map(re.escape, sorted(allowed, key=len, reverse=True))))
        return self._regex_cache[allowed]

    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Token ids of `text`; special-token text is ordinary text unless in `allowed_special`."""
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._backend.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        pos = 0
        for m in self._special_regex(allowed).finditer(text):
            if m.start() > pos:
                ids += self._backend.encode(text[pos:m.start()], add_special_tokens=False).ids
            ids.append(self.special_ids[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += self._backend.encode(text[pos:], add_special_tokens=False).ids
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2,
                     allowed_special: AllowedSpecial = "none") -> list[list[int]]:
        """`encode` over many texts (HF tokenizers parallelises the batch in Rust)."""
        allowed = self._allowed(allowed_special)
        if allowed or num_threads <= 1:
            return [self.encode(t, allowed) for t in texts]
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids for arbitrary bytes: valid UTF-8 runs are encoded as text, other bytes one by one
        (bytes the vocabulary lacks are dropped, as HF does)."""
        ids: list[int] = []
        while data:
            try:
                ids += self.encode(data.decode("utf-8"))
                break
            except UnicodeDecodeError as e:
                if e.start:
                    ids += self.encode(data[:e.start].decode("utf-8"))
                tid = self._backend.token_to_id(spell(data[e.start:e.start + 1]))
                ids += [] if tid is None else [tid]
                data = data[e.start + 1:]
        return ids

    # --- decoding ---------------------------------------------------------------------------
    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self._bytes[i] for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """All merges in priority order as (left, right) byte pairs."""
        return [(unspell(a), unspell(b)) for a, b in self._merges]

    def first_merges(self, n: int) -> list[tuple[bytes, bytes]]:
        return [(unspell(a), unspell(b)) for a, b in self._merges[:n]]

    # --- files ------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` (HF format, specials included so transformers loads it) and our meta."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(out / TOKENIZER_FILE))
        meta = {"format": FORMAT, "name": self.name, "bos": self.bos, "eos": self.eos}
        (out / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "HFBPETokenizer":
        """Load a directory written by `save` (or any with a byte-level BPE tokenizer.json)."""
        d = Path(directory)
        meta = {}
        if (d / META_FILE).exists():
            try:
                meta = json.loads((d / META_FILE).read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{d / META_FILE} is malformed ({e}); re-save the tokenizer") from e
        if not (d / TOKENIZER_FILE).exists():
            raise FileNotFoundError(f"{d / TOKENIZER_FILE} not found: expected a directory written by HFBPETokenizer.save")
        return cls.from_tokenizer_json(d / TOKENIZER_FILE, bos=meta.get("bos"), eos=meta.get("eos"), name=meta.get("name"))

