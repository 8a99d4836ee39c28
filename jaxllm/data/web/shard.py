"""Per-input-shard work of the pipeline, shared by the local and Ray runners.

`filter_shard` (map): read one input file, run the per-document stages, write the surviving
documents and their dedup entries under the work dir. `finish_shard`: drop the duplicates found
across all shards, anonymise PII and write the final output shard. Both write atomically (temp file
then rename; the stats file last), so a crash leaves no shard that looks complete, and both skip
work whose output already exists (resume).
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from . import dedup, pii, quality, stages
from .config import WebConfig
from .warc import read_html_dir, read_warc

Doc = dict
ORDER_BITS = 32  # order key = input index << 32 | record index


def stage_list(cfg: WebConfig) -> list[tuple[str, Callable[[Doc], tuple[Optional[Doc], Optional[str]]]]]:
    """The enabled per-document stages in FineWeb order, each bound to its config section."""
    q = cfg.quality
    if cfg.url_filter.enabled:  # a missing user blocklist is a config error: raise before any work
        stages._blocklist(cfg.url_filter.blocklist_file, cfg.url_filter.use_default_blocklist)
    steps = [
        ("url_filter", cfg.url_filter.enabled, lambda d: stages.url_filter(d, cfg.url_filter)),
        ("decode", True, lambda d: stages.decode(d, cfg.read)),
        ("extract", True, lambda d: stages.extract(d, cfg.extract)),
        ("language", cfg.language.enabled, lambda d: stages.language(d, cfg.language)),
        ("gopher_repetition", q.gopher_repetition, lambda d: quality.gopher_repetition(d, q)),
        ("gopher_quality", q.gopher_quality, lambda d: quality.gopher_quality(d, q)),
        ("c4", q.c4, lambda d: quality.c4(d, q)),
        ("fineweb", q.fineweb, lambda d: quality.fineweb(d, q)),
    ]
    return [(name, fn) for name, on, fn in steps if on]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def read_input(path: Path, cfg: WebConfig) -> Iterator[tuple[Optional[Doc], Optional[str]]]:
    """Raw documents of a .warc(.gz) file or a folder of HTML files."""
    if path.is_dir():
        yield from read_html_dir(path, f"https://localhost/{path.name}")
    else:
        yield from read_warc(path, max_bytes=cfg.read.max_bytes)


class Stats:
    """Counts per stage and reason, plus the first removed documents of each stage."""

    def __init__(self, cfg: WebConfig):
        self.cfg = cfg
        self.d = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "removed": {}, "notes": {},
                  "samples": {}, "pii": {}}

    def remove(self, stage: str, reason: str, order: int, doc: Optional[Doc], extra: Optional[dict] = None):
        by = self.d["removed"].setdefault(stage, {})
        by[reason] = by.get(reason, 0) + 1
        samples = self.d["samples"].setdefault(stage, [])
        if len(samples) < self.cfg.output.samples_per_filter:
            n = self.cfg.output.sample_chars
            text = (doc or {}).get("text") or (doc or {}).get("html") or ""
            samples.append({"order": order, "reason": reason, "id": (doc or {}).get("id"),
                            "url": (doc or {}).get("url"), "text": text[:n], **(extra or {})})

    def note(self, key: str) -> None:
        self.d["notes"][key] = self.d["notes"].get(key, 0) + 1


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class JsonlGzWriter:
    """Stream documents into `path` (.jsonl.gz) via a temp file renamed on close: never a partial shard.

    The gzip header has no name or time, so the same documents give the same bytes.
    """

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.raw = open(self.tmp, "wb")
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, compresslevel=6, mtime=0)

    def write(self, doc: Doc) -> None:
        self.gz.write((json.dumps(doc, ensure_ascii=False) + "\n").encode())

    def close(self) -> None:
        self.gz.close()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        os.replace(self.tmp, self.path)


def filter_shard(index: int, path: str, cfg: WebConfig, work: str) -> str:
    """Map step for input `index`: filtered docs (.jsonl.gz), dedup entries (.npy), stats (.json)."""
    work_dir = Path(work)
    stats_path = work_dir / f"{shard_name(index)}.filter.json"
    if stats_path.exists():
        return str(stats_path)
    st = Stats(cfg)
    entries: list[tuple[int, int, int]] = []
    steps = stage_list(cfg)
    kept = JsonlGzWriter(work_dir / f"{shard_name(index)}.docs.jsonl.gz")
    for record, (doc, error) in enumerate(read_input(Path(path), cfg)):
        order = (index << ORDER_BITS) | record
        st.d["docs_in"] += 1
        if doc is None:
            st.remove("read", error, order, None, {"source_file": Path(path).name, "record": record})
            continue
        st.d["bytes_in"] += len(doc["raw"])
        for name, fn in steps:
            try:
                new, reason = fn(doc)
            except Exception as e:  # noqa: BLE001 - one odd page must not stop a crawl; counted and sampled
                new, reason = None, f"error_{type(e).__name__}"
            if new is None:
                st.remove(name, reason, order, doc)
                break
            doc = new
        else:
            if doc["meta"].get("charset_note"):
                st.note(doc["meta"]["charset_note"])
            doc["meta"]["order"] = order
            kept.write(doc)
            entries += dedup.doc_entries(doc["text"], order, cfg.dedup)
    kept.close()
    arr = dedup.entries_array(entries)
    tmp = work_dir / f"{shard_name(index)}.entries.tmp-{os.getpid()}.npy"
    np.save(tmp, arr)
    os.replace(tmp, work_dir / f"{shard_name(index)}.entries.npy")
    _atomic_write(stats_path, json.dumps(st.d).encode())
    return str(stats_path)


def load_entries(index: int, work: str) -> np.ndarray:
    return np.load(Path(work) / f"{shard_name(index)}.entries.npy")


def finish_shard(index: int, cfg: WebConfig, work: str, out: str, removed: dict[int, tuple[str, int]]) -> str:
    """Drop cross-shard duplicates, anonymise PII, write `docs/shard-XXXXX.jsonl.gz` atomically."""
    work_dir, out_dir = Path(work), Path(out)
    stats_path = work_dir / f"{shard_name(index)}.finish.json"
    if stats_path.exists() and (out_dir / "docs" / f"{shard_name(index)}.jsonl.gz").exists():
        return str(stats_path)
    st = Stats(cfg)
    (out_dir / "docs").mkdir(parents=True, exist_ok=True)
    docs = JsonlGzWriter(out_dir / "docs" / f"{shard_name(index)}.jsonl.gz")
    with gzip.open(work_dir / f"{shard_name(index)}.docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            order = doc["meta"]["order"]
            if order in removed:
                reason, kept = removed[order]
                st.remove("dedup", reason, order, doc, {"duplicate_of_order": kept})
                continue
            if cfg.pii.enabled:
                doc, _ = pii.anonymize(doc, cfg.pii)
                for kind, n in doc["meta"].get("pii", {}).items():
                    st.d["pii"][kind] = st.d["pii"].get(kind, 0) + n
            meta = {k: v for k, v in doc["meta"].items() if k != "order"}
            docs.write({"id": doc["id"], "url": doc["url"], "text": doc["text"], "meta": meta})
            st.d["docs_out"] += 1
            st.d["bytes_out"] += len(doc["text"].encode())
    docs.close()
    _atomic_write(stats_path, json.dumps(st.d).encode())
    return str(stats_path)
