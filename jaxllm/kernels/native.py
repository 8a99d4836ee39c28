"""Build and load jaxllm's C++ CPU kernels (this directory's *.cc), called from jitted code through the XLA FFI.

Each source is compiled on first use with the machine's C++ compiler (`$CXX`, else g++; `-O3
-march=native`) into `$JAXLLM_CACHE/kernels/`, keyed by the source, jaxlib's version and the CPU, so a
build tuned for one CPU never runs on another. Callers check `load()` and fall back to XLA's own ops
(their test oracles) when it returns None: no compiler, or `JAXLLM_NATIVE_KERNELS=0`.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

from jaxllm.fetch import cache_dir

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-w"]


def _cpu_signature() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def build(source: Path, compiler: str | None = None, extra_args: tuple[str, ...] = ()) -> Path:
    """Compile `source` (once per source text, extra compiler and linker arguments, jaxlib and CPU) and return
    the shared library's path."""
    compiler = compiler or os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (install g++ or set $CXX)")
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]
    key = hashlib.sha256("\n".join([source.read_text(), *headers, jax.__version__, jax.lib.__version__, " ".join(FLAGS),
                                    " ".join(extra_args), compiler, _cpu_signature()]).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{source.parent}", str(source), *extra_args, "-o",
               str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"compiling {source.name} failed ({' '.join(cmd)}):\n{result.stderr[-2000:]}")
        os.replace(out, target)  # atomic: concurrent processes never load a half-written library
    return target


@functools.cache
def load(name: str, targets: tuple[tuple[str, str], ...], extra_args: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """Build `name`.cc (with compiler and linker arguments `extra_args`), register its FFI handlers ((target,
    symbol) pairs) for the CPU and return the library; None, with a warning naming the problem, when that
    cannot be done here."""
    if os.environ.get("JAXLLM_NATIVE_KERNELS", "1") == "0":
        return None
    try:
        library = ctypes.cdll.LoadLibrary(str(build(HERE / f"{name}.cc", extra_args=extra_args)))
    except (RuntimeError, OSError) as e:
        log.warning("native CPU kernel %s unavailable, using XLA's ops instead: %s", name, e)
        return None
    for target, symbol in targets:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return library  # functools.cache keeps it loaded


def single_device_cpu() -> bool:
    """Whether jitted code being traced now runs on one CPU device: the kernels are opaque calls on whole
    arrays, which under a multi-device mesh XLA would gather onto every device."""
    mesh = jax.sharding.get_abstract_mesh()
    return jax.default_backend() == "cpu" and (mesh.empty or mesh.size == 1)
