"""Documents → tokenized ArrayRecord shards (one record per document: BOS then tokens) + manifest.

Writing is crash-safe and repeatable: each document goes to the shard picked by a hash of its id,
each shard is written to a temporary name and renamed when complete (with a small stats file next
to it), and `manifest.json` is written last. A rerun skips shards whose inputs (document ids and
texts, tokenizer) are unchanged, so a crash halfway plus a rerun gives byte-identical shards.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from jaxllm.config import function_ref, resolve_function

import numpy as np
from tqdm.auto import tqdm

MANIFEST = "manifest.json"
FORMAT = "jaxllm-token-shards/1"
_SPOOL = ".spool"
_AR_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for shuffling


def shard_of(doc_id: str, num_shards: int) -> int:
    """The shard a document belongs to: a stable hash of its id (not Python's salted hash)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


def shard_name(index: int, num_shards: int) -> str:
    return f"tokens-{index:05d}-of-{num_shards:05d}.array_record"


def token_dtype(n_vocab: int) -> str:
    """Smallest unsigned dtype that holds every token id."""
    return "uint16" if n_vocab <= 1 << 16 else "uint32"


def tokenizer_hash(tokenizer_dir: str | os.PathLike) -> str:
    """sha256 over the tokenizer directory's file names and contents (identifies the vocabulary)."""
    root = Path(tokenizer_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"tokenizer directory {root} does not exist; train or save a tokenizer there first")
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _default_load_tokenizer(tokenizer_dir: str):
    from jaxllm.tokenizer import Tokenizer

    return Tokenizer.load(tokenizer_dir)


def _write_shard(task: dict, tok) -> dict:
    """Tokenize one spooled shard and write it atomically (stats file first, shard file last)."""
    final, stats_path = Path(task["path"]), Path(task["stats_path"])
    tmp = final.with_name(final.name + ".tmp")
    dtype = np.dtype(task["dtype"])
    from array_record.python.array_record_module import ArrayRecordWriter

    docs = tokens = nbytes = dups = 0
    seen: set[str] = set()
    writer = ArrayRecordWriter(str(tmp), _AR_OPTIONS)
    with open(task["spool"], encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["id"] in seen:  # same id → same shard, so this catches every duplicate
                dups += 1
                continue
            seen.add(doc["id"])
            ids = [tok.bos_id, *tok.encode(doc["text"])]
            writer.write(np.asarray(ids, dtype=dtype).tobytes())
            docs += 1
            tokens += len(ids) - 1
            nbytes += len(doc["text"].encode("utf-8"))
    writer.close()
    stats = {"file": final.name, "documents": docs, "tokens": tokens, "bytes": nbytes,
             "duplicates_skipped": dups, "fingerprint": task["fingerprint"],
             "tokenizer_hash": task["tokenizer_hash"], "dtype": task["dtype"]}
    stats_tmp = stats_path.with_name(stats_path.name + ".tmp")
    stats_tmp.write_text(json.dumps(stats, indent=1))
    os.replace(stats_tmp, stats_path)
    os.replace(tmp, final)  # the shard file appears only when complete
    return stats


def _stats_path(out: Path, name: str) -> Path:
    return out / (name.removesuffix(".array_record") + ".json")


def _complete(out: Path, name: str, expect: dict) -> dict | None:
    """The stats of a finished shard whose inputs match `expect`, else None."""
    stats_path = _stats_path(out, name)
    if not (out / name).exists() or not stats_path.exists():
        return None
    stats = json.loads(stats_path.read_text())
    return stats if all(stats.get(k) == v for k, v in expect.items()) else None


def _spool(documents: Iterable[dict], spool: Path, num_shards: int) -> list[str]:
    """Stream documents into one JSONL file per shard; return a fingerprint of each shard's inputs."""
    spool.mkdir(parents=True)
    files = [open(spool / f"{i:05d}.jsonl", "w", encoding="utf-8") for i in range(num_shards)]
    hashes = [hashlib.blake2b(digest_size=16) for _ in range(num_shards)]
    try:
        for n, doc in enumerate(tqdm(documents, desc="reading documents", unit=" docs")):
            if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("text"), str):
                got = ({k: type(doc.get(k)).__name__ for k in ("id", "text")} if isinstance(doc, dict)
                       else type(doc).__name__)
                raise ValueError(f"document #{n} needs str fields 'id' and 'text' (got {got}); "
                                 "yield dicts like {'id': ..., 'text': ..., 'source': ..., 'meta': {}}")
            i = shard_of(doc["id"], num_shards)
            files[i].write(json.dumps({"id": doc["id"], "text": doc["text"]}, ensure_ascii=False) + "\n")
            hashes[i].update(doc["id"].encode("utf-8") + b"\0" + doc["text"].encode("utf-8", "surrogatepass") + b"\0")
    finally:
        for f in files:
            f.close()
    return [h.hexdigest() for h in hashes]


def _worker_main() -> None:
    """Entry point of a shard worker process: `python -c ... TASK_JSON LOADER_REF`."""
    task, load = json.loads(sys.argv[1]), resolve_function(sys.argv[2])
    _write_shard(task, load(task["tokenizer_dir"]))


def _run(tasks: list[dict], num_workers: int, tok, load: Callable[[str], Any]) -> Iterable[dict]:
    """Write shards in up to `num_workers` fresh Python processes (in this one if <= 1), yielding
    stats as shards finish. Plain subprocesses, not multiprocessing: nothing is forked from a
    parent that may run JAX/grain threads, and callers need no `if __name__ == "__main__"` guard.
    """
    if num_workers <= 1 or len(tasks) <= 1:
        yield from (_write_shard(t, tok) for t in tasks)
        return
    ref = function_ref(load)  # workers import the loader by name
    code = "from jaxllm.data.shards import _worker_main; _worker_main()"
    pending, running = list(tasks), {}
    try:
        while pending or running:
            while pending and len(running) < num_workers:
                task = pending.pop(0)
                running[subprocess.Popen([sys.executable, "-c", code, json.dumps(task), ref],
                                         stdout=subprocess.DEVNULL)] = task
            time.sleep(0.02)
            for proc in [p for p in running if p.poll() is not None]:
                task = running.pop(proc)
                if proc.returncode != 0:
                    raise RuntimeError(f"shard worker for {task['path']} failed (exit code {proc.returncode}); "
                                       "its error is printed above")
                yield json.loads(Path(task["stats_path"]).read_text())
    finally:
        for proc in running:
            proc.kill()
            proc.wait()


def write_shards(documents: Iterable[dict], tokenizer_dir: str, out_dir: str, num_shards: int = 8,
                 num_workers: int = 2, *, load_tokenizer: Callable[[str], Any] | None = None) -> dict:
    """Tokenize documents into `num_shards` ArrayRecord shards under `out_dir`; return the manifest.

    Each record is one document's token ids, BOS first, as uint16 (or uint32 for vocabularies over
    65,536). Shards are tokenized in `num_workers` processes. `load_tokenizer(dir)` (a module-level
    function, imported by name in the workers) defaults to `jaxllm.tokenizer.Tokenizer.load`.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    load = load_tokenizer or _default_load_tokenizer
    tokenizer_dir = str(Path(tokenizer_dir).resolve())
    tok_hash = tokenizer_hash(tokenizer_dir)
    tok = load(tokenizer_dir)
    dtype = token_dtype(tok.n_vocab)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the manifest marks a finished set; rewritten last
    for stale in {*out.glob("*.tmp"), *out.glob("tokens-*-of-*")}:  # crashed writes, other shard counts
        if stale.name.endswith(".tmp") or f"-of-{num_shards:05d}." not in stale.name:
            stale.unlink()
    spool = out / _SPOOL
    shutil.rmtree(spool, ignore_errors=True)
    fingerprints = _spool(documents, spool, num_shards)

    names = [shard_name(i, num_shards) for i in range(num_shards)]
    stats: list[dict | None] = [
        _complete(out, name, {"fingerprint": fp, "tokenizer_hash": tok_hash, "dtype": dtype})
        for name, fp in zip(names, fingerprints)]
    tasks = [dict(spool=str(spool / f"{i:05d}.jsonl"), path=str(out / names[i]),
                  stats_path=str(_stats_path(out, names[i])), tokenizer_dir=tokenizer_dir,
                  tokenizer_hash=tok_hash, fingerprint=fingerprints[i], dtype=dtype)
             for i in range(num_shards) if stats[i] is None]
    for task in tasks:  # outdated shards go first, so "shard file exists" keeps meaning "complete"
        Path(task["path"]).unlink(missing_ok=True)
        Path(task["stats_path"]).unlink(missing_ok=True)
    bar = tqdm(total=num_shards, initial=num_shards - len(tasks), desc="tokenizing shards", unit=" shards")
    try:
        for result in _run(tasks, num_workers, tok, load):
            stats[names.index(result["file"])] = result
            bar.update(1)
            bar.set_postfix(docs=sum(s["documents"] for s in stats if s))
    finally:
        bar.close()
    shutil.rmtree(spool, ignore_errors=True)

    manifest = {
        "format": FORMAT, "num_shards": num_shards, "dtype": dtype, "tokenizer_hash": tok_hash,
        "tokenizer_dir": tokenizer_dir, "n_vocab": int(tok.n_vocab), "bos_id": int(tok.bos_id),
        "documents": sum(s["documents"] for s in stats),
        "tokens": sum(s["tokens"] for s in stats),  # text tokens, BOS not counted
        "bytes": sum(s["bytes"] for s in stats),  # UTF-8 bytes of the texts (for bits per byte)
        "duplicates_skipped": sum(s["duplicates_skipped"] for s in stats),
        "shards": [{k: s[k] for k in ("file", "documents", "tokens", "bytes", "fingerprint")} for s in stats],
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return manifest


def read_manifest(shard_dir: str | os.PathLike) -> dict:
    """The manifest of a finished shard directory (fails clearly on a missing or partial one)."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {shard_dir} is not a finished shard directory; "
                                "run write_shards (jaxllm data ...) to (re)build it")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}; rebuild the shards")
    return manifest


class ShardSource:
    """Random-access source over a shard directory (grain-compatible): record i → token ids [n]."""

    def __init__(self, shard_dir: str | os.PathLike):
        self.shard_dir = str(shard_dir)
        self.manifest = read_manifest(shard_dir)
        self.dtype = np.dtype(self.manifest["dtype"])
        self._paths = [str(Path(shard_dir) / s["file"]) for s in self.manifest["shards"] if s["documents"]]
        self._source = None  # opened lazily so the object pickles cheaply into grain workers
        self._len = sum(s["documents"] for s in self.manifest["shards"])

    def _src(self):
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource(self._paths)
            if len(self._source) != self._len:
                raise ValueError(f"{self.shard_dir}: shards hold {len(self._source)} records but "
                                 f"{MANIFEST} says {self._len}; rebuild the shards")
        return self._source

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> np.ndarray:
        return np.frombuffer(self._src()[index], dtype=self.dtype)

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"ShardSource({self.shard_dir!r}, documents={self._len})"
