"""Pure building blocks of the Transformer: attention, RoPE, norms, MLPs.

Plain functions of arrays, so an ablation can import one and swap it in. The Flax modules in
transformer.py only hold the parameters and call these.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxllm.kernels import cpu_attention, native

Array = jax.Array


def rms_norm(x: Array, scale: Array, eps: float = 1e-5) -> Array:
    """RMSNorm (Llama): x / rms(x) * scale, computed in float32, returned in x.dtype."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def layer_norm(x: Array, scale: Array, bias: Optional[Array] = None, eps: float = 1e-5) -> Array:
    """LayerNorm (GPT-2): centre, divide by std, scale and shift; float32 inside."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def rope_frequencies(head_dim: int, theta: float) -> Array:
    """Inverse frequencies [head_dim // 2] of rotary embeddings."""
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary position embedding, half-split convention (Hugging Face Llama `rotate_half`).

    x: [batch, length, heads, head_dim]; positions: int [batch, length]. Dimension i is paired with
    i + head_dim/2 (not with i+1 as in GGUF/Meta's interleaved layout).
    """
    head_dim = x.shape[-1]
    inv_freq = rope_frequencies(head_dim, theta)  # [head_dim/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, length, head_dim/2]
    cos = jnp.cos(angles)[:, :, None, :]  # [batch, length, 1, head_dim/2]
    sin = jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    segment_ids: Optional[Array] = None,
    q_positions: Optional[Array] = None,
    kv_positions: Optional[Array] = None,
    causal: bool = True,
) -> Optional[Array]:
    """Boolean mask [batch|1, 1, q_len, kv_len] (True = attend), or None when nothing is masked.

    Causality compares positions when given (the KV-cache case: slot index = position), else indices.
    segment_ids [batch, length] (self-attention only): tokens see only their own segment.
    """
    mask = None
    if causal:
        if q_positions is not None or kv_positions is not None:
            if q_positions is None or kv_positions is None:
                raise ValueError("attention: pass both q_positions and kv_positions, or neither")
            mask = kv_positions[:, None, :] <= q_positions[:, :, None]  # [batch, q, kv]
        else:
            mask = jnp.tril(jnp.ones((q_len, kv_len), dtype=bool))[None]
    if segment_ids is not None:
        if q_len != kv_len:
            raise ValueError(f"attention: segment_ids need q_len == kv_len, got {q_len} and {kv_len}")
        seg = segment_ids[:, :, None] == segment_ids[:, None, :]  # [batch, q, kv]
        mask = seg if mask is None else mask & seg
    return None if mask is None else mask[:, None]


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    segment_ids: Optional[Array] = None,
    q_positions: Optional[Array] = None,
    kv_positions: Optional[Array] = None,
    causal: bool = True,
    impl: str = "xla",
) -> Array:
    """Scaled dot-product attention with grouped-query heads via jax.nn.dot_product_attention.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim] with
    heads % kv_heads == 0. impl: "xla" (portable oracle), "cudnn" (flash attention on GPUs),
    "auto" (JAX chooses; "fused" on CPU), "blocked" (causal block skipping in XLA; see
    blocked_causal_attention), "fused" (the C++ CPU kernel in jaxllm/kernels, fastest on CPU; "blocked"
    where it does not apply: other shapes or dtypes, several devices, no compiler). Returns
    [batch, q_len, heads, head_dim].
    """
    plain_causal = causal and q_positions is None and kv_positions is None
    if impl == "auto" and jax.default_backend() == "cpu":
        impl = "fused"
    if impl == "fused":
        if plain_causal and _fused_kernel_applies(q, k):
            return cpu_attention.fused_causal_attention(q, k, v, segment_ids)
        impl = "blocked"
    if impl == "blocked":
        if plain_causal and q.shape[1] == k.shape[1]:
            return blocked_causal_attention(q, k, v, segment_ids=segment_ids)
        impl = "xla"  # decoding (positions) or non-causal: nothing to skip
    implementation = None if impl == "auto" else impl
    if plain_causal and segment_ids is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    mask = attention_mask(
        q.shape[1], k.shape[1], segment_ids=segment_ids, q_positions=q_positions,
        kv_positions=kv_positions, causal=causal and not (plain_causal and impl == "cudnn"),
    )
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=plain_causal and impl == "cudnn", implementation=implementation
    )


def _fused_kernel_applies(q: Array, k: Array) -> bool:
    return cpu_attention.supported(q, k) and native.single_device_cpu() and cpu_attention.available()


def blocked_causal_attention(q: Array, k: Array, v: Array, *, segment_ids: Optional[Array] = None,
                             block: int = 64) -> Array:
    """Causal self-attention that skips the masked upper triangle, block by block of queries.

    Query block i attends only to keys [0, (i+1)*block), so about (n+1)/(2n) of the dense work
    for n blocks; on XLA:CPU fwd+bwd runs ~1.7x faster than the dense path at length 256. Same
    shapes and result as `attention(..., causal=True)`; exact up to float summation order.
    q: [batch, length, heads, head_dim]; k, v: [batch, length, kv_heads, head_dim].
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    block = min(block, length)
    if length % block:
        return attention(q, k, v, segment_ids=segment_ids, impl="xla")
    # [batch, kv_heads, groups, length, head_dim] so grouped queries share their key/value head
    qh = q.reshape(batch, length, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4) * head_dim ** -0.5
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [batch, kv_heads, length, head_dim]
    outs = []
    for start in range(0, length, block):
        end = start + block
        scores = jnp.einsum("bkgtd,bksd->bkgts", qh[:, :, :, start:end], kh[:, :, :end],
                            preferred_element_type=jnp.float32)  # [batch, kv_heads, groups, block, end]
        mask = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]  # [block, end]
        if segment_ids is not None:
            same = segment_ids[:, start:end, None] == segment_ids[:, None, :end]  # [batch, block, end]
            mask = (mask[None] & same)[:, None, None]
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("bkgts,bksd->bkgtd", probs, vh[:, :, :end]))
    out = jnp.concatenate(outs, axis=3)  # [batch, kv_heads, groups, length, head_dim]
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim).astype(q.dtype)


def gelu_mlp(x: Array, w_up: Array, b_up: Optional[Array], w_down: Array, b_down: Optional[Array]) -> Array:
    """GPT-2 MLP: down(gelu_tanh(up(x))). x: [..., embed]; w_up: [embed, mlp]; w_down: [mlp, embed]."""
    h = x @ w_up
    if b_up is not None:
        h = h + b_up
    h = jax.nn.gelu(h, approximate=True)
    y = h @ w_down
    return y + b_down if b_down is not None else y


def swiglu_mlp(x: Array, w_gate: Array, w_up: Array, w_down: Array) -> Array:
    """Llama MLP: down(silu(gate(x)) * up(x)). x: [..., embed]; w_gate, w_up: [embed, mlp]."""
    return (jax.nn.silu(x @ w_gate) * (x @ w_up)) @ w_down
