"""Run the process under tcmalloc when the machine has it (Debian: libtcmalloc-minimal4).

XLA:CPU allocates each step's temporary buffers afresh; glibc hands blocks above 32 MB back to the
kernel on free, so every train step page-faults its whole working set again (d256/L6, batch 16x256:
~310k minor faults, 1.2 GB, per step). tcmalloc keeps the pages: no faults, and train steps ran
1.17-1.39x faster here (benchmarks/train_throughput.py reports which allocator it ran under).

The preload must be in place before the process starts, so `reexec_under_tcmalloc()` re-executes the
same command line with LD_PRELOAD set, before jax is imported; the `jaxllm` command, the test
session and the benchmarks call it first. JAXLLM_TCMALLOC=0 turns it off.
"""
from __future__ import annotations

import ctypes.util
import os
import sys

_MARK = "JAXLLM_TCMALLOC_PRELOADED"  # the LD_PRELOAD entry we added, so only that one is removed


def tcmalloc_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libtcmalloc" in f.read()
    except OSError:
        return False


def find_tcmalloc() -> str | None:
    """The tcmalloc shared library name the dynamic loader resolves, or None."""
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def reexec_under_tcmalloc() -> None:
    """Re-exec this command line with tcmalloc preloaded (same pid; returns if already loaded, off,
    unavailable, or too late because jax is imported). Once loaded, the preload is removed from the
    environment so child processes (browsers, sandboxed code) do not inherit it."""
    if tcmalloc_loaded():
        added = os.environ.pop(_MARK, None)
        if added:
            rest = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p and p != added]
            if rest:
                os.environ["LD_PRELOAD"] = ":".join(rest)
            else:
                os.environ.pop("LD_PRELOAD", None)
        return
    if (os.environ.get("JAXLLM_TCMALLOC", "1") == "0" or not sys.platform.startswith("linux")
            or "jax" in sys.modules or os.environ.get(_MARK)):  # _MARK set but not loaded: the preload failed
        return
    lib = find_tcmalloc()
    if lib is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[_MARK] = lib
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))  # no "large alloc" chatter
    # keep freed pages instead of returning them to the kernel bit by bit: at GPT-2 124M a step after such
    # releases ran its elementwise ops ~8x slower (GELU 58 vs 7 ms), faulting the pages in again
    env.setdefault("TCMALLOC_RELEASE_RATE", "0")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def pytest_addoption(parser):
    """As a pytest plugin (`-p jaxllm.allocator`, in pyproject's addopts): pytest registers `-p` plugins
    and calls this before it captures output or imports conftest.py, so the re-exec keeps the
    terminal and the whole test session runs under tcmalloc, as `jaxllm` does."""
    reexec_under_tcmalloc()
