"""Float32 matmuls on CPU through MKL's sgemm (cpu_matmul.cc, called through the XLA FFI).

On the CPUs measured here MKL runs the Transformer's matmuls 10-60% faster than XLA:CPU's YNNPACK dots,
the weight gradients x^T g most; PyTorch's CPU speed comes from the same library. `matmul` has a
custom gradient made of the same calls (dx = g w^T, dw = x^T g, with the transposes folded into BLAS).
MKL comes from PyPI's `mkl-static` (a dependency on x86-64 Linux) and is linked into the kernel with its
symbols hidden; without it, or without a C++ compiler, `available()` is False and callers use XLA's dot,
which is also the test oracle.
"""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxllm.kernels import native

log = logging.getLogger(__name__)
_MKL_ARCHIVES = ("libmkl_intel_lp64.a", "libmkl_sequential.a", "libmkl_core.a")  # LP64 ints, no threads


def _mkl_archives() -> list[Path] | None:
    paths = [Path(sys.prefix) / "lib" / name for name in _MKL_ARCHIVES]
    return paths if all(p.exists() for p in paths) else None


def mkl_installed() -> bool:
    return _mkl_archives() is not None


@functools.cache
def available() -> bool:
    """Whether the kernel is built with MKL and registered with XLA (once per process)."""
    archives = _mkl_archives()
    if archives is None:
        log.warning("matmul_impl='blas' needs MKL's static libraries (pip install mkl-static; x86-64 Linux) "
                    "in %s/lib: using XLA's dot instead", sys.prefix)
        return False
    link = ("-Wl,--start-group", *map(str, archives), "-Wl,--end-group", "-Wl,--exclude-libs,ALL", "-Wl,-Bsymbolic",
            "-lpthread", "-lm", "-ldl")
    return native.load("cpu_matmul", (("jaxllm_matmul", "JaxllmMatmul"),), link) is not None


def applies(x: jax.Array, w: jax.Array) -> bool:
    """Float32 2-D operands in jitted code on one CPU device, with the kernel available."""
    return (x.dtype == w.dtype == jnp.float32 and x.ndim == w.ndim == 2 and native.single_device_cpu()
            and available())


def _call(a, b, trans_a=False, trans_b=False):
    rows = a.shape[1] if trans_a else a.shape[0]
    cols = b.shape[0] if trans_b else b.shape[1]
    return jax.ffi.ffi_call("jaxllm_matmul", jax.ShapeDtypeStruct((rows, cols), jnp.float32),
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
