"""Multi-host runs: start JAX's distributed runtime from the environment, process-0 helpers, and a
topology-independent data stream whose checkpoint resumes on any process count.

Environment read by `initialize()` (every launcher in launch/ sets it; see docs/scale.md):
  JAXLLM_COORDINATOR      host:port of process 0's coordinator (e.g. 127.0.0.1:12355)
  JAXLLM_NUM_PROCESSES    number of processes
  JAXLLM_PROCESS_ID       this process's id, 0..N-1 (falls back to JOB_COMPLETION_INDEX on Kubernetes)
  JAXLLM_DISTRIBUTED=auto  instead of the three: JAX detects SLURM / Cloud TPU pods / Open MPI itself
Without any of them the run is single-process.

Data streams: the corpus is split into K streams (docs[k::K], each shuffled and packed on its own) and
global batch b holds rows b*R..(b+1)*R-1 of every stream in stream order (R = batch/K). Process p of P
reads streams p*K/P .. (p+1)*K/P-1, so the global batch is the same for any P dividing K, and the
checkpoint stores one position per stream (not per process): a run resumes on another process count
without repeating or skipping a row.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import numpy as np

from jaxllm.data.pipeline import FIELDS, PipelineConfig, _packed_rows

ENV_COORDINATOR = "JAXLLM_COORDINATOR"
ENV_NUM_PROCESSES = "JAXLLM_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXLLM_PROCESS_ID"
ENV_DISTRIBUTED = "JAXLLM_DISTRIBUTED"  # "auto": let JAX detect SLURM / Cloud TPU / MPI
HEARTBEAT_TIMEOUT_S = 20  # a dead peer is noticed after this long (JAX's default is 100 s)


class DistributedError(RuntimeError):
    pass


def cluster_from_env(env: Optional[dict] = None) -> Optional[dict]:
    """(coordinator, num_processes, process_id) from JAXLLM_* variables, or None when they are unset."""
    env = os.environ if env is None else env
    coordinator = env.get(ENV_COORDINATOR)
    if not coordinator:
        return None
    pid = env.get(ENV_PROCESS_ID, env.get("JOB_COMPLETION_INDEX"))
    try:
        num, pid = int(env[ENV_NUM_PROCESSES]), int(pid)
    except (KeyError, TypeError, ValueError):
        raise DistributedError(f"{ENV_COORDINATOR} is set but {ENV_NUM_PROCESSES}/{ENV_PROCESS_ID} are missing or "
                               f"not integers ({env.get(ENV_NUM_PROCESSES)!r}, {pid!r}); set all three") from None
    if not 0 <= pid < num:
        raise DistributedError(f"{ENV_PROCESS_ID}={pid} must be in [0, {ENV_NUM_PROCESSES}={num})")
    return {"coordinator_address": coordinator, "num_processes": num, "process_id": pid}


def initialize(heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S, initialization_timeout_s: int = 120) -> bool:
    """Join the multi-process runtime if the environment describes one; True if it did.

    Must run before any JAX computation. Idempotent. A peer that dies is detected by the
    coordinator's heartbeat, which terminates the others within ~`heartbeat_timeout_s`.
    """
    if jax.distributed.is_initialized():
        return True
    cluster = cluster_from_env()
    if cluster is None and os.environ.get(ENV_DISTRIBUTED) != "auto":
        return False
    kwargs = dict(cluster or {})
    jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat_timeout_s,
                               initialization_timeout=initialization_timeout_s)
    return True


def is_main_process() -> bool:
    """True on process 0, the only one that writes logs, reports and plots."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across processes (no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def describe() -> str:
    return (f"process {jax.process_index()}/{jax.process_count()}, {jax.local_device_count()} local of "
            f"{jax.device_count()} devices ({jax.devices()[0].platform})")


# --- topology-independent data streams --------------------------------------------------------

def num_streams(cfg: PipelineConfig) -> int:
    """K streams: `cfg.streams` if the config has that field and it is > 0, else one per row of the batch."""
    k = int(getattr(cfg, "streams", 0) or cfg.batch_size)
    if cfg.batch_size % k:
        raise ValueError(f"pipeline.batch_size={cfg.batch_size} (global rows per step) must be a multiple of "
                         f"the {k} data streams")
    return k


def owned_streams(k: int, process_index: int, process_count: int) -> range:
    """The contiguous block of streams process `process_index` reads."""
    if k % process_count:
        raise ValueError(f"{process_count} processes cannot split {k} data streams evenly; use a process count "
                         f"that divides pipeline.batch_size={k} (or set pipeline.streams)")
    per = k // process_count
    return range(process_index * per, (process_index + 1) * per)


class StreamIterator:
    """This process's rows of each global batch: `next()` gives numpy `[batch/P, seq_len]` fields.

    `get_state()` maps stream id → grain iterator state, so states saved by any topology combine.
    """

    def __init__(self, shard_dir: str, cfg: PipelineConfig, process_index: int = 0, process_count: int = 1):
        import grain

        from jaxllm.data.shards import ShardSource

        self.k = num_streams(cfg)
        self.rows_per_stream = cfg.batch_size // self.k
        self.streams = owned_streams(self.k, process_index, process_count)
        source = grain.MapDataset.source(ShardSource(shard_dir))
        if len(source) < self.k:
            raise ValueError(f"{shard_dir} has {len(source)} documents, fewer than the {self.k} data streams; "
                             "use more data or fewer streams (pipeline.batch_size)")
        self._its = {}
        for s in self.streams:
            docs = source[s::self.k].seed(cfg.seed * 1_000_003 + s).shuffle().repeat(None)
            self._its[s] = iter(_packed_rows(docs, cfg))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = [next(self._its[s]) for s in self.streams for _ in range(self.rows_per_stream)]
        return {f: np.stack([r[f] for r in rows]) for f in FIELDS}

    def get_state(self) -> dict[str, Any]:
        return {"num_streams": self.k, "streams": {str(s): self._its[s].get_state() for s in self.streams}}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("num_streams") != self.k:
            raise ValueError(f"the checkpoint's data iterator has {state.get('num_streams')} streams but this run "
                             f"uses {self.k}; keep pipeline.batch_size (and pipeline.streams) when resuming")
        for s in self.streams:
            if str(s) not in state["streams"]:
                raise ValueError(f"the checkpoint has no position for data stream {s}")
            self._its[s].set_state(_json_fixed(state["streams"][str(s)]))

    def checkpoint_save(self):
        return StreamSave(self)

    def checkpoint_restore(self):
        return StreamRestore(self)


def _json_fixed(state: Any) -> Any:
    """Undo JSON's tuple → list in grain's ConcatThenSplit state: grain 0.2.18 compares
    `remainder_slices` entries with the tuple (-1, -1), so a list [-1, -1] (empty buffer) restores to a
    wrong position. Found by tests/test_multihost_data.py; affects grain's own checkpoint handler too."""
    if isinstance(state, dict):
        return {k: ({n: tuple(v) if isinstance(v, list) else v for n, v in val.items()}
                    if k == "remainder_slices" and isinstance(val, dict) else _json_fixed(val))
                for k, val in state.items()}
    if isinstance(state, list):
        return [_json_fixed(v) for v in state]
    return state


class StreamCheckpointHandler:
    """Orbax handler: each process writes `stream_<k>.json` for its streams; restore reads the ones
    this process now owns, whatever process count wrote them."""

    def save(self, directory, item=None, args=None):
        it = item or args.item
        state = it.get_state()
        for s, st in state["streams"].items():
            (directory / f"stream_{s}.json").write_text(json.dumps({"num_streams": state["num_streams"], "state": st}))

    def restore(self, directory, item=None, args=None):
        it = item or args.item
        files = {s: directory / f"stream_{s}.json" for s in it.streams}
        missing = [str(f) for f in files.values() if not f.exists()]
        if missing:
            raise ValueError(f"data iterator checkpoint lacks {missing[0]} (written with another pipeline.batch_size "
                             "or streams setting?)")
        loaded = {str(s): json.loads(f.read_text()) for s, f in files.items()}
        ks = {v["num_streams"] for v in loaded.values()}
        it.set_state({"num_streams": ks.pop() if len(ks) == 1 else None,
                      "streams": {s: v["state"] for s, v in loaded.items()}})
        return it

    def structure(self, directory):
        return None

    def metadata(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass

    @classmethod
    def typestr(cls):
        return f"{cls.__module__}.{cls.__qualname__}"


import orbax.checkpoint as _ocp  # noqa: E402


@_ocp.args.register_with_handler(StreamCheckpointHandler, for_save=True)
@dataclasses.dataclass
class StreamSave(_ocp.args.CheckpointArgs):
    item: Any


@_ocp.args.register_with_handler(StreamCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class StreamRestore(_ocp.args.CheckpointArgs):
    item: Any


def global_batch_iterator(shard_dir: str, cfg: PipelineConfig, process_index: int | None = None,
                          process_count: int | None = None) -> StreamIterator:
    """Pretraining batches whose global content does not depend on the process count
    (`cfg.batch_size` is the global number of rows per step)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    return StreamIterator(shard_dir, cfg, pi, pc)
