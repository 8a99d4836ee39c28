"""KV cache allocation for decoding (the cache type itself lives in jaxllm.model: KVCache)."""
from __future__ import annotations

import jax.numpy as jnp

from jaxllm.model import KVCache, ModelConfig


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> KVCache:
    """Zeroed cache in the compute dtype, lengths [batch] = 0: k, v one [batch, max_len, kv_heads, head_dim]
    buffer per layer (a tuple), or stacked [layers, batch, ...] for a scan_layers model."""
    shape = (batch, max_len, cfg.n_kv_heads, cfg.resolved_head_dim)
    dt = jnp.dtype(dtype or cfg.dtype)
    if cfg.scan_layers:
        k, v = jnp.zeros((cfg.n_layers, *shape), dt), jnp.zeros((cfg.n_layers, *shape), dt)
    else:
        k, v = (tuple(jnp.zeros(shape, dt) for _ in range(cfg.n_layers)) for _ in "kv")
    return KVCache(k, v, jnp.zeros((batch,), jnp.int32))


def cache_bytes(cfg: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> int:
    """Memory of a cache of this size (both k and v), to size batches before allocating."""
    per = cfg.n_layers * batch * max_len * cfg.n_kv_heads * cfg.resolved_head_dim
    return 2 * per * jnp.dtype(dtype or cfg.dtype).itemsize
