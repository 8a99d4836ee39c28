"""The pure train step: `train_step(state, batch) -> (state, metrics)`, with gradient accumulation.

A batch is a dict of `[batch, length]` arrays: inputs, targets, loss_mask and optionally
positions and segment_ids (from packing). SFT and RL reuse this step through the loss mask or a
custom `loss_fn`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxllm.model.loss import cross_entropy_loss


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # 0 = fit the schedule to time_budget_s from a measured step time
    time_budget_s: float = 0.0  # >0: stop after this many seconds of training
    grad_accum: int = 1  # micro-batches per step, accumulated inside the jitted step
    z_loss: float = 0.0
    seed: int = 0
    eval_every: int = 100
    eval_batches: int = 20
    sample_every: int = 200
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    async_checkpointing: bool = True


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


LossFn = Callable[[Any, dict], tuple[jax.Array, dict]]


def lm_loss_fn(apply_fn: Callable, z_loss: float = 0.0) -> LossFn:
    """Next-token cross-entropy on `batch` (masked mean over tokens), as a function of params."""
    def loss_fn(params, batch):
        logits = apply_fn({"params": params}, batch["inputs"], positions=batch.get("positions"),
                          segment_ids=batch.get("segment_ids"))  # [batch, length, vocab]
        loss, aux = cross_entropy_loss(logits, batch["targets"], batch["loss_mask"], z_loss_weight=z_loss)
        return loss, aux
    return loss_fn


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, grad_accum: int = 1):
    """Build `train_step(state, batch) -> (state, metrics)`; jit it with shardings at the edge.

    With grad_accum > 1 the batch is split into micro-batches along axis 0 and gradients are
    averaged by token count inside a lax.scan, so 4 x B equals one step of 4B.
    """
    grad_fn = jax.value_and_grad(lambda p, b: _summed_loss(loss_fn, p, b), has_aux=True)

    def train_step(state: TrainState, batch: dict):
        if grad_accum == 1:
            (loss_sum, aux), grads = grad_fn(state.params, batch)
        else:
            micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

            def body(carry, mb):
                (l, a), g = grad_fn(state.params, mb)
                acc_l, acc_a, acc_g = carry
                return (acc_l + l, jax.tree.map(jnp.add, acc_a, a), jax.tree.map(jnp.add, acc_g, g)), None

            zeros_g = jax.tree.map(jnp.zeros_like, state.params)
            first = jax.tree.map(lambda x: x[0], micro)
            (_, aux_shape), _ = jax.eval_shape(grad_fn, state.params, first)
            zeros_a = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
            (loss_sum, aux, grads), _ = jax.lax.scan(body, (jnp.zeros(()), zeros_a, zeros_g), micro)
        tokens = jnp.maximum(aux["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": aux["nll_sum"] / tokens, "objective": loss_sum / tokens,
                   "grad_norm": optax.global_norm(grads), "tokens": aux["tokens"],
                   **{k: v / tokens for k, v in aux["metrics"].items()}}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def _summed_loss(loss_fn: LossFn, params, batch):
    """Token-summed loss so micro-batches with different token counts combine exactly.

    Scalars a loss returns under aux["metrics"] (e.g. RL's KL, entropy, clip fraction) are
    token-weighted the same way and come out of the step as metrics.
    """
    loss, aux = loss_fn(params, batch)
    tokens = jnp.sum(batch["loss_mask"]).astype(jnp.float32)
    nll = aux.get("nll", loss)
    extra = {k: jnp.asarray(v, jnp.float32) * tokens for k, v in aux.get("metrics", {}).items()}
    return loss * tokens, {"tokens": tokens, "nll_sum": nll * tokens, "metrics": extra}


def make_eval_step(loss_fn: LossFn):
    """`eval_step(params, batch) -> (summed nll in nats, target-token count)` for validation and bpb."""
    def eval_step(params, batch):
        loss, aux = loss_fn(params, batch)
        tokens = jnp.sum(batch["loss_mask"]).astype(jnp.float32)
        return aux.get("nll", loss) * tokens, tokens
    return eval_step
