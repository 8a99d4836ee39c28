"""Float32 matmuls on CPU through a BLAS sgemm (cpu_matmul.cc, called through the XLA FFI).

On the CPUs measured here BLAS runs the Transformer's matmuls faster than XLA:CPU's YNNPACK dots, the weight
gradients x^T g most; PyTorch's CPU speed comes from MKL. Two libraries, both from PyPI: MKL (`mkl-static`,
x86-64 Linux), linked into the kernel with its symbols hidden, and OpenBLAS (`scipy-openblas32`, NumPy's
build, Linux x86-64 and aarch64). On an Intel CPU MKL is the default; on others (AMD EPYC: OpenBLAS
1.1-1.7x faster per thread than MKL on the model's shapes) OpenBLAS. `JAXLLM_BLAS=mkl|openblas` overrides.
`matmul` has a custom gradient made of the same calls (dx = g w^T, dw = x^T g, with the transposes folded
into BLAS). Without either library, or without a C++ compiler, `available()` is False and callers use
XLA's dot, which is also the test oracle.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxllm.kernels import native

log = logging.getLogger(__name__)
LIBRARIES = ("mkl", "openblas")
_MKL_ARCHIVES = ("libmkl_intel_lp64.a", "libmkl_sequential.a", "libmkl_core.a")  # LP64 ints, no threads


@functools.cache
def _link_args(library: str) -> tuple[str, ...] | None:
    """Compiler and linker arguments building cpu_matmul.cc against `library`; None when it is not installed."""
    if library == "mkl":
        archives = [Path(sys.prefix) / "lib" / name for name in _MKL_ARCHIVES]
        if not all(p.exists() for p in archives):
            return None
        return ("-Wl,--start-group", *map(str, archives), "-Wl,--end-group", "-Wl,--exclude-libs,ALL",
                "-Wl,-Bsymbolic", "-lpthread", "-lm", "-ldl")
    try:
        import scipy_openblas32
    except ImportError:
        return None
    lib_dir = scipy_openblas32.get_lib_dir()
    return ("-DJAXLLM_OPENBLAS", f"-L{lib_dir}", f"-l{scipy_openblas32.get_library()}", f"-Wl,-rpath,{lib_dir}")


def installed(library: str | None = None) -> bool:
    """Whether `library` (default: any of LIBRARIES) can be linked here."""
    return any(_link_args(name) is not None for name in ([library] if library else LIBRARIES))


@functools.cache
def _cpu_vendor() -> str:
    try:
        return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def library() -> str | None:
    """The BLAS the kernel uses: $JAXLLM_BLAS, else MKL on Intel CPUs and OpenBLAS on others, whichever of
    the two is installed when the preferred one is not; None when neither is."""
    chosen = os.environ.get("JAXLLM_BLAS", "")
    if chosen:
        if chosen not in LIBRARIES:
            raise ValueError(f"JAXLLM_BLAS={chosen!r} must be one of {', '.join(LIBRARIES)} (or unset: chosen per CPU)")
        return chosen if installed(chosen) else None
    order = LIBRARIES if _cpu_vendor() == "GenuineIntel" else LIBRARIES[::-1]
    return next((name for name in order if installed(name)), None)


def available() -> bool:
    """Whether the kernel is built with the chosen BLAS and registered with XLA (once per process)."""
    return _build(library())


@functools.cache
def _build(name: str | None) -> bool:
    if name is None:
        log.warning("matmul_impl='blas' needs MKL (pip install mkl-static; x86-64 Linux) or OpenBLAS (pip install "
                    "scipy-openblas32) in %s: using XLA's dot instead", sys.prefix)
        return False
    return native.load("cpu_matmul", ((f"jaxllm_matmul_{name}", "JaxllmMatmul"),), _link_args(name)) is not None


def applies(x: jax.Array, w: jax.Array) -> bool:
    """Float32 2-D operands in jitted code on one CPU device, with the kernel available."""
    return (x.dtype == w.dtype == jnp.float32 and x.ndim == w.ndim == 2 and native.single_device_cpu()
            and available())


def _call(a, b, trans_a=False, trans_b=False):
    rows = a.shape[1] if trans_a else a.shape[0]
    cols = b.shape[0] if trans_b else b.shape[1]
    return jax.ffi.ffi_call(f"jaxllm_matmul_{library()}", jax.ShapeDtypeStruct((rows, cols), jnp.float32),
                            vmap_method="sequential")(a, b, trans_a=trans_a, trans_b=trans_b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, w: jax.Array, transpose_w: bool = False) -> jax.Array:
    """x [n, k] @ w [k, m] -> [n, m], float32, through BLAS (needs `applies(x, w)`). transpose_w: w is
    given as [m, k] (an embedding table used as the output head) and x @ w^T is computed without a copy."""
    return _call(x, w, trans_b=transpose_w)


def _matmul_fwd(x, w, transpose_w):
    return _call(x, w, trans_b=transpose_w), (x, w)


def _matmul_bwd(transpose_w, res, g):
    x, w = res
    if transpose_w:  # dw = g^T x comes out as [m, k] directly: ~1.5x faster than x^T g at [768, 50257]
        return _call(g, w), _call(g, x, trans_a=True)
    return _call(g, w, trans_b=True), _call(x, g, trans_a=True)


matmul.defvjp(_matmul_fwd, _matmul_bwd)
