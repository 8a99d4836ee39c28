"""Float32 matmuls on CPU through MKL's sgemm (cpu_matmul.cc, called through the XLA FFI).

On the CPUs measured here MKL runs the Transformer's matmuls 10-60% faster than XLA:CPU's YNNPACK dots,
the weight gradients x^T g most; PyTorch's CPU speed comes from the same library. `matmul` has a
custom gradient made of the same calls (dx = g w^T, dw = x^T g, with the transposes folded into BLAS).
MKL comes from PyPI's `mkl` package (x86-64 Linux; a dependency there); without it, or without a C++
compiler, `available()` is False and callers use XLA's dot, which is also the test oracle.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import logging
import sys

import jax
import jax.numpy as jnp

from jaxllm.kernels import native

log = logging.getLogger(__name__)
_MKL_THREADING_SEQUENTIAL = 1  # MKL runs on the calling thread; cpu_matmul.cc splits the work over XLA's pool


def _find_mkl() -> str | None:
    candidates = sorted(glob.glob(f"{sys.prefix}/lib/libmkl_rt.so*"), reverse=True)
    return candidates[0] if candidates else ctypes.util.find_library("mkl_rt")


def mkl_installed() -> bool:
    return _find_mkl() is not None


@functools.cache
def available() -> bool:
    """Whether the kernel is built, has MKL's sgemm and is registered with XLA (once per process)."""
    path = _find_mkl()
    if path is None:
        log.warning("matmul_impl='blas' needs MKL (pip install mkl; x86-64 Linux): using XLA's dot instead")
        return False
    library = native.load("cpu_matmul", (("jaxllm_matmul", "JaxllmMatmul"),))
    if library is None:
        return False
    mkl = ctypes.CDLL(path)
    mkl.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
    library.jaxllm_set_sgemm(ctypes.cast(mkl.cblas_sgemm, ctypes.c_void_p))
    _LOADED.append(mkl)  # keep MKL loaded: the kernel holds a pointer into it
    return True


_LOADED: list = []


def applies(x: jax.Array, w: jax.Array) -> bool:
    """Float32 2-D operands in jitted code on one CPU device, with the kernel available."""
    return (x.dtype == w.dtype == jnp.float32 and x.ndim == w.ndim == 2 and native.single_device_cpu()
            and available())


def _call(a, b, trans_a=False, trans_b=False):
    rows = a.shape[1] if trans_a else a.shape[0]
    cols = b.shape[0] if trans_b else b.shape[1]
    return jax.ffi.ffi_call("jaxllm_matmul", jax.ShapeDtypeStruct((rows, cols), jnp.float32),
                            vmap_method="sequential")(a, b, trans_a=trans_a, trans_b=trans_b)


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [n, k] @ w [k, m] -> [n, m], float32, through BLAS (needs `applies(x, w)`)."""
    return _call(x, w)


def _matmul_fwd(x, w):
    return _call(x, w), (x, w)


def _matmul_bwd(res, g):
    x, w = res
    return _call(g, w, trans_b=True), _call(x, g, trans_a=True)


matmul.defvjp(_matmul_fwd, _matmul_bwd)
