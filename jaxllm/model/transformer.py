"""The Transformer (GPT-2 and Llama families) as Flax linen modules.

Params are a plain pytree (see docs/model.md for the exact tree). Every parameter carries logical
axis names (nn.with_logical_partitioning) and key activations are constrained with logical names,
so jaxllm.parallel's rules table alone decides the sharding.

    logits = Transformer(cfg).apply({"params": params}, inputs, positions, segment_ids)
    logits, cache = Transformer(cfg).apply({"params": params}, inputs, cache=cache)   # KV-cache decoding
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.kernels import blas_matmul
from jaxllm.model import layers
from jaxllm.model.config import ModelConfig

Array = jax.Array


class KVCache(NamedTuple):
    """Preallocated keys/values for decoding; slot index = token position.

    k, v: a tuple of per-layer [batch, max_len, kv_heads, head_dim] buffers, so a jitted step with the
    cache donated writes each layer's new entries in place (scan_layers models: one stacked
    [layers, batch, ...] array, as nn.scan needs); lengths: int32 [batch], tokens filled per row.
    """

    k: Array
    v: Array
    lengths: Array


def _dt(name: str):
    return jnp.dtype(name)


def _constrain(x: Array, names: tuple) -> Array:
    return nn.with_logical_constraint(x, names)


def _through_blas(x: Array, w: Array, dt, impl: str) -> bool:
    return impl == "blas" and jnp.dtype(dt) == jnp.float32 and blas_matmul.applies(x, w)


def matmul(x: Array, w: Array, dt, out_dtype=None, impl: str = "xla") -> Array:
    """x [n, in] @ w [in, out] in dtype dt, or in w's dtype when narrower, with results in out_dtype
    (default dt). bfloat16 inference weights: bfloat16 inputs summed in float32 run ~2x faster on CPU
    than float32 (bfloat16 outputs would be slower). impl="blas": float32 on one CPU device goes
    through MKL (jaxllm/kernels/blas_matmul.py), anything else through XLA's dot."""
    dt = jnp.dtype(dt)
    if _through_blas(x, w, dt, impl) and jnp.dtype(out_dtype or dt) == jnp.float32:
        return blas_matmul.matmul(x, w)
    in_dt = w.dtype if jnp.dtype(w.dtype).itemsize < dt.itemsize else dt
    out_dtype = out_dtype or (None if in_dt == dt else dt)
    return jnp.matmul(x.astype(in_dt), w.astype(in_dt), preferred_element_type=out_dtype)


@jax.custom_vjp
def _cpu_head_matmul(x: Array, w: Array) -> Array:
    return x @ w


def _cpu_head_matmul_fwd(x, w):
    return x @ w, (x, w)


def _cpu_head_matmul_bwd(res, g):
    x, w = res
    # XLA:CPU computes the weight gradient x^T @ g (a contraction over tokens) ~2.4x faster from a
    # materialised x^T [embed, tokens]; the barriers stop it folding either transpose back into the dot
    # (for tied embeddings the [vocab, embed] gradient is this one transposed). Same math as autodiff.
    dw = jax.lax.optimization_barrier(jax.lax.optimization_barrier(x.T) @ g)
    return g @ w.T, dw


_cpu_head_matmul.defvjp(_cpu_head_matmul_fwd, _cpu_head_matmul_bwd)


def head_matmul(x: Array, w: Array, dt, impl: str = "xla", table: bool = False) -> Array:
    """The output projection x [tokens, embed] @ w [embed, vocab] → float32 logits [tokens, vocab] (table=True:
    w is the tied embedding table [vocab, embed], used as w^T); in float32
    on CPU through a custom gradient that made the whole train step 1.07x (d_model 256) to 1.12x (128) faster
    at vocab 8192. Only for vocabularies of 1024 and more, where the head is a large part of the step: the
    other summation order flipped the toy RLHF run (vocab 44, tests/test_rlhf_pipeline.py) into hacking its
    reward model from step 0. impl="blas": through MKL, as `matmul`, with the table used in place."""
    if _through_blas(x, w, dt, impl):
        return blas_matmul.matmul(x, w, table)
    w = w.T if table else w
    if (jnp.dtype(dt) == x.dtype == w.dtype == jnp.float32 and w.shape[-1] >= 1024
            and jax.default_backend() == "cpu"):
        return _cpu_head_matmul(x, w)
    return matmul(x, w, dt, jnp.float32)


def _param(mod: nn.Module, name: str, init, shape: tuple, axes: tuple):
    return mod.param(name, nn.with_logical_partitioning(init, axes), shape, _dt(mod.cfg.param_dtype))


class Proj(nn.Module):
    """A linear map; kernel [*in, *out] and optional bias [*out].

    Computed as one 2-D matmul [batch*length, in] @ [in, out]: XLA:CPU runs that, and above all its
    backward pass, ~2x faster than a 3-D dot (which makes it transpose-copy fused gradients).
    """

    cfg: ModelConfig
    kernel_shape: tuple
    kernel_axes: tuple
    n_out: int  # how many trailing kernel dims are outputs (bias shape)
    std: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dt = _dt(self.cfg.dtype)
        kernel = _param(self, "kernel", nn.initializers.normal(self.std), self.kernel_shape, self.kernel_axes)
        in_shape, out_shape = self.kernel_shape[: -self.n_out], self.kernel_shape[-self.n_out:]
        n_in, n_out = math.prod(in_shape), math.prod(out_shape)
        lead = x.shape[: x.ndim - len(in_shape)]
        y = matmul(x.reshape(-1, n_in), kernel.reshape(n_in, n_out), dt, impl=self.cfg.matmul_impl)
        if self.cfg.use_bias:
            y = y + _param(self, "bias", nn.initializers.zeros, out_shape, self.kernel_axes[-self.n_out:]).astype(dt).reshape(n_out)
        return y.reshape(*lead, *out_shape)


class Norm(nn.Module):
    """RMSNorm (llama) or LayerNorm with bias (gpt2); params "scale" [embed] (+ "bias")."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = _param(self, "scale", nn.initializers.ones, (d,), ("norm",))
        if self.cfg.family == "gpt2":
            bias = _param(self, "bias", nn.initializers.zeros, (d,), ("norm",))
            return layers.layer_norm(x, scale, bias, self.cfg.norm_eps)
        return layers.rms_norm(x, scale, self.cfg.norm_eps)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention; RoPE for llama; optional KV cache."""

    cfg: ModelConfig
    kv_window: Optional[int] = None  # decoding attends over the first kv_window cache slots (None: all)

    @nn.compact
    def __call__(self, x, positions, segment_ids, kv_cache):
        cfg = self.cfg
        d, h, kvh, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
        std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.n_layers) ** 0.5
        q = Proj(cfg, (d, h, hd), ("embed", "heads", "head_dim"), 2, std, name="q")(x)
        k = Proj(cfg, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), 2, std, name="k")(x)
        v = Proj(cfg, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), 2, std, name="v")(x)
        q = _constrain(q, ("batch", "length", "heads", "head_dim"))  # [batch, length, heads, head_dim]
        k = _constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = _constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        if cfg.family == "llama":
            q = layers.apply_rope(q, positions, cfg.rope_theta)
            k = layers.apply_rope(k, positions, cfg.rope_theta)
        if kv_cache is None:
            out = layers.attention(q, k, v, segment_ids=segment_ids, impl=cfg.attention_impl)
            new_cache = None
        else:
            # write the new keys/values at their positions (in place when the cache is donated), then
            # attend over the first kv_window slots; causality by position hides unwritten (future) slots.
            k_cache, v_cache = kv_cache  # [batch, max_len, kv_heads, head_dim]
            rows = jnp.arange(x.shape[0])[:, None]
            k_cache = k_cache.at[rows, positions].set(k.astype(k_cache.dtype), mode="drop")
            v_cache = v_cache.at[rows, positions].set(v.astype(v_cache.dtype), mode="drop")
            window = self.kv_window or k_cache.shape[1]
            slots = jnp.broadcast_to(jnp.arange(window), (x.shape[0], window))
            # decoding needs an arbitrary (position) mask, which the cuDNN flash kernel does not take
            out = layers.attention(
                q, k_cache[:, :window].astype(q.dtype), v_cache[:, :window].astype(q.dtype), q_positions=positions,
                kv_positions=slots, impl="xla" if cfg.attention_impl == "cudnn" else cfg.attention_impl,
            )
            new_cache = (k_cache, v_cache)
        out = _constrain(out, ("batch", "length", "heads", "head_dim"))
        y = Proj(cfg, (h, hd, d), ("heads", "head_dim", "embed"), 1, out_std, name="o")(out)
        return y, new_cache


class Mlp(nn.Module):
    """SwiGLU (llama: gate, up, down) or GELU-tanh (gpt2: up, down) feed-forward."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        d, f = cfg.d_model, cfg.d_ff
        std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.n_layers) ** 0.5
        up = Proj(cfg, (d, f), ("embed", "mlp"), 1, std, name="up")(x)
        if cfg.family == "llama":
            gate = Proj(cfg, (d, f), ("embed", "mlp"), 1, std, name="gate")(x)
            hidden = jax.nn.silu(gate) * up
        else:
            hidden = jax.nn.gelu(up, approximate=True)
        hidden = _constrain(hidden, ("batch", "length", "mlp"))  # [batch, length, mlp]
        return Proj(cfg, (f, d), ("mlp", "embed"), 1, out_std, name="down")(hidden)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    cfg: ModelConfig
    kv_window: Optional[int] = None

    @nn.compact
    def __call__(self, x, positions, segment_ids, kv_cache):
        attn_out, new_cache = Attention(self.cfg, self.kv_window, name="attn")(
            Norm(self.cfg, name="attn_norm")(x), positions, segment_ids, kv_cache)
        x = _constrain(x + attn_out, ("batch", "length", "embed"))
        x = x + Mlp(self.cfg, name="mlp")(Norm(self.cfg, name="mlp_norm")(x))
        x = _constrain(x, ("batch", "length", "embed"))  # [batch, length, embed]
        return x, new_cache


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nn.Module):
    """Decoder-only Transformer; returns float32 logits [batch, length, vocab]."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        positions: Optional[Array] = None,
        segment_ids: Optional[Array] = None,
        cache: Optional[KVCache] = None,
        kv_window: Optional[int] = None,
        logits_at: Optional[Array] = None,
    ) -> Any:
        """inputs int32 [batch, length]; positions default arange (or cache.lengths + arange);
        segment_ids: tokens attend only within their segment (0 = padding). With `cache`, returns
        (logits, new_cache) and segment_ids only count how many tokens per row are real; attention
        reads the first kv_window cache slots (static; default all). logits_at int [batch, n]: compute
        logits [batch, n, vocab] only at these indices along length (prefill needs just the last)."""
        cfg = self.cfg
        batch, length = inputs.shape
        if positions is None:
            start = cache.lengths[:, None] if cache is not None else 0
            positions = start + jnp.arange(length, dtype=jnp.int32)[None, :]
            positions = jnp.broadcast_to(positions, (batch, length))
        dt = _dt(cfg.dtype)
        embedding = _Table(cfg, cfg.vocab_size, ("vocab", "embed"), name="embed")()  # [vocab, embed]
        # gather the fsdp-sharded embed dim of the table before the lookup (FSDP: weights whole at use)
        x = jnp.take(_constrain(embedding, ("vocab", None)), inputs, axis=0).astype(dt)  # [batch, length, embed]
        if cfg.family == "gpt2":
            pos_table = _Table(cfg, cfg.max_seq_len, (None, "embed"), name="pos_embed")()  # [max_seq_len, embed]
            x = x + jnp.take(_constrain(pos_table, (None, None)), positions, axis=0, mode="clip").astype(dt)
        x = _constrain(x, ("batch", "length", "embed"))

        block = Block
        if cfg.remat != "none":
            block = nn.remat(block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        attn_segments = segment_ids if cache is None else None
        kv = None if cache is None else (cache.k, cache.v)
        if cfg.scan_layers:
            stack = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, 0), length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, new_kv = stack(cfg, kv_window, name="layers")(x, positions, attn_segments, kv)
        else:
            new_k, new_v = [], []
            for i in range(cfg.n_layers):
                layer_kv = None if kv is None else (kv[0][i], kv[1][i])
                x, layer_new = block(cfg, kv_window, name=f"layers_{i}")(x, positions, attn_segments, layer_kv)
                if layer_new is not None:
                    new_k.append(layer_new[0])
                    new_v.append(layer_new[1])
            new_kv = None if kv is None else (tuple(new_k), tuple(new_v))

        if logits_at is not None:
            x = jnp.take_along_axis(x, logits_at[:, :, None], axis=1)  # [batch, n, embed]
        x = Norm(cfg, name="final_norm")(x)
        # one 2-D matmul [batch*length, embed] @ [embed, vocab] (see Proj), float32 logits
        b, n, _ = x.shape
        if cfg.tie_embeddings:
            logits = head_matmul(x.reshape(b * n, -1), embedding, dt, self.cfg.matmul_impl, table=True)
        else:
            logits = _LMHead(cfg, name="lm_head")(x.reshape(b * n, -1))
        logits = logits.reshape(b, n, -1)
        logits = _constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        if cache is None:
            return logits
        added = length if segment_ids is None else jnp.sum(segment_ids != 0, axis=-1).astype(jnp.int32)
        return logits, KVCache(new_kv[0], new_kv[1], cache.lengths + added)


class _Table(nn.Module):
    """An embedding table {"embedding": [rows, embed]}."""

    cfg: ModelConfig
    rows: int
    axes: tuple

    @nn.compact
    def __call__(self) -> Array:
        return _param(self, "embedding", nn.initializers.normal(self.cfg.init_std),
                      (self.rows, self.cfg.d_model), self.axes)


class _LMHead(nn.Module):
    """Untied output projection {"kernel": [embed, vocab]}; x [n, embed] -> float32 logits [n, vocab]."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        kernel = _param(self, "kernel", nn.initializers.normal(cfg.init_std), (cfg.d_model, cfg.vocab_size),
                        ("embed", "vocab"))
        return head_matmul(x, kernel, x.dtype, cfg.matmul_impl)
