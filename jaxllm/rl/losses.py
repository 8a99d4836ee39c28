"""Policy-gradient losses on token log-probabilities (pure functions of arrays).

All per-token arrays are [batch, length] with `mask` 1 on the completion tokens being trained.
A policy loss has the signature the RL loop calls, so an experiment can name its own
(`RLConfig.loss = "my_module:my_loss"`):

    loss_fn(logp, old_logp, ref_logp, advantages, mask, entropy, rewards, **hyperparameters)
        -> (scalar loss, {"kl": ..., "entropy": ..., "clip_frac": ...})

`logp` carries the gradient; old_logp (the sampling policy) and ref_logp (the frozen reference) do not.
Hyperparameters a loss does not use are ignored (`**_`), so one config drives every loss.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Array = jax.Array
Aggregation = Literal["token", "sequence", "constant"]
KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logp: Array, ref_logp: Array, estimator: KLEstimator = "k3") -> Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL divergence").

    With log r = ref_logp - logp:  k1 = -log r (unbiased, can be negative), k2 = (log r)^2 / 2 (biased, low
    variance), k3 = (r - 1) - log r (unbiased, always >= 0; what GRPO uses). All are 0 when logp == ref_logp.
    """
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * jnp.square(log_r)
    if estimator == "k3":
        return jnp.expm1(log_r) - log_r
    raise ValueError(f"kl_estimator={estimator!r}: use 'k1', 'k2' or 'k3'")


def aggregate(values: Array, mask: Array, mode: Aggregation = "token", max_tokens: int | None = None) -> Array:
    """Reduce per-token values [batch, length] to a scalar.

    token:    sum over all tokens / number of tokens (DAPO; long answers weigh by their length)
    sequence: mean over sequences of each sequence's token mean (the original GRPO; favours short wrong answers)
    constant: sum / (batch * max_tokens) (Dr. GRPO; a fixed normaliser, no length bias), max_tokens
              defaults to the array length
    """
    m = mask.astype(jnp.float32)
    v = values * m
    if mode == "token":
        return v.sum() / jnp.maximum(m.sum(), 1.0)
    if mode == "sequence":
        per_seq = v.sum(-1) / jnp.maximum(m.sum(-1), 1.0)
        has = (m.sum(-1) > 0).astype(jnp.float32)
        return (per_seq * has).sum() / jnp.maximum(has.sum(), 1.0)
    if mode == "constant":
        return v.sum() / (values.shape[0] * (max_tokens or values.shape[1]))
    raise ValueError(f"aggregation={mode!r}: use 'token', 'sequence' or 'constant'")


def token_entropy(logits: Array) -> Array:
    """Entropy of the next-token distribution per position: logits [batch, length, vocab] -> [batch, length]."""
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def ppo_clip_objective(logp: Array, old_logp: Array, advantages: Array, clip_eps: float = 0.2,
                       clip_eps_high: float | None = None) -> tuple[Array, Array]:
    """Per-token PPO-clip loss (to minimise) and a 0/1 array of where clipping was active.

    ratio = exp(logp - old_logp); loss = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A).
    clip_eps_high (DAPO's "clip higher") defaults to clip_eps.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = jnp.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high) * advantages
    loss = -jnp.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped).astype(jnp.float32)
    return loss, was_clipped


def grpo_loss(logp: Array, old_logp: Array, ref_logp: Array, advantages: Array, mask: Array,
              entropy: Array | None = None, rewards: Array | None = None, *, clip_eps: float = 0.2,
              clip_eps_high: float | None = None, kl_coef: float = 0.0, kl_estimator: KLEstimator = "k3",
              entropy_coef: float = 0.0, aggregation: Aggregation = "token", max_tokens: int | None = None,
              **_) -> tuple[Array, dict]:
    """PPO-clip surrogate + kl_coef * KL(pi || ref) - entropy_coef * entropy, aggregated over tokens.

    With clip_eps large and old_logp = logp this is plain REINFORCE with the given advantages; the
    advantage estimator (GRPO, Dr. GRPO, RLOO, ...) is chosen separately.
    """
    pg, clipped = ppo_clip_objective(logp, old_logp, advantages, clip_eps, clip_eps_high)
    kl = kl_estimate(logp, ref_logp, kl_estimator)
    ent = jnp.zeros_like(logp) if entropy is None else entropy
    per_token = pg + kl_coef * kl - entropy_coef * ent
    loss = aggregate(per_token, mask, aggregation, max_tokens)
    metrics = {"pg_loss": aggregate(pg, mask, "token"), "kl": aggregate(kl_estimate(logp, ref_logp, "k3"), mask, "token"),
               "entropy": aggregate(ent, mask, "token"), "clip_frac": aggregate(clipped, mask, "token")}
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def rejection_sampling_loss(logp: Array, old_logp: Array, ref_logp: Array, advantages: Array, mask: Array,
                            entropy: Array | None = None, rewards: Array | None = None, *,
                            reward_threshold: float = 1.0, aggregation: Aggregation = "token",
                            max_tokens: int | None = None, **_) -> tuple[Array, dict]:
    """Rejection-sampling fine-tuning: next-token NLL on the completions whose reward >= reward_threshold
    ("sample many, keep the correct ones, train on them"). rewards: [batch, length] (per sequence, broadcast)."""
    if rewards is None:
        raise ValueError("rejection_sampling_loss needs rewards")
    keep = mask * (rewards >= reward_threshold).astype(jnp.float32)
    loss = aggregate(-logp, keep, aggregation, max_tokens)
    ent = jnp.zeros_like(logp) if entropy is None else entropy
    metrics = {"pg_loss": loss, "kl": aggregate(kl_estimate(logp, ref_logp, "k3"), mask, "token"),
               "entropy": aggregate(ent, mask, "token"), "clip_frac": jnp.zeros(()),
               "kept_frac": keep.sum() / jnp.maximum(mask.sum(), 1.0)}
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
