"""Text sources: named real corpora and generic files/URLs, each yielding documents with a stable split.

A document is `{"id": str, "text": str, "source": str, "meta": dict}`. Ids are `<source name>/<local id>`,
so they are unique across sources and stable across runs; the train/validation split hashes the id, so
it never depends on file order, worker count or which other sources are mixed in.

    get_source("wikipedia-summaries")        a named corpus (see `jaxllm data list`, jaxllm/data/corpora.py)
    get_source("jsonl:data/my.jsonl")        one JSON object per line, field `text` (optional `id`)
    get_source("parquet:data/")              column `text` (optional `id`), a file or a folder of them
    get_source("text:notes/")                one document per .txt file under the folder
    get_source("url:http://host/x.jsonl#sha256=...")   a .jsonl/.txt/.parquet file fetched into the cache

`documents(DataConfig(...), "train")` iterates a weighted mixture. Later code adds corpora with
`register_source(name, factory)`.
"""
from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Iterator, Literal

from jaxllm.fetch import fetch as fetch_url

Split = Literal["train", "validation", "all"]
SPLITS = ("train", "validation", "all")
FIX = "set data.on_error=skip to skip and count"


class DataError(ValueError):
    """Bad data a user can fix; the one-line message names the file/line or key and the fix."""


class DataWarning(UserWarning):
    """Records were skipped (data.on_error=skip); the message says how many and the first one."""


def _unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (sha256, independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(doc_id: str, val_fraction: float) -> Literal["train", "validation"]:
    """Which split a document id belongs to: validation when its hash falls below `val_fraction`."""
    return "validation" if _unit_hash("split", doc_id) < val_fraction else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


class Source:
    """Base class: subclasses implement `_records()` (and `fetch()` when something must be downloaded).

    `_records()` yields `(local_id, text, meta)` and reports malformed input through `self._bad(...)`,
    which raises `DataError` (on_error="fail") or counts it in `self.skipped` (on_error="skip").
    """

    name: str = "source"
    description: str = ""

    def __init__(self, *, val_fraction: float = 0.02, on_error: Literal["fail", "skip"] = "fail",
                 name: str | None = None):
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if on_error not in ("fail", "skip"):
            raise DataError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        if name is not None:
            self.name = name
        self.val_fraction = val_fraction
        self.on_error = on_error
        self.skipped = 0  # malformed records skipped in the latest pass over the source
        self.first_skipped = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, val_fraction={self.val_fraction}, on_error={self.on_error!r})"

    def fetch(self) -> None:
        """Download/extract whatever the source needs; idempotent (cached after the first call)."""

    def _records(self) -> Iterator[tuple[str, str, dict]]:
        raise NotImplementedError

    def _bad(self, path: object, line: int | None, reason: str, fix: str = "fix the record") -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        if self.on_error == "fail":
            which = "" if str(path) in self.name else f" (source {self.name})"
            raise DataError(f"{where}: {reason}{which}; {fix} or {FIX}")
        self.skipped += 1
        self.first_skipped = self.first_skipped or f"{where}: {reason}"

    def documents(self, split: Split = "all") -> Iterator[dict]:
        """Documents of one split, in a fixed order; warns once at the end if records were skipped."""
        _check_split(split)
        self.fetch()
        self.skipped, self.first_skipped = 0, ""
        seen: set[str] = set()
        for local_id, text, meta in self._records():
            doc_id = f"{self.name}/{local_id}"
            if doc_id in seen:
                self._bad(meta.get("_where", self.name), meta.get("_line"), f"duplicate id {local_id!r}")
                continue
            seen.add(doc_id)
            meta = {k: v for k, v in meta.items() if not k.startswith("_")}
            if split != "all" and split_of(doc_id, self.val_fraction) != split:
                continue
            yield {"id": doc_id, "text": text, "source": self.name, "meta": meta}
        if self.skipped:
            warnings.warn(f"{self.name}: skipped {self.skipped} malformed record(s), first: {self.first_skipped}",
                          DataWarning, stacklevel=2)

    # --- shared readers (they report problems through self._bad) ---

    def _decode(self, raw: bytes, path: Path, line: int | None) -> str | None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if line is None:  # whole file: name the line of the first bad byte
                line = raw.count(b"\n", 0, e.start) + 1
            self._bad(path, line, f"not valid UTF-8 (byte 0x{raw[e.start]:02x})", fix="re-encode the file as UTF-8")
            return None

    def _jsonl_rows(self, path: Path, text_field: str = "text") -> Iterator[tuple[int, dict]]:
        """`(line number, record)` for each well-formed JSON object with a string `text_field`."""
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = self._decode(raw, path, lineno)
                if line is None:
                    continue
                if lineno == 1:
                    line = line.lstrip("\ufeff")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    self._bad(path, lineno, f"not valid JSON ({e.msg} at column {e.colno})")
                    continue
                if not isinstance(record, dict):
                    self._bad(path, lineno, f"expected a JSON object, got {type(record).__name__}")
                    continue
                if not isinstance(record.get(text_field), str):
                    self._bad(path, lineno, f"record has no string field {text_field!r}")
                    continue
                yield lineno, record

    def _read_text_file(self, path: Path) -> str | None:
        raw = path.read_bytes()
        text = self._decode(raw, path, None)
        return None if text is None else text.lstrip("\ufeff")


def _files(root: Path, suffixes: tuple[str, ...], kind: str) -> list[Path]:
    """A single file, or every file under a folder ending in one of `suffixes` (sorted, so order is fixed)."""
    if not root.exists():
        raise DataError(f"{kind} path {root} does not exist; check the path in data.sources")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if not files:
        raise DataError(f"{kind} folder {root} has no {'/'.join(suffixes)} files; check the path in data.sources")
    return files


class JsonlSource(Source):
    """JSON Lines file(s): field `text` is the document, optional `id` (else `<file>:<line>`), rest → meta."""

    def __init__(self, path: str | Path, *, text_field: str = "text", id_field: str = "id", **kw):
        super().__init__(name=kw.pop("name", None) or f"jsonl:{path}", **kw)
        self.path, self.text_field, self.id_field = Path(path), text_field, id_field

    def fetch(self) -> None:
        _files(self.path, (".jsonl", ".jsonl.gz", ".json"), "jsonl")

    def _records(self):
        files = _files(self.path, (".jsonl", ".jsonl.gz", ".json"), "jsonl")
        for path in files:
            rel = path.name if path == self.path else str(path.relative_to(self.path))
            for lineno, rec in self._jsonl_rows(path, self.text_field):
                local = rec.get(self.id_field)
                local = str(local) if local is not None else (f"{rel}:{lineno}" if len(files) > 1 else str(lineno))
                meta = {k: v for k, v in rec.items() if k not in (self.text_field, self.id_field)}
                yield local, rec[self.text_field], {**meta, "_where": path, "_line": lineno}


class ParquetSource(Source):
    """Parquet file(s) with a string column `text` (optional `id`; other scalar columns → meta)."""

    def __init__(self, path: str | Path, *, text_field: str = "text", id_field: str = "id", **kw):
        super().__init__(name=kw.pop("name", None) or f"parquet:{path}", **kw)
        self.path, self.text_field, self.id_field = Path(path), text_field, id_field

    def fetch(self) -> None:
        _files(self.path, (".parquet",), "parquet")

    def _records(self):
        import pyarrow.parquet as pq  # a tensorflow-datasets dependency; imported only when needed

        files = _files(self.path, (".parquet",), "parquet")
        for path in files:
            rel = path.name if path == self.path else str(path.relative_to(self.path))
            try:
                pf = pq.ParquetFile(path)
            except Exception as e:  # pyarrow raises several types for a corrupt file
                self._bad(path, None, f"not a readable Parquet file ({e})")
                continue
            if self.text_field not in pf.schema_arrow.names:
                raise DataError(f"{path}: no column {self.text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                                "rename the column or pass text_field=")
            row = 0
            for batch in pf.iter_batches(batch_size=4096):
                for rec in batch.to_pylist():
                    row += 1
                    text = rec.get(self.text_field)
                    if not isinstance(text, str):
                        self._bad(path, row, f"row has no string {self.text_field!r} (got {type(text).__name__})")
                        continue
                    local = rec.get(self.id_field)
                    local = str(local) if local is not None else (f"{rel}:{row}" if len(files) > 1 else str(row))
                    meta = {k: v for k, v in rec.items() if k not in (self.text_field, self.id_field)
                            and isinstance(v, (str, int, float, bool, type(None)))}
                    yield local, text, {**meta, "_where": path, "_line": row}


class TextDirSource(Source):
    """Every .txt file under a folder is one document; its id is the path relative to the folder."""

    def __init__(self, path: str | Path, **kw):
        super().__init__(name=kw.pop("name", None) or f"text:{path}", **kw)
        self.path = Path(path)

    def fetch(self) -> None:
        _files(self.path, (".txt",), "text")

    def _records(self):
        for path in _files(self.path, (".txt",), "text"):
            text = self._read_text_file(path)
            if text is not None:
                rel = path.name if path == self.path else str(path.relative_to(self.path))
                yield rel, text, {"path": str(path)}


class UrlSource(Source):
    """A .jsonl(.gz), .txt or .parquet file at a URL, downloaded once into the cache (`#sha256=` pins it)."""

    FORMATS = (".jsonl", ".jsonl.gz", ".ndjson", ".parquet", ".txt")

    def __init__(self, url: str, **kw):
        url, _, fragment = url.partition("#")
        self.sha256 = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
        if fragment and self.sha256 is None:
            raise DataError(f"url source {url}#{fragment}: the only supported fragment is #sha256=<hex>")
        super().__init__(name=kw.pop("name", None) or f"url:{url}", **kw)
        self.url = url
        if not url.split("?")[0].endswith(self.FORMATS):
            raise DataError(f"url source {url}: cannot tell the format; use a URL ending in {', '.join(self.FORMATS)}")
        base = url.rstrip("/").split("/")[-1].split("?")[0] or "index"
        self._filename = f"url-{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"
        self.path: Path | None = None

    def fetch(self) -> None:
        if self.path is None:
            self.path = fetch_url(self.url, self.sha256, filename=self._filename)

    def _records(self):
        assert self.path is not None
        name = self.url.split("?")[0]
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            inner: Source = JsonlSource(self.path, name=self.name, on_error=self.on_error)
        elif name.endswith(".parquet"):
            inner = ParquetSource(self.path, name=self.name, on_error=self.on_error)
        else:  # .txt
            inner = TextDirSource(self.path, name=self.name, on_error=self.on_error)
        # report bad records against the URL (not the cache file) and count them on this source
        inner._bad = lambda path, line, reason, fix="fix the record": self._bad(self.url, line, reason, fix)
        yield from inner._records()


# --- registry of named sources ---

SourceFactory = Callable[..., Source]  # called as factory(val_fraction=..., on_error=...)
_REGISTRY: dict[str, SourceFactory] = {}
GENERIC = {"jsonl": JsonlSource, "parquet": ParquetSource, "text": TextDirSource, "url": UrlSource}


def register_source(name: str, factory: SourceFactory | None = None, *, replace: bool = False):
    """Register a named source (a Source subclass or a function returning one); usable as a decorator."""
    if factory is None:
        return lambda f: register_source(name, f, replace=replace)
    if ":" in name or "/" in name:
        raise DataError(f"source name {name!r} must not contain ':' or '/' (they are used by ids and generic specs)")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
        raise DataError(f"source {name!r} is already registered; pass replace=True to override it")
    _REGISTRY[name] = factory
    return factory


def _load_builtin() -> None:
    import jaxllm.data.corpora  # noqa: F401  (registers the named registry-package corpora)


def registered_sources() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_source(spec: str, *, val_fraction: float = 0.02, on_error: Literal["fail", "skip"] = "fail") -> Source:
    """A registered name (`wikipedia-summaries`) or a generic spec (`jsonl:PATH`, `parquet:PATH`, `text:DIR`, `url:URL`)."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in GENERIC:
        if not rest:
            raise DataError(f"source spec {spec!r} needs a path or URL after '{kind}:'")
        if kind == "url" and not rest.startswith(("http://", "https://", "file://")):
            raise DataError(f"source spec {spec!r}: expected url:http://... or url:https://...")
        return GENERIC[kind](rest, val_fraction=val_fraction, on_error=on_error)
    _load_builtin()
    if spec not in _REGISTRY:
        close = difflib.get_close_matches(spec, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise DataError(f"unknown data source {spec!r}: {hint}run `jaxllm data list` for names, "
                        "or use jsonl:PATH, parquet:PATH, text:DIR, url:URL")
    source = _REGISTRY[spec](val_fraction=val_fraction, on_error=on_error)
    source.name = spec
    return source


# --- the mixture ---

@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which documents to train on: sources, their weights, the validation fraction, bad-record policy."""

    sources: tuple[str, ...] = ("wikipedia-summaries", "boolq-passages")
    weights: tuple[float, ...] = ()  # empty = natural proportions; 2.0 repeats a source twice, 0.5 keeps half
    val_fraction: float = 0.02
    on_error: Literal["fail", "skip"] = "fail"
    max_documents: int = 0  # 0 = all

    def __post_init__(self):
        if not self.sources:
            raise DataError("data.sources is empty; name at least one source (see `jaxllm data list`)")
        if self.weights and len(self.weights) != len(self.sources):
            raise DataError(f"data.weights has {len(self.weights)} entries but data.sources has {len(self.sources)}; "
                            "give one weight per source or none")
        if any(w < 0 for w in self.weights):
            raise DataError(f"data.weights must be >= 0, got {list(self.weights)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_documents < 0:
            raise DataError(f"data.max_documents must be >= 0 (0 = all), got {self.max_documents}")


def mixture_sources(cfg: DataConfig) -> list[Source]:
    """The Source objects of a config (construct once to read their `.skipped` counts after a pass)."""
    return [get_source(s, val_fraction=cfg.val_fraction, on_error=cfg.on_error) for s in cfg.sources]


def _weighted(docs: Iterator[dict], weight: float) -> Iterator[dict]:
    """Repeat each document floor(w) times plus once more with probability frac(w), decided by a hash of its id.

    Copies after the first get ids `<id>#<k>` (and meta["repeat"] = k) so ids stay unique.
    """
    whole, frac = int(weight), weight - int(weight)
    for doc in docs:
        for k in range(whole + (1 if frac > 0 else 0)):
            if k >= whole and _unit_hash("weight", k, doc["id"]) >= frac:
                break
            yield doc if k == 0 else {**doc, "id": f"{doc['id']}#{k}", "meta": {**doc["meta"], "repeat": k}}


def documents(cfg: DataConfig, split: Split = "train", sources: list[Source] | None = None) -> Iterator[dict]:
    """Documents of the mixture, source after source (shuffling is the pipeline's job).

    Weights shape the "train" and "all" streams; "validation" holds each source's held-out documents once
    (a source with weight 0 is left out entirely), so validation numbers stay comparable across mixtures.
    """
    _check_split(split)
    sources = sources if sources is not None else mixture_sources(cfg)
    weights = cfg.weights or (1.0,) * len(sources)
    count = 0
    for source, weight in zip(sources, weights):
        if weight == 0:
            continue
        stream = source.documents(split)
        if split != "validation" and weight != 1.0:
            stream = _weighted(stream, weight)
        for doc in stream:
            yield doc
            count += 1
            if cfg.max_documents and count >= cfg.max_documents:
                return
