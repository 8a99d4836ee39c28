"""DPO and IPO: offline preference optimisation as pure losses on sequence log-probabilities.

With h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l)) (chosen w, rejected l):
    DPO (Rafailov et al. 2023):  -log σ(β h)            (optionally label-smoothed, cDPO)
    IPO (Azar et al. 2023):      (h - 1/(2β))²          (a squared loss: no push to infinite margins)
`pairs_loss_fn` plugs either into the jitted, sharded train step (Trainer.create(loss_fn_factory=...)).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxllm.model.loss import token_log_probs

Array = jax.Array


def sequence_log_probs(logits: Array, targets: Array, mask: Array) -> Array:
    """Sum of log p(target) over masked tokens: logits [batch, length, vocab] → [batch]."""
    return jnp.sum(token_log_probs(logits, targets) * mask, axis=-1)


def preference_margin(pol_chosen: Array, pol_rejected: Array, ref_chosen: Array, ref_rejected: Array) -> Array:
    """h = (policy - reference) log-ratio of chosen minus that of rejected, per pair [pairs]."""
    return (pol_chosen - ref_chosen) - (pol_rejected - ref_rejected)


def dpo_loss(pol_chosen: Array, pol_rejected: Array, ref_chosen: Array, ref_rejected: Array,
             beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[Array, dict]:
    """Mean DPO loss over pairs (inputs [pairs] sequence log-probs) and metrics.

    label_smoothing ε assumes a fraction ε of labels are flipped (conservative DPO).
    """
    h = preference_margin(pol_chosen, pol_rejected, ref_chosen, ref_rejected)
    losses = (1 - label_smoothing) * jax.nn.softplus(-beta * h) + label_smoothing * jax.nn.softplus(beta * h)
    return jnp.mean(losses), {"margin": jnp.mean(h), "pair_accuracy": jnp.mean((h > 0).astype(jnp.float32)),
                              "chosen_reward": jnp.mean(beta * (pol_chosen - ref_chosen)),
                              "rejected_reward": jnp.mean(beta * (pol_rejected - ref_rejected))}


def ipo_loss(pol_chosen: Array, pol_rejected: Array, ref_chosen: Array, ref_rejected: Array,
             beta: float = 0.1) -> tuple[Array, dict]:
    """Mean IPO loss (h - 1/(2β))² over pairs; its minimum sits at the finite margin h = 1/(2β)."""
    h = preference_margin(pol_chosen, pol_rejected, ref_chosen, ref_rejected)
    return jnp.mean((h - 1.0 / (2.0 * beta)) ** 2), {"margin": jnp.mean(h),
                                                     "pair_accuracy": jnp.mean((h > 0).astype(jnp.float32))}


PAIR_LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss}


def pairs_loss_fn(apply_fn: Callable, loss: str = "dpo", beta: float = 0.1) -> Callable:
    """A train-step loss on a batch of interleaved pairs: rows 2i (chosen) and 2i+1 (rejected).

    batch: inputs, targets, loss_mask (1 on completion tokens), ref_logp (the frozen reference's
    token log-probs of targets), all [2 * pairs, length]. The loss is the pair mean; the train step
    multiplies by loss_mask.sum() and divides the gradient by it again, so one step is exact (with
    grad_accum > 1 micro-batches are weighted by their completion tokens).
    """
    fn = PAIR_LOSSES[loss]

    def loss_fn(params, batch):
        logits = apply_fn({"params": params}, batch["inputs"], segment_ids=batch.get("segment_ids"))
        mask = batch["loss_mask"].astype(jnp.float32)
        pol = sequence_log_probs(logits, batch["targets"], mask)  # [2 * pairs]
        ref = jnp.sum(batch["ref_logp"] * mask, axis=-1)
        value, aux = fn(pol[0::2], pol[1::2], ref[0::2], ref[1::2], beta)
        return value, {"nll": value, "metrics": aux}  # margin, pair_accuracy come out of the step

    return loss_fn
