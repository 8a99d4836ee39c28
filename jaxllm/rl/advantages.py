"""Advantage estimators for policy-gradient RL (pure functions of reward arrays).

Group estimators take rewards [prompts, group]: G completions sampled for each prompt, and return
advantages of the same shape, one per completion (the loop broadcasts them over its tokens).

    grpo_advantages(r)                      (r - mean_g) / (std_g + eps)        DeepSeekMath GRPO
    grpo_advantages(r, normalize_std=False) r - mean_g                          Dr. GRPO (Liu et al. 2025)
    rloo_advantages(r)                      r_i - mean_{j != i} r_j             RLOO (Ahmadian et al. 2024)
    reinforce_advantages(r, baseline)       r - baseline                        REINFORCE with a baseline
    gae_advantages(rewards, values, mask)   token-level GAE(gamma, lambda)      PPO with a value head
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def grpo_advantages(rewards: Array, normalize_std: bool = True, eps: float = 1e-6) -> Array:
    """Group-relative advantages: rewards [prompts, group] minus the group mean, divided by the group std
    (population std, as in DeepSeekMath) when normalize_std; a group with equal rewards gets zeros."""
    r = jnp.asarray(rewards, jnp.float32)
    adv = r - r.mean(axis=-1, keepdims=True)
    if normalize_std:
        adv = adv / (r.std(axis=-1, keepdims=True) + eps)
    return adv


def dr_grpo_advantages(rewards: Array) -> Array:
    """Dr. GRPO: group mean subtracted, no std division (which over-weights near-unanimous groups)."""
    return grpo_advantages(rewards, normalize_std=False)


def rloo_advantages(rewards: Array) -> Array:
    """Leave-one-out baseline: each completion's reward minus the mean of the other G-1 in its group.

    Equals G/(G-1) * (r - group mean). Needs G >= 2.
    """
    r = jnp.asarray(rewards, jnp.float32)
    g = r.shape[-1]
    if g < 2:
        raise ValueError(f"rloo_advantages: need at least 2 completions per prompt, got group size {g}")
    others = (r.sum(axis=-1, keepdims=True) - r) / (g - 1)
    return r - others


def reinforce_advantages(rewards: Array, baseline: Array | float | None = None) -> Array:
    """REINFORCE with a baseline: r - b. b defaults to the batch mean (a running mean can be passed in)."""
    r = jnp.asarray(rewards, jnp.float32)
    b = r.mean() if baseline is None else jnp.asarray(baseline, jnp.float32)
    return r - b


def gae_advantages(rewards: Array, values: Array, mask: Array, gamma: float = 1.0, lam: float = 0.95
                   ) -> tuple[Array, Array]:
    """Generalised advantage estimation over tokens.

    rewards, values, mask: [batch, length] (mask 1 on response tokens; the value after the last
    response token is 0, i.e. episodes end with the response). Returns (advantages, returns) [batch, length],
    zero where mask is 0. delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1}.
    """
    r = jnp.asarray(rewards, jnp.float32)
    m = jnp.asarray(mask, jnp.float32)
    v = jnp.asarray(values, jnp.float32) * m
    next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1) * jnp.concatenate(
        [m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
    delta = (r + gamma * next_v - v) * m

    def step(carry, x):  # reverse scan over time: x = (delta_t, mask_t)
        d, mt = x
        a = d + gamma * lam * carry * mt
        a = a * mt
        return jnp.where(mt > 0, a, carry), a

    _, adv = jax.lax.scan(step, jnp.zeros(r.shape[0]), (delta.T, m.T), reverse=True)
    adv = adv.T * m
    return adv, (adv + v) * m
