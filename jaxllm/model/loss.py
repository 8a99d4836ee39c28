"""Token-level losses shared by pretraining, SFT and RL (pure functions)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_log_probs(logits: Array, targets: Array) -> Array:
    """log p(target) per token, float32 [batch, length]; logits [batch, length, vocab]."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return target_logit - lse


def cross_entropy_loss(
    logits: Array, targets: Array, loss_mask: Array | None = None, z_loss_weight: float = 0.0
) -> tuple[Array, dict]:
    """Masked mean next-token cross-entropy (+ optional z-loss, PaLM) over tokens.

    logits [batch, length, vocab]; targets int [batch, length]; loss_mask [batch, length] (1 = count,
    None = all). Returns (loss, {"nll", "z_loss", "tokens"}) where loss = nll + z_loss_weight * z_loss;
    an all-zero mask gives loss 0, not NaN.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    mask = jnp.ones_like(lse) if loss_mask is None else loss_mask.astype(jnp.float32)
    tokens = jnp.sum(mask)
    denom = jnp.maximum(tokens, 1.0)
    nll = jnp.sum((lse - target_logit) * mask) / denom
    z_loss = jnp.sum(jnp.square(lse) * mask) / denom
    loss = nll + z_loss_weight * z_loss
    return loss, {"nll": nll, "z_loss": z_loss, "tokens": tokens}
