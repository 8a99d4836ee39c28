"""Batched sampling with a preallocated KV cache: pure samplers, prefill, decode step, generate.

Prompts of different lengths share one batch: they are right-padded, prefilled in one forward pass
(each row's cache length is its own prompt length), then decoded one token per step inside a jitted
lax.while_loop. Slot index = position, so each row writes its next token at its own length.
"""
from __future__ import annotations

import collections
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.infer.kv_cache import init_cache
from jaxllm.model import KVCache, ModelConfig, Transformer

Array = jax.Array

# How often each jitted function was traced (a Python side effect runs once per compilation);
# tests use it to check that decoding compiles once.
TRACE_COUNTS: collections.Counter = collections.Counter()

_NEG_INF = -1e30


# ---------------------------------------------------------------- pure samplers
def mask_top_k(logits: Array, k) -> Array:
    """Keep the k largest logits per row (ties at the k-th value kept); k <= 0 keeps all. [..., vocab]."""
    vocab = logits.shape[-1]
    k = jnp.asarray(k, jnp.int32)
    sorted_desc = -jnp.sort(-logits, axis=-1)
    kth = jnp.take(sorted_desc, jnp.clip(k - 1, 0, vocab - 1), axis=-1)[..., None]
    masked = jnp.where(logits < kth, _NEG_INF, logits)
    return jnp.where(k > 0, masked, logits)


def mask_top_p(logits: Array, p) -> Array:
    """Nucleus: keep the smallest set of top tokens whose probability sums to >= p (always the top one)."""
    p = jnp.asarray(p, jnp.float32)
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of strictly better tokens
    keep = mass_before < p
    threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    masked = jnp.where(logits < threshold, _NEG_INF, logits)
    return jnp.where(p < 1.0, masked, logits)


def sample_logits(key: Array, logits: Array, temperature=1.0, top_k=0, top_p=1.0) -> Array:
    """Sample token ids [batch] from logits [batch, vocab]: temperature, then top-k, then top-p.

    temperature <= 0 means greedy (argmax). All settings may be traced values (no recompiles).
    """
    logits = logits.astype(jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    filtered = jax.lax.cond(
        (jnp.asarray(top_k) > 0) | (jnp.asarray(top_p) < 1.0),
        lambda x: mask_top_p(mask_top_k(x, top_k), top_p), lambda x: x, scaled,
    )
    sampled = jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


# ---------------------------------------------------------------- model steps
@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def prefill(params, cfg: ModelConfig, tokens: Array, lengths: Array, cache: KVCache) -> tuple[Array, KVCache]:
    """Run right-padded prompts tokens [batch, P] (real lengths [batch]) into an empty cache.

    Returns the logits at each row's last prompt token [batch, vocab] and the filled cache.
    """
    TRACE_COUNTS["prefill"] += 1
    segment_ids = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
    logits, cache = Transformer(cfg).apply({"params": params}, tokens, segment_ids=segment_ids, cache=cache,
                                           logits_at=(lengths - 1)[:, None])
    return logits[:, 0], cache


def _decode(params, cfg: ModelConfig, cache: KVCache, tokens: Array) -> tuple[Array, KVCache]:
    logits, cache = Transformer(cfg).apply({"params": params}, tokens[:, None], cache=cache)
    return logits[:, 0], cache


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def decode_step(params, cfg: ModelConfig, cache: KVCache, tokens: Array) -> tuple[Array, KVCache]:
    """Feed one token per row (tokens [batch]) at position cache.lengths; returns logits [batch, vocab]."""
    TRACE_COUNTS["decode_step"] += 1
    return _decode(params, cfg, cache, tokens)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def _generate_loop(params, cfg: ModelConfig, cache: KVCache, logits: Array, key: Array, temperature, top_k, top_p,
                   stop_ids: Array, pad_id, max_new_tokens: int):
    """Sample up to max_new_tokens per row inside one lax.while_loop; stops early when all rows stopped."""
    TRACE_COUNTS["generate_loop"] += 1
    batch = logits.shape[0]

    def cond(state):
        step, _, _, _, _, _, done, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, cache, logits, key, out, out_lp, done, n_gen = state
        key, sub = jax.random.split(key)
        tok = sample_logits(sub, logits, temperature, top_k, top_p)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), -1), tok[:, None], -1)[:, 0]
        tok = jnp.where(done, pad_id, tok)
        out = out.at[:, step].set(tok)
        out_lp = out_lp.at[:, step].set(jnp.where(done, 0.0, lp))
        n_gen = n_gen + (~done).astype(jnp.int32)
        done = done | jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
        logits, cache = _decode(params, cfg, cache, tok)
        return step + 1, cache, logits, key, out, out_lp, done, n_gen

    state = (
        jnp.int32(0), cache, logits, key, jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
        jnp.zeros((batch, max_new_tokens), jnp.float32), jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32),
    )
    _, _, _, _, out, out_lp, _, n_gen = jax.lax.while_loop(cond, body, state)
    return out, out_lp, n_gen


def _bucket(n: int, multiple: int = 16) -> int:
    return -(-n // multiple) * multiple


def generate(
    params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    return_logprobs: bool = False,
):
    """Continue each prompt (list of token ids) by up to max_new_tokens sampled tokens.

    Returns the new tokens per prompt (a stop id ends a row and is included); with return_logprobs,
    also the log-probability of each new token under the model's raw distribution (temperature 1,
    no top-k/top-p), which is what a policy-gradient loss needs.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token (e.g. start with the BOS token)")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be >= 1")
    longest = max(len(p) for p in prompts)
    if cfg.family == "gpt2" and longest + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"generate: longest prompt {longest} + max_new_tokens {max_new_tokens} exceeds the model's learned "
            f"positions max_seq_len={cfg.max_seq_len}; shorten the prompt or lower max_new_tokens"
        )
    padded_len = _bucket(longest)  # bucket prompt lengths so prefill compiles rarely
    tokens = np.full((len(prompts), padded_len), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
    cache = init_cache(cfg, len(prompts), padded_len + max_new_tokens)
    logits, cache = prefill(params, cfg, jnp.asarray(tokens), lengths, cache)
    stops = list(stop_ids) + [-1] * (_bucket(max(len(stop_ids), 1), 8) - len(stop_ids))  # fixed shape, no recompiles
    stops = jnp.asarray(stops, jnp.int32)
    out, out_lp, n_gen = _generate_loop(
        params, cfg, cache, logits, jax.random.key(seed), jnp.float32(temperature), jnp.int32(top_k),
        jnp.float32(top_p), stops, jnp.int32(pad_id), max_new_tokens,
    )
    out, out_lp, n_gen = np.asarray(out), np.asarray(out_lp), np.asarray(n_gen)
    seqs = [out[i, : n_gen[i]].tolist() for i in range(len(prompts))]
    if return_logprobs:
        return seqs, [out_lp[i, : n_gen[i]].tolist() for i in range(len(prompts))]
    return seqs
