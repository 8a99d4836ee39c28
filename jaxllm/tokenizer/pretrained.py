"""OpenAI's published encodings (gpt2, r50k/p50k, cl100k, o200k) from rank files in registry packages.

The hubs that normally serve these files are out of reach, but two PyPI packages ship the very
same files (sha256 equal to the hashes tiktoken pins): the litellm wheel and the openai-whisper
sdist. We download the package once into the cache, check it, and copy out the one rank file.
"""
from __future__ import annotations

import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from jaxllm.fetch import FetchError, cache_dir, fetch, sha256_file
from jaxllm.tokenizer.core import PATTERNS, Tokenizer, read_ranks

_LITELLM = ("https://files.pythonhosted.org/packages/0d/21/268c8febd55265d9bbb611c06496356186bdea37b64e1142eb92e9d48b7e/"
            "litellm-1.91.5-py3-none-any.whl",
            "db09c6ea0b7c7de034b6c8b628208b000b54e02ef557468f84c2e63fbd7c8560")
_WHISPER = ("https://files.pythonhosted.org/packages/35/8e/d36f8880bcf18ec026a55807d02fe4c7357da9f25aebd92f85178000c0dc/"
            "openai_whisper-20250625.tar.gz",
            "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96")
_LITELLM_DIR = "litellm/litellm_core_utils/tokenizers/"  # files named by sha1 of the original URL


@dataclass(frozen=True)
class _Source:
    package: tuple[str, str]  # (url, sha256) of the registry package
    member: str  # path of the rank file inside it
    sha256: str  # of the rank file itself: the hash tiktoken pins for the original URL
    pattern: str
    special_tokens: tuple[tuple[str, int], ...]


_EOT = "<|endoftext|>"
_GPT2 = _Source(_WHISPER, "openai_whisper-20250625/whisper/assets/gpt2.tiktoken",
                "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930", "gpt2", ((_EOT, 50256),))
ENCODINGS: dict[str, _Source] = {
    "gpt2": _GPT2,
    "r50k_base": _GPT2,  # the same ranks and pattern as GPT-2
    "p50k_base": _Source(_LITELLM, _LITELLM_DIR + "ec7223a39ce59f226a68acc30dc1af2788490e15",
                         "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069", "gpt2", ((_EOT, 50256),)),
    "cl100k_base": _Source(_LITELLM, _LITELLM_DIR + "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
                           "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7", "gpt4",
                           ((_EOT, 100257), ("<|fim_prefix|>", 100258), ("<|fim_middle|>", 100259),
                            ("<|fim_suffix|>", 100260), ("<|endofprompt|>", 100276))),
    "o200k_base": _Source(_LITELLM, _LITELLM_DIR + "fb374d419588a4632f3f557e76b4b70aebbca790",
                          "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d", "o200k",
                          ((_EOT, 199999), ("<|endofprompt|>", 200018))),
}


def _extract(archive: Path, member: str, target: Path) -> None:
    """Copy one member of a wheel/zip or tarball to `target` (atomically)."""
    tmp = target.with_name(target.name + ".part")
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            data = z.read(member)
    else:
        with tarfile.open(archive) as t:
            f = t.extractfile(member)
            if f is None:
                raise FetchError(f"{member} is not a file in {archive}")
            data = f.read()
    tmp.write_bytes(data)
    tmp.replace(target)


def rank_file(name: str, progress: bool = True) -> Path:
    """Local path of the verified rank file of encoding `name`, fetching its package once."""
    src = ENCODINGS[name]
    target = cache_dir() / "tiktoken" / f"{src.sha256}.tiktoken"
    if target.exists() and sha256_file(target) == src.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = fetch(*src.package, progress=progress)
    try:
        _extract(archive, src.member, target)
    except KeyError as e:
        raise FetchError(f"{archive} has no {src.member}; the pinned package is wrong") from e
    if sha256_file(target) != src.sha256:
        target.unlink()
        raise FetchError(f"{src.member} in {archive} does not have sha256 {src.sha256}")
    return target


def load_encoding(name: str) -> Tokenizer:
    """OpenAI's encoding `name` as a Tokenizer; its bos is <|endoftext|>."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; known: {', '.join(ENCODINGS)}")
    src = ENCODINGS[name]
    return Tokenizer(read_ranks(rank_file(name)), dict(src.special_tokens), pattern=PATTERNS[src.pattern],
                     name=name, bos=_EOT)


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """A directory written by `Tokenizer.save`, or a known encoding name (e.g. 'cl100k_base')."""
    if str(spec) in ENCODINGS and not Path(spec).is_dir():
        return load_encoding(str(spec))
    if not Path(spec).exists():
        raise FileNotFoundError(f"tokenizer {str(spec)!r} is neither a directory nor a known encoding "
                                f"({', '.join(ENCODINGS)}); train one with `jaxllm tokenizer train`")
    if Path(spec).is_dir() and (Path(spec) / "tokenizer.json").exists():  # a Hugging Face byte-level BPE
        from jaxllm.tokenizer.hf_bpe import HFBPETokenizer
        return HFBPETokenizer.load(spec)
    return Tokenizer.load(spec)
