"""Fused causal self-attention for XLA:CPU: the C++ kernel in cpu_attention.cc, called through the XLA FFI.

On CPU, XLA runs attention as small batched dots and separate softmax passes, ~2x slower than PyTorch's
flash-attention kernel; this kernel does one (batch, kv_head) pair at a time in cache, skips the masked
triangle, and recomputes the probabilities in the backward pass from the saved log-sum-exp. Built on
first use (native.py); without a compiler `available()` is False and callers use XLA's attention
(`jaxllm.model.layers.blocked_causal_attention`), which is also the test oracle.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.kernels import native

_TARGETS = (("jaxllm_attention_fwd", "JaxllmAttentionForward"), ("jaxllm_attention_bwd", "JaxllmAttentionBackward"))


def available() -> bool:
    """Whether the kernel is built and registered with XLA (False, with a warning, when it cannot be)."""
    return native.load("cpu_attention", _TARGETS) is not None


def supported(q: jax.Array, k: jax.Array) -> bool:
    """Shapes and dtypes the kernel handles: float32 self-attention [batch, length, heads, head_dim]
    with length and head_dim multiples of 16 and heads a multiple of kv_heads."""
    return (q.dtype == k.dtype == jnp.float32 and q.ndim == 4 and q.shape[1] == k.shape[1]
            and q.shape[1] % 16 == 0 and q.shape[3] % 16 == 0 and q.shape[2] % k.shape[2] == 0)


def _forward(q, k, v, segment_ids, scale):
    batch, length, heads, _ = q.shape
    out_types = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, length), jnp.float32))
    return jax.ffi.ffi_call("jaxllm_attention_fwd", out_types, vmap_method="sequential")(
        q, k, v, segment_ids, scale=np.float32(scale))


@jax.custom_vjp
def _attention(q, k, v, segment_ids):
    return _forward(q, k, v, segment_ids, q.shape[-1] ** -0.5)[0]


def _attention_fwd(q, k, v, segment_ids):
    out, lse = _forward(q, k, v, segment_ids, q.shape[-1] ** -0.5)
    return out, (q, k, v, segment_ids, out, lse)


def _attention_bwd(res, g):
    q, k, v, segment_ids, out, lse = res
    types = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
    dq, dk, dv = jax.ffi.ffi_call("jaxllm_attention_bwd", types, vmap_method="sequential")(
        q, k, v, segment_ids, out, lse, g.astype(jnp.float32), scale=np.float32(q.shape[-1] ** -0.5))
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def fused_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None = None
                           ) -> jax.Array:
    """Causal softmax(q k^T / sqrt(head_dim)) v with packed documents masked from each other.

    q: [batch, length, heads, head_dim]; k, v: [batch, length, kv_heads, head_dim]; segment_ids:
    [batch, length] int (None: one document per row). Returns [batch, length, heads, head_dim]. Needs
    `available()` and `supported(q, k)`."""
    if not available():
        raise RuntimeError("the fused CPU attention kernel could not be built here (see the warning above); "
                           "use attention_impl='blocked'")
    if segment_ids is None:
        segment_ids = jnp.zeros(q.shape[:2], jnp.int32)
    return _attention(q, k, v, segment_ids.astype(jnp.int32))
