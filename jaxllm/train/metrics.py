"""Metrics at the edge: JSONL + TensorBoard writers, the FLOP/s peak for MFU, curve PNGs."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.kernels import blas_matmul

# bf16 dense peak per chip (FLOP/s), published figures
KNOWN_PEAKS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "tpu v4": 275e12, "tpu v5e": 197e12,
               "tpu v5p": 459e12, "tpu v6e": 918e12}


def measure_matmul_peak(n: int = 1024, dtype=jnp.float32, repeats: int = 5) -> float:
    """Best observed FLOP/s of a square matmul on the default device (the CPU ceiling for MFU): XLA's dot
    and, for float32 on CPU with a BLAS installed, the kernel of matmul_impl="blas", whichever is faster."""
    a = jnp.ones((n, n), dtype)
    candidates = [jax.jit(lambda x, y: x @ y)]
    if (jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.float32 and blas_matmul.installed()
            and blas_matmul.available()):
        candidates.append(jax.jit(blas_matmul.matmul))
    best = float("inf")
    for f in candidates:
        f(a, a).block_until_ready()
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a, a).block_until_ready()
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def device_peak_flops() -> float:
    kind = jax.devices()[0].device_kind.lower()
    for name, peak in KNOWN_PEAKS.items():
        if name in kind:
            return peak * jax.device_count()
    return measure_matmul_peak()  # CPU: fake devices share the same cores, so one measurement is the ceiling


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl (and TensorBoard) from process 0 only."""

    def __init__(self, directory: str | Path, tensorboard: bool = True, resume_step: int | None = None):
        self.directory = Path(directory)
        self.enabled = jax.process_index() == 0
        self.path = self.directory / "metrics.jsonl"
        self._tb = None
        if not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # A killed run may have logged steps past its last checkpoint: drop them, they will be redone.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(self.directory / "tensorboard"))

    def write(self, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(v):
    if isinstance(v, (np.ndarray, jax.Array)):
        v = np.asarray(v)
        return v.item() if v.size == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_curves(records: Iterable[dict], keys: list[str], out_png: str | Path, title: str = "",
                xlabel: str = "step", hlines: dict | None = None) -> Path:
    """One PNG with one line per key (records missing a key are skipped), plus optional reference lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=key, marker="o" if len(pts) < 30 else None, markersize=3)
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", color="gray", linewidth=1)
        ax.annotate(label, xy=(0.01, y), xycoords=("axes fraction", "data"), fontsize=8, color="gray",
                    va="bottom")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
