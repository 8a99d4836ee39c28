"""Token shards (write/read/crash-rerun) and the grain pretraining pipeline (packing, resume, sharding)."""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jaxllm.data import pipeline as P
from jaxllm.data.shards import ShardSource, read_manifest, shard_of, token_dtype, write_shards
from jaxllm.tokenizer import Tokenizer


def byte_tokenizer() -> Tokenizer:
    """The real Tokenizer over the 256 single bytes (no merges) + <|bos|>: token id == byte value."""
    return Tokenizer({bytes([i]): i for i in range(256)}, {"<|bos|>": 256})


def make_docs(n: int = 120, seed: int = 0) -> list[dict]:
    """Varied lengths (empty, short, longer than a row), ASCII and multi-byte UTF-8 text."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "naïve", "café", "日本", "🙂", "\n", "data"]
    docs = []
    for i in range(n):
        text = "" if i == 7 else f"{i}: " + " ".join(rng.choice(words, int(rng.integers(0, 60))))  # unique texts
        docs.append({"id": f"doc-{i:04d}", "text": text, "source": "test", "meta": {"i": i}})
    return docs


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    byte_tokenizer().save(d)
    return str(d)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tok_dir):
    out = tmp_path_factory.mktemp("shards")
    docs = make_docs()
    manifest = write_shards(docs, tok_dir, str(out), num_shards=4, num_workers=2)
    return str(out), docs, manifest


def test_round_trip_and_manifest(shards):
    out, docs, manifest = shards
    tok = byte_tokenizer()
    expected = [d for i in range(4) for d in docs if shard_of(d["id"], 4) == i]  # shard order, input order within
    src = ShardSource(out)
    assert len(src) == len(docs) == manifest["documents"]
    for i, doc in enumerate(expected):
        rec = src[i]
        assert rec.dtype == np.uint16
        assert rec.tolist() == [tok.bos_id, *tok.encode(doc["text"])]
        assert tok.decode(rec[1:]) == doc["text"]
    assert manifest == read_manifest(out)
    assert manifest["tokens"] == sum(len(tok.encode(d["text"])) for d in docs)
    assert manifest["bytes"] == sum(len(d["text"].encode()) for d in docs) > manifest["documents"]
    assert manifest["dtype"] == "uint16" and manifest["n_vocab"] == 257 and manifest["bos_id"] == 256
    per_shard = collections.Counter(shard_of(d["id"], 4) for d in docs)
    assert [s["documents"] for s in manifest["shards"]] == [per_shard[i] for i in range(4)]
    assert sum(s["bytes"] for s in manifest["shards"]) == manifest["bytes"]
    assert token_dtype(65536) == "uint16" and token_dtype(65537) == "uint32"


def _files(d: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}


def test_crash_halfway_then_rerun_is_identical(tmp_path, tok_dir, shards):
    out, docs, manifest = shards
    ref = _files(out)
    run = tmp_path / "run"
    def crashing():  # the reader dies halfway through the corpus
        yield from docs[:50]
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        write_shards(crashing(), tok_dir, str(run), num_shards=4, num_workers=1)
    assert not (run / "manifest.json").exists()
    write_shards(docs, tok_dir, str(run), num_shards=4, num_workers=1)
    assert _files(run).keys() == ref.keys()
    assert all(_files(run)[k] == ref[k] for k in ref if k != "manifest.json")

    # a writer killed mid-shard: one shard missing, a stale .tmp, no manifest; the rest untouched
    victim = sorted(run.glob("tokens-*.array_record"))[2]
    victim.rename(victim.with_name(victim.name + ".tmp"))
    (run / "manifest.json").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in run.glob("tokens-*.array_record")}
    m2 = write_shards(docs, tok_dir, str(run), num_shards=4, num_workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("tokens-*.array_record") if p.name in mtimes} == mtimes
    files = _files(run)
    assert files == ref and m2 == manifest
    assert not list(run.glob("*.tmp")) and not (run / ".spool").exists()

    m3 = write_shards(docs + [docs[3]], tok_dir, str(run), num_shards=4, num_workers=1)
    assert m3["duplicates_skipped"] == 1 and m3["documents"] == manifest["documents"]  # a repeated id is written once
    assert all(_files(run)[k] == v for k, v in ref.items() if k.endswith(".array_record"))

    edited = [dict(d, text=d["text"] + " edited") if d["id"] == "doc-0005" else d for d in docs + [docs[3]]]
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("tokens-*.array_record")}
    m4 = write_shards(edited, tok_dir, str(run), num_shards=4, num_workers=1)
    changed = {p.name for p in run.glob("tokens-*.array_record") if p.stat().st_mtime_ns != before[p.name]}
    assert changed == {f"tokens-{shard_of('doc-0005', 4):05d}-of-00004.array_record"}  # only its input changed
    assert m4["bytes"] == manifest["bytes"] + len(" edited")


class SlowTokenizer(Tokenizer):
    """Same tokens as Tokenizer, slow enough for a writer to be killed mid-run."""

    def encode(self, text, allowed_special="none"):
        time.sleep(0.03)
        return super().encode(text, allowed_special)


def load_slow(directory) -> Tokenizer:
    tok = Tokenizer.load(directory)
    tok.__class__ = SlowTokenizer
    return tok


KILLED_WRITER = """
import os, sys
sys.path.insert(0, sys.argv[3])
os.environ["PYTHONPATH"] = sys.argv[3]  # shard workers import load_slow from the test module
from jaxllm.data.shards import write_shards
from test_shards_pipeline import load_slow, make_docs

write_shards(make_docs(), sys.argv[1], sys.argv[2], num_shards=4, num_workers=2, load_tokenizer=load_slow)
"""


@pytest.mark.slow
def test_killed_writer_processes_then_rerun_is_identical(tmp_path, tok_dir, shards):
    out, docs, manifest = shards
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, tok_dir, str(run), str(Path(__file__).parent)],
                            start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(run.glob("tokens-*.array_record")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its worker processes, mid-run
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in run.glob("tokens-*.array_record")}
    assert 1 <= len(done) < 4 and not (run / "manifest.json").exists()
    m = write_shards(docs, tok_dir, str(run), num_shards=4, num_workers=1)
    kept = {p.name: p.stat().st_mtime_ns for p in run.glob("tokens-*.array_record") if p.name in done}
    assert kept == done  # shards finished before the kill were not rewritten
    assert _files(run) == _files(out) and m == manifest


def _hand_shards(tmp_path, tok_dir, texts):
    docs = [{"id": f"h{i}", "text": t, "source": "hand", "meta": {}} for i, t in enumerate(texts)]
    out = tmp_path / "hand"
    write_shards(docs, tok_dir, str(out), num_shards=1, num_workers=1)
    return str(out)


def test_concat_packing_hand_example(tmp_path, tok_dir):
    out = _hand_shards(tmp_path, tok_dir, ["abc", "defghijk", "xy"])  # records: B abc | B defghijk | B xy
    cfg = P.PipelineConfig(seq_len=8, batch_size=2)
    (batch,) = list(P.make_eval_batches(out, cfg))
    a = lambda s: [ord(c) for c in s]  # noqa: E731
    B = 256
    # pairs: (Babc→abc)(3) (Bdefghijk→defghijk)(8) (Bxy→xy)(2): 13 pairs → row0 = 3 + 5, row1 = 3 + 2 + 3 pad
    assert batch["inputs"].tolist() == [[B, *a("ab"), B, *a("defg")], [*a("hij"), B, *a("x"), 0, 0, 0]]
    assert batch["targets"].tolist() == [a("abc") + a("defgh"), a("ijk") + a("xy") + [0, 0, 0]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 2, 2, 0, 0, 0]]
    assert batch["positions"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 0, 1, 0, 0, 0]]
    assert batch["loss_mask"].tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    assert batch["loss_mask"].dtype == np.float32 and batch["inputs"].dtype == np.int32
    text = P.describe_batch(batch, byte_tokenizer())
    assert "'<|bos|>abc'" in text and "'hijk'" in text and "padding: 3 tokens" in text


def _check_row_invariants(batch, seq_len):
    for k in P.FIELDS:
        assert batch[k].shape[1] == seq_len
    for inp, tgt, seg, pos, mask in zip(*(batch[k] for k in P.FIELDS)):
        assert (mask == (seg > 0)).all()
        assert (np.diff(seg[seg > 0]) >= 0).all() and not ((seg[:-1] == 0) & (seg[1:] > 0)).any()  # padding last
        for s in np.unique(seg[seg > 0]):
            idx = np.flatnonzero(seg == s)
            assert (np.diff(idx) == 1).all() and (pos[idx] == np.arange(len(idx))).all()
            assert (tgt[idx[:-1]] == inp[idx[1:]]).all()  # the next input is this target: same document


@pytest.mark.parametrize("packing", ["concat", "bestfit"])
def test_one_epoch_two_processes_cover_disjointly(shards, packing):
    out, docs, manifest = shards
    cfg = P.PipelineConfig(seq_len=32, batch_size=4, packing=packing, seed=3)
    tok = byte_tokenizer()
    want = collections.Counter(t for d in docs for t in tok.encode(d["text"]))  # every target once
    got, seen_docs = [], []
    for p in range(2):
        counts = collections.Counter()
        for batch in P.make_pretrain_iterator(out, cfg, process_index=p, process_count=2, num_epochs=1):
            _check_row_invariants(batch, 32)
            counts.update(batch["targets"][batch["loss_mask"] > 0].tolist())
        got.append(counts)
        seen_docs.append({tuple(d.tolist()) for d in P.process_documents(out, cfg, p, 2, num_epochs=1)})
    assert got[0] + got[1] == want
    assert not seen_docs[0] & seen_docs[1]
    assert len(seen_docs[0]) + len(seen_docs[1]) == len(docs)


def test_shuffle_is_seeded_and_changes_per_epoch(shards):
    out, _, _ = shards
    cfg = P.PipelineConfig(seq_len=16, batch_size=2)
    order = lambda c: [hash(tuple(d.tolist())) for d in P.process_documents(out, c, num_epochs=2)]  # noqa: E731
    o = order(cfg)
    assert o == order(cfg) and o != order(P.PipelineConfig(seed=1))
    n = len(o) // 2
    assert o[:n] != o[n:] and sorted(o[:n]) == sorted(o[n:])


RESUME = """
import json, sys, numpy as np
from jaxllm.data import pipeline as P
cfg = P.PipelineConfig(**json.loads(sys.argv[2]))
it = P.make_pretrain_iterator(sys.argv[1], cfg, num_epochs=None)
it.set_state(json.loads(sys.argv[3]))
out = [next(it) for _ in range(4)]
np.savez(sys.argv[4], **{f"{i}_{k}": v for i, b in enumerate(out) for k, v in b.items()})
"""


@pytest.mark.parametrize("packing,prefetch", [("concat", 2), ("bestfit", 0)])
def test_resume_in_new_process(shards, tmp_path, packing, prefetch):
    out, _, _ = shards
    cfg = P.PipelineConfig(seq_len=24, batch_size=3, packing=packing, seed=5, prefetch=prefetch)
    it = P.make_pretrain_iterator(out, cfg)
    for _ in range(23):  # past the first epoch (~7 batches); the state goes through JSON like a checkpoint
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    result = tmp_path / "next.npz"
    subprocess.run([sys.executable, "-c", textwrap.dedent(RESUME), out, json.dumps(dataclasses.asdict(cfg)),
                    json.dumps(state), str(result)], check=True, timeout=120)
    got = np.load(result)
    for i, batch in enumerate(expected):
        for k, v in batch.items():
            np.testing.assert_array_equal(got[f"{i}_{k}"], v)


def test_eval_batches_count_every_token_once(shards):
    out, docs, manifest = shards
    cfg = P.PipelineConfig(seq_len=32, batch_size=4)
    table = P.token_byte_lengths(byte_tokenizer())
    single = list(P.make_eval_batches(out, cfg))
    assert sum(b["loss_mask"].sum() for b in single) == manifest["tokens"]
    assert sum(P.target_bytes(b, table) for b in single) == manifest["bytes"]
    parts = [list(P.make_eval_batches(out, cfg, process_index=p, process_count=2)) for p in range(2)]
    assert len(parts[0]) == len(parts[1])
    assert sum(b["loss_mask"].sum() for part in parts for b in part) == manifest["tokens"]
    again = list(P.make_eval_batches(out, cfg, max_batches=2))
    assert len(again) == 2 and all((again[i]["inputs"] == single[i]["inputs"]).all() for i in range(2))
    assert P.bytes_per_token(out) == manifest["bytes"] / manifest["tokens"]


def test_bits_per_byte_counts_are_exact_with_merged_tokens(tmp_path):
    merges = [b"th", b"the", b" c", b" ca", b"\xc3\xa9", b"\xf0\x9f", b"\xf0\x9f\x99", b"\xf0\x9f\x99\x82"]
    ranks = {bytes([i]): i for i in range(256)} | {m: 256 + k for k, m in enumerate(merges)}
    tok = Tokenizer(ranks, {"<|bos|>": 256 + len(merges)})
    tok.save(tmp_path / "tok")
    docs = make_docs(40, seed=1)
    m = write_shards(docs, str(tmp_path / "tok"), str(tmp_path / "s"), num_shards=2, num_workers=1)
    assert m["tokens"] == sum(len(tok.encode(d["text"])) for d in docs) < m["bytes"]  # merges happened
    table = P.token_byte_lengths(tok)
    assert table[256 + 2] == 2 and table[256 + 7] == 4 and table[tok.bos_id] == 0
    batches = list(P.make_eval_batches(str(tmp_path / "s"), P.PipelineConfig(seq_len=16, batch_size=2)))
    assert sum(P.target_bytes(b, table) for b in batches) == m["bytes"]
    assert sum(P.target_bytes(b, table) for b in batches[:3]) == sum(
        len(tok.decode_bytes(b["targets"][b["loss_mask"] > 0])) for b in batches[:3])


def test_bad_input_is_a_clear_error(tmp_path, tok_dir):
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        ShardSource(tmp_path)
    bad = [{"id": "ok", "text": "fine"}, {"id": 2, "text": "x"}]
    with pytest.raises(ValueError, match=r"document #1 needs str fields 'id' and 'text' \(got \{'id': 'int'"):
        write_shards(bad, tok_dir, str(tmp_path / "s"), num_workers=1)
    with pytest.raises(ValueError, match="PipelineConfig.seq_len must be >= 1"):
        P.PipelineConfig(seq_len=0)


@pytest.mark.slow
def test_worker_processes_resume_and_cover(shards):
    out, docs, manifest = shards
    cfg = P.PipelineConfig(seq_len=24, batch_size=3, num_workers=2, seed=5)
    it = P.make_pretrain_iterator(out, cfg)
    try:
        for _ in range(12):
            next(it)
        state = it.get_state()
        expected = [np.array(next(it)["inputs"]) for _ in range(3)]
    finally:
        it.close()
    it = P.make_pretrain_iterator(out, cfg)
    try:
        it.set_state(json.loads(json.dumps(state)))
        assert all((np.array(next(it)["inputs"]) == e).all() for e in expected)
    finally:
        it.close()
    it = P.make_pretrain_iterator(out, cfg, num_epochs=1)
    try:
        assert sum(float(np.array(b["loss_mask"]).sum()) for b in it) == manifest["tokens"]
    finally:
        it.close()
