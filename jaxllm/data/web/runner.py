"""Run the web pipeline over input files: locally on all cores, or on a Ray cluster.

    run_pipeline(WebConfig(), ["a.warc.gz", "b.warc.gz"], "out/web", num_workers=2)

Three steps: filter every input shard in parallel (map); group dedup entries by (band, key) and
resolve duplicate clusters (shuffle + reduce, global across shards); finish every shard (drop
duplicates, PII, write). Output: `docs/shard-XXXXX.jsonl.gz` (one per input, same content for any
worker count), `stats.json`, `stats.md`, `samples/<stage>.jsonl`, `_SUCCESS`.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from jaxllm.config import to_dict

from . import dedup
from .config import WebConfig
from .shard import ORDER_BITS, _atomic_write, filter_shard, finish_shard, load_entries, stage_list
from .stats import merge_stats, write_report

class PipelineError(RuntimeError):
    """A problem with the run's inputs or output folder that the user can fix."""


def _fingerprint(cfg: WebConfig, inputs: list[Path]) -> dict:
    """What the output depends on; resuming with anything else would mix two different runs."""
    files = [{"path": str(p.resolve()), "size": p.stat().st_size if p.is_file() else None} for p in inputs]
    cfg_d = {k: v for k, v in to_dict(cfg).items() if k != "engine"}
    return {"config": cfg_d, "inputs": files}


def _prepare(cfg: WebConfig, inputs: Sequence[str | Path], out_dir: str | Path) -> tuple[list[Path], Path, Path]:
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise PipelineError(f"web input {p} does not exist; pass .warc/.warc.gz files or HTML folders")
    if not paths:
        raise PipelineError("web pipeline got no input files")
    if len({p.resolve() for p in paths}) != len(paths):
        raise PipelineError("web pipeline got the same input file twice; pass each once")
    out = Path(out_dir)
    work = out / "_work"
    work.mkdir(parents=True, exist_ok=True)
    for tmp in list(out.rglob("*.tmp-*")):  # debris of a crashed run: never complete, always redone
        tmp.unlink()
    fp = _fingerprint(cfg, paths)
    fp_path = work / "fingerprint.json"
    if fp_path.exists():
        if json.loads(fp_path.read_text()) != fp:
            raise PipelineError(f"{out} holds a run with another config or other inputs; "
                                "use a new output folder or delete it")
    else:
        _atomic_write(fp_path, json.dumps(fp, indent=1).encode())
    return paths, out, work


def _done(out: Path, cfg: WebConfig, inputs: list[Path]) -> dict | None:
    """Stats of an already finished run into `out` with the same config and inputs, else None."""
    marker = out / "_SUCCESS"
    if marker.exists() and json.loads(marker.read_text()) == _fingerprint(cfg, inputs):
        return json.loads((out / "stats.json").read_text())
    return None


def _finish_run(cfg: WebConfig, paths: list[Path], out: Path, work: Path, stat_files: list[str],
                num_workers: int) -> dict:
    per_shard = [json.loads(Path(f).read_text()) for f in stat_files]
    enabled = ("read", *(name for name, _ in stage_list(cfg)),
               *(("dedup",) if cfg.dedup.exact or cfg.dedup.minhash else ()))
    stats = merge_stats(per_shard, enabled, cfg.output.samples_per_filter)
    stats["inputs"] = [str(p) for p in paths]
    stats["num_workers"] = num_workers
    stats["engine"] = cfg.engine
    write_report(stats, out)
    _atomic_write(out / "_SUCCESS", json.dumps(_fingerprint(cfg, paths)).encode())
    shutil.rmtree(work, ignore_errors=True)
    return json.loads((out / "stats.json").read_text())


def _removed_for(removed: dict[int, tuple[str, int]], index: int) -> dict[int, tuple[str, int]]:
    return {o: r for o, r in removed.items() if o >> ORDER_BITS == index}


def _resolve_local(n: int, work: Path) -> dict[int, tuple[str, int]]:
    import numpy as np
    entries = np.concatenate([load_entries(i, str(work)) for i in range(n)]) if n else np.zeros((0, 3), np.int64)
    return dedup.resolve(dedup.group_buckets(entries))


def _mp_context():
    """spawn (safe when the caller runs threads, e.g. JAX); fork when __main__ cannot be re-imported
    (python -c, stdin, notebooks), which spawn needs."""
    import sys
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return mp.get_context("spawn" if main_file and Path(main_file).exists() else "fork")


def run_local(cfg: WebConfig, paths: list[Path], out: Path, work: Path, num_workers: int) -> dict:
    n = len(paths)
    if num_workers <= 1:
        filt = [filter_shard(i, str(p), cfg, str(work)) for i, p in enumerate(tqdm(paths, desc="web filter"))]
        removed = _resolve_local(n, work)
        fin = [finish_shard(i, cfg, str(work), str(out), _removed_for(removed, i))
               for i in tqdm(range(n), desc="web finish")]
    else:
        with cf.ProcessPoolExecutor(num_workers, mp_context=_mp_context()) as pool:
            futs = [pool.submit(filter_shard, i, str(p), cfg, str(work)) for i, p in enumerate(paths)]
            for _ in tqdm(cf.as_completed(futs), total=n, desc="web filter"):
                pass
            filt = [f.result() for f in futs]
            removed = _resolve_local(n, work)
            futs = [pool.submit(finish_shard, i, cfg, str(work), str(out), _removed_for(removed, i))
                    for i in range(n)]
            for _ in tqdm(cf.as_completed(futs), total=n, desc="web finish"):
                pass
            fin = [f.result() for f in futs]
    return _finish_run(cfg, paths, out, work, filt + fin, num_workers)


def run_pipeline(cfg: WebConfig, input_paths: Sequence[str | Path], out_dir: str | Path,
                 num_workers: int | None = None) -> dict:
    """Run the whole pipeline; returns the stats dict (also in out_dir/stats.json).

    Rerunning into the same folder resumes: finished shards are kept, unfinished ones redone.
    """
    num_workers = num_workers or os.cpu_count() or 1
    paths = [Path(p) for p in input_paths]
    done = _done(Path(out_dir), cfg, paths) if all(p.exists() for p in paths) else None
    if done is not None:
        return done
    paths, out, work = _prepare(cfg, paths, out_dir)
    if cfg.engine == "ray":
        from .ray_engine import run_ray
        return run_ray(cfg, paths, out, work, num_workers)
    return run_local(cfg, paths, out, work, num_workers)


def register_output(name: str, out_dir: str | Path, **kw):
    """Register a finished run's documents as the data source `name` (a JSONL source over docs/)."""
    from jaxllm.data.sources import JsonlSource, register_source
    docs = Path(out_dir) / "docs"
    return register_source(name, lambda **k: JsonlSource(docs, name=name, **{**kw, **k}), replace=True)
