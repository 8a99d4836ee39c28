"""The pipeline on Ray: map tasks per input shard, a hash-partitioned shuffle of dedup entries
through Ray's object store, reduce tasks that group LSH buckets by key, then finish tasks.

Connects to a running cluster when `RAY_ADDRESS` is set (or Ray is already initialised); otherwise
starts a local cluster with `num_workers` CPUs and stops it afterwards. The output folder must be
on storage all nodes share (NFS, a mounted bucket) when the cluster has more than one machine.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import dedup
from .config import WebConfig
from .shard import filter_shard, finish_shard, load_entries


def _map(index: int, path: str, cfg: WebConfig, work: str, partitions: int):
    """Filter one shard; return its stats path and its dedup entries split into `partitions`."""
    stats = filter_shard(index, path, cfg, work)
    return (stats, *dedup.partition(load_entries(index, work), partitions))


def _reduce(*parts):
    """Group one key partition (its pieces from every map task) into duplicate buckets."""
    import numpy as np
    entries = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    return dedup.group_buckets(entries)


def run_ray(cfg: WebConfig, paths: list[Path], out: Path, work: Path, num_workers: int) -> dict:
    import ray

    from .runner import _finish_run, _removed_for

    started = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)
        else:
            ray.init(num_cpus=num_workers, **kwargs)
            started = True
    try:
        n, parts = len(paths), max(num_workers, 1)
        map_task = ray.remote(_map).options(num_returns=parts + 1)
        maps = [map_task.remote(i, str(p), cfg, str(work), parts) for i, p in enumerate(paths)]
        reduce_task = ray.remote(_reduce)
        reduces = [reduce_task.remote(*[m[1 + r] for m in maps]) for r in range(parts)]
        buckets = [b for part in ray.get(reduces) for b in part]
        removed = dedup.resolve(buckets)
        finish = ray.remote(finish_shard)
        fins = [finish.remote(i, cfg, str(work), str(out), _removed_for(removed, i)) for i in range(n)]
        stat_files = ray.get([m[0] for m in maps]) + ray.get(fins)
    finally:
        if started:
            ray.shutdown()
    return _finish_run(cfg, paths, out, work, stat_files, num_workers)
